"""How rows and a host's kept sessions carry their anchor's sessions, and the recent ones a new run starts from.

Every stored row names its run's anchor (``anchor_keys``, ``anchor_precision``,
``anchor_shas``) and keeps its session's ``anchor_ratios`` (and
``anchor_ratios_at`` at the anchor's other precisions); a host's kept
session (:class:`hwsearch.anchor.host.HostRecord`) is read back in the
same form, so both feed :func:`history` and the norm alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from hwsearch.anchor.state import DEFAULT_TOLERANCE, nan_if_none

#: Earlier sessions of the anchor a run starts from: recent enough to share the host's present state.
RECENT_SESSIONS = 20


class History(NamedTuple):
    """An earlier anchor and its recent sessions: each one's ratio per subnet and its reference's ms (NaN: unknown)."""

    keys: tuple[str, ...]
    ratios: dict[str, tuple[float, ...]]
    references: dict[str, float]
    ratios_at: Mapping[str, Mapping[str, tuple[float, ...]]] = {}  # session -> other precision -> its ratios


def history(rows: Mapping[str, Mapping[str, Any]], precision: str) -> History | None:
    """The anchor of earlier runs and its subnets' ratios in their sessions, from a device's stored rows.

    Rows name their run's ``anchor_keys`` and carry their session's
    ``anchor_ratios`` (of each subnet's ``anchor_precision`` file); those
    of retries (``anchor_retry``) are left out, as in :meth:`Anchor.offset`.  Of the
    anchors whose ratios were taken at ``precision`` (a new run's first
    precision, so ratios compare like with like), the one seen in the most
    sessions is returned with its :data:`RECENT_SESSIONS` latest sessions'
    ratios (by the session's end) and reference times
    (``env.session_reference_ms``); ``None`` when no row names an anchor.
    """
    sessions: dict[tuple[str, ...], dict[str, tuple[float, tuple[float, ...], float]]] = {}
    ratios_at: dict[str, dict[str, tuple[float, ...]]] = {}
    for row in rows.values():
        if row.get("anchor_precision") != precision or row.get("anchor_retry") or anchor_of(row) is None:
            continue
        env = row.get("env", {})
        values = tuple(nan_if_none(r) for r in row["anchor_ratios"])
        sessions.setdefault(tuple(row["anchor_keys"]), {})[str(row["session_id"])] = (
            float(env.get("session_end", 0.0)), values, nan_if_none(env.get("session_reference_ms")))
        ratios_at.setdefault(str(row["session_id"]), {}).update(row_ratios_at(row))
    if not sessions:
        return None
    keys = max(sorted(sessions), key=lambda k: len(sessions[k]))
    latest = sorted(sessions[keys].items(), key=lambda item: item[1][0])[-RECENT_SESSIONS:]
    return History(keys, {session: ratios for session, (_, ratios, _) in latest},
                   {session: reference for session, (_, _, reference) in latest},
                   {session: ratios_at[session] for session, _ in latest if ratios_at.get(session)})


def anchor_of(row: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What makes a row's anchor ratios comparable with another's: the subnets, precision and files."""
    keys, ratios = row.get("anchor_keys"), row.get("anchor_ratios")
    if not keys or not ratios or len(keys) != len(ratios):
        return None
    return tuple(keys), row.get("anchor_precision"), tuple(row.get("anchor_shas") or ())


def row_ratios_at(row: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """The row's session's anchor ratios at the anchor's other precisions (``anchor_ratios_at``), when kept."""
    return {str(precision): list(ratios) for precision, ratios in (row.get("anchor_ratios_at") or {}).items()
            if ratios and len(ratios) == len(row["anchor_ratios"])}


KEPT_FIELDS = ("keys", "ratios", "precision", "shas", "ended")
"""What a kept session must hold to be read as a row; one without them (a damaged file) is left out."""


def complete_sessions(kept: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A kept record's sessions that hold :data:`KEPT_FIELDS`, by session id; a damaged file's others are left out."""
    sessions = kept.get("sessions")
    if not isinstance(sessions, Mapping):
        return {}
    return {str(session_id): entry for session_id, entry in sessions.items()
            if isinstance(entry, Mapping) and all(field in entry for field in KEPT_FIELDS)
            and isinstance(entry["keys"], list) and isinstance(entry["ratios"], list)
            and isinstance(entry["ended"], (int, float))}


def kept_rows(kept: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A kept record's sessions as rows :func:`history` reads, keyed by session id (incomplete ones left out)."""
    return {session_id: _as_row(session_id, entry) for session_id, entry in complete_sessions(kept).items()}


def _as_row(session_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A kept session in the fields a stored row carries its anchor's session in."""
    return {"session_id": session_id, "anchor_keys": entry["keys"], "anchor_ratios": entry["ratios"],
            "anchor_precision": entry["precision"], "anchor_shas": entry["shas"],
            "anchor_tolerance": entry.get("tolerance", DEFAULT_TOLERANCE), "anchor_retry": entry.get("retry", False),
            "anchor_ratios_at": entry.get("ratios_at", {}), "subnets": entry.get("subnets", {}),
            "subnets_at": entry.get("subnets_at", {}),
            "env": {"session_end": entry["ended"], "session_reference_ms": entry.get("reference_ms")}}
