"""Rows read now: on the device's latest ruler, each row's session judged and corrected again against its
anchor's norm of the present."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from hwsearch.anchor.host import HOST_SESSIONS, host_records
from hwsearch.anchor.state import (DEFAULT_TOLERANCE, MIN_SESSIONS, correct_row, idiosyncratic_spread, judged_stable,
                                   latency_half_width, medians_at, nan_if_none, nanmedian, own_precision_offset,
                                   prevailing_state, session_offset, undisturbed_sessions)
from hwsearch.anchor.stored import RECENT_SESSIONS, anchor_of, history, kept_rows, row_ratios_at
from hwsearch.checks import is_real
from hwsearch.shift_slope import Member, ShiftSlope, fit_shift_slope, size_against

log = logging.getLogger(__name__)


class Norm(NamedTuple):
    """An anchor's medians over the host's current undisturbed state, its spread between sessions, and its slope.

    ``slope`` is how a session's shift grows with a subnet's size about the
    anchor's (:mod:`hwsearch.shift_slope`; 0 while the data cannot say),
    ``anchor_log_macs`` the anchor subnets' mean log MACs (``None``
    unknown: rows are then corrected by the session's offset alone).
    ``medians_at`` holds the anchor's medians at its other precisions,
    over the same undisturbed sessions, where enough of them measured there,
    and ``slopes_at`` the slope at each of those precisions, fitted on the
    sessions' offsets of the anchor's files there.
    """

    medians: np.ndarray
    spread: float | None
    tolerance: float
    slope: ShiftSlope = ShiftSlope(0.0, 0)
    anchor_log_macs: float | None = None
    medians_at: Mapping[str, np.ndarray] = {}
    slopes_at: Mapping[str, ShiftSlope] = {}


#: Per precision, per session id, the subnets it measured there: ``{key: (uncorrected ratio, MACs)}``.
Members = Mapping[str, Mapping[str, Mapping[str, Member]]]


def in_current_norm(rows: Mapping[str, Mapping[str, Any]], device_key: str,
                    network_id: str) -> dict[str, dict[str, Any]]:
    """The device's stored rows of the network, each judged and corrected against its anchor's norm of now.

    A run corrects its rows by offsets against the anchor's medians over
    the undisturbed state as the run saw it (:meth:`Anchor.offset`), and
    that state moves: within its tolerance from one run to the next, or to
    another state when the host's recent sessions change their majority.
    Rows of different runs, each right against its own norm, then disagree
    by the norms' difference.  In one ``bench/contention.py`` run
    (2026-12-01) the anchor's medians moved by about 5% between the first
    solo runs and the later ones, and the 2-thread device's rows beside the
    1-thread device read 4.5% (median) from the solo runs after the
    correction against 2.5% before it; in another, the norm switched states
    mid-comparison and a whole cell read 44% off.

    Every row keeps its session's ``anchor_ratios`` and what the session
    measured, so its offset can be taken again against one norm: the
    anchor's medians over the undisturbed state of its :data:`RECENT_SESSIONS`
    latest sessions (not retries) among ``rows`` and the host's kept ones
    (:class:`HostRecord`), which is what a run starting now would judge by.
    Read this way, the kept rows of seven earlier comparisons (runs 12-18
    of docs/measurement.md) came closer to the solo runs: the 1-thread
    device's contended rows from 10.6% (median) to 3.4% in the hour the
    norm switched, the 2-thread device's from 4.8% to 0.8% in the calmest,
    and by -0.8 to +0.05 points in the three where the norm held still.  In
    the next two comparisons, run live (runs 19-20), the contended rows read
    1.3-2.4% from the solo runs, against 1.6-19.1% as their runs stored them.

    A re-corrected row gets the new ``session_offset``, ``ratio``,
    ``latency_ms``, ``session_spread`` and ``latency_ci``; a row that kept
    its session's own verdict (``session_stable``) is judged again too, so
    its ``stable`` says whether its session is shifted against the norm of
    now.  A row at its anchor's precision is divided by its session's
    offset raised to ``1 + slope × size`` (:mod:`hwsearch.shift_slope`;
    ``row_offset`` and ``offset_slope`` say by what), the slope fitted from
    the subnets this device measured in more than one session.  A row at
    another precision is divided by the offset of the anchor's files at
    its precision (``anchor_ratios_at``) against their medians over the
    same undisturbed sessions, where at least :data:`MIN_SESSIONS` of them
    (all of a smaller state's) measured those files, leaned by the slope
    fitted at that precision the same way, and by the anchor's own offset
    otherwise, unleaned (``offset_precision`` says which).  A row whose
    anchor has too few sessions, or that names no anchor, is returned as
    stored; so is one whose latency had to come from its raw median
    (``latency_source``).  Every row is first put on the device's latest
    ruler (:func:`on_latest_ruler`).  The store is not changed.
    """
    rows = on_latest_ruler(rows)
    kept = [row for data in host_records(device_key) if data["network_id"] == network_id
            for row in kept_rows(data).values()]
    norms = current_norms([*rows.values(), *kept], _members(rows, kept))
    out = {}
    for key, row in rows.items():
        norm = norms.get(anchor_of(row))
        out[key] = dict(row) if norm is None or row.get("latency_source") == "median_ms" else recorrected(row, norm)
    return out


def _is_numbers(value: Any) -> bool:
    """A list of numbers and nulls (ratios a session could not take)."""
    return isinstance(value, list) and all(v is None or is_real(v) for v in value)


def _is_ratios_at(value: Any) -> bool:
    """Nothing, or per precision a list of numbers and nulls (or nothing)."""
    return not value or isinstance(value, Mapping) and all(not v or _is_numbers(v) for v in value.values())


#: ``(field, check of a value that is there, what it must be)``: a field of ``env`` is ``env.<name>``.
_Check = tuple[str, Callable[[Any], bool], str]
#: What :func:`in_current_norm` reads of every row.
_EVERY_ROW: tuple[_Check, ...] = (
    ("env.host_fingerprint", lambda v: v is None or isinstance(v, str), "text"),
    ("uncorrected_latency_ms", is_real, "a number"),
    ("ratio", lambda v: v is None or is_real(v), "a number"),
)
#: What it reads of a row that names an anchor (:func:`~hwsearch.anchor.stored.anchor_of`).
_ANCHORED_ROW: tuple[_Check, ...] = (
    ("anchor_keys", lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v), "a list of arch keys"),
    ("anchor_ratios", _is_numbers, "a list of numbers"),
    ("anchor_precision", lambda v: v is None or isinstance(v, str), "text"),
    ("anchor_shas", lambda v: not v or isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of text"),
    ("anchor_ratios_at", _is_ratios_at, "lists of numbers by precision"),
    ("anchor_tolerance", is_real, "a number"),
    ("uncorrected_ratio", is_real, "a number"),
    ("ratio_ci", lambda v: v is None or is_real(v), "a number"),
    ("macs", lambda v: not v or is_real(v) and v > 0, "a positive number"),
    ("env.session_end", is_real, "a number"),
    ("env.session_reference_ms", lambda v: v is None or is_real(v), "a number"),
    ("env.unstable_reasons", lambda v: v is None or isinstance(v, list), "a list"),
)


def readable_rows(rows: Mapping[str, Any], device: str) -> dict[str, dict[str, Any]]:
    """The stored latency rows (``Store.get_latencies``) this module and a job can read; the others left out, logged.

    Damaged: not an object, no numeric ``latency_ms`` (a ``median_ms`` that is
    no number), an ``env`` that is there but not an object, or what
    :func:`norm_problem` names.  Rows
    this code writes are never so; a hand-edited or damaged one ended every
    job on the device, and ``hwsearch report``, with ``TypeError: unhashable
    type: 'list'`` or the like.  A job measures a left-out subnet again.
    """
    damaged = {key: problem for key, row in rows.items() if (problem := _row_damage(row)) is not None}
    for key, problem in damaged.items():
        if (device, key, problem) not in _SAID_DAMAGED:  # a job reads its rows several times a round
            _SAID_DAMAGED.add((device, key, problem))
            log.warning("latency row %s of device %s is damaged (%s): it is left out and measured again",
                        key, device, problem)
    return {key: row for key, row in rows.items() if key not in damaged}


#: The damaged rows :func:`readable_rows` has warned of in this process: each is said once.
_SAID_DAMAGED: set[tuple[str, str, str]] = set()


def _row_damage(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not an object"
    if not is_real(row.get("latency_ms")):
        return "latency_ms is no number"
    if "median_ms" in row and not is_real(row["median_ms"]):
        return "median_ms is no number"
    if "median_ms" not in row and not np.isfinite(row["latency_ms"]):
        return "no latency_ms and no median_ms to stand in"  # what a job reads for a subnet not measured
    if not isinstance(row.get("env", {}), dict):  # a row written without one (a simulated measurer's) has none
        return "env is not an object"
    return norm_problem(row)


def norm_problem(row: Mapping[str, Any]) -> str | None:
    """Why :func:`in_current_norm` cannot read a stored row, or None: the first field it reads that is not of its kind.

    For a row whose ``env`` is an object (:func:`predictors.dataset.screen_latencies`
    checks that, and its ratio and latency); the others are what this module
    reads.  A hand-edited or damaged row (``env.host_fingerprint`` a list,
    ``anchor_ratios`` text) ended ``hwsearch train`` in a traceback; it is
    now set aside by reason like the screen's other rows.  A row that names
    an anchor needs its ``session_id`` too.
    """
    keys, ratios = row.get("anchor_keys"), row.get("anchor_ratios")
    sized = all(isinstance(value, list) or not value for value in (keys, ratios))
    # anchor_of's test, without its reading of the other fields (anchor_shas of 5 raised in it)
    anchored = not sized or bool(keys and ratios and len(keys) == len(ratios))
    checks = _EVERY_ROW + (_ANCHORED_ROW if anchored else ())
    for field, fits, kind in checks:
        where, _, name = field.rpartition(".")
        holder = row.get(where, {}) if where else row
        if not isinstance(holder, Mapping):
            return f"with {where} not an object"
        if name in holder and not fits(holder[name]):
            return f"with {field} not {kind}"
    if anchored and "session_id" not in row:
        return "with an anchor but no session_id"
    return None


def on_latest_ruler(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The rows with every calibrated latency scaled to the ruler of the host's latest session.

    A row's ``latency_ms`` is its ratio times the ruler its session read
    (``env.reference_ms``), and the ruler changes: ``hwsearch devices
    calibrate`` or ``reset`` take a new one, and a provisional ruler set on a
    busy host gives way to the first quiet session's.  Rows measured before
    and after then sat on two scales, one run's rows included, and
    predictors learned the step as noise.  The ratios are what was measured,
    so a row is scaled by the latest ruler over its own; it keeps the one
    it was measured on as ``env.measured_reference_ms``.  Rows of different
    hosts keep their own host's latest ruler; a raw median
    (``latency_source``) has no ruler and is left as it is, and a row whose
    session end is no finite number sets no ruler (agents' rows are checked
    for plausible rulers and times before they are stored, :mod:`devices.client`).
    """
    latest: dict[Any, tuple[float, float, Any]] = {}
    for row in rows.values():
        env = row.get("env", {})
        ruler, ended = _ruler_of(row), _finite(env.get("session_end"))
        host = env.get("host_fingerprint")
        if ruler is not None and ended is not None and (host not in latest or ended >= latest[host][0]):
            latest[host] = (ended, ruler, env.get("reference_source"))
    out: dict[str, Mapping[str, Any]] = {}
    for key, row in rows.items():
        ruler, env = _ruler_of(row), row.get("env", {})
        _, now, source = latest.get(env.get("host_fingerprint"), (0.0, ruler, None))
        if ruler is None or ruler == now:
            out[key] = row
            continue
        scaled = dict(row, env={**env, "reference_ms": now, "reference_source": source,
                                "measured_reference_ms": ruler})
        for field in ("latency_ms", "uncorrected_latency_ms"):
            if field in row:
                scaled[field] = float(row[field]) * now / ruler
        out[key] = scaled
    return out


def _ruler_of(row: Mapping[str, Any]) -> float | None:
    """The ruler a calibrated row was scaled by, or None (a raw median, or no usable ruler recorded)."""
    if row.get("latency_source") == "median_ms":
        return None
    ruler = _finite(row.get("env", {}).get("reference_ms"))
    return ruler if ruler is not None and ruler > 0 else None


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (a string, NaN or nothing: a stored row names no such session)."""
    if not is_real(value):
        return None
    return float(value) if np.isfinite(value) else None


def current_norms(rows: Iterable[Mapping[str, Any]], members: Members | None = None) -> dict[tuple[Any, ...], Norm]:
    """Per anchor (its subnets, precision and files), the norm its :data:`RECENT_SESSIONS` latest sessions give.

    ``rows`` are stored or kept rows; each session counts once, retries not
    at all (as in :func:`history`).  An anchor with fewer than
    :data:`MIN_SESSIONS` sessions has no norm.  The state is found with the
    tolerance of the anchor's latest session (``anchor_tolerance``).
    ``members`` (per precision and session id, the subnets it measured
    there) fit each norm's slopes over the anchor's :data:`HOST_SESSIONS`
    latest sessions, retries included: a retry measures the same subnets
    again at another offset, which is what a slope is fitted from.  The
    slope at the anchor's precision takes the sessions' offsets, one at
    another precision the offsets of the anchor's files there.
    """
    members = members or {}
    sessions: dict[tuple[Any, ...], dict[str, _Seen]] = {}
    for row in rows:
        anchor = anchor_of(row)
        if anchor is None:
            continue
        env, session_id = row.get("env", {}), str(row["session_id"])
        earlier = sessions.setdefault(anchor, {}).get(session_id)
        sessions[anchor][session_id] = _Seen(
            float(env.get("session_end", 0.0)), tuple(nan_if_none(r) for r in row["anchor_ratios"]),
            nan_if_none(env.get("session_reference_ms")), float(row.get("anchor_tolerance", DEFAULT_TOLERANCE)),
            bool(row.get("anchor_retry")), {**(earlier.ratios_at if earlier else {}), **row_ratios_at(row)})
    norms = {}
    for anchor, seen in sessions.items():
        latest = sorted((s for s in seen.values() if not s.retry), key=lambda session: session.ended)[-RECENT_SESSIONS:]
        if len(latest) < MIN_SESSIONS:
            continue
        table = np.array([session.ratios for session in latest], dtype=float)
        references = np.array([session.reference_ms for session in latest], dtype=float)
        tolerance = latest[-1].tolerance
        undisturbed = undisturbed_sessions(table, tolerance, references)
        state = table[undisturbed]
        medians = nanmedian(state, axis=0)
        in_state = [session.ratios_at for session, kept in zip(latest, undisturbed) if kept]
        other_medians = {precision: found for precision in sorted({p for at in in_state for p in at})
                         if (found := medians_at(precision, in_state)) is not None}
        at_anchor = members.get(str(anchor[1]), {})
        anchor_log_macs = _anchor_log_macs(anchor[0], at_anchor)
        slope, slopes_at = ShiftSlope(0.0, 0), {}
        if anchor_log_macs is not None:
            recent = {s: seen[s] for s in sorted(seen, key=lambda session_id: seen[session_id].ended)[-HOST_SESSIONS:]}
            slope = fit_shift_slope(((nan_if_none(session_offset(session.ratios, medians)), at_anchor.get(s, {}))
                                     for s, session in recent.items()), anchor_log_macs)
            slopes_at = {precision: _slope_at(precision, anchor[1], recent, found, members.get(precision, {}),
                                              anchor_log_macs)
                         for precision, found in other_medians.items()}
        norms[anchor] = Norm(medians, idiosyncratic_spread(state), tolerance, slope, anchor_log_macs, other_medians,
                             slopes_at)
    return norms


def _slope_at(precision: str, anchor_precision: str | None, sessions: Mapping[str, _Seen], medians: np.ndarray,
              members: Mapping[str, Mapping[str, Member]], anchor_log_macs: float) -> ShiftSlope:
    """The slope at a precision other than the anchor's, from each session's offset of the anchor's files there.

    A row at that precision is divided by that offset (:func:`own_precision_offset`),
    so its lean is fitted against it; a session whose files there gave no
    offset adds nothing.
    """
    def offset(session: _Seen) -> float:
        return nan_if_none(own_precision_offset(precision, anchor_precision, session.ratios_at.get(precision),
                                                medians)[0])

    return fit_shift_slope(((offset(session), members.get(s, {})) for s, session in sessions.items()),
                           anchor_log_macs)


class _Seen(NamedTuple):
    """One anchor session as the norm reads it."""

    ended: float
    ratios: tuple[float, ...]
    reference_ms: float
    tolerance: float
    retry: bool
    ratios_at: dict[str, list[float | None]]


def recorrected(row: Mapping[str, Any], norm: Norm) -> dict[str, Any]:
    """A copy of the row corrected (and, where it kept its own verdict, judged) against ``norm``."""
    new = dict(row)
    offset = session_offset(row["anchor_ratios"], norm.medians)
    if offset is None:
        return new
    own_offset, offset_precision = _own_offset(row, norm)
    slope, lean = _row_lean(row, norm, own_offset is not None)
    correct_row(new, offset if own_offset is None else own_offset, lean)
    new.update(offset_slope=slope, offset_precision=offset_precision)
    new.update(session_spread=norm.spread,
               latency_ci=latency_half_width(nan_if_none(row.get("ratio_ci")), norm.spread, len(norm.medians)))
    if "session_stable" in row:
        new["stable"], overruled = judged_stable(row["session_stable"], row.get("env", {}).get("unstable_reasons"),
                                                 offset, norm.tolerance)
        if overruled:
            new["slowdown_overruled_by_anchor"] = True
        else:
            new.pop("slowdown_overruled_by_anchor", None)
    return new


def _own_offset(row: Mapping[str, Any], norm: Norm) -> tuple[float | None, str | None]:
    """The offset of the anchor's files at the row's precision (:func:`own_precision_offset`), against the norm."""
    precision = row.get("precision")
    return own_precision_offset(precision, row.get("anchor_precision"), row_ratios_at(row).get(str(precision)),
                                norm.medians_at.get(str(precision)))


def _row_lean(row: Mapping[str, Any], norm: Norm, own_offset: bool) -> tuple[float, float]:
    """``(slope, lean)``: the slope the row is leaned by, and that slope times the subnet's size.

    A row at its anchor's precision takes the norm's slope; one at another
    precision divided by its own files' offset (``own_offset``) the slope
    fitted there.  ``(0, 0)`` for a row of another precision corrected by
    the anchor's offset (no slope was fitted against that offset for it)
    or whose size is unknown.
    """
    if norm.anchor_log_macs is None or not row.get("macs"):
        return 0.0, 0.0
    if row.get("precision") == row.get("anchor_precision"):
        slope = norm.slope.slope
    elif own_offset:
        slope = norm.slopes_at.get(str(row.get("precision")), ShiftSlope(0.0, 0)).slope
    else:
        return 0.0, 0.0
    return slope, slope * size_against(float(row["macs"]), norm.anchor_log_macs)


def _members(rows: Mapping[str, Mapping[str, Any]], kept: Iterable[Mapping[str, Any]]) -> Members:
    """Per precision and session id, the subnets it measured there: ``{key: (uncorrected ratio, MACs)}``.

    From stored rows (keyed by subnet, at their own precision) and the
    host's kept sessions (their ``subnets`` at the anchor's precision,
    ``subnets_at`` at the others).
    """
    members: dict[str, dict[str, dict[str, Member]]] = {}

    def add(precision: Any, session_id: Any, key: str, ratio: Any, macs: Any) -> None:
        if macs:
            members.setdefault(str(precision), {}).setdefault(str(session_id), {})[key] = (nan_if_none(ratio),
                                                                                           float(macs))

    for key, row in rows.items():
        if anchor_of(row) is not None and row.get("precision") is not None:
            add(row["precision"], row["session_id"], key, row.get("uncorrected_ratio", row.get("ratio")),
                row.get("macs"))
    for row in kept:
        at = [(row["anchor_precision"], row.get("subnets", {})), *row.get("subnets_at", {}).items()]
        for precision, subnets in at:
            for key, (ratio, macs) in subnets.items():
                add(precision, row["session_id"], key, ratio, macs)
    return members


def _anchor_log_macs(keys: Sequence[str], members: Mapping[str, Mapping[str, Member]]) -> float | None:
    """The anchor subnets' mean log MACs, when every one of them is among ``members``."""
    macs = {}
    for measured in members.values():
        macs.update({key: measured[key][1] for key in keys if key in measured})
        if len(macs) == len(keys):
            return float(np.mean(np.log(list(macs.values()))))
    return None


def host_spreads(device_key: str) -> list[dict[str, Any]]:
    """The spread between sessions in each of the host's kept anchor records of the device (``devices show``).

    One entry per network and precision the device measured with an anchor
    on this host: the sessions considered (the most-seen anchor's recent
    ones, as a run would start from), how many of them make the undisturbed
    state, and :func:`idiosyncratic_spread` over those (``None`` while
    unknown); and the slope rows read now are leaned by
    (:mod:`hwsearch.shift_slope`), with the pairs of sessions it stands on,
    at the anchor's precision and (``offset_slopes_at``) at each other one.
    """
    spreads = []
    for data in host_records(device_key):
        rows = kept_rows(data)
        norms = current_norms(rows.values(), _members({}, rows.values()))
        for precision in sorted({row["anchor_precision"] for row in rows.values()}):
            found = history(rows, precision)
            if found is None:
                continue
            table = np.array(list(found.ratios.values()), dtype=float)
            references = np.array([found.references[s] for s in found.ratios], dtype=float)
            state = prevailing_state(table, DEFAULT_TOLERANCE, references)
            norm = next((norm for anchor, norm in norms.items() if anchor[:2] == (found.keys, precision)), None)
            slope = ShiftSlope(0.0, 0) if norm is None else norm.slope
            slopes_at = {} if norm is None else {other: {"offset_slope": found_at.slope, "slope_pairs": found_at.pairs}
                                                 for other, found_at in sorted(norm.slopes_at.items())}
            spreads.append({"network_id": data["network_id"], "precision": precision,
                            "anchor_subnets": len(found.keys), "sessions": len(table),
                            "undisturbed_sessions": len(state), "session_spread": idiosyncratic_spread(state),
                            "offset_slope": slope.slope, "slope_pairs": slope.pairs, "offset_slopes_at": slopes_at})
    return spreads
