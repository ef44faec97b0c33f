"""Predictor-guided refinement: search on predictions, measure the most promising, refit, repeat.

DyNAS-T's LINAS alternates predictor-driven search with real measurements.
This loop keeps the idea and fixes what makes its front untrustworthy:

* Candidates come from the *predicted* front of an NSGA-II run in which each
  objective is shifted by ``kappa`` predicted standard deviations toward
  optimism (accuracy ``mean + kappa*std``, latency ``mean - kappa*std``), so
  uncertain regions are explored rather than ignored.
* A round's batch is chosen greedily by hypervolume improvement over the
  front measured so far, each pick entering the front at its predicted mean
  before the next pick is scored, so a batch spreads along the front instead
  of piling up in one spot.
* Given :class:`~hwsearch.acquisition.LatencyTargets` (budgets or a band), the
  search is confined to the latencies that matter and the batch goes where the
  best measured subnet under each budget (or the front inside the band) is
  expected to improve most; see :mod:`hwsearch.acquisition`.
* The cold-start sample is spread over log MACs, not uniform in genes, and a
  subnet already measured (by this run or before it) is never measured again.
* The returned front holds only measured subnets, ranked by measured values,
  with the prediction made *before* each measurement beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from hwsearch.acquisition import LatencyTargets, pick_for_band, pick_for_budgets
from hwsearch.problem import (
    Limit,
    Objective,
    Predictor,
    SubnetProblem,
    UncertainPredictor,
    accuracy_latency,
    analytic_costs,
)
from hwsearch.pipeline import select_subnets
from hwsearch.results import Candidate, ParetoFront, hypervolume, non_dominated
from hwsearch.checks import whole_number
from hwsearch.search import SearchSettings, number_within, search
from hwsearch.space import ArchConfig, SearchSpace
from predictors.features import ArchFeaturizer

__all__ = [
    "Measurer",
    "Observation",
    "Optimistic",
    "RefineResult",
    "RefineSettings",
    "TrainablePredictor",
    "refine",
]

ACCURACY, LATENCY = "accuracy", "latency_ms"
# What a limit may bound: the two measured metrics and the analytic counts (see _Loop._with_costs).
LIMITABLE = (ACCURACY, LATENCY, "params", "macs")


class Measurer(Protocol):
    """Real measurements of subnets: latency on the device, accuracy on the validation data."""

    def measure_latency(self, archs: Sequence[ArchConfig]) -> list[float]: ...

    def measure_accuracy(self, archs: Sequence[ArchConfig]) -> list[float]: ...


class TrainablePredictor(UncertainPredictor, Protocol):
    """A predictor the loop can refit on everything measured so far, with its uncertainty."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> object: ...


class Optimistic:
    """A predictor's optimistic bound: ``mean ± kappa*std``, toward better (+ when maximised)."""

    def __init__(self, predictor: UncertainPredictor, kappa: float, sense: str) -> None:
        self.predictor = predictor
        self.sign = kappa if sense == "max" else -kappa

    def predict(self, X: np.ndarray) -> np.ndarray:
        mean, std = self.predictor.predict_dist(X)
        return np.asarray(mean, dtype=np.float64) + self.sign * np.asarray(std, dtype=np.float64)

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.predictor.predict_dist(X)
        return self.predict(X), np.asarray(std, dtype=np.float64)


@dataclass(frozen=True)
class RefineSettings:
    """Budget and exploration settings; recorded in the returned front."""

    max_measurements: int = 100
    per_round: int = 10
    initial: int = 20
    max_seconds: float | None = None
    kappa: float = 1.0
    seed: int = 0
    search: SearchSettings = field(default_factory=lambda: SearchSettings(pop_size=64, n_gen=40))

    def __post_init__(self) -> None:
        """Check every field where it is set, as :class:`SearchSettings` does: ``initial=2.5`` or
        ``kappa=nan`` would otherwise fail, or steer nothing, rounds after measuring began.
        ``initial`` is at least 2 because the predictors need data to fit."""
        for name, least in (("max_measurements", 0), ("per_round", 1), ("initial", 2), ("seed", 0)):
            object.__setattr__(self, name, whole_number(getattr(self, name), name, least))
        object.__setattr__(self, "kappa", number_within(self.kappa, "kappa", 0.0, None))
        if self.max_seconds is not None:
            object.__setattr__(self, "max_seconds", number_within(self.max_seconds, "max_seconds", 0.0, None))
        if not isinstance(self.search, SearchSettings):
            raise TypeError(f"search must be SearchSettings, got {self.search!r}")

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "search"}
        return out | {"search": self.search.to_dict()}


@dataclass(frozen=True)
class Observation:
    """One measured subnet, with what the predictors said before it was measured."""

    arch: ArchConfig
    accuracy: float
    latency_ms: float
    predicted: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    round: int = 0


@dataclass(frozen=True)
class RefineResult:
    """The measured front plus every observation in measurement order (the audit trail)."""

    front: ParetoFront
    observations: tuple[Observation, ...]
    rounds: int
    seconds: float


def refine(
    space: SearchSpace,
    accuracy: TrainablePredictor,
    latency: TrainablePredictor,
    measurer: Measurer,
    *,
    device: str,
    settings: RefineSettings = RefineSettings(),
    known: Sequence[Observation] = (),
    limits: Sequence[Limit] = (),
    reference_point: Sequence[float] | None = None,
    on_round: Callable[[int, Sequence[Observation]], None] | None = None,
    compute: Callable[[], AbstractContextManager[Any]] = nullcontext,
    targets: LatencyTargets = LatencyTargets(),
) -> RefineResult:
    """Refine a front with real measurements until ``settings`` runs out of budget.

    ``known`` are measurements made earlier (another run, another device's
    accuracy): they train the predictors and are never measured again, and
    they belong to the returned front.  ``max_measurements`` counts only new
    measurements.  ``accuracy`` and ``latency`` are refitted in place.
    Each round's fitting and searching run inside ``compute()`` (a job
    passes the host's compute lock, so this CPU work pauses while another
    device's session measures); measuring runs outside it.
    ``targets`` aims the measurements at the latencies the user will pick
    from; the returned front records them and answers for each budget.
    """
    start = time.perf_counter()
    loop = _Loop(space, accuracy, latency, measurer, settings, limits, known, reference_point,
                 compute, targets)
    loop.initial_design()
    while loop.budget_left() and not loop.timed_out(start):
        if not loop.step():
            break
        if on_round is not None:
            on_round(loop.round, loop.new_observations())
    front = loop.front(device)
    return RefineResult(front=front, observations=tuple(loop.observations), rounds=loop.round,
                        seconds=time.perf_counter() - start)


class _Loop:
    """State of one refinement run; each method is one step of :func:`refine`."""

    def __init__(self, space: SearchSpace, accuracy: TrainablePredictor,
                 latency: TrainablePredictor, measurer: Measurer, settings: RefineSettings,
                 limits: Sequence[Limit], known: Sequence[Observation],
                 reference_point: Sequence[float] | None,
                 compute: Callable[[], AbstractContextManager[Any]],
                 targets: LatencyTargets = LatencyTargets()) -> None:
        self.space, self.measurer, self.settings = space, measurer, settings
        self.compute, self.targets = compute, targets
        self.predictors = {ACCURACY: accuracy, LATENCY: latency}
        self.objectives = accuracy_latency(LATENCY)
        self.limits = tuple(limits)
        self.observations: list[Observation] = []
        self.keys: set[str] = set()
        for obs in known:
            self._add(obs)
        self.n_known = len(self.observations)
        self.round = 0
        self.rng = np.random.default_rng(settings.seed)
        self.reference = None if reference_point is None else np.asarray(reference_point, float)
        self._check_aims()

    def _check_aims(self) -> None:
        """Refuse unusable limits and targets now, before the initial design spends measurements.

        A limit on a metric refinement does not have (``latncy_ms``) used to
        fail only when the first round built its problem, after the cold-start
        subnets were measured: a typo lost them.  Building that problem here
        also checks what only it knows (counts on a space without a layout).
        """
        for lim in self.limits:
            if not isinstance(lim, Limit):
                raise TypeError(f"limits must be Limit objects, got {lim!r}")
        unknown = sorted({lim.metric for lim in self.limits} - set(LIMITABLE))
        if unknown:
            raise ValueError(f"limits name metric(s) {unknown} refinement does not have; it "
                             f"limits {list(LIMITABLE)}")
        if not isinstance(self.targets, LatencyTargets):
            raise TypeError(f"targets must be LatencyTargets, got {self.targets!r}")
        self._problem()

    # ------------------------------------------------------------------ budget

    def n_new(self) -> int:
        return len(self.observations) - self.n_known

    def budget_left(self) -> int:
        return self.settings.max_measurements - self.n_new()

    def timed_out(self, start: float) -> bool:
        limit = self.settings.max_seconds
        return limit is not None and time.perf_counter() - start >= limit

    def new_observations(self) -> list[Observation]:
        return [o for o in self.observations[self.n_known:] if o.round == self.round]

    # ------------------------------------------------------------------ steps

    def initial_design(self) -> None:
        """Measure unmeasured subnets until ``initial`` observations exist (cold start).

        The sample is spread over log MACs (as the profiling pipeline does), so
        the first fit sees the small and large ends, not only mid-sized subnets.
        """
        want = min(self.settings.initial - len(self.observations), self.budget_left())
        if want > 0:
            self._measure(self._spread_unmeasured(want), predicted=None)

    def step(self) -> bool:
        """One round: refit, search optimistically, pick a batch, measure it.  False when stuck."""
        self.round += 1
        with self.compute():
            batch = self._choose_batch()
        if batch is None:
            return False
        archs, predicted = batch
        self._measure(archs, predicted=predicted)
        return True

    def _choose_batch(self) -> tuple[list[ArchConfig], tuple[dict, dict]] | None:
        """Refit, search optimistically and pick this round's batch (None when none is left)."""
        self._fit()
        pool, F_opt = self._pool()
        k = min(self.settings.per_round, self.budget_left())
        if len(pool) < k:
            pool = np.vstack([pool, self.space.encode_many(self._random_unmeasured(k - len(pool)))])
            F_opt = self._optimistic_F(pool)
        if len(pool) == 0:
            return None
        mean, std = self._predict_dist(pool)
        picks = self._pick(F_opt, mean, std, k)
        chosen = pool[picks]
        return ([self.space.decode(x) for x in chosen],
                ({m: v[picks] for m, v in mean.items()}, {m: v[picks] for m, v in std.items()}))

    def front(self, device: str) -> ParetoFront:
        """The measured subnets that satisfy the limits by their measured values, non-dominated."""
        candidates = self._candidates()
        feasible = [c for c in candidates if self._within_limits(c)]
        return ParetoFront.build(
            device=device, space_name=self.space.name, candidates=feasible,
            objectives=self.objectives, reference_point=self._reference(), seed=self.settings.seed,
            settings={"refine": self.settings.to_dict(), "n_measured": len(self.observations),
                      "n_new": self.n_new(), "rounds": self.round,
                      "limits": [lim.__dict__ for lim in self.limits],
                      "targets": self.targets.to_dict()},
        )

    # ------------------------------------------------------------------ pieces

    def _fit(self) -> None:
        X = self._X()
        self.predictors[ACCURACY].fit(X, np.array([o.accuracy for o in self.observations]))
        self.predictors[LATENCY].fit(X, np.array([o.latency_ms for o in self.observations]))

    def _problem(self) -> SubnetProblem:
        """The search on optimistic predictions, under the limits and the targets' ceiling."""
        metrics: dict[str, Predictor] = {
            name: Optimistic(pred, self.settings.kappa, _sense(self.objectives, name))
            for name, pred in self.predictors.items()
        }
        return SubnetProblem(self.space, self._with_costs(metrics), self.objectives,
                             self.limits + self._target_limits())

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        """Unmeasured subnets on the optimistic predicted front, with their optimistic ``F``."""
        seed = self.settings.seed * 1000 + self.round
        result = search(self._problem(), replace(self.settings.search, seed=seed))
        fresh = [i for i, x in enumerate(result.X) if self.space.decode(x).key() not in self.keys]
        X = result.X[fresh]
        F = np.column_stack([o.to_min(result.values[o.metric][fresh]) for o in self.objectives])
        return X, F

    def _target_limits(self) -> tuple[Limit, ...]:
        """With targets, the search looks only up to the slowest target (+10% slack).

        The limit applies to the optimistic latency, so a subnet predicted just
        past the slowest budget but plausibly under it still competes.
        """
        if not self.targets:
            return ()
        return (Limit(LATENCY, upper=1.1 * self.targets.ceiling_ms),)

    def _with_costs(self, metrics: dict[str, Predictor]) -> dict[str, Predictor]:
        """Limits on ``params``/``macs`` are checked with the exact analytic counts.

        Limits on accuracy or latency see the optimistic values, so the search
        still explores subnets whose predicted value sits just past a limit.
        """
        if any(lim.metric in ("params", "macs") for lim in self.limits):
            return {**analytic_costs(self.space), **metrics}
        return metrics

    def _optimistic_F(self, X: np.ndarray) -> np.ndarray:
        columns = []
        for o in self.objectives:
            opt = Optimistic(self.predictors[o.metric], self.settings.kappa, o.sense)
            columns.append(o.to_min(opt.predict(X)))
        return np.column_stack(columns)

    def _predict_dist(self, X: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        mean, std = {}, {}
        for name, pred in self.predictors.items():
            m, s = pred.predict_dist(X)
            mean[name], std[name] = np.asarray(m, np.float64), np.asarray(s, np.float64)
        return mean, std

    def _pick(self, F_opt: np.ndarray, mean: dict[str, np.ndarray],
              std: dict[str, np.ndarray], k: int) -> list[int]:
        """This round's rows: by the targets' rules when targets are set, else the whole front.

        Budgets come first (expected improvement under each), the band fills
        what they leave, and when nothing is expected to improve any more the
        rest of the batch goes to the rows whose predictions are most uncertain.
        """
        F_mean = np.column_stack([o.to_min(mean[o.metric]) for o in self.objectives])
        k = min(k, len(F_opt))
        if not self.targets:
            picks = self._greedy_hvi(F_opt, F_mean, k)
        else:
            picks = self._targeted(F_opt, F_mean, mean, std, k)
        return self._fill_uncertain(picks, F_opt, F_mean, k)

    def _targeted(self, F_opt: np.ndarray, F_mean: np.ndarray, mean: dict[str, np.ndarray],
                  std: dict[str, np.ndarray], k: int) -> list[int]:
        acc = np.array([o.accuracy for o in self.observations])
        lat = np.array([o.latency_ms for o in self.observations])
        picks: list[int] = []
        if self.targets.budgets_ms:
            picks = pick_for_budgets(mean[ACCURACY], std[ACCURACY], mean[LATENCY], std[LATENCY],
                                     acc, lat, self.targets.budgets_ms, k)
        if self.targets.band_ms is not None and len(picks) < k:
            rest = np.array([i for i in range(len(F_opt)) if i not in picks], dtype=np.int64)
            believed = np.vstack([self._measured_F(), F_mean[picks]])
            more = pick_for_band(F_opt[rest], F_mean[rest], believed, self.targets.band_ms,
                                 float(self._reference()[0]), k - len(picks))
            picks += [int(rest[i]) for i in more]
        return picks

    def _fill_uncertain(self, picks: list[int], F_opt: np.ndarray, F_mean: np.ndarray,
                        k: int) -> list[int]:
        """Complete the batch with the rows whose predictions are most uncertain."""
        span = np.maximum(np.ptp(self._measured_F(), axis=0), 1e-12)
        spread = (np.abs(F_opt - F_mean) / span).sum(axis=1)
        for i in np.argsort(-spread, kind="stable"):
            if len(picks) >= k:
                break
            if int(i) not in picks:
                picks.append(int(i))
        return picks

    def _greedy_hvi(self, F_opt: np.ndarray, F_mean: np.ndarray, k: int) -> list[int]:
        """Pick up to ``k`` rows, each maximising optimistic hypervolume gain; believe its mean."""
        front = self._measured_F()
        ref = self._reference()
        picks: list[int] = []
        base = hypervolume(front, ref)
        for _ in range(k):
            gains = np.array([
                -np.inf if i in picks else hypervolume(np.vstack([front, F_opt[i]]), ref) - base
                for i in range(len(F_opt))
            ])
            best = int(np.argmax(gains))
            if gains[best] <= 0:
                break
            picks.append(best)
            front = np.vstack([front, F_mean[best]])
            front = front[non_dominated(front)]
            base = hypervolume(front, ref)
        return picks

    def _measure(self, archs: list[ArchConfig],
                 predicted: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None) -> None:
        latencies = self.measurer.measure_latency(archs)
        accuracies = self.measurer.measure_accuracy(archs)
        for i, (arch, lat, acc) in enumerate(zip(archs, latencies, accuracies)):
            pred = {m: float(v[i]) for m, v in predicted[0].items()} if predicted else {}
            spread = {m: float(v[i]) for m, v in predicted[1].items()} if predicted else {}
            self._add(Observation(arch, float(acc), float(lat), pred, spread, self.round))

    def _add(self, obs: Observation) -> None:
        key = obs.arch.key()
        if key in self.keys:
            raise ValueError(f"{key} was measured twice; refinement never re-measures a subnet")
        self.keys.add(key)
        self.observations.append(obs)

    def _spread_unmeasured(self, n: int) -> list[ArchConfig]:
        """``n`` unmeasured subnets spread over log MACs (random without a layout to count)."""
        if self.space.layout is None:
            return self._random_unmeasured(n)
        seed = int(self.rng.integers(2**31))
        return select_subnets(self.space, n, seed=seed, exclude=sorted(self.keys))

    def _random_unmeasured(self, n: int) -> list[ArchConfig]:
        """Up to ``n`` distinct random subnets not measured yet (fewer if the space runs out)."""
        out: dict[str, ArchConfig] = {}
        for _ in range(100):
            for arch in self.space.sample(self.rng, 4 * n):
                if arch.key() not in self.keys and len(out) < n:
                    out.setdefault(arch.key(), arch)
            if len(out) >= n:
                break
        return list(out.values())

    def _X(self) -> np.ndarray:
        return self.space.encode_many([o.arch for o in self.observations])

    def _measured_F(self) -> np.ndarray:
        F = np.array([[-o.accuracy, o.latency_ms] for o in self.observations], dtype=np.float64)
        return F[non_dominated(F)] if len(F) else np.zeros((0, 2))

    def _reference(self) -> np.ndarray:
        """The given reference point, else (fixed at first use) the worst measured values + 10% of their range.

        Fixed so that every round's hypervolume, and the gain the batch
        choice scores, are against one point; it is taken from the first
        observations (the space-filling initial subnets), so a later point
        beyond it is still on the front but adds no hypervolume.
        """
        if self.reference is None and not self.observations:
            return np.zeros(len(self.objectives))
        if self.reference is None:
            F = np.array([[-o.accuracy, o.latency_ms] for o in self.observations])
            self.reference = F.max(axis=0) + 0.1 * np.maximum(np.ptp(F, axis=0), 1e-9)
        return self.reference

    def _candidates(self) -> list[Candidate]:
        """Every observation as a :class:`Candidate`; MACs/params are analytic (needs a layout)."""
        n = len(self.observations)
        macs: list[int | None] = [None] * n
        params: list[int | None] = [None] * n
        if self.space.layout is not None and n:
            table = ArchFeaturizer(self.space).costs(self._X())
            macs, params = table.macs.astype(int).tolist(), table.params.astype(int).tolist()
        return [
            Candidate(arch=o.arch, measured={ACCURACY: o.accuracy, LATENCY: o.latency_ms},
                      predicted=dict(o.predicted), spread=dict(o.spread), macs=macs[i],
                      params=params[i])
            for i, o in enumerate(self.observations)
        ]

    def _within_limits(self, c: Candidate) -> bool:
        values = {**c.measured, "macs": c.macs, "params": c.params}
        for lim in self.limits:
            v = values.get(lim.metric)
            if v is None:
                continue
            if any(g > 0 for g in lim.violations(np.float64(v))):
                return False
        return True


def _sense(objectives: Sequence[Objective], metric: str) -> str:
    return next(o.sense for o in objectives if o.metric == metric)
