"""File names made from names that others chose (devices, fronts).

Standard library only, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["file_stem"]


def file_stem(name: str) -> str:
    """A file name part for ``name`` that stays in its folder whatever ``name`` is.

    A device name comes from a front file or a profile; used as it is,
    ``"../x"`` wrote ``pareto-../x.png`` outside ``--out`` (and a profile's
    ``"../../escaped[/]"`` wrote its front two folders up).  Other characters
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``, and a name
    that changed (or starts with a dot) gets its hash, so two names never
    share a file.  A valid profile name is kept as it is.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
    if stem == name and not stem.startswith("."):
        return stem
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{stem.lstrip('.')}-{digest}"
