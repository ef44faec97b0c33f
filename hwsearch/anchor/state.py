"""What a table of anchor sessions says: the host's undisturbed state, each session's offset, and a row's correction.

A table holds one session per row and one anchor subnet per column, each
cell the subnet's ratio there (NaN where unusable).  Everything here is a
pure function of such tables and of a row's figures, so the run
(:mod:`hwsearch.anchor.run`) and a later reader of its rows
(:mod:`hwsearch.anchor.norm`) judge and correct by the same rules.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Sessions a run needs before its anchor's median can tell a shifted session from the rest.
MIN_SESSIONS = 3
#: How far a session's offset may sit from 1 and the session still count as unshifted.
DEFAULT_TOLERANCE = 0.05
#: A two-sided 95% interval's half-width in standard deviations (:func:`latency_half_width`).
Z95 = 1.959964


def prevailing_state(table: np.ndarray, tolerance: float, references: np.ndarray | None = None) -> np.ndarray:
    """The rows (sessions x subnets ratios, NaN where unusable) of the host's undisturbed state.

    See :func:`undisturbed_sessions`, which says which rows these are.
    """
    return table[undisturbed_sessions(table, tolerance, references)]


def undisturbed_sessions(table: np.ndarray, tolerance: float, references: np.ndarray | None = None) -> np.ndarray:
    """Which rows (sessions x subnets ratios, NaN where unusable) make the host's undisturbed state (a mask).

    Two sessions are alike when the median over subnets of one's ratios
    over the other's is within ``tolerance`` of 1.  The state is at first
    every session alike to the session with the most such neighbours (ties
    go to the latest): a median over all sessions follows a state that
    filled a large minority of them.  In one ``bench/contention.py`` run
    (2026-12-01), three concurrent jobs spent all their 9 sessions at
    1.26-1.61x, which put the medians between the states, and the solo run
    right after read 0.89-0.91 in its calm sessions, so it was found
    shifted and, corrected, read 10% low.  Replaying the verdicts over the
    41 kept sessions of each of six such runs (each session against the 20
    latest up to it), the largest state found 3 sessions of that run calm
    that all sessions' medians had found shifted, and 0-2 in the other
    runs; 0-1 went the other way per run, and the offsets of sessions both
    found calm moved by at most 2.1%.

    But the largest state is not always the right one; see
    :func:`_undisturbed` for when a faster state with fewer sessions wins
    (``references``: each session's reference time, NaN where unknown).
    When the host moves to a new state for good, it becomes the prevailing
    one once the old state's sessions have left the recent ones.
    """
    with np.errstate(all="ignore"):
        alike = np.abs(nanmedian(table[:, None, :] / table[None, :, :], axis=2) - 1.0) <= tolerance
    neighbours = alike.sum(axis=1)
    centre = max(range(len(table)), key=lambda i: (neighbours[i], i))
    if references is not None:
        centre = _undisturbed(table, alike, centre, references, tolerance)
    return alike[centre] if alike[centre].any() else np.ones(len(table), dtype=bool)


def _undisturbed(table: np.ndarray, alike: np.ndarray, centre: int, references: np.ndarray,
                 tolerance: float) -> int:
    """The centre of the fastest state that holds enough sessions and was measured with an unslowed reference.

    Interference only slows a model down, so of two states of the host the
    one where the subnets run faster by the same ruler is the undisturbed
    one.  On the demo's 1-thread device the host spent stretches of minutes
    at 1.5-1.7x: in one ``bench/contention.py`` run (2026-12-01), five of a
    solo run's sessions in a row, then the first sessions of three
    concurrent jobs, outnumbered the calm sessions in each job's 20 recent
    ones, so the calm sessions of those jobs read 0.62-0.65 and every row
    was corrected 1.5-1.6x slow (56-61% from the solo runs, none within
    ±10%).  So a faster state takes over when it holds at least
    :data:`MIN_SESSIONS` sessions and half as many as the largest, and its
    sessions' reference ran no slower (within ``tolerance``) than the
    largest state's: a state faster only because its reference slowed
    (the 2-thread device's sessions at 0.81-0.88) is a disturbed one, and
    so is one whose reference times are unknown.  It must also be another
    state, no session alike to both: one state whose sessions spread wider
    than the tolerance is not split at its faster edge (on a 40-session
    recording of the 2-thread device, that would have taken 16 sessions at
    the edge of a state of 31 and moved the medians by 2%).
    """
    neighbours = alike.sum(axis=1)
    while True:
        with np.errstate(all="ignore"):
            levels = nanmedian(table / table[centre], axis=1)
        faster = [i for i in range(len(table))
                  if levels[i] < 1.0 - tolerance and not np.any(alike[i] & alike[centre])]
        if not faster:
            return centre
        candidate = max(faster, key=lambda i: (neighbours[i], i))
        if neighbours[candidate] < max(MIN_SESSIONS, neighbours[centre] / 2):
            return centre
        here, there = nanmedian(references[alike[centre]], 0), nanmedian(references[alike[candidate]], 0)
        if not (np.isfinite(here) and np.isfinite(there)) or there > here * (1.0 + tolerance):
            return centre
        centre = candidate


def idiosyncratic_spread(state: np.ndarray) -> float | None:
    """The relative SD of one subnet's ratio between sessions of one state, the session's common move divided out.

    ``state`` holds sessions x subnets ratios (NaN unusable); sessions with
    fewer than two usable subnets are left out.  Each subnet's log offset
    (ratio over its median) is held to the mean of the session's other
    subnets' offsets; the robust SD of those differences (1.4826 MAD) is
    one subnet's spread inflated by the others' mean, which is divided out
    (``sqrt(1 + 1/(k-1))`` for k subnets).  A move that all subnets share
    is the offset's, not the spread's.  ``None`` with fewer than
    :data:`MIN_SESSIONS` such sessions.
    """
    with np.errstate(all="ignore"):
        offsets = np.log(state / nanmedian(state, axis=0))
    usable = np.isfinite(offsets)
    sessions = usable.sum(axis=1) >= 2
    if sessions.sum() < MIN_SESSIONS:
        return None
    offsets, usable = offsets[sessions], usable[sessions]
    differences, inflation = [], []
    for i in range(offsets.shape[1]):
        others = np.delete(offsets, i, axis=1)
        counts = np.isfinite(others).sum(axis=1)
        keep = usable[:, i] & (counts >= 1)
        differences.append(offsets[keep, i] - np.nanmean(others[keep], axis=1))
        inflation.append(1.0 + 1.0 / counts[keep])
    differences_all = np.concatenate(differences)
    mad = np.median(np.abs(differences_all - np.median(differences_all)))
    return float(1.4826 * mad / math.sqrt(float(np.median(np.concatenate(inflation)))))


def session_offset(ratios: Sequence[float | None], medians: np.ndarray) -> float | None:
    """A session's offset: the median over the anchor's subnets of each one's ratio there over its median.

    ``None`` (unusable ratios) and NaN are left out; ``None`` when no subnet is left.
    """
    with np.errstate(all="ignore"):
        offsets = np.array([nan_if_none(r) for r in ratios], dtype=float) / medians
    offsets = offsets[np.isfinite(offsets)]
    return float(np.median(offsets)) if offsets.size else None


def own_precision_offset(precision: Any, anchor_precision: str | None, ratios: Sequence[float | None] | None,
                         medians: np.ndarray | None) -> tuple[float | None, str | None]:
    """``(offset, precision it was taken at)`` of the anchor's files at a row's precision, if that is not the anchor's.

    ``(None, anchor_precision)`` where the row is corrected by the
    anchor's own (first precision's) offset instead: the row is at that
    precision, or its files gave no ratio there, or have no medians yet.
    Both the run (:meth:`Anchor.offset_at`) and a reader of the rows
    (:func:`in_current_norm`) take this rule.
    """
    if precision == anchor_precision or ratios is None or medians is None:
        return None, anchor_precision
    own = session_offset(ratios, medians)
    return (own, str(precision)) if own is not None else (None, anchor_precision)


def medians_at(precision: str, sessions: Iterable[Mapping[str, Sequence[float | None]]]) -> np.ndarray | None:
    """Each anchor subnet's median ratio at ``precision`` over the sessions that measured it there.

    ``sessions`` are the undisturbed state's, each as its ratios per
    precision.  ``None`` when fewer than :data:`MIN_SESSIONS` of them (or,
    in a smaller state, not all of them) have ratios at ``precision``: the
    state's first-precision medians stand on all its sessions, and these
    should not stand on a few (a state of sessions from runs that measured
    the first precision alone).
    """
    sessions = list(sessions)
    rows = [[nan_if_none(r) for r in at[precision]] for at in sessions if at.get(precision)]
    if not rows or len(rows) < min(MIN_SESSIONS, len(sessions)) or len({len(row) for row in rows}) != 1:
        return None
    return nanmedian(np.array(rows, dtype=float), axis=0)


def judged_stable(session_stable: bool, unstable_reasons: Sequence[str] | None, offset: float | None,
                  tolerance: float) -> tuple[bool, bool]:
    """A row's ``stable`` once its session has the anchor's verdict, and whether the verdict overruled its slowdown.

    The row keeps its session's own verdict (``session_stable``) unless
    only its slowed reference made it unstable and the session was judged
    (:func:`overrules_slowdown`); either way it is unstable when its
    session is shifted.  The pipeline judges a run's rows this way and
    :func:`in_current_norm` judges them again against a later norm.
    """
    overruled = not session_stable and overrules_slowdown(unstable_reasons, offset)
    return (session_stable or overruled) and not is_shifted(offset, tolerance), overruled


def overrules_slowdown(unstable_reasons: Sequence[str] | None, offset: float | None) -> bool:
    """Whether a row unstable only by its slowed reference counts as stable: its session has a verdict.

    The slowed-reference rule (``protocol.max_reference_slowdown``) stands in
    for a verdict on the whole session; once the anchor has judged the
    session, and the pipeline has divided its rows by the offset, the rule
    has nothing left to add.  In four runs of ``bench/contention.py
    --subnets 40 --solo-runs 5`` (2026-12-01), such rows, corrected, were
    1.08% and 1.46% (median) from the other solo runs on the 1-thread device
    (130 and 89 rows; 100% and 96.6% within ±10%) against 1.48% and 1.72%
    for the stable rows of the same runs; on the 2-thread device 1.36-3.54%
    (4-114 rows; 75-100%) against 1.56-1.91%.  Rows whose CI or a busy
    neighbour made them unstable are not overruled.
    """
    return offset is not None and list(unstable_reasons or ()) == ["reference_slowdown"]


def is_shifted(offset: float | None, tolerance: float) -> bool:
    """Whether a session's offset sits further from 1 than the tolerance (no verdict: not shifted)."""
    return offset is not None and abs(offset - 1.0) > tolerance


def latency_half_width(ratio_ci: float, spread: float | None, subnets: int) -> float | None:
    """A corrected row's relative 95% half-width (``latency_ci``): its session's CI and the spread between sessions.

    The row's error against its subnet's long-run median has two parts
    beyond the session's own noise (``ratio_ci``): the subnet's own
    movement (``spread``, :func:`idiosyncratic_spread`) and the error of
    the offset it was divided by, a median of the anchor's ``subnets``
    (variance about π/2k of one subnet's for k of them).  ``None`` while
    the spread is unknown or the session's CI is not finite.
    """
    if spread is None or not math.isfinite(ratio_ci):
        return None
    return math.hypot(ratio_ci, Z95 * spread * math.sqrt(1.0 + math.pi / (2 * subnets)))


def correct_row(row: dict[str, Any], offset: float, lean: float = 0.0) -> None:
    """Divide the row's ratio and latency by its session's anchor offset, keeping what the session measured.

    A session's ratios move together when the host shifts under the whole
    session, so the anchor's offset is the shift of every subnet there, not
    only a verdict.  On ``bench/anchor_verdicts.py``'s recordings (40
    sessions of 24 demo subnets per device, 2026-12-01), the 21 subnets
    outside the three smallest (the anchor then) read within ±10% of their
    medians in 93.1% of the rows of the 1-thread device's calm sessions
    (offset within 5%) and 94.7% once corrected; on the 2-thread device
    94.1% and 94.9%, the median deviation 1.69% against 1.53%; over all
    sessions, shifted ones included, 81.9% against 91.2% and 73.6% against
    90.5%.  ``uncorrected_ratio`` and ``uncorrected_latency_ms`` keep the
    session's own figures, so a later offset replaces an earlier one
    rather than compounding it (:func:`in_current_norm`).

    ``lean`` is how much more than the offset the row's subnet shifted
    (:mod:`hwsearch.shift_slope`): the row is divided by ``offset ** (1 +
    lean)``, and ``row_offset`` records that divisor.
    """
    ratio = row.setdefault("uncorrected_ratio", row["ratio"])
    latency_ms = row.setdefault("uncorrected_latency_ms", row["latency_ms"])
    divisor = offset ** (1.0 + lean)
    row.update(session_offset=offset, row_offset=divisor, ratio=ratio / divisor, latency_ms=latency_ms / divisor)


def nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` without the warning for an all-NaN slice (NaN is the answer there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def finite_or_none(value: float) -> float | None:
    """NaN (unusable, unknown) as JSON's ``null``; :func:`nan_if_none` reads it back."""
    return value if math.isfinite(value) else None


def nan_if_none(value: Any) -> float:
    """JSON's ``null`` (unusable, unknown) as NaN, the way the tables hold it."""
    return math.nan if value is None else float(value)
