"""NSGA-II over a :class:`~hwsearch.problem.SubnetProblem`: seeded, stoppable, warm-startable.

:func:`search` runs NSGA-II's generational loop on plain arrays.  The parts
are pymoo's - the problem definition, compiled non-dominated sorting,
crowding distance, SBX - but the population is kept as ``(n, n_var)``
arrays instead of pymoo ``Individual`` objects: with vectorised objectives,
pymoo's per-individual bookkeeping (``Population.get``/``set``, a duplicate
check re-hashing the population each mating round, the archive's
``np.unique``) cost about 67 µs per individual, far more than the objectives.
Here each individual is canonicalised and hashed once, when it is born; the
hash goes into a run-wide set, so no subnet is ever evaluated twice (also
across generations, not only within one).

Stopping: after ``n_gen`` generations (the first is the initial population),
or at ``max_evals`` evaluations (exactly: the last generation is cut to fit),
or once ``max_seconds`` have passed (checked after each generation), or when
the per-generation ``callback`` returns true.  ``initial`` warm-starts the
run from subnets, gene rows or a previous front; they are all evaluated.

Besides the final population, every feasible individual evaluated is offered
to an archive of non-dominated points: NSGA-II's last population can lose
front points to crowding, the archive does not.  The archive keeps the values
each point was scored with, so the result needs no re-scoring batch and
``n_evals`` is every evaluation the run made.

:func:`build_nsga2` still assembles the same operators as a pymoo ``NSGA2``
object for code that drives pymoo's ``minimize`` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.population import Population
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from hwsearch.operators import (
    CROSSOVERS,
    CrossoverKind,
    GeneCrossover,
    GeneMutation,
    canonical,
    crossover,
    mutate,
    tournament,
)
from hwsearch.checks import whole_number
from hwsearch.problem import Objective, SubnetProblem, finite_number
from hwsearch.results import (
    Candidate,
    ParetoFront,
    best_under,
    fastest_above,
    knee,
    non_dominated,
    query_metrics,
)
from hwsearch.space import ArchConfig, SearchSpace

__all__ = ["AnchoredSampling", "CanonicalDuplicates", "SearchProgress", "SearchResult",
           "SearchSettings", "StopReason", "build_nsga2", "number_within", "search"]

StopReason = Literal["n_gen", "max_evals", "max_seconds", "callback", "exhausted"]
_SORTING = NonDominatedSorting()
_MAX_MATING_ROUNDS = 20


@dataclass(frozen=True)
class SearchSettings:
    """NSGA-II settings; recorded with every front so a run can be repeated.

    ``crossover`` is ``uniform`` (default; each gene from either parent),
    ``two_point`` or ``sbx`` (pymoo's, on gene indices, with
    ``crossover_eta``).  ``mutation_rate`` is the per-gene probability of
    :func:`hwsearch.operators.mutate` (``None``: ``1/n_var``); every
    offspring gets at least one effective gene changed.  ``max_evals`` and
    ``max_seconds`` stop a run early (``None``: no such limit).
    """

    pop_size: int = 100
    n_gen: int = 100
    seed: int = 0
    crossover: CrossoverKind = "uniform"
    crossover_prob: float = 0.9
    crossover_eta: float = 15.0
    mutation_rate: float | None = None
    max_evals: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        """Check every field where it is set: a bad value would otherwise fail (or be
        ignored) generations later, e.g. ``pop_size=10.5`` as a slicing TypeError and
        ``crossover_prob=5`` as a run that silently always crosses over."""
        for name, least in (("pop_size", 2), ("n_gen", 1), ("seed", 0)):
            self._set(name, whole_number(getattr(self, name), name, least))
        if self.crossover not in CROSSOVERS:
            raise ValueError(f"crossover must be one of {CROSSOVERS}, got {self.crossover!r}")
        self._set("crossover_prob", number_within(self.crossover_prob, "crossover_prob", 0.0, 1.0))
        self._set("crossover_eta", number_within(self.crossover_eta, "crossover_eta", 0.0, None))
        if self.mutation_rate is not None:
            rate = finite_number(self.mutation_rate, "mutation_rate")
            if not 0.0 < rate <= 1.0:
                raise ValueError(f"mutation_rate must be in (0, 1], got {self.mutation_rate!r}")
            self._set("mutation_rate", rate)
        if self.max_evals is not None:
            self._set("max_evals", whole_number(self.max_evals, "max_evals", 1))
        if self.max_seconds is not None:
            self._set("max_seconds", number_within(self.max_seconds, "max_seconds", 0.0, None))

    def _set(self, name: str, value: object) -> None:
        """Replace a field of this frozen dataclass by its checked plain ``int``/``float``
        (a numpy scalar given here would otherwise reach ``to_dict`` and the front's JSON)."""
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def number_within(value: object, name: str, low: float, high: float | None) -> float:
    """``value`` as a finite float in ``[low, high]`` (no upper end when ``high`` is None)."""
    number = finite_number(value, name)
    if number < low or (high is not None and number > high):
        span = f"in [{low:g}, {high:g}]" if high is not None else f"≥ {low:g}"
        raise ValueError(f"{name} must be {span}, got {value!r}")
    return number


@dataclass(frozen=True)
class SearchProgress:
    """What a per-generation callback sees; return true from the callback to stop the run.

    ``X``/``F``/``CV`` are the surviving population (canonical genes,
    pymoo's minimisation form, constraint violation); ``front_X``/``front_F``
    the archive of non-dominated feasible points found so far.
    """

    n_gen: int
    n_evals: int
    seconds: float
    X: np.ndarray
    F: np.ndarray
    CV: np.ndarray
    front_X: np.ndarray
    front_F: np.ndarray


Callback = Callable[[SearchProgress], bool | None]


@dataclass(frozen=True)
class SearchResult:
    """The predicted non-dominated set: canonical genes and values in the metrics' own units.

    Rows are unique subnets sorted by the first minimised objective.
    ``values`` holds each objective and limit metric, un-negated.  The query
    helpers (:meth:`knee`, :meth:`best_under`, :meth:`fastest_above`) answer
    like a measured :class:`~hwsearch.results.ParetoFront`'s, on predictions.
    """

    X: np.ndarray
    values: dict[str, np.ndarray]
    n_evals: int
    seconds: float
    settings: SearchSettings = field(default_factory=SearchSettings)
    objectives: tuple[Objective, ...] = ()
    space: SearchSpace | None = field(default=None, repr=False)
    n_gen: int = 0
    stopped_by: StopReason | None = None

    def __len__(self) -> int:
        return len(self.X)

    def candidates(self) -> list[Candidate]:
        """Each row as a :class:`Candidate` with its predicted values."""
        if self.space is None:
            raise ValueError("this result does not know its space; build it with search()")
        return [Candidate(arch=self.space.decode(x),
                          predicted={m: float(v[i]) for m, v in self.values.items()})
                for i, x in enumerate(self.X)]

    def knee(self) -> Candidate | None:
        """The front's knee on the first two objectives (see :meth:`ParetoFront.knee`)."""
        return knee(self.candidates(), self.objectives, "predicted")

    def best_under(self, latency_ms: float, *, latency: str | None = None,
                   accuracy: str | None = None) -> Candidate | None:
        """The most accurate point predicted at most ``latency_ms``.

        ``latency``/``accuracy`` name the metrics compared; by default
        ``latency_ms``/``accuracy``, else the result's only minimised/maximised
        objective (see :func:`hwsearch.results.query_metrics`).
        """
        latency, accuracy = query_metrics(self.objectives, self.values.keys(), latency, accuracy)
        return best_under(self.candidates(), latency_ms, latency, "predicted", accuracy)

    def fastest_above(self, floor: float, *, latency: str | None = None,
                      accuracy: str | None = None) -> Candidate | None:
        """The fastest point predicted at least ``floor`` accurate (metrics as :meth:`best_under`)."""
        latency, accuracy = query_metrics(self.objectives, self.values.keys(), latency, accuracy)
        return fastest_above(self.candidates(), floor, latency, "predicted", accuracy)


class CanonicalDuplicates(DuplicateElimination):
    """pymoo duplicate elimination on canonical genes, by hashing rows (``O(n)`` per check)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _keys(self, pop: Population | None) -> list[bytes]:
        return _keys(self.space.canonical_genes(np.rint(pop.get("X")).astype(np.int64)),
                     _key_dtype(self.space))

    def _do(self, pop: Population, other: Population | None,
            is_duplicate: np.ndarray) -> np.ndarray:
        seen = set(self._keys(other)) if other is not None else set()
        for i, key in enumerate(self._keys(pop)):
            if key in seen:
                is_duplicate[i] = True
            else:
                seen.add(key)
        return is_duplicate


@lru_cache(maxsize=64)
def _anchors(space: SearchSpace) -> np.ndarray:
    """The smallest and largest subnet at every resolution.

    They anchor both ends of the accuracy/latency front; without them a run
    can lose a whole end of it (e.g. every low-resolution subnet) to an
    unlucky first population and never find its way back.
    """
    return np.stack([space.encode(extreme(r)) for r in space.resolutions
                     for extreme in (space.smallest, space.largest)])


class AnchoredSampling(IntegerRandomSampling):
    """pymoo sampling: random integer genes, plus the extreme subnets at every resolution."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: SubnetProblem, n_samples: int, *args: object,
            **kwargs: object) -> np.ndarray:
        X = super()._do(problem, n_samples, *args, **kwargs)
        anchors = _anchors(self.space).copy()
        n = min(len(anchors), n_samples // 2)
        X[:n] = anchors[:n]
        return X


def build_nsga2(space: SearchSpace, settings: SearchSettings) -> NSGA2:
    """pymoo's NSGA-II with hwsearch's sampling, operators and canonical duplicate elimination."""
    return NSGA2(
        pop_size=settings.pop_size,
        sampling=AnchoredSampling(space),
        crossover=GeneCrossover(settings.crossover, settings.crossover_prob,
                                settings.crossover_eta),
        mutation=GeneMutation(space, settings.mutation_rate),
        eliminate_duplicates=CanonicalDuplicates(space),
    )


# --------------------------------------------------------------------------- the loop


def _key_dtype(space: SearchSpace) -> type[np.integer]:
    """The narrowest integer type holding every gene: keys are short and compare fast."""
    return np.uint8 if space.bounds()[1].max(initial=0) < 256 else np.int64


def _keys(Xc: np.ndarray, dtype: type[np.integer]) -> list[bytes]:
    """One hashable key per canonical row, from the row's bytes (one C call for all rows)."""
    rows = np.ascontiguousarray(Xc, dtype=dtype)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel().tolist()


Initial = np.ndarray | Sequence[ArchConfig | Mapping[str, Any]] | SearchResult | ParetoFront | None


def _initial_genes(space: SearchSpace, initial: Initial) -> np.ndarray:
    """Warm-start rows as genes of ``space``; subnets outside the space are refused by name."""
    if initial is None:
        return np.zeros((0, space.n_var), dtype=np.int64)
    if isinstance(initial, SearchResult):
        if initial.space is None:
            return space.checked_genes(np.asarray(initial.X).reshape(-1, space.n_var))
        # As subnets, not genes: a sub-space's front seeds the full space, and another network's front
        # (whose genes have the same shape) seeds this one, each row scored again by this problem.
        return space.encode_many([initial.space.decode(x) for x in initial.space.checked_genes(initial.X)])
    if isinstance(initial, ParetoFront):
        initial = [p.arch for p in initial.points]
    if isinstance(initial, np.ndarray):
        return space.decode_batch(_gene_rows(initial, space.n_var)).genes
    return space.encode_many([_initial_arch(space, arch, i) for i, arch in enumerate(_initial_list(initial))])


def _initial_list(initial: object) -> list[Any]:
    """Warm-start subnets as a list; one subnet, a string or a scalar is refused naming ``initial``."""
    if isinstance(initial, Mapping | ArchConfig):
        raise TypeError("initial must be a list of subnets, got a single one: wrap it in a list")
    if isinstance(initial, (str, bytes)) or not isinstance(initial, Iterable):
        raise TypeError(f"initial must be a list of subnets (ArchConfig or dicts), gene rows, a SearchResult or "
                        f"a ParetoFront; got {type(initial).__name__}")
    return list(initial)


def _initial_arch(space: SearchSpace, arch: object, index: int) -> ArchConfig:
    """One warm-start subnet as this space's :class:`ArchConfig`."""
    if isinstance(arch, Mapping):
        return space.from_dict(arch)
    if not isinstance(arch, ArchConfig):
        raise TypeError(f"initial[{index}] must be an ArchConfig or a dict, got {type(arch).__name__}")
    return arch


def _gene_rows(initial: np.ndarray, n_var: int) -> np.ndarray:
    """Warm-start genes as ``(rows, n_var)``: one row, or rows of exactly ``n_var`` genes.

    A reshape would have cut rows of another width into rows of this one
    (two rows of twice the width became four subnets nobody chose) or failed
    with numpy's own message.
    """
    X = np.asarray(initial)
    if X.ndim == 1 and X.shape[0] == n_var:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != n_var:
        raise ValueError(f"initial genes must be rows of {n_var} genes (this space's n_var), got shape {X.shape}")
    return X


class _Archive:
    """Non-dominated feasible points seen so far, with the values they were scored with.

    Offered rows wait in a buffer and are filtered in one non-dominated pass
    when the buffer is large or the front is read, instead of re-sorting the
    archive every generation.
    """

    def __init__(self, n_var: int, names: Sequence[str], n_obj: int, buffer: int) -> None:
        self.buffer = buffer
        self._X = [np.zeros((0, n_var), dtype=np.int64)]
        self._F = [np.zeros((0, n_obj))]
        self._values: dict[str, list[np.ndarray]] = {name: [np.zeros(0)] for name in names}
        self._pending = 0

    def offer(self, X: np.ndarray, F: np.ndarray, CV: np.ndarray,
              values: dict[str, np.ndarray]) -> None:
        feasible = CV <= 0
        if not feasible.any():
            return
        self._X.append(X[feasible]), self._F.append(F[feasible])
        for name, column in self._values.items():
            column.append(values[name][feasible])
        self._pending += int(feasible.sum())
        if self._pending >= self.buffer:
            self.front()

    def front(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """``(X, F, values)`` of the non-dominated rows offered so far."""
        if len(self._X) > 1:
            F = np.vstack(self._F)
            keep = non_dominated(F)
            self._X, self._F = [np.vstack(self._X)[keep]], [F[keep]]
            self._values = {k: [np.concatenate(v)[keep]] for k, v in self._values.items()}
            self._pending = 0
        return self._X[0], self._F[0], {k: v[0] for k, v in self._values.items()}


def _crowding(F: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of every row within its front, all fronts in one pass.

    pymoo's definition (per-objective neighbour gaps normalised by the
    front's range, boundary points infinite, fronts of one or two points
    infinite), vectorised over fronts instead of called once per front.
    """
    n, n_obj = F.shape
    cd = np.zeros(n)
    for j in range(n_obj):
        order = np.lexsort((F[:, j], rank))
        f, r = F[order, j], rank[order]
        same = r[1:] == r[:-1]
        same_prev, same_next = np.insert(same, 0, False), np.append(same, False)
        gap = f[1:] - f[:-1]
        starts = np.flatnonzero(~same_prev)
        sizes = np.diff(np.append(starts, n))
        span = np.repeat(f[starts + sizes - 1] - f[starts], sizes)
        with np.errstate(invalid="ignore", divide="ignore"):
            near = (np.where(same_prev, np.insert(gap, 0, 0.0), np.inf)
                    + np.where(same_next, np.append(gap, 0.0), np.inf)) / span
        cd[order] += np.where(span > 0, near, 0.0)
    cd /= n_obj
    small = np.bincount(rank, minlength=rank.max(initial=0) + 1)[rank] <= 2
    cd[small] = np.inf
    return cd


def _rank_and_crowd(F: np.ndarray, CV: np.ndarray, n_survive: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NSGA-II survival with constraint domination: ``(survivors, rank, crowding)``.

    Feasible rows first, front by front (pymoo's compiled sorting), the split
    front cut by crowding distance; infeasible rows after them by violation.
    A NaN violation counts as infeasible (sorted last): were it neither, its
    row would be dropped, and a population of such rows would have no survivor.
    """
    is_feasible = CV <= 0
    feasible = np.flatnonzero(is_feasible)
    infeasible = np.flatnonzero(~is_feasible)
    parts, ranks, crowds = [], [], []
    n_fronts = 0
    if len(feasible):
        fronts = _SORTING.do(F[feasible], n_stop_if_ranked=n_survive)
        n_fronts = len(fronts)
        ranked = feasible[np.concatenate(fronts)]
        rank = np.repeat(np.arange(n_fronts), [len(f) for f in fronts])
        crowd = _crowding(F[ranked], rank)
        best = np.lexsort((-crowd, rank))[:n_survive]
        parts.append(ranked[best]), ranks.append(rank[best]), crowds.append(crowd[best])
    n_left = n_survive - sum(len(p) for p in parts)
    if n_left > 0 and len(infeasible):
        by_cv = infeasible[np.argsort(CV[infeasible], kind="stable")][:n_left]
        parts.append(by_cv), ranks.append(n_fronts + np.arange(len(by_cv)))
        crowds.append(np.zeros(len(by_cv)))
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(parts), np.concatenate(ranks), np.concatenate(crowds)


class _Run:
    """One search: population arrays, the run-wide set of evaluated subnets, the archive."""

    def __init__(self, problem: SubnetProblem, settings: SearchSettings,
                 callback: Callback | None) -> None:
        self.problem, self.space, self.settings = problem, problem.space, settings
        self.callback = callback
        self.rng = np.random.default_rng(settings.seed)
        self.rate = settings.mutation_rate or 1.0 / self.space.n_var
        self.xu = self.space.bounds()[1]
        self.seen: set[bytes] = set()
        self.key_dtype = _key_dtype(self.space)
        self.archive = _Archive(self.space.n_var, problem.metric_names, problem.n_obj,
                                buffer=max(2048, 10 * settings.pop_size))
        self.n_evals, self.n_gen = 0, 0
        self.start = time.perf_counter()

    def budget(self) -> int:
        """Evaluations still allowed by ``max_evals`` (a population's worth at most)."""
        if self.settings.max_evals is None:
            return self.settings.pop_size
        return min(self.settings.pop_size, self.settings.max_evals - self.n_evals)

    def fresh(self, X: np.ndarray, limit: int) -> np.ndarray:
        """Up to ``limit`` rows of canonical ``X`` never evaluated before (nor twice in ``X``)."""
        keys = _keys(X, self.key_dtype)
        row_of = {key: i for i, key in enumerate(keys)}
        new = [key for key in dict.fromkeys(keys) if key not in self.seen][:limit]
        self.seen.update(new)
        return X[[row_of[key] for key in new]].reshape(-1, X.shape[1])

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        F, G, values = self.problem.score(X)
        CV = np.maximum(G, 0.0).sum(axis=1) if G is not None else np.zeros(len(X))
        self.n_evals += len(X)
        self.archive.offer(X, F, CV, values)
        return F, CV, values

    def first_population(self, initial: np.ndarray) -> None:
        """Every given subnet (within ``max_evals``), then anchors and random subnets up to a
        population; all evaluated in one batch."""
        s = self.settings
        parts = [self.fresh(initial, len(initial) if s.max_evals is None else s.max_evals)]
        size = max(self.budget(), len(parts[0]))
        parts.append(self.fresh(_anchors(self.space), min(size - len(parts[0]), s.pop_size // 2)))
        for _ in range(_MAX_MATING_ROUNDS):
            missing = size - sum(len(p) for p in parts)
            if missing <= 0:
                break
            rows = self.rng.integers(0, self.xu + 1, size=(2 * missing, self.space.n_var))
            parts.append(self.fresh(canonical(self.space, rows), missing))
        self.X = np.vstack(parts)
        self.F, self.CV, _ = self.evaluate(self.X)
        self.survive(self.X, self.F, self.CV)

    def survive(self, X: np.ndarray, F: np.ndarray, CV: np.ndarray) -> None:
        keep, self.rank, self.crowd = _rank_and_crowd(F, CV, self.settings.pop_size)
        self.X, self.F, self.CV = X[keep], F[keep], CV[keep]
        self.n_gen += 1

    def offspring(self, n: int) -> np.ndarray:
        """``n`` (or fewer, in a nearly exhausted space) new subnets, bred from the population."""
        s = self.settings
        parts, found = [], 0
        for attempt in range(_MAX_MATING_ROUNDS):
            want = n - found
            # Later rounds breed twice what is missing: a converged population breeds
            # many subnets seen before, and each round costs a fixed overhead.
            m = want if attempt == 0 else 2 * want
            parents = tournament(self.rank, self.crowd, 2 * m, self.rng).reshape(2, m)
            child = crossover(s.crossover, self.X[parents[0]], self.X[parents[1]], self.xu,
                              s.crossover_prob, s.crossover_eta, self.rng)
            child = canonical(self.space, mutate(self.space, child, self.rate, self.rng))
            parts.append(self.fresh(child, want))
            found += len(parts[-1])
            if found == n:
                break
        return np.vstack(parts)

    def generation(self) -> bool:
        """Breed, evaluate and select once; false when no new subnet could be bred."""
        off = self.offspring(self.budget())
        if len(off) == 0:
            return False
        F, CV, _ = self.evaluate(off)
        self.survive(np.vstack([self.X, off]), np.vstack([self.F, F]),
                     np.concatenate([self.CV, CV]))
        return True

    def stop_reason(self) -> StopReason | None:
        s = self.settings
        if self.callback is not None and self.callback(self.progress()):
            return "callback"
        if s.max_evals is not None and self.n_evals >= s.max_evals:
            return "max_evals"
        if s.max_seconds is not None and time.perf_counter() - self.start >= s.max_seconds:
            return "max_seconds"
        if self.n_gen >= s.n_gen:
            return "n_gen"
        return None

    def progress(self) -> SearchProgress:
        front_X, front_F, _ = self.archive.front()
        return SearchProgress(n_gen=self.n_gen, n_evals=self.n_evals,
                              seconds=time.perf_counter() - self.start, X=self.X, F=self.F,
                              CV=self.CV, front_X=front_X, front_F=front_F)

    def result(self, stopped_by: StopReason) -> SearchResult:
        X, F, values = self.archive.front()
        order = np.lexsort(F.T[::-1]) if len(F) else np.zeros(0, dtype=np.int64)
        return SearchResult(X=X[order], values={k: v[order] for k, v in values.items()},
                            n_evals=self.n_evals, seconds=time.perf_counter() - self.start,
                            settings=self.settings, objectives=self.problem.objectives,
                            space=self.space, n_gen=self.n_gen, stopped_by=stopped_by)


def search(problem: SubnetProblem, settings: SearchSettings = SearchSettings(), *,
           initial: Initial = None, callback: Callback | None = None) -> SearchResult:
    """Run NSGA-II and return the predicted non-dominated set; same seed, same result.

    ``initial`` warm-starts the run: subnets (:class:`ArchConfig`, or the
    dicts :meth:`SearchSpace.from_dict` reads, native forms too), gene rows,
    a previous :class:`SearchResult` (also of a sub-space of this space) or a
    measured :class:`ParetoFront`; every one of them is evaluated (duplicates
    once) and competes for the first population, which random and extreme
    subnets fill up to ``pop_size``.
    ``callback`` is called after every generation with a
    :class:`SearchProgress` and stops the run by returning true.  Runs cut
    by ``max_seconds`` are not reproducible beyond the generation they stop at.

    When no evaluated subnet satisfies the limits, the result is empty.
    """
    if not isinstance(problem, SubnetProblem):
        raise TypeError(f"problem must be a SubnetProblem, got {type(problem).__name__}")
    if not isinstance(settings, SearchSettings):
        raise TypeError(f"settings must be SearchSettings (e.g. SearchSettings(pop_size=4)), got "
                        f"{type(settings).__name__}")
    run = _Run(problem, settings, callback)
    run.first_population(_initial_genes(problem.space, initial))
    while (reason := run.stop_reason()) is None:
        if not run.generation():
            reason = "exhausted"
            break
    return run.result(reason)
