"""The profiling pipeline: choose subnets, export them to ONNX, measure, store.

Predictors learn from these rows, so the choice of subnets matters as much as
the model: uniform sampling of genes concentrates around mid-sized subnets
(a sum of many independent choices), leaving the small and large ends that a
latency-constrained search cares about thinly covered.
:func:`select_subnets` therefore spreads picks evenly over *log MACs*.

Runs are resumable: rows go into the store chunk by chunk, and a second run
with the same selection skips every arch key a finished run stored for the
device, so nothing is measured twice (rows a run left waiting for its
anchor's verdict, ``anchor_pending``, are measured again).

A device that runs several precisions (:func:`profile_precisions`) gets
every precision of a subnet measured in the same session, so the rows that
compare them share one reference scale and one state of the machine.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwsearch.anchor import (ANCHOR_SUBNETS, DEFAULT_TOLERANCE, Anchor, FileLabel, HostRecord, correct_row,
                             in_current_norm, judged_stable, readable_rows)
from hwsearch.anchor import MIN_SESSIONS as ANCHOR_MIN_SESSIONS
from hwsearch.anchor import history as anchor_history
from hwsearch.chunk_exports import (SHARED_EXPORTS, Derivation, Exported, delete_exports, export_chunk,
                                    exported_chunks)
from hwsearch.digests import file_sha256
from hwsearch.export_pool import exporters
from hwsearch.quantize import (
    DEFAULT_PRECISION,
    PRECISIONS,
    PROFILE_QUANTIZE,
    PrecisionError,
    QuantizeSettings,
    check_precision,
)
from hwsearch.sessions import MeasureFn, Session, measure_until_trusted, retry
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.store import Store
from hwsearch.tempdirs import owned_temp_dir
from predictors.features import ArchFeaturizer

__all__ = ["ProfileReport", "finished_keys", "finite_latencies", "profile_precisions", "profile_subnets",
           "readable_latencies", "select_subnets"]

ProgressFn = Callable[[dict[str, Any]], None]


def select_subnets(
    space: SearchSpace,
    n: int,
    *,
    seed: int = 0,
    resolution: int | None = None,
    exclude: Sequence[str] = (),
    pool_factor: int = 40,
) -> list[ArchConfig]:
    """``n`` distinct subnets spread evenly over log MACs, with varied depth and resolution.

    A pool of ``pool_factor * n`` candidates is drawn (genes uniform, so every
    depth and resolution is common), bucketed into ``n`` equal-width bins of
    log MACs, and the bins are visited round-robin, taking a random unused
    candidate each time; the smallest and largest subnets are always included.
    ``resolution`` pins the input size; ``exclude`` lists arch keys to avoid
    (e.g. a training set, when drawing a test set).  Deterministic for a seed.
    The result is shuffled, so any prefix of it (a run cut short, measured in
    order) is still spread over the whole range rather than only its low end.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    xl, xu = space.bounds()
    genes = space.canonical_genes(rng.integers(xl, xu + 1, size=(pool_factor * n, space.n_var)))
    extremes = [space.smallest(resolution), space.largest(resolution)]
    genes = np.vstack([space.encode_many(extremes), genes])
    if resolution is not None:
        genes[:, 0] = space.resolutions.index(resolution)
    genes = _unique_rows(genes)
    excluded = set(exclude)
    log_macs = np.log(ArchFeaturizer(space).macs(genes))
    edges = np.linspace(log_macs.min(), log_macs.max(), n + 1)
    bins = np.clip(np.searchsorted(edges, log_macs, side="right") - 1, 0, n - 1)
    members = [list(rng.permutation(np.flatnonzero(bins == b))) for b in range(n)]
    picked: list[ArchConfig] = []
    seen: set[str] = set()
    for arch in extremes[:n]:
        _take(arch, picked, seen, excluded)
    while len(picked) < n and any(members):
        for bucket in members:
            while bucket and len(picked) < n:
                if _take(space.decode(genes[bucket.pop()]), picked, seen, excluded):
                    break
    return [picked[i] for i in rng.permutation(len(picked))]


def _take(arch: ArchConfig, picked: list[ArchConfig], seen: set[str], excluded: set[str]) -> bool:
    key = arch.key()
    if key in seen or key in excluded:
        return False
    seen.add(key)
    picked.append(arch)
    return True


def _unique_rows(genes: np.ndarray) -> np.ndarray:
    """Distinct rows in first-seen order (keeps the extremes at the front)."""
    _, first = np.unique(genes, axis=0, return_index=True)
    return genes[np.sort(first)]


@dataclass(frozen=True)
class ProfileReport:
    """What one :func:`profile_subnets` call did (for :func:`profile_precisions`, at one precision)."""

    device_hash: str
    space_name: str
    selected: int
    skipped: int
    measured: int
    unstable: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def profile_subnets(
    supernet: Any,
    archs: Sequence[ArchConfig],
    profiler: Any,
    device_hash: str,
    store: Store,
    *,
    chunk: int = 16,
    workdir: str | Path | None = None,
    progress: ProgressFn | None = None,
    retries: int = 1,
    export_workers: int | None = None,
    anchor_tolerance: float | None = DEFAULT_TOLERANCE,
) -> ProfileReport:
    """Export and measure every subnet in ``archs`` not yet stored for ``device_hash``, at FP32.

    ``profiler`` is what ``devices.open_profiler(profile)`` returns.  Subnets
    are measured at most ``chunk`` at a time, in chunks of near-equal size
    (so no session is left with a few stragglers), in one interleaved
    session each (so rows of a chunk share a reference scale) and stored as
    soon as the chunk ends;
    an interrupted run loses at most one chunk.  Rows hold the measurement,
    the arch (``arch`` dict), analytic ``macs``/``params``, the export time
    and file size, and the ``session_id`` of the session that measured them.

    A subnet whose measurement the device flags unstable (its ratio's
    confidence interval stayed wide, usually because the machine changed
    speed mid-session) is measured again, up to ``retries`` times, in a
    session filled up to its chunk's size with the chunk's other subnets
    (:func:`hwsearch.sessions.retry`), and the tighter measurement is kept.  Left alone, such
    a value is a trap: a front favours whichever subnets were measured too
    fast, so its knee was often an unstable row (seen: 0.58 ms on the front,
    0.67-0.70 ms in three later sessions).

    Subnets are exported at the batch of the profiler's profile: the rows
    are filed under that profile's hash, which covers the batch, so a
    batch-4 device's rows must have been measured at batch 4 (the device
    refuses a model of another batch).  Each export holds the host's
    compute lock (:func:`devices.hostlock.compute_unit`), so it never runs
    during another process's measurement session; while an export or a
    session waits for the host, ``progress`` gets ``stage="waiting"`` events
    saying what for.

    For a device measured on another host (an agent), the next chunk is
    exported while the current one is measured: this host is idle while
    the agent measures, so the overlap costs the measurement nothing and
    hides the export time.  A local device's exports and sessions share
    this host's cores, so they stay one after the other (the host lock
    would serialise them anyway).  Rows record each export's wall-clock
    ``export_start``/``export_end`` beside the session's, which shows it.

    Exports run in worker processes when that pays
    (:mod:`hwsearch.export_pool`): ``export_workers`` ``None`` decides from
    the run's first exports, 1 keeps them in this process, a count starts
    that many workers.

    A run of several chunks keeps the files of its first chunk's three
    middle subnets by MACs, the anchor, and measures them in every session,
    retries included (:mod:`hwsearch.anchor`); a run on a device whose stored rows name an
    earlier run's anchor exports those subnets and measures them instead,
    starting from their earlier sessions' ratios, even in a run of one
    chunk when those sessions are enough for a verdict.  Every row records
    its session's ``anchor_ratios``, and once there are three sessions or
    more its ``session_offset`` (the median of the anchor subnets' ratios
    there over their medians), by which its ``ratio`` and ``latency_ms``
    are divided (``uncorrected_ratio`` and ``uncorrected_latency_ms`` keep
    the session's own).  A session whose offset is more than
    ``anchor_tolerance`` from 1 is measured again (within ``retries``) as
    soon as the verdict comes (a chunk measured before it keeps its files
    until then), and at the end the rows of every session still found
    shifted are relabelled unstable.  ``None`` turns this off.
    """
    return profile_precisions(supernet, archs, profiler, {DEFAULT_PRECISION: device_hash}, store,
                              chunk=chunk, workdir=workdir, progress=progress,
                              retries=retries, export_workers=export_workers,
                              anchor_tolerance=anchor_tolerance)[DEFAULT_PRECISION]


def profile_precisions(
    supernet: Any,
    archs: Sequence[ArchConfig],
    profiler: Any,
    keys: Mapping[str, str],
    store: Store,
    *,
    calibration: Any = None,
    quantize: QuantizeSettings = PROFILE_QUANTIZE,
    chunk: int = 16,
    workdir: str | Path | None = None,
    progress: ProgressFn | None = None,
    retries: int = 1,
    export_workers: int | None = None,
    anchor_tolerance: float | None = DEFAULT_TOLERANCE,
) -> dict[str, ProfileReport]:
    """:func:`profile_subnets` at several precisions of one device: a subnet's files in one session.

    ``keys`` maps each precision to the key its rows are filed under (see
    :func:`hwsearch.quantize.precision_key`).  Every subnet is exported at
    FP32 and, for INT8, quantized from that export (static QDQ, calibrated
    on ``calibration``, which INT8 needs; ``quantize`` says how); then all
    files of a chunk, every precision of every subnet, are measured in one
    interleaved session against one reference.  Why: a subnet's INT8/FP32
    ratio from two sessions is only as good as each session's reference
    normalisation; on a wall-clock device of a shared machine, separate
    sessions put INT8 slower on 14 of 30 subnets where one session found it
    faster on all 30 (docs/precision.md).  So a
    subnet's rows at all precisions share a ``session_id`` (and the
    session's ``env.session_start``/``session_end``), an unstable one is
    re-measured with its sibling files, and the pair kept is the tighter one.

    A subnet counts as done only when every precision has its row, not
    ``anchor_pending`` (:class:`_RunRows`); one
    stored at only some (a store from before, a precision added to the
    profile) is measured again at all of them and its rows replaced, so a
    comparison never spans two sessions.  Each row holds its own file's
    ``onnx_bytes`` and ``export_seconds`` (INT8: FP32 export plus
    quantization, also given alone as ``quantize_seconds``, with the
    quantized model's agreement with FP32 on its calibration images).
    The anchor (``anchor_tolerance``) is as in :func:`profile_subnets`; its
    files, every precision, join each session beside the chunk's.
    Returns a report per precision.
    """
    precisions = _checked_precisions(keys, chunk, calibration)
    start = time.perf_counter()
    space = supernet.space
    done = set.intersection(*(finished_keys(store, keys[p], space.network_id) for p in precisions))
    todo = [a for a in archs if a.key() not in done]
    chunks = _balanced_chunks(todo, chunk)
    model_batch, input_dtype = _profile_input(profiler)
    tally = _Tally(progress, done=len(archs) - len(todo), total=len(archs))
    measure = profiler.measure_many
    if tally.waiting is not None:
        measure = functools.partial(profiler.measure_many, progress=tally.waiting)
    run = object()  # this call's identity as the owner of exports it shares
    host_record = HostRecord(keys[precisions[0]], space.network_id)
    with (owned_temp_dir("exports", workdir) as tmp, SHARED_EXPORTS.owned_by(run),
          exporters(supernet, len(todo), workers=export_workers, on_wait=tally.waiting) as exporting):
        export = functools.partial(export_chunk, supernet, Path(tmp), model_batch, input_dtype,
                                   tally.waiting, run, Derivation(tuple(precisions), calibration, quantize),
                                   exporting)
        anchor_folder = Path(tmp) / "anchor"
        earlier = None if anchor_tolerance is None or not chunks else _earlier_anchor(
            space, readable_latencies(store, keys[precisions[0]], space.network_id), host_record, precisions,
            len(chunks), export, anchor_folder, anchor_tolerance)
        own_anchor = (anchor_folder, anchor_tolerance) if anchor_tolerance is not None and len(chunks) > 1 else None
        rows = _RunRows(store, keys, precisions, space.network_id,
                        awaits_anchor=earlier is not None or own_anchor is not None)
        loop = _ChunkLoop(precisions, measure, retries, rows, earlier, own_anchor)
        for batch, exports in exported_chunks(chunks, export, _measures_elsewhere(profiler)):
            loop.measure_chunk(batch, exports)
            tally.add(len(batch))
        loop.drop_unjudged()
    if loop.anchor is not None:
        rows.label(loop.anchor, precisions[0])
    rows.end_run()  # before the host's record: the run's rows are final whatever keeping the record does
    if loop.anchor is not None:
        host_record.remember(loop.anchor, precisions[0], loop.labels)
    seconds = time.perf_counter() - start
    return {p: ProfileReport(keys[p], space.network_id, len(archs), len(archs) - len(todo),
                             tally.measured, rows.unstable(p), seconds) for p in precisions}


def readable_latencies(store: Store, device_key: str, network_id: str) -> dict[str, dict[str, Any]]:
    """The device's stored rows a job can read (:func:`hwsearch.anchor.readable_rows`): a damaged one is measured
    again."""
    return readable_rows(store.get_latencies(device_key, network_id), device_key)


def finished_keys(store: Store, device_key: str, network_id: str) -> set[str]:
    """Subnets whose rows a run finished: a row still ``anchor_pending`` is measured again (see :class:`_RunRows`),
    as is a damaged one (:func:`readable_latencies`)."""
    return {key for key, row in readable_latencies(store, device_key, network_id).items()
            if not row.get("anchor_pending")}


def _checked_precisions(keys: Mapping[str, str], chunk: int, calibration: Any) -> list[str]:
    """The precisions of ``keys`` in :data:`PRECISIONS` order, once the run's settings are known to be usable."""
    if not keys:
        raise PrecisionError("profile at least one precision")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 subnet per session, got {chunk}")
    for precision in keys:
        check_precision(precision, "keys")
    precisions = [p for p in PRECISIONS if p in keys]
    if any(p != DEFAULT_PRECISION for p in precisions) and calibration is None:
        raise PrecisionError("profiling at int8 calibrates the quantizer: give calibration images")
    return precisions


class _Tally:
    """A run's count of subnets done, sent to ``progress`` as chunks end and carried by its waiting events."""

    def __init__(self, progress: ProgressFn | None, *, done: int, total: int) -> None:
        self._progress = progress
        self._done_before = done
        self.measured = 0
        self._current = {"done": done, "total": total}  # shared with the waiting relay, so its events are current
        self.waiting = _relay_waiting(progress, self._current)
        if progress:
            progress(dict(self._current, stage="start"))

    def add(self, measured: int) -> None:
        self.measured += measured
        self._current["done"] = self._done_before + self.measured
        if self._progress:
            self._progress(dict(self._current, stage="measure"))


class _ChunkLoop:
    """A run's chunks measured one after another: the anchor they share, their retries, the rows they leave.

    The anchor is an earlier run's (given) or, with ``new_anchor`` (its
    folder and tolerance), the first chunk's middle subnets by MACs.  A
    chunk whose sessions the anchor could not judge yet waits for the
    verdict with its files kept (:func:`_settle`).
    """

    def __init__(self, precisions: Sequence[str], measure: MeasureFn, retries: int, rows: _RunRows,
                 anchor: Anchor | None, new_anchor: tuple[Path, float] | None) -> None:
        self._precisions, self._measure, self._retries, self._rows = list(precisions), measure, retries, rows
        self.anchor = anchor
        self._new_anchor = new_anchor
        self.labels: dict[Path, FileLabel] = {}  # each file's subnet key, MACs and precision, for the host
        self._awaiting_verdict: list[_Measured] = []

    def measure_chunk(self, batch: list[ArchConfig], exports: list[dict[str, Exported]]) -> None:
        """Measure one chunk's files (each subnet's precisions in one group), store its rows, settle what can be."""
        first = self._precisions[0]
        groups = [[files[p].path for p in self._precisions] for files in exports]
        self.labels.update({path: FileLabel(arch.key(), int(files[first].report.macs), precision)
                            for group, arch, files in zip(groups, batch, exports)
                            for precision, path in zip(self._precisions, group)})
        if self.anchor is None and self._new_anchor is not None:
            self.anchor = self._anchor_of(batch, exports, groups, *self._new_anchor)
        sessions = measure_until_trusted(self._measure, groups, self._retries, self.anchor)
        chunk = _Measured(batch, exports, groups, sessions,
                          judged_in_time=self.anchor is None or self.anchor.judged(s.session_id for s in sessions))
        self._rows.put(chunk, range(len(batch)))
        self._awaiting_verdict = [c for c in self._awaiting_verdict + [chunk]
                                  if not _settle(c, self.anchor, self._measure, self._retries, self._rows)]

    def drop_unjudged(self) -> None:
        """Delete the files of chunks the run ended before the anchor could judge (their rows stay as measured)."""
        for left in self._awaiting_verdict:
            left.delete_files()

    def _anchor_of(self, batch: list[ArchConfig], exports: list[dict[str, Exported]], groups: list[list[Path]],
                   folder: Path, tolerance: float) -> Anchor:
        middle = _middle_by_macs(exports, ANCHOR_SUBNETS)
        return Anchor.keep([batch[i].key() for i in middle], [groups[i] for i in middle], folder, tolerance,
                           archs=[batch[i].to_dict() for i in middle],
                           macs=[exports[i][self._precisions[0]].report.macs for i in middle],
                           precisions=self._precisions)


def _balanced_chunks(todo: Sequence[ArchConfig], size: int) -> list[list[ArchConfig]]:
    """``todo`` in as few chunks of at most ``size`` subnets as it takes, their sizes differing by at most one.

    Cutting ``size`` at a time leaves a last chunk of whatever remains (100
    subnets in 16s end in a session of 4 and the anchor's 3), and what a
    subnet reads depends on how many models its session holds
    (:func:`hwsearch.sessions.retry`); balanced chunks (here 7 of 14-15)
    cost nothing extra.
    """
    count = -(-len(todo) // size)  # ceil
    chunks: list[list[ArchConfig]] = []
    start = 0
    for i in range(count):
        end = start + len(todo) // count + (i < len(todo) % count)
        chunks.append(list(todo[start:end]))
        start = end
    return chunks


def _middle_by_macs(exports: Sequence[Mapping[str, Exported]], n: int) -> list[int]:
    """The indices of the ``n`` subnets in the middle of the chunk by MACs: the anchor that corrects the rest best.

    The anchor's offset divides every row of its session, so it should
    move as the typical subnet moves.  The smallest subnet of a sample does
    not: in both 40-session recordings of ``bench/anchor_verdicts.py``
    (24 demo subnets, 2026-12-01), in the sessions where a demo device's
    host had changed state by 1.3-1.6x, the smallest subnet moved 10-16%
    less than the session's median.  The middle three corrected the 21
    other subnets better than the three smallest on both devices of both
    recordings (kept sessions: 1.05-1.34% median deviation against
    1.42-1.57%), judged better (3 of 106 calm sessions flagged and 2 of 54
    shifted ones missed, against 7 of 105 and 8 of 55), and cost no more
    (docs/measurement.md).
    """
    by_macs = sorted(range(len(exports)), key=lambda i: exports[i][DEFAULT_PRECISION].report.macs)
    start = max(0, (len(by_macs) - n) // 2)
    return by_macs[start:start + n]


@dataclass
class _Measured:
    """A measured chunk: its subnets, their files (one group per subnet) and each group's kept session."""

    batch: list[ArchConfig]
    exports: list[dict[str, Exported]]
    groups: list[list[Path]]
    sessions: list[Session]
    judged_in_time: bool  # the anchor judged every session before its retries were spent

    def delete_files(self) -> None:
        delete_exports(self.exports)


def _settle(chunk: _Measured, anchor: Anchor | None, measure: MeasureFn, retries: int,
            rows: _RunRows) -> bool:
    """Finish a chunk once its sessions are judged: False while the anchor's verdict is still to come.

    A chunk measured before the anchor could judge (a run's first two
    sessions, when no earlier run left the anchor's history) keeps its
    files until the verdict; then the groups of a session found shifted are
    measured again, within ``retries``, as a chunk judged in time would
    have been, and their rows replaced.
    """
    if anchor is not None and not chunk.judged_in_time:
        if not anchor.judged(s.session_id for s in chunk.sessions):
            return False
        shifted = [i for i, s in enumerate(chunk.sessions) if s.shifted(anchor)]
        again = retry(measure, [chunk.groups[i] for i in shifted], [chunk.sessions[i] for i in shifted],
                      retries, anchor, chunk=chunk.groups)
        replaced = [i for i, session in zip(shifted, again) if session is not chunk.sessions[i]]
        for i, session in zip(shifted, again):
            chunk.sessions[i] = session
        rows.put(chunk, replaced)
    chunk.delete_files()
    return True


class _RunRows:
    """The rows a profiling run stored, the latest per (precision, subnet), and how they are stored.

    With an anchor to judge them (``awaits_anchor``), rows are stored as they
    are measured but ``anchor_pending`` and not stable: the anchor's verdict
    and correction (:meth:`label`) come when the run ends.  A run that never
    ends (killed, cancelled, the service stopped) leaves them so, and a
    resumed run measures them again (:func:`finished_keys`).  Stored as
    stable, they had kept their session's own verdict for good: a session
    in a shifted state the anchor would have caught stayed stable, and the
    resume counted its rows as done.
    """

    def __init__(self, store: Store, keys: Mapping[str, str], precisions: Sequence[str], network_id: str,
                 *, awaits_anchor: bool) -> None:
        self._store, self._keys, self._network_id = store, keys, network_id
        self._precisions = list(precisions)  # the order of each group's files and results
        self._latest: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._awaits_anchor = awaits_anchor

    def put(self, chunk: _Measured, indices: Iterable[int]) -> None:
        """Store the rows of the chunk's subnets at ``indices``, from their kept sessions."""
        for i in indices:
            arch, files, session = chunk.batch[i], chunk.exports[i], chunk.sessions[i]
            for precision, result in zip(self._precisions, session.results):
                row = _row(arch, files[precision], result, precision, session.session_id)
                if self._awaits_anchor:
                    row.update(session_stable=row["stable"], stable=False, anchor_pending=True)
                self._put(precision, arch.key(), session.session_id, row)

    def end_run(self) -> None:
        """The run has ended: rows the anchor could not judge keep their session's own verdict."""
        for (precision, key), (session_id, row) in list(self._latest.items()):
            if row.pop("anchor_pending", False):
                row["stable"] = row.pop("session_stable")
                self._put(precision, key, session_id, row)

    def label(self, anchor: Anchor, anchor_precision: str) -> None:
        """Give every row its session's anchor ratios and offset, and correct it by the offset.

        The ratios (``anchor_ratios``, each anchor subnet's
        ``anchor_precision`` file's, ``None`` where unusable) are what later
        runs start their verdicts from (:func:`hwsearch.anchor.history`).
        Rows of a session found shifted become unstable; rows of a judged
        session that only its slowed reference made unstable become stable
        (:func:`hwsearch.anchor.overrules_slowdown`).  Every row of a judged
        session is divided by its offset (:func:`hwsearch.anchor.correct_row`): that
        of the anchor's files at the row's own precision where known
        (:meth:`hwsearch.anchor.Anchor.offset_at`; ``offset_precision`` says
        which, ``anchor_ratios_at`` keeps those files' ratios), and
        gets a ``latency_ci`` that covers the spread between sessions too
        (:meth:`hwsearch.anchor.Anchor.latency_ci`), with the anchor's
        ``session_spread``.  ``session_stable`` keeps the session's own
        verdict and ``anchor_tolerance`` the anchor's, so a reader can judge
        and correct the row again against a later norm
        (:func:`hwsearch.anchor.in_current_norm`).
        """
        for (precision, key), (session_id, row) in list(self._latest.items()):
            ratios, offset = anchor.ratios_in(session_id), anchor.offset(session_id)
            if ratios is None:
                continue
            session_stable = row.setdefault("session_stable", row["stable"])
            row.pop("anchor_pending", None)
            stable, overruled = judged_stable(session_stable, row["env"].get("unstable_reasons"), offset,
                                              anchor.tolerance)
            stored = anchor.stored_ratios(session_id)
            row.update(anchor_keys=list(anchor.keys), anchor_precision=anchor_precision,
                       anchor_shas=list(anchor.shas), anchor_tolerance=anchor.tolerance,
                       anchor_ratios=stored["ratios"], anchor_ratios_at=stored["ratios_at"],
                       anchor_retry=anchor.is_retry(session_id),
                       stable=stable)
            if overruled:
                row["slowdown_overruled_by_anchor"] = True
            own_offset, offset_precision = anchor.offset_at(session_id, precision)
            if offset is not None and own_offset is not None:
                correct_row(row, own_offset)
                row["offset_precision"] = offset_precision
                row.update(session_spread=anchor.session_spread(), latency_ci=anchor.latency_ci(row["ratio_ci"]))
            self._put(precision, key, session_id, row)

    def unstable(self, precision: str) -> int:
        """How many of the run's rows at ``precision`` are not stable."""
        return sum(not row["stable"] for (p, _), (_, row) in self._latest.items() if p == precision)

    def _put(self, precision: str, key: str, session_id: str, row: dict[str, Any]) -> None:
        self._store.put_latency(self._keys[precision], self._network_id, key, row)
        self._latest[(precision, key)] = (session_id, row)


def _row(arch: ArchConfig, exported: Exported, result: Any, precision: str,
         session_id: str) -> dict[str, Any]:
    """The stored row of one file's measurement: the measurement, the subnet, its file's figures."""
    report = exported.report
    row = result.to_dict() | {
        "arch": arch.to_dict(), "macs": int(report.macs), "params": int(report.params),
        "precision": precision, "session_id": session_id,
        "export_seconds": float(report.seconds), "onnx_bytes": int(report.bytes),
        "export_start": exported.started_at, "export_end": exported.ended_at,
    }
    if report.quantization is not None:
        row["quantization"] = dict(report.quantization)
    return row


def _measures_elsewhere(profiler: Any) -> bool:
    """Whether the profiler's device measures on another host (an agent), leaving this one idle."""
    where = getattr(getattr(profiler, "profile", None), "where", None)
    return getattr(where, "kind", "local") == "agent"


def _profile_input(profiler: Any) -> tuple[int, str]:
    """The batch and input dtype the profiler's device measures at.

    Both of ``devices.open_profiler``'s profilers carry their profile; a
    wrapper without one (a custom measurer) measures float32 at batch 1.
    """
    profile = getattr(profiler, "profile", None)
    if profile is None:
        return 1, "float32"
    return int(profile.batch), str(profile.input_dtype)


def _relay_waiting(progress: ProgressFn | None, state: dict[str, Any]) -> ProgressFn | None:
    """Pass the device's waits for the host on as pipeline events (``stage="waiting"``).

    A session can wait minutes for other jobs' sessions on the same host;
    without this a job's progress would look stuck.  The events keep
    ``done``/``total``, so every consumer of the pipeline's progress reads them.
    """
    if progress is None:
        return None

    def relay(event: dict[str, Any]) -> None:
        if event.get("event") == "waiting":
            progress(dict(state, stage="waiting", message=event["message"], waited_s=event["waited_s"]))

    return relay


def _earlier_anchor(space: SearchSpace, rows: Mapping[str, Mapping[str, Any]], host: HostRecord,
                    precisions: Sequence[str], chunks: int,
                    export: Callable[[Sequence[ArchConfig]], list[dict[str, Exported]]],
                    folder: Path, tolerance: float) -> Anchor | None:
    """The anchor of the device's earlier runs of this network, exported afresh, when a verdict can come.

    ``rows`` are the device's stored rows at the run's first precision and
    ``host`` the anchor sessions this host kept from runs with any store.
    Sessions count only when they were measured on files byte-identical to
    the fresh exports (rows from before files were hashed count too).
    ``None`` when no earlier run kept an anchor, or when its sessions and
    this run's ``chunks`` together cannot reach a verdict (the run then
    keeps its own anchor if it has several chunks).
    """
    host_rows, host_archs = host.read()
    seen = {**rows, **{f"host {session_id}": row for session_id, row in host_rows.items()}}
    found = anchor_history(seen, precisions[0])
    if found is None or len(found.ratios) + chunks < ANCHOR_MIN_SESSIONS:
        return None
    keys = found.keys
    archs = [rows[key]["arch"] if key in rows else host_archs.get(key) for key in keys]
    if any(arch is None for arch in archs):
        return None
    exports = export([space.arch(**arch) for arch in archs])
    try:
        shas = [file_sha256(files[precisions[0]].path) for files in exports]
        same_files = {name: row for name, row in seen.items()
                      if list(row.get("anchor_keys") or ()) == list(keys) and row.get("anchor_shas", shas) == shas}
        found = anchor_history(same_files, precisions[0])
        if found is None or len(found.ratios) + chunks < ANCHOR_MIN_SESSIONS:
            return None
        return Anchor.keep(keys, [[files[p].path for p in precisions] for files in exports], folder, tolerance,
                           found, archs=archs, macs=[files[precisions[0]].report.macs for files in exports],
                           precisions=precisions)
    finally:
        delete_exports(exports)


def finite_latencies(store: Store, device_hash: str, space_name: str) -> dict[str, dict[str, Any]]:
    """The device's stored rows, each with a finite ``latency_ms`` (in the copies returned; the store keeps its rows).

    When the device's protocol could not produce a reference-normalised value
    (too few clean rounds: ``latency_ms`` is NaN and the row is marked
    unstable), its raw median stands in, and the row says so in
    ``latency_source``.  For consumers that must keep every subnet (a job's
    predictors and fronts cannot use NaN, and dropping a subnet that
    refinement asked for is not an option); a training set may instead drop
    such rows, so :func:`profile_subnets` stores them as measured.

    Rows come corrected against the anchor's norm of now, not each run's
    own (:func:`hwsearch.anchor.in_current_norm`), so rows of every run
    on the device compare like with like.  Nothing is written back: a
    reader's write could land after a concurrent run labelled the row and
    undo the label.
    """
    rows = readable_latencies(store, device_hash, space_name)
    for key, row in rows.items():
        if not math.isfinite(float(row["latency_ms"])):  # a copy: a store handing out its own rows lost its NaN marks
            rows[key] = {**row, "latency_ms": float(row["median_ms"]), "latency_source": "median_ms"}
    return in_current_norm(rows, device_hash, space_name)
