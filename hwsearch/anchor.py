"""A few subnets measured in every session of a profiling run: the witnesses of a session-wide shift.

A session's ratios cancel the host's speed within the session, and the
reference's own time reveals some slow states (:mod:`devices.calibration`),
but not all.  On the demo's 1-thread ``thread_cpu`` device, whole sessions
shifted with the reference unmoved: twelve sessions of the same 8 demo
subnets put the subnets' own CPU times at 0.89-1.19x their medians while the
reference stayed within ±1.6%, and three of twelve further sessions
reached 1.47-1.49x.  Within a session the subnets moved together (two sets of
onnxruntime sessions of the same models, built apart and measured
interleaved, agreed within 1.5%), and two small synthetic models measured
beside them did not move at all (within ±2.4% while the subnets' session
offsets ranged 0.91-1.05): only subnets of the same family witness it.

So a run measures a few of its subnets, the anchor, in every session, and
once it has at least :data:`MIN_SESSIONS` sessions it takes each session's
offset: the median over the anchor's subnets of each one's ratio there
(its first precision's file's) over its median over the sessions of the
host's undisturbed state (:func:`prevailing_state`).  A session whose
offset is further from 1 than the tolerance shifted, and its rows are not
stable (the pipeline measures it again or relabels it;
fronts re-measure unstable points before they may enter).  Since the
subnets of a session move together, the pipeline also divides every row of
a judged session by its offset (:func:`correct_row`).

Why several subnets: one subnet's ratio also moves on its own.  In six
recordings of 6-14 sessions of 8-24 demo subnets on both demo devices
(2026-12-01), a single anchor flagged 0-8.3% of the sessions whose other
subnets had not moved (by more than 5%, their median) and missed 0-29% of
those that had, averaged over every choice of anchor; the median of
:data:`ANCHOR_SUBNETS` = 3 flagged 0-3.2% and missed 0-26% (one recording
of 8 subnets missed 6% where one anchor missed none); ``bench/anchor_verdicts.py``
records and scores such sessions (docs/measurement.md).  In one 14-session
recording the run's own anchor, its largest subnet, ranged 0.92-1.06 while
the session medians of the 16 others stayed within 0.98-1.02.

A run alone often has too few sessions for a verdict: a refinement round
measures a few candidates in one session, and a run's first two sessions
end before a third exists.  But the anchor's earlier sessions on the same
device (whose identity covers the host) are in the store: every row keeps
its session's ``anchor_ratios``.  So the next run of the same network on
the device takes the same anchor subnets, starts from their recent sessions
(:func:`history`, at most :data:`RECENT_SESSIONS`), and judges each of its
sessions as soon as it ends, the first one included.

A run at several precisions measures each anchor subnet's file at every
precision, and an INT8 file does not shift by its FP32 file's offset.  In
``bench/anchor_verdicts.py --subnets 10 --sessions 24 --int8 --load-every 3``
(2026-12-02), a session's INT8 offset over its FP32 offset ranged
0.92-1.06 on the 1-thread device and 0.54-1.10 on the 2-thread device,
whose FP32 files ran 1.70-1.87x their medians beside a CPU-bound process
while its INT8 files ran 0.92-1.25x.  Divided by the FP32 offset, 87.5% and 60.1% of the
other subnets' INT8 ratios came within ±10% of their medians (median
deviation 3.95% and 7.31%); divided by the INT8 files' own offset, 95.8%
and 94.6% (2.16% and 2.60%).  So a row is divided by the offset of the
anchor's files at its own precision (:meth:`Anchor.offset_at`), taken
against their medians over the same undisturbed sessions; the verdict
(shifted or not) stays the first precision's, the session's.

A store belongs to a job or a CLI run, but the host's states belong to the
host: runs with different stores (separate CLI runs, the jobs of
``bench/contention.py``) would each start blind, and a run that spends all
its sessions in one shifted state would find none of them shifted against
its own medians.  So the anchor's sessions are also kept per host, beside
the device's ruler (:class:`HostRecord`, in ``$DEVICES_CALIBRATION_DIR``),
with the arch of each anchor subnet and its file's SHA-256: a later run of
the network on the device, whatever its store, exports the same subnets
again and uses those sessions only when its files are byte-identical
(exports are deterministic; other weights give other files).

The medians a run corrects by are those of the undisturbed state as it saw
it, and that state moves between runs.  So whoever reads the rows (a job's
predictors and fronts, the report, ``hwsearch train``) takes each row's
offset again against the anchor's norm of now (:func:`in_current_norm`):
rows of every run on the host then share one norm.  The store keeps what
each run found.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from devices.calibration import kept_file_names, read_kept_file, update_kept_file
from hwsearch.shift_slope import Member, ShiftSlope, fit_shift_slope, size_against

#: Sessions a run needs before its anchor's median can tell a shifted session from the rest.
MIN_SESSIONS = 3
#: How far a session's offset may sit from 1 and the session still count as unshifted.
DEFAULT_TOLERANCE = 0.05
#: How many subnets make the anchor (fewer when the run's first chunk holds fewer).
ANCHOR_SUBNETS = 3
#: Earlier sessions of the anchor a run starts from: recent enough to share the host's present state.
RECENT_SESSIONS = 20
#: Sessions a host keeps per network and device, over all its anchors (the newest).
HOST_SESSIONS = 3 * RECENT_SESSIONS
#: A two-sided 95% interval's half-width in standard deviations (:meth:`Anchor.latency_ci`).
Z95 = 1.959964


@dataclass
class Anchor:
    """The anchor subnets' files and, per session, each subnet's ratio.

    ``files`` holds ``files_per_subnet`` files per subnet (its precisions,
    in the run's order, named in ``precisions`` when known), subnet after
    subnet in ``keys``' order; a subnet's ratio is its first file's, and
    its other files' ratios are kept per precision (``ratios_at``).
    ``archs`` (each subnet's arch as a dict) lets a later run export the
    subnets again.
    """

    keys: tuple[str, ...]
    files: list[Path]
    tolerance: float = DEFAULT_TOLERANCE
    ratios: dict[str, tuple[float, ...]] = field(default_factory=dict)  # session_id -> a ratio per subnet
    retries: set[str] = field(default_factory=set)  # sessions judged but left out of the medians
    archs: tuple[Mapping[str, Any], ...] = ()
    shas: tuple[str, ...] = ()  # each subnet's first file's SHA-256: what its ratios were measured on
    observed_at: dict[str, float] = field(default_factory=dict)  # this run's sessions (not earlier runs')
    references: dict[str, float] = field(default_factory=dict)  # session_id -> its reference's ms (NaN: unknown)
    macs: tuple[int, ...] = ()  # each subnet's MACs, when known
    members: dict[str, dict[Path, float]] = field(default_factory=dict)  # session_id -> its other files' ratios
    precisions: tuple[str, ...] = ()  # the precision of each of a subnet's files, in order (empty: unknown)
    ratios_at: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)  # session -> precision -> ratios
    _cached_state: tuple[int, list[str], np.ndarray, float | None] | None = field(default=None, repr=False,
                                                                                   compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"the anchor's tolerance must be a finite share >= 0, got {self.tolerance!r}")
        if not self.keys or len(self.files) % len(self.keys):
            raise ValueError(f"{len(self.files)} anchor files cannot be split over {len(self.keys)} subnets")
        if self.precisions and len(self.precisions) != self.files_per_subnet:
            raise ValueError(f"{len(self.precisions)} precisions named for {self.files_per_subnet} files per subnet")

    @classmethod
    def keep(cls, keys: Sequence[str], groups: Sequence[Sequence[Path]], folder: Path,
             tolerance: float = DEFAULT_TOLERANCE,
             earlier: History | None = None,
             archs: Sequence[Mapping[str, Any]] = (), macs: Sequence[int] = (),
             precisions: Sequence[str] = ()) -> Anchor:
        """An anchor from its subnets' exported files (one group per subnet), copied to ``folder``.

        The copies outlive the chunk the files came from.  ``earlier`` holds
        the subnets' ratios (and each session's reference time) in earlier
        runs' sessions (:func:`history`), which count towards every verdict.
        ``precisions`` names each group's files in order.
        """
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for index, group in enumerate(groups):
            for path in group:
                kept.append(folder / f"{index}-{path.name}")
                shutil.copyfile(path, kept[-1])
        shas = tuple(file_sha256(folder / f"{index}-{group[0].name}") for index, group in enumerate(groups))
        earlier = earlier or History(tuple(keys), {}, {})
        return cls(tuple(keys), kept, tolerance,
                   {session: tuple(map(float, ratios)) for session, ratios in earlier.ratios.items()},
                   archs=tuple(dict(a) for a in archs), shas=shas, macs=tuple(int(m) for m in macs),
                   references={session: float(ms) for session, ms in earlier.references.items()},
                   precisions=tuple(precisions),
                   ratios_at={session: dict(at) for session, at in earlier.ratios_at.items()})

    @property
    def files_per_subnet(self) -> int:
        return len(self.files) // len(self.keys)

    def observe(self, session_id: str, results: Sequence[Any], *, retry: bool = False,
                members: Mapping[Path, float] | None = None) -> None:
        """Record each subnet's ratio in one session, from the results of :attr:`files` in order.

        ``members`` are the ratios of the session's other files (its
        subnets' first files): with the anchor's, they are what the host
        keeps of the session (:meth:`HostRecord.remember`), so a subnet
        measured again in another session shows how its shift differed
        from the anchor's (:mod:`hwsearch.shift_slope`).

        A ``retry`` (a session measuring again what an earlier one left
        unstable or shifted) is judged but does not count towards the
        medians: it follows a bad session at once, often in the same bad
        state of the host, so counting it would pull the medians towards
        that state.  Seen: a run whose two shifted sessions (1.34x and 1.39x
        its other runs) were each measured again in that state put the
        anchor's medians between the states and found every session of the
        run shifted, the calm ones at 0.89-0.94.
        """
        self.ratios[session_id] = tuple(float(r.ratio) for r in results[::self.files_per_subnet])
        self.ratios_at[session_id] = {precision: tuple(float(r.ratio) for r in results[index::self.files_per_subnet])
                                      for index, precision in enumerate(self.precisions[1:], 1)}
        self.references[session_id] = _nan_if_none(results[0].env.get("session_reference_ms") if results else None)
        self.observed_at[session_id] = time.time()
        self.members[session_id] = dict(members or {})
        if retry:
            self.retries.add(session_id)

    def is_retry(self, session_id: str) -> bool:
        return session_id in self.retries

    def ratios_in(self, session_id: str) -> tuple[float, ...] | None:
        """Each subnet's ratio in the session (NaN where unusable), if the anchor was measured there."""
        return self.ratios.get(session_id)

    def stored_ratios(self, session_id: str) -> dict[str, Any]:
        """The session's ``ratios``, and its files' at each precision (``ratios_at``), as kept in JSON (NaN as null)."""
        return {"ratios": [_finite_or_none(r) for r in self.ratios[session_id]],
                "ratios_at": {precision: [_finite_or_none(r) for r in ratios]
                              for precision, ratios in self.ratios_at.get(session_id, {}).items()}}

    def offset(self, session_id: str) -> float | None:
        """The median of the subnets' ratios there over their medians; ``None`` before a verdict.

        The medians are taken over the sessions of the host's undisturbed
        state (:func:`prevailing_state`).  No verdict before
        :data:`MIN_SESSIONS` sessions that are not retries, nor for a
        session where no subnet's ratio was usable.
        """
        medians = self._medians()
        if medians is None or session_id not in self.ratios:
            return None
        return session_offset(self.ratios[session_id], medians)

    def offset_at(self, session_id: str, precision: str) -> tuple[float | None, str | None]:
        """The session's offset for a row at ``precision``, and the precision it was taken at.

        The anchor files' own offset at ``precision``, against their
        medians over the same undisturbed sessions as :meth:`offset`'s,
        where at least :data:`MIN_SESSIONS` of those sessions (all of a
        smaller state's) measured them and the session gave them a ratio;
        otherwise the first precision's offset (:meth:`offset`), which still
        comes closer than none (module docstring), as a row read now takes
        it (:func:`in_current_norm`).
        """
        first = self.precisions[0] if self.precisions else None
        cached = self._cached()
        own: tuple[float | None, str | None] = (None, first)
        if precision != first and cached is not None and session_id in self.ratios_at:
            own = _own_precision_offset(precision, first, self.ratios_at[session_id].get(precision),
                                        _medians_at(precision, [self.ratios_at.get(s, {}) for s in cached[1]]))
        return own if own[0] is not None else (self.offset(session_id), first)

    def session_spread(self) -> float | None:
        """How far one subnet's corrected ratio strays from session to session (a relative SD); ``None`` unknown.

        A session's ``ratio_ci`` covers only the noise within it, but a
        subnet also moves on its own from one session to the next, its
        session's offset divided out.  Over the solo runs of four
        ``bench/contention.py`` runs (2026-12-01), stable rows sat within
        their own ``ratio_ci`` of the other runs' median in 56% of cases on
        both demo devices.  The anchor's subnets, measured in every
        session, show that movement: see :func:`idiosyncratic_spread`.
        Known once the undisturbed state holds :data:`MIN_SESSIONS`
        sessions in which at least two anchor subnets were usable.
        """
        cached = self._cached()
        return None if cached is None else cached[3]

    def latency_ci(self, ratio_ci: float) -> float | None:
        """A corrected row's relative 95% half-width: its session's CI and the spread between sessions.

        The row's error against its subnet's long-run median has two parts
        beyond the session's own noise: the subnet's own movement
        (:meth:`session_spread`) and the error of the offset it was divided
        by, a median of the anchor's subnets (variance about π/2k of one
        subnet's for k of them).  ``None`` while the spread is unknown or
        the session's CI is not finite.
        """
        return latency_half_width(ratio_ci, self.session_spread(), len(self.keys))

    def _medians(self) -> np.ndarray | None:
        """Each subnet's median ratio over the undisturbed state's counted sessions."""
        state = self._state()
        return None if state is None else _nanmedian(state, axis=0)

    def _state(self) -> np.ndarray | None:
        """The undisturbed state's counted sessions (sessions x subnets, NaN unusable)."""
        cached = self._cached()
        return None if cached is None else cached[2]

    def _cached(self) -> tuple[int, list[str], np.ndarray, float | None] | None:
        """The undisturbed state's sessions, their ratios and spread, once per new session (every row reads them)."""
        counted = [session for session in self.ratios if session not in self.retries]
        if len(counted) < MIN_SESSIONS:
            return None
        if self._cached_state is None or self._cached_state[0] != len(self.ratios):
            table = np.array([self.ratios[session] for session in counted], dtype=float)  # sessions x subnets
            table = np.where(np.isfinite(table), table, np.nan)
            references = np.array([self.references.get(session, math.nan) for session in counted], dtype=float)
            undisturbed = undisturbed_sessions(table, self.tolerance, references)
            self._cached_state = (len(self.ratios), [s for s, kept in zip(counted, undisturbed) if kept],
                                  table[undisturbed], idiosyncratic_spread(table[undisturbed]))
        return self._cached_state

    def judged(self, session_ids: Iterable[str]) -> bool:
        """Whether every one of the sessions has the anchor's verdict."""
        return all(self.offset(session_id) is not None for session_id in session_ids)

    def shifted(self, session_id: str) -> bool:
        """Whether the session's offset sat further from 1 than the tolerance."""
        return _shifted(self.offset(session_id), self.tolerance)


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
        alike = np.abs(_nanmedian(table[:, None, :] / table[None, :, :], axis=2) - 1.0) <= tolerance
    neighbours = alike.sum(axis=1)
    centre = max(range(len(table)), key=lambda i: (neighbours[i], i))
    if references is not None:
        centre = _undisturbed(table, alike, centre, references, tolerance)
    return alike[centre] if alike[centre].any() else np.ones(len(table), dtype=bool)


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
        offsets = np.log(state / _nanmedian(state, axis=0))
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
        offsets = np.array([_nan_if_none(r) for r in ratios], dtype=float) / medians
    offsets = offsets[np.isfinite(offsets)]
    return float(np.median(offsets)) if offsets.size else None


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
    return (session_stable or overruled) and not _shifted(offset, tolerance), overruled


def _shifted(offset: float | None, tolerance: float) -> bool:
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
            levels = _nanmedian(table / table[centre], axis=1)
        faster = [i for i in range(len(table))
                  if levels[i] < 1.0 - tolerance and not np.any(alike[i] & alike[centre])]
        if not faster:
            return centre
        candidate = max(faster, key=lambda i: (neighbours[i], i))
        if neighbours[candidate] < max(MIN_SESSIONS, neighbours[centre] / 2):
            return centre
        here, there = _nanmedian(references[alike[centre]], 0), _nanmedian(references[alike[candidate]], 0)
        if not (np.isfinite(here) and np.isfinite(there)) or there > here * (1.0 + tolerance):
            return centre
        centre = candidate


def _medians_at(precision: str, sessions: Iterable[Mapping[str, Sequence[float | None]]]) -> np.ndarray | None:
    """Each anchor subnet's median ratio at ``precision`` over the sessions that measured it there.

    ``sessions`` are the undisturbed state's, each as its ratios per
    precision.  ``None`` when fewer than :data:`MIN_SESSIONS` of them (or,
    in a smaller state, not all of them) have ratios at ``precision``: the
    state's first-precision medians stand on all its sessions, and these
    should not stand on a few (a state of sessions from runs that measured
    the first precision alone).
    """
    sessions = list(sessions)
    rows = [[_nan_if_none(r) for r in at[precision]] for at in sessions if at.get(precision)]
    if not rows or len(rows) < min(MIN_SESSIONS, len(sessions)) or len({len(row) for row in rows}) != 1:
        return None
    return _nanmedian(np.array(rows, dtype=float), axis=0)


def _nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` without the warning for an all-NaN slice (NaN is the answer there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        if row.get("anchor_precision") != precision or row.get("anchor_retry") or _anchor_of(row) is None:
            continue
        env = row.get("env", {})
        values = tuple(_nan_if_none(r) for r in row["anchor_ratios"])
        sessions.setdefault(tuple(row["anchor_keys"]), {})[str(row["session_id"])] = (
            float(env.get("session_end", 0.0)), values, _nan_if_none(env.get("session_reference_ms")))
        ratios_at.setdefault(str(row["session_id"]), {}).update(_ratios_at(row))
    if not sessions:
        return None
    keys = max(sorted(sessions), key=lambda k: len(sessions[k]))
    latest = sorted(sessions[keys].items(), key=lambda item: item[1][0])[-RECENT_SESSIONS:]
    return History(keys, {session: ratios for session, (_, ratios, _) in latest},
                   {session: reference for session, (_, _, reference) in latest},
                   {session: ratios_at[session] for session, _ in latest if ratios_at.get(session)})


class HostRecord:
    """The anchor sessions this host measured of one network on one device, whatever store the runs used.

    One JSON file per (device key, network) beside the device's ruler
    (:func:`devices.calibration.update_kept_file`, so runs in several
    processes add to it safely), holding the :data:`HOST_SESSIONS` newest
    sessions.  Each session names its anchor subnets, their files'
    SHA-256 and ratios (and their other precisions' files' ratios,
    ``ratios_at``), and keeps every subnet it measured (``subnets``:
    key to uncorrected ratio and MACs); a retry is marked, judged by the
    norm but never part of it.  The file also keeps each anchor subnet's
    arch, so a run that has never seen the subnets can export them.
    """

    PREFIX = "anchor-"

    def __init__(self, device_key: str, network_id: str) -> None:
        self.device_key, self.network_id = device_key, network_id
        identity = hashlib.sha256(f"{device_key}\0{network_id}".encode()).hexdigest()[:24]
        self.name = f"{self.PREFIX}{identity}.json"

    def read(self) -> tuple[dict[str, dict[str, Any]], dict[str, Mapping[str, Any]]]:
        """The kept sessions as rows :func:`history` reads (keyed by session id), and the anchor subnets' archs."""
        kept = read_kept_file(self.name)
        return _kept_rows(kept), kept.get("archs", {})

    def remember(self, anchor: Anchor, precision: str,
                 labels: Mapping[Path, tuple[str, int]] | None = None) -> int:
        """Keep the anchor's sessions of this run (not earlier runs'); returns how many.

        ``labels`` name the run's files (the first of each subnet's group):
        each one's subnet key and MACs, so the session's ``subnets`` can be kept.
        """
        new = {session_id: {"keys": list(anchor.keys), "precision": precision, "ended": observed_at,
                            "tolerance": anchor.tolerance, "retry": session_id in anchor.retries,
                            **anchor.stored_ratios(session_id),
                            "reference_ms": _finite_or_none(anchor.references.get(session_id, math.nan)),
                            "subnets": _session_subnets(anchor, session_id, labels or {})}
               for session_id, observed_at in anchor.observed_at.items()}
        if not new or len(anchor.archs) != len(anchor.keys) or len(anchor.shas) != len(anchor.keys):
            return 0
        for entry in new.values():
            entry["shas"] = list(anchor.shas)

        def add(data: dict[str, Any]) -> None:
            data.update(device_key=self.device_key, network_id=self.network_id)
            sessions = {**data.get("sessions", {}), **new}
            newest = sorted(sessions, key=lambda s: sessions[s]["ended"])[-HOST_SESSIONS:]
            data["sessions"] = {s: sessions[s] for s in newest}
            used = {key for s in newest for key in sessions[s]["keys"]}
            archs = {**data.get("archs", {}), **dict(zip(anchor.keys, anchor.archs))}
            data["archs"] = {key: arch for key, arch in archs.items() if key in used}

        update_kept_file(self.name, add)
        return len(new)


def _session_subnets(anchor: Anchor, session_id: str, labels: Mapping[Path, tuple[str, int]]
                     ) -> dict[str, list[float | None]]:
    """Each subnet the session measured whose key and MACs are known: ``{key: [ratio, macs]}``."""
    subnets = {labels[path][0]: [_finite_or_none(ratio), labels[path][1]]
               for path, ratio in anchor.members.get(session_id, {}).items() if path in labels}
    if len(anchor.macs) == len(anchor.keys):
        subnets.update({key: [_finite_or_none(ratio), macs]
                        for key, ratio, macs in zip(anchor.keys, anchor.ratios[session_id], anchor.macs)})
    return subnets


def host_spreads(device_key: str) -> list[dict[str, Any]]:
    """The spread between sessions in each of the host's kept anchor records of the device (``devices show``).

    One entry per network and precision the device measured with an anchor
    on this host: the sessions considered (the most-seen anchor's recent
    ones, as a run would start from), how many of them make the undisturbed
    state, and :func:`idiosyncratic_spread` over those (``None`` while
    unknown); and the slope rows read now are leaned by
    (:mod:`hwsearch.shift_slope`), with the pairs of sessions it stands on.
    """
    spreads = []
    for data in _host_records(device_key):
        rows = _kept_rows(data)
        norms = current_norms(rows.values(), _members({}, rows.values()))
        for precision in sorted({row["anchor_precision"] for row in rows.values()}):
            found = history(rows, precision)
            if found is None:
                continue
            table = np.array(list(found.ratios.values()), dtype=float)
            references = np.array([found.references[s] for s in found.ratios], dtype=float)
            state = prevailing_state(table, DEFAULT_TOLERANCE, references)
            slope = next((norm.slope for anchor, norm in norms.items()
                          if anchor[:2] == (found.keys, precision)), ShiftSlope(0.0, 0))
            spreads.append({"network_id": data["network_id"], "precision": precision,
                            "anchor_subnets": len(found.keys), "sessions": len(table),
                            "undisturbed_sessions": len(state), "session_spread": idiosyncratic_spread(state),
                            "offset_slope": slope.slope, "slope_pairs": slope.pairs})
    return spreads


class Norm(NamedTuple):
    """An anchor's medians over the host's current undisturbed state, its spread between sessions, and its slope.

    ``slope`` is how a session's shift grows with a subnet's size about the
    anchor's (:mod:`hwsearch.shift_slope`; 0 while the data cannot say),
    ``anchor_log_macs`` the anchor subnets' mean log MACs (``None``
    unknown: rows are then corrected by the session's offset alone).
    ``medians_at`` holds the anchor's medians at its other precisions,
    over the same undisturbed sessions, where enough of them measured there.
    """

    medians: np.ndarray
    spread: float | None
    tolerance: float
    slope: ShiftSlope = ShiftSlope(0.0, 0)
    anchor_log_macs: float | None = None
    medians_at: Mapping[str, np.ndarray] = {}


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
    (all of a smaller state's) measured those files, and by the anchor's
    own offset otherwise (``offset_precision`` says which).  A row whose
    anchor has too few sessions, or that names no anchor, is returned as
    stored; so is one whose latency had to come from its raw median
    (``latency_source``).  The store is not changed.
    """
    kept = [row for data in _host_records(device_key) if data["network_id"] == network_id
            for row in _kept_rows(data).values()]
    norms = current_norms([*rows.values(), *kept], _members(rows, kept))
    out = {}
    for key, row in rows.items():
        norm = norms.get(_anchor_of(row))
        out[key] = dict(row) if norm is None or row.get("latency_source") == "median_ms" else recorrected(row, norm)
    return out


def current_norms(rows: Iterable[Mapping[str, Any]],
                  members: Mapping[str, Mapping[str, Member]] | None = None) -> dict[tuple[Any, ...], Norm]:
    """Per anchor (its subnets, precision and files), the norm its :data:`RECENT_SESSIONS` latest sessions give.

    ``rows`` are stored or kept rows; each session counts once, retries not
    at all (as in :func:`history`).  An anchor with fewer than
    :data:`MIN_SESSIONS` sessions has no norm.  The state is found with the
    tolerance of the anchor's latest session (``anchor_tolerance``).
    ``members`` (per session id, the subnets it measured at the anchor's
    precision) fit each norm's slope over the anchor's :data:`HOST_SESSIONS`
    latest sessions, retries included: a retry measures the same subnets
    again at another offset, which is what the slope is fitted from.
    """
    members = members or {}
    sessions: dict[tuple[Any, ...], dict[str, _Seen]] = {}
    for row in rows:
        anchor = _anchor_of(row)
        if anchor is None:
            continue
        env, session_id = row.get("env", {}), str(row["session_id"])
        earlier = sessions.setdefault(anchor, {}).get(session_id)
        sessions[anchor][session_id] = _Seen(
            float(env.get("session_end", 0.0)), tuple(_nan_if_none(r) for r in row["anchor_ratios"]),
            _nan_if_none(env.get("session_reference_ms")), float(row.get("anchor_tolerance", DEFAULT_TOLERANCE)),
            bool(row.get("anchor_retry")), {**(earlier.ratios_at if earlier else {}), **_ratios_at(row)})
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
        medians = _nanmedian(state, axis=0)
        in_state = [session.ratios_at for session, kept in zip(latest, undisturbed) if kept]
        medians_at = {precision: found for precision in sorted({p for at in in_state for p in at})
                      if (found := _medians_at(precision, in_state)) is not None}
        anchor_log_macs = _anchor_log_macs(anchor[0], members)
        slope = ShiftSlope(0.0, 0)
        if anchor_log_macs is not None:
            recent = sorted(seen, key=lambda session_id: seen[session_id].ended)[-HOST_SESSIONS:]
            slope = fit_shift_slope(((_nan_if_none(session_offset(seen[s].ratios, medians)), members.get(s, {}))
                                     for s in recent), anchor_log_macs)
        norms[anchor] = Norm(medians, idiosyncratic_spread(state), tolerance, slope, anchor_log_macs, medians_at)
    return norms


class _Seen(NamedTuple):
    """One anchor session as the norm reads it."""

    ended: float
    ratios: tuple[float, ...]
    reference_ms: float
    tolerance: float
    retry: bool
    ratios_at: dict[str, list[float | None]]


def _ratios_at(row: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """The row's session's anchor ratios at the anchor's other precisions (``anchor_ratios_at``), when kept."""
    return {str(precision): list(ratios) for precision, ratios in (row.get("anchor_ratios_at") or {}).items()
            if ratios and len(ratios) == len(row["anchor_ratios"])}


def _members(rows: Mapping[str, Mapping[str, Any]], kept: Iterable[Mapping[str, Any]]
             ) -> dict[str, dict[str, Member]]:
    """Per session id, the subnets it measured at its anchor's precision: ``{key: (uncorrected ratio, MACs)}``.

    From stored rows (keyed by subnet) and the host's kept sessions (their ``subnets``).
    """
    members: dict[str, dict[str, Member]] = {}
    for key, row in rows.items():
        if _anchor_of(row) is not None and row.get("macs") and row.get("precision") == row.get("anchor_precision"):
            ratio = row.get("uncorrected_ratio", row.get("ratio"))
            members.setdefault(str(row["session_id"]), {})[key] = (_nan_if_none(ratio), float(row["macs"]))
    for row in kept:
        for key, (ratio, macs) in row.get("subnets", {}).items():
            if macs:
                members.setdefault(str(row["session_id"]), {})[key] = (_nan_if_none(ratio), float(macs))
    return members


def _anchor_log_macs(keys: Sequence[str], members: Mapping[str, Mapping[str, Member]]) -> float | None:
    """The anchor subnets' mean log MACs, when every one of them is among ``members``."""
    macs = {}
    for measured in members.values():
        macs.update({key: measured[key][1] for key in keys if key in measured})
        if len(macs) == len(keys):
            return float(np.mean(np.log(list(macs.values()))))
    return None


def recorrected(row: Mapping[str, Any], norm: Norm) -> dict[str, Any]:
    """A copy of the row corrected (and, where it kept its own verdict, judged) against ``norm``."""
    new = dict(row)
    offset = session_offset(row["anchor_ratios"], norm.medians)
    if offset is None:
        return new
    own_offset, offset_precision = _own_offset(row, norm)
    slope, lean = _row_lean(row, norm)
    correct_row(new, offset if own_offset is None else own_offset, lean)
    new.update(offset_slope=slope, offset_precision=offset_precision)
    new.update(session_spread=norm.spread,
               latency_ci=latency_half_width(_nan_if_none(row.get("ratio_ci")), norm.spread, len(norm.medians)))
    if "session_stable" in row:
        new["stable"], overruled = judged_stable(row["session_stable"], row.get("env", {}).get("unstable_reasons"),
                                                 offset, norm.tolerance)
        if overruled:
            new["slowdown_overruled_by_anchor"] = True
        else:
            new.pop("slowdown_overruled_by_anchor", None)
    return new


def _own_offset(row: Mapping[str, Any], norm: Norm) -> tuple[float | None, str | None]:
    """The offset of the anchor's files at the row's precision (:func:`_own_precision_offset`), against the norm."""
    precision = row.get("precision")
    return _own_precision_offset(precision, row.get("anchor_precision"), _ratios_at(row).get(str(precision)),
                                norm.medians_at.get(str(precision)))


def _own_precision_offset(precision: Any, anchor_precision: str | None, ratios: Sequence[float | None] | None,
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


def _row_lean(row: Mapping[str, Any], norm: Norm) -> tuple[float, float]:
    """``(slope, lean)``: the slope the row is leaned by, and that slope times the subnet's size.

    ``(0, 0)`` for a row of another precision than its anchor's (the slope
    was fitted at the anchor's) or whose size is unknown.
    """
    if norm.anchor_log_macs is None or not row.get("macs") or row.get("precision") != row.get("anchor_precision"):
        return 0.0, 0.0
    return norm.slope.slope, norm.slope.slope * size_against(float(row["macs"]), norm.anchor_log_macs)


def _anchor_of(row: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What makes a row's anchor ratios comparable with another's: the subnets, precision and files."""
    keys, ratios = row.get("anchor_keys"), row.get("anchor_ratios")
    if not keys or not ratios or len(keys) != len(ratios):
        return None
    return tuple(keys), row.get("anchor_precision"), tuple(row.get("anchor_shas") or ())


def _host_records(device_key: str) -> Iterator[dict[str, Any]]:
    """The host's kept anchor records of the device, at every precision (keys differ by ``@precision``)."""
    for name in kept_file_names(HostRecord.PREFIX):
        data = read_kept_file(name)
        if str(data.get("device_key", "")).partition("@")[0] == device_key.partition("@")[0] and "network_id" in data:
            yield data


def _kept_rows(kept: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A kept record's sessions as rows :func:`history` reads, keyed by session id."""
    return {session_id: _as_row(session_id, entry) for session_id, entry in kept.get("sessions", {}).items()}


def _as_row(session_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"session_id": session_id, "anchor_keys": entry["keys"], "anchor_ratios": entry["ratios"],
            "anchor_precision": entry["precision"], "anchor_shas": entry["shas"],
            "anchor_tolerance": entry.get("tolerance", DEFAULT_TOLERANCE), "anchor_retry": entry.get("retry", False),
            "anchor_ratios_at": entry.get("ratios_at", {}), "subnets": entry.get("subnets", {}),
            "env": {"session_end": entry["ended"], "session_reference_ms": entry.get("reference_ms")}}


def _finite_or_none(value: float) -> float | None:
    """NaN (unusable, unknown) as JSON's ``null``; :func:`_nan_if_none` reads it back."""
    return value if math.isfinite(value) else None


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)
