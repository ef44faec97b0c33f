"""The interleaved, reference-normalised measurement protocol.

This machine (and any shared edge box) switches between a fast and a slow
state every second or two; timing one model after another therefore measures
the machine as much as the model.  The protocol defends against that:

* every round runs each still-active model once, in a fresh random order,
  with the reference model run before and after it (``R M R M R ...``), so a
  model's time is always compared with references taken milliseconds away;
  with ``timing: warm`` each timed run, of a model or of the reference,
  follows untimed runs of the same model for :data:`WARM_MS` (``R m.. M
  r.. R m.. M r.. R ...``), so what is timed is each model with its own
  data in the caches, as a loop of it finds them, whatever else the
  session measures (``hot`` runs each model once untimed: ``R m M R``);
  with ``timing: loop`` a model's timed run is a sample of back-to-back runs
  lasting about :data:`SAMPLE_MS` (a count fixed per model after the
  warm-up), and its time is their mean, so a model far shorter than the
  reference is not timed by one inference's jitter (the reference is timed
  by one run);
* a sample's ratio is the model time over the geometric mean of its two
  neighbouring references;
* a sample's ratio is then divided by the round's common move, read from
  the session's other models in the same round (``protocol.peer_normalisation``,
  :func:`_peer_normalised`): on this host the subnets' times also flip
  between states the reference does not see;
* samples are dropped when a neighbouring reference jumped away from its
  rolling median or when the two neighbours disagree (the state flipped in
  between); optionally also when the reference shows the machine in its slow
  state (above ``reference_ceiling_percentile`` of the model's pair references);
* rounds repeat until the median ratio's 95% CI is within ``ci_target`` for
  every model or a cap is hit; models that converge leave the rotation, and
  come back when a later check finds their CI wider again, so what a model
  is reported with is what let it stop; whatever stays wider is reported
  with ``stable=False``.

``latency_ms = ratio × reference_ms``, where ``reference_ms`` is the device's
calibrated reference latency (:mod:`devices.calibration`); the session's own
robust reference latency (``SessionResult.reference_ms``, a low percentile of
the non-jumping reference runs) seeds that calibration and is recorded.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol as TypingProtocol

import numpy as np

from devices.measure import median_ci_halfwidth, reference_jumps, time_summary
from devices.profile import DeviceProfile

ProgressFn = Callable[[dict[str, Any]], None]
_CHECK_EVERY_ROUNDS = 3
#: Other models a round needs before its common move is read from them (:func:`_peer_normalised`).
MIN_PEERS = 3
_DISAGREEMENT_MADS = 4.0
_MAD_TO_SIGMA = 1.4826


class Runner(TypingProtocol):
    """Anything that can time one inference of a loaded model."""

    provider: str

    def run_ms(self) -> float: ...

    def stop(self) -> None:
        """Make the inference running now, and every later one, fail (called from another thread)."""


class SessionOverrun(RuntimeError):
    """A session ran past its bound: one inference longer than ``protocol.max_seconds``, or the whole
    session (warm-up and rounds) longer than :meth:`DeviceProfile.session_limit_s` before it had
    finished its warm-up and ``protocol.min_rounds``."""


class _DeadlineReached(Exception):
    """The session's bound passed (:meth:`DeviceProfile.session_limit_s`); raised between or during inferences."""


class _Watchdog:
    """Stops every runner of a session once one inference has run longer than ``limit_s``, or past ``deadline``.

    A session holds the host, so it must end, and a model can loop: an ONNX
    ``Loop`` of 10^15 trips ran for as long as it was let while the host's
    other measurements waited.  An honest inference is shorter than the
    session's budget (``max_seconds``), so that is the limit (``fired``).
    The session itself checks its bound between inferences; an inference
    still running once the bound has passed is stopped here too
    (``deadline_passed``), so a slow model cannot carry the session past it
    by more than this thread's wake-up.  One thread for the session, waking
    at least once a second (a timer per run would start a thread between
    timed runs).
    """

    def __init__(self, runners: list[Runner], limit_s: float, deadline: float) -> None:
        self.runners = runners
        self.limit_s = limit_s
        self.deadline = deadline
        self.fired = threading.Event()
        self.deadline_passed = threading.Event()
        self._started: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hwsearch-session-watchdog", daemon=True)

    def watched(self, runner: Runner) -> Runner:
        """``runner`` with each inference watched."""
        return _WatchedRunner(runner, self)

    def run_ms(self, runner: Runner) -> float:
        self._started = time.monotonic()
        try:
            return runner.run_ms()
        except Exception as error:
            if self.deadline_passed.is_set() and not self.fired.is_set():
                raise _DeadlineReached("an inference was stopped at the session's bound") from error
            raise
        finally:
            self._started = None

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.limit_s / 4)):
            started, now = self._started, time.monotonic()
            if started is not None and now - started > self.limit_s:
                self._stop_all(self.fired)
                return
            if started is not None and now >= self.deadline:
                self._stop_all(self.deadline_passed)
                return

    def _stop_all(self, reason: threading.Event) -> None:
        reason.set()
        for runner in self.runners:
            runner.stop()

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class _WatchedRunner:
    """A runner whose inferences its session's :class:`_Watchdog` times."""

    runner: Runner
    watchdog: _Watchdog

    @property
    def provider(self) -> str:
        return self.runner.provider

    def run_ms(self) -> float:
        return self.watchdog.run_ms(self.runner)

    def stop(self) -> None:
        self.runner.stop()


@dataclass
class ModelSamples:
    """Timed samples of one model, each with the indices of its neighbouring references and its round; each sample
    is the mean of ``runs_per_sample`` back-to-back runs (``timing: loop``; one run otherwise)."""

    model_ms: list[float] = field(default_factory=list)
    ref_before: list[int] = field(default_factory=list)
    ref_after: list[int] = field(default_factory=list)
    round_index: list[int] = field(default_factory=list)
    runs_per_sample: int = 1


@dataclass(frozen=True)
class ModelResult:
    """What the protocol found for one model, before it becomes a Measurement."""

    ratio: float
    ratio_low: float
    ratio_ci: float
    n_kept: int
    times: dict[str, float]
    n_runs: int
    runs_per_sample: int = 1


@dataclass(frozen=True)
class SessionResult:
    """All models of one session plus the session-wide reference scale."""

    models: list[ModelResult]
    reference_ms: float
    reference_summary: dict[str, float]
    rounds: int
    reference_runs: int
    dropped_reference_jumps: int
    seconds: float
    references: list[float] = field(default_factory=list, repr=False)
    samples: list[ModelSamples] = field(default_factory=list, repr=False)

    def evaluated(self, profile: DeviceProfile) -> list[ModelResult]:
        """The session's models judged again from its samples under ``profile``'s protocol settings.

        For comparing settings on the same samples (``bench/peer_normalisation.py``).
        """
        return _evaluate(self.references, self.samples, profile)


def make_runner(model_bytes: bytes, profile: DeviceProfile) -> Runner:
    """A runner for the profile's runtime."""
    if profile.runtime == "openvino":
        from devices.ov import OpenVinoRunner

        return OpenVinoRunner(model_bytes, profile)
    from devices.ort import OrtRunner

    return OrtRunner(model_bytes, profile)


def warm_up(runners: list[Runner], profile: DeviceProfile, session_deadline: float = math.inf) -> None:
    """Run each model ``warmup.runs`` times, then all round-robin until ``warmup.seconds``.

    The round-robin part warms caches, the allocator and the CPU governor
    under the same alternating load the timed rounds will produce.  Each
    run is followed by a check of the session's bound (``session_deadline``,
    a monotonic time; :meth:`DeviceProfile.session_limit_s`): 10,000 runs
    of a 0.32 s model kept an agent, and the host, busy for 53 minutes of a
    session whose ``max_seconds`` was 2.
    """
    for runner in runners:
        for _ in range(profile.warmup.runs):
            runner.run_ms()
            _check_deadline(session_deadline)
    deadline = time.monotonic() + profile.warmup.seconds
    while time.monotonic() < deadline:
        for runner in runners:
            runner.run_ms()
            _check_deadline(session_deadline)


def _check_deadline(deadline: float) -> None:
    """Raise :class:`_DeadlineReached` once the session's bound has passed: one clock read, between runs."""
    if time.monotonic() >= deadline:
        raise _DeadlineReached("the session's bound passed")


def run_protocol(
    reference: Runner,
    models: list[Runner],
    profile: DeviceProfile,
    *,
    progress: ProgressFn | None = None,
    seed: int = 0,
    copies: list[Runner] | None = None,
) -> SessionResult:
    """Measure all models interleaved with the reference; see the module docstring.

    ``copies``, when given, are the same models loaded a second time (in
    the same order as ``models``): odd rounds run the copies, even rounds
    the first loads, and both count as the one model's samples, so a
    model's place in the load order (``protocol.load_twice``) averages out.
    """
    if copies is not None and len(copies) != len(models):
        raise ValueError(f"{len(copies)} copies for {len(models)} models")
    limit_s = profile.protocol.max_seconds
    deadline = time.monotonic() + profile.session_limit_s()
    with _Watchdog([reference, *models, *(copies or [])], limit_s, deadline) as watchdog:
        try:
            return _run_rounds(watchdog.watched(reference), [watchdog.watched(m) for m in models], profile,
                               progress, seed, None if copies is None else [watchdog.watched(c) for c in copies],
                               deadline)
        except _Unfinished as error:
            raise SessionOverrun(f"the session did not finish {error} within its bound of "
                                 f"{profile.session_limit_s():g} s (warmup.seconds + protocol.max_seconds), "
                                 f"so it was stopped; allow it more protocol.max_seconds, or ask for fewer "
                                 f"warm-up runs, rounds or models") from None
        except Exception as error:
            if watchdog.fired.is_set():
                raise SessionOverrun(f"one inference ran longer than the session's whole budget "
                                     f"(protocol.max_seconds, {limit_s:g} s), so it was stopped") from error
            raise


class _Unfinished(Exception):
    """The session's bound passed before the warm-up or ``protocol.min_rounds`` were done; says which."""


def _run_rounds(reference: Runner, models: list[Runner], profile: DeviceProfile, progress: ProgressFn | None,
                seed: int, copies: list[Runner] | None, deadline: float) -> SessionResult:
    """Warm up, then run rounds until the models converge, a cap is hit or the session's bound passes.

    At the bound (``deadline``) the round under way ends where it is and
    the session is judged from the rounds it ran, as at ``max_seconds``; a
    session that had not finished its warm-up or ``min_rounds`` by then has
    nothing to report (:class:`_Unfinished`).
    """
    settings = profile.protocol
    rng = np.random.default_rng(seed)
    warming = Warming.of(profile.timing)
    try:
        warm_up([reference, *models, *(copies or [])], profile, deadline)
        samples = [ModelSamples(runs_per_sample=runs_per_sample(model, warming.sample_ms)) for model in models]
    except _DeadlineReached:
        raise _Unfinished(f"its warm-up ({profile.warmup.runs} runs of each of {len(models) + 1 + len(copies or [])} "
                          f"loaded models, then {profile.warmup.seconds:g} s)") from None
    references: list[float] = []
    active = list(range(len(models)))
    started = time.monotonic()
    rounds = 0
    while active:
        in_turn = copies if copies is not None and rounds % 2 else models
        try:
            _run_round(reference, in_turn, [int(i) for i in rng.permutation(active)], references, samples,
                       warming=warming, round_index=rounds, deadline=deadline)
        except _DeadlineReached:
            if rounds < settings.min_rounds:
                raise _Unfinished(f"protocol.min_rounds ({rounds} of {settings.min_rounds} rounds "
                                  f"over {len(models)} models)") from None
            rounds += 1  # the round cut short keeps the samples it took
            break
        rounds += 1
        elapsed = time.monotonic() - started
        out_of_budget = (rounds >= settings.max_rounds or elapsed >= settings.max_seconds
                         or time.monotonic() >= deadline)
        if rounds >= settings.min_rounds and (rounds % _CHECK_EVERY_ROUNDS == 0 or out_of_budget):
            active = _unconverged(_evaluate(references, samples, profile), settings.ci_target)
            if progress is not None:
                progress({"round": rounds, "active": len(active), "models": len(models), "elapsed_s": elapsed})
            if out_of_budget:
                break
    return _finish(references, samples, profile, rounds, time.monotonic() - started)


def _unconverged(results: list[ModelResult], ci_target: float) -> list[int]:
    """The models whose CI is wider than the target, converged ones included.

    A model that left the rotation is judged again with every check: its
    samples' filters depend on references run after it (the jump filter's
    scale is the spread of all of the session's references, its rolling
    median that of the neighbouring ones), so a calmer stretch later in the
    session can drop some of its samples.  Judged only once, 11 of
    76 rows in four sessions of OFA-MobileNetV3 subnets at 160 px on the
    1-thread device left with a CI within 1% and ended with 1.02-1.83%: not
    stable, so each session was measured again whole, where a few more
    rounds of the one model settle it.
    """
    return [i for i, result in enumerate(results) if not result.ratio_ci <= ci_target]


@dataclass(frozen=True)
class Warming:
    """What runs untimed before each timed run, by the profile's ``timing``.

    ``model_ms``: each model runs untimed until this much time has passed
    (at least once; ``None``: not at all).  ``reference_ms``: the same for
    the reference (``None``: it is timed as it comes).  ``sample_ms``: a
    timed sample runs each model back to back about this long, and is their
    mean (:func:`runs_per_sample`; ``None``: one run).
    """

    model_ms: float | None
    reference_ms: float | None
    sample_ms: float | None = None

    @classmethod
    def of(cls, timing: str) -> Warming:
        return {"warm": cls(WARM_MS, WARM_MS), "loop": cls(WARM_MS, WARM_MS, SAMPLE_MS), "hot": cls(0.0, None),
                "interleaved": cls(None, None)}[timing]


#: ``timing: warm``: untimed runs of a model (or the reference) before each timed run of it, in milliseconds.
#: On this host a mid-size model (0.6 ms) timed after one untimed run of itself read 1.12-1.36x what a loop of it
#: reads (the more so after a large model), after runs for 5 ms 1.01x; the reference after a large model 1.31x,
#: warmed for 5 ms 1.01x (docs/measurement.md).
WARM_MS = 5.0
#: ``timing: loop``: how long one timed sample runs a model back to back, in milliseconds.  On this host a
#: 0.06-0.42 ms demo subnet's single warm runs spread 7.6-31% (1.4826 MAD over median, per model; 20% median)
#: and its 1 ms samples 7.0-15.6% (11%); the median ratio's CI over 150 rounds went from 5.8% to 2.4%
#: (median of 8 models, before peer normalisation; docs/measurement.md).
SAMPLE_MS = 1.0
#: The most runs one sample takes, so that a model of a few microseconds does not hold a round for ever.
MAX_RUNS_PER_SAMPLE = 64


def runs_per_sample(runner: Runner, sample_ms: float | None) -> int:
    """How many back-to-back runs make one timed sample of ``runner``: enough to fill ``sample_ms`` at its
    median of three runs, at least one, at most :data:`MAX_RUNS_PER_SAMPLE`; one where ``sample_ms`` is None,
    or where one run already takes ``sample_ms`` (a large model is timed as under ``warm``, one run more).

    Fixed for the session, after the warm-up: a count that stopped once the
    runs' sum passed ``sample_ms`` would end slow samples sooner than fast
    ones, and their mean would lean towards the slow runs.  Only models are
    timed so; the reference is always one run, so that the ruler it sets is
    the same quantity in every session whatever the host's speed (a 1 ms
    reference would have flipped between one and two runs, Y19).
    """
    if sample_ms is None:
        return 1
    first = runner.run_ms()
    if not first < sample_ms:
        return 1
    typical = float(np.median([first, runner.run_ms(), runner.run_ms()]))
    wanted = math.ceil(sample_ms / typical) if typical > 0 else MAX_RUNS_PER_SAMPLE
    return int(min(MAX_RUNS_PER_SAMPLE, max(1, wanted)))


def _sample_ms(runner: Runner, runs: int) -> float:
    """One timed sample: the mean of ``runs`` back-to-back runs of ``runner``."""
    if runs == 1:
        return runner.run_ms()
    return sum(runner.run_ms() for _ in range(runs)) / runs


def _warm(runner: Runner, for_ms: float | None) -> None:
    """Run ``runner`` untimed until ``for_ms`` have passed on its clock, at least once; ``None``: not at all."""
    if for_ms is None:
        return
    spent = runner.run_ms()
    while spent < for_ms:
        spent += runner.run_ms()


def _run_round(
    reference: Runner, models: list[Runner], order: list[int], references: list[float], samples: list[ModelSamples],
    *, warming: Warming, round_index: int, deadline: float = math.inf,
) -> None:
    """One round, ``R M R M R ...``, each timed run warmed as ``warming`` says; past ``deadline`` it stops after the
    sample just taken.

    The bound is read once per sample, outside the timed runs, so a round of
    many slow models cannot carry the session past it.  The round's first
    reference is warmed too: between rounds the session checks its models
    and reports, and a sample dropped for a reference jump costs more than
    one warming.
    """
    _warm(reference, warming.reference_ms)
    references.append(reference.run_ms())
    for index in order:
        record = samples[index]
        _warm(models[index], warming.model_ms)  # the timed run below finds this model's data cached
        model_ms = _sample_ms(models[index], record.runs_per_sample)
        _warm(reference, warming.reference_ms)  # the model just run evicted the reference's data
        references.append(reference.run_ms())
        record.model_ms.append(model_ms)
        record.ref_before.append(len(references) - 2)
        record.ref_after.append(len(references) - 1)
        record.round_index.append(round_index)
        _check_deadline(deadline)


def _kept_ratios(ref: np.ndarray, usable: np.ndarray, record: ModelSamples,
                 profile: DeviceProfile) -> tuple[np.ndarray, np.ndarray]:
    """Ratios of one model's samples that survive the reference filters, and the round of each.

    The slow-state ceiling is taken over this model's own pair references:
    under ``timing: hot`` a large model slows the reference run right after
    it (caches), so a session-wide ceiling would drop its samples more often
    than a small model's (``warm`` warms the reference, but ``hot`` and
    ``interleaved`` profiles still measure so).
    """
    before, after = np.asarray(record.ref_before), np.asarray(record.ref_after)
    pair_ref = np.sqrt(ref[before] * ref[after])
    disagreement = np.abs(np.log(ref[before] / ref[after]))
    scale = max(_MAD_TO_SIGMA * float(np.median(disagreement)), 1e-3)
    keep = usable[before] & usable[after] & (disagreement <= _DISAGREEMENT_MADS * scale)
    if keep.any():
        keep &= pair_ref <= np.percentile(pair_ref[keep], profile.protocol.reference_ceiling_percentile)
    return np.asarray(record.model_ms)[keep] / pair_ref[keep], np.asarray(record.round_index, dtype=int)[keep]


def _peer_normalised(kept: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Each model's ratios divided by its round's common move, read from the session's other models.

    Within a round (a few milliseconds per model) the host is in one state,
    and every model of the session moves with it: a model's ratio over its
    session median, taken in the same round, is the round's move as that
    model sees it.  A model's ratio is divided by the median of that over
    the *other* models measured in the round (at least :data:`MIN_PEERS`;
    fewer, and the ratio stays as it was), so a model never normalises
    itself and a session of one model is left alone.  The reference cannot
    do this: on the demo's 1-thread device (2026-12-01), sixteen sessions of
    16 demo subnets had rounds whose median move over the subnets ranged
    0.66-1.47 within a session while the ratios already divided the
    reference out.  Divided by their rounds' moves, the subnets' CIs went
    from 3.35% to 1.68% (median; 4.21% to 1.84% on the 2-thread device),
    and their session medians, each session's common offset divided out,
    from 1.62% to 1.28% from their medians over the sessions (1.42% to
    1.21%).  The session's own level is kept: the moves are relative to
    each model's session median.
    """
    rounds = max((int(r.max()) + 1 for _, r in kept if r.size), default=0)
    table = np.full((rounds, len(kept)), np.nan)
    for column, (ratios, round_index) in enumerate(kept):
        if ratios.size:
            table[round_index, column] = ratios / np.median(ratios)
    normalised = []
    for column, (ratios, round_index) in enumerate(kept):
        peers = np.delete(table[round_index], column, axis=1)
        enough = np.isfinite(peers).sum(axis=1) >= MIN_PEERS
        move = np.ones(ratios.size)
        if enough.any():
            move[enough] = np.nanmedian(peers[enough], axis=1)
        normalised.append(ratios / move)
    return normalised


def _evaluate(references: list[float], samples: list[ModelSamples], profile: DeviceProfile) -> list[ModelResult]:
    ref = np.asarray(references)
    usable = ~reference_jumps(ref, profile.protocol.reference_jump_mads)
    kept = [_kept_ratios(ref, usable, record, profile) for record in samples]
    all_ratios = (_peer_normalised(kept) if profile.protocol.peer_normalisation
                  else [ratios for ratios, _ in kept])
    results = []
    for record, ratios in zip(samples, all_ratios):
        enough = ratios.size >= 3
        results.append(
            ModelResult(
                ratio=float(np.median(ratios)) if enough else math.nan,
                ratio_low=float(np.percentile(ratios, profile.protocol.low_percentile)) if enough else math.nan,
                ratio_ci=median_ci_halfwidth(ratios),
                n_kept=int(ratios.size),
                times=time_summary(np.asarray(record.model_ms)),
                n_runs=len(record.model_ms) * record.runs_per_sample,
                runs_per_sample=record.runs_per_sample,
            )
        )
    return results


def _finish(
    references: list[float], samples: list[ModelSamples], profile: DeviceProfile, rounds: int, seconds: float
) -> SessionResult:
    ref = np.asarray(references)
    jumps = reference_jumps(ref, profile.protocol.reference_jump_mads)
    return SessionResult(
        models=_evaluate(references, samples, profile),
        reference_ms=float(np.percentile(ref[~jumps], profile.protocol.low_percentile)),
        reference_summary=time_summary(ref),
        rounds=rounds,
        reference_runs=int(ref.size),
        dropped_reference_jumps=int(jumps.sum()),
        seconds=seconds,
        references=list(references),
        samples=samples,
    )
