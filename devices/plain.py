"""Text and JSON made safe to hand on: printable text, standard JSON.

Text that another party chose (an edge agent's error detail, a device's
name) ends up on a user's terminal, in a job record every client reads and
in the server's log.  Control characters there are commands to the
terminal: an agent's ``ESC ] 0 ;`` retitled the user's window, ``ESC [ 2 J``
cleared it, ``\\r`` and backspaces overwrote the error with "all good", and a
right-to-left override reversed what followed.  :func:`printable` shows such
characters escaped instead, as Python writes them (``\\x1b``, ``\\u202e``).

Python's ``json`` writes a non-finite float as ``NaN`` or ``Infinity``,
which is not JSON: JavaScript's ``JSON.parse`` and most other parsers refuse
the whole document.  :func:`dumps` writes them as ``null`` and refuses any
that slip past (``allow_nan=False``), so a regression fails where it is made.
Each reader says what ``null`` means for its fields (a ratio CI that is
``null`` is "no CI", as ``inf`` was).  On the agent's wire, standard JSON
is asked for with :data:`NONFINITE_HEADER`: a service from before it reads
``Infinity`` and refuses ``null``, and agents are upgraded on their own.

Standard library only: ``devices`` runs on an edge box without ``hwsearch``,
and ``hwsearch`` uses the same rules.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_TEXT_CHARS", "NONFINITE_HEADER", "dumps", "finite_or_null", "is_printable", "printable"]

#: A request header saying its sender reads non-finite numbers as null (``Hwsearch-Nonfinite: null``).
NONFINITE_HEADER = "Hwsearch-Nonfinite"

#: The longest text :func:`printable` returns by default: enough for any error worth reading.
MAX_TEXT_CHARS = 1000

# C0 and C1 controls (DEL included), lone surrogates (not encodable as UTF-8), and the bidirectional
# marks, embeddings, overrides and isolates that reorder the text after them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` with every control, surrogate and bidi character escaped, cut to ``limit`` characters.

    Escaping rather than deleting keeps what was sent visible to whoever
    reads the message (and a deleted ``\\r`` or backspace could not hide
    text any more than a printed one).
    """
    shown = _UNSAFE.sub(_escaped, text)
    return shown if len(shown) <= limit else shown[:max(limit - 3, 0)] + "..."


def is_printable(text: str) -> bool:
    """Whether :func:`printable` would leave ``text`` as it is (length aside)."""
    return _UNSAFE.search(text) is None


def finite_or_null(value: Any) -> Any:
    """A copy of JSON-able ``value`` with every non-finite float (NaN, ±inf) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """Standard JSON of ``value``: non-finite floats become null (see the module's note)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **options)
