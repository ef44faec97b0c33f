"""NSGA-II over a :class:`~hwsearch.problem.SubnetProblem`: a thin, seeded ``minimize`` wrapper.

The operators follow pymoo's recipe for integer spaces: integer random
sampling (anchored by the extreme subnets), SBX and polynomial mutation on
real values rounded back to integers.  Duplicates are judged on *canonical*
genes, because two gene vectors that differ only in switched-off blocks are
the same subnet and would otherwise crowd the population with copies.

Besides the final population, every individual evaluated is offered to an
archive of non-dominated feasible points: NSGA-II's last population can lose
front points to crowding, the archive does not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.population import Population
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.optimize import minimize

from hwsearch.problem import SubnetProblem
from hwsearch.results import non_dominated
from hwsearch.space import SearchSpace

__all__ = ["AnchoredSampling", "CanonicalDuplicates", "SearchResult", "SearchSettings",
           "build_nsga2", "search"]


@dataclass(frozen=True)
class SearchSettings:
    """NSGA-II settings; recorded with every front so a run can be repeated."""

    pop_size: int = 100
    n_gen: int = 100
    seed: int = 0
    crossover_prob: float = 0.9
    crossover_eta: float = 15.0
    mutation_eta: float = 20.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    """The predicted non-dominated set: canonical genes and values in the metrics' own units.

    Rows are unique subnets sorted by the first minimised objective.
    ``values`` holds each objective and limit metric, un-negated.
    """

    X: np.ndarray
    values: dict[str, np.ndarray]
    n_evals: int
    seconds: float
    settings: SearchSettings = field(default_factory=SearchSettings)


class CanonicalDuplicates(DuplicateElimination):
    """Duplicate elimination on canonical genes, by hashing rows (``O(n)`` per check)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _keys(self, pop: Population | None) -> list[bytes]:
        X = self.space.canonical_genes(np.rint(pop.get("X")).astype(np.int64))
        return [row.tobytes() for row in X]

    def _do(self, pop: Population, other: Population | None,
            is_duplicate: np.ndarray) -> np.ndarray:
        seen = set(self._keys(other)) if other is not None else set()
        for i, key in enumerate(self._keys(pop)):
            if key in seen:
                is_duplicate[i] = True
            else:
                seen.add(key)
        return is_duplicate


class AnchoredSampling(IntegerRandomSampling):
    """Random integer genes, plus the smallest and largest subnet at every resolution.

    The extremes anchor both ends of the accuracy/latency front; without them
    a run can lose a whole end of it (e.g. every low-resolution subnet) to an
    unlucky first population and never find its way back.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: SubnetProblem, n_samples: int, *args: object,
            **kwargs: object) -> np.ndarray:
        X = super()._do(problem, n_samples, *args, **kwargs)
        anchors = [self.space.encode(extreme(r)) for r in self.space.resolutions
                   for extreme in (self.space.smallest, self.space.largest)]
        n = min(len(anchors), n_samples // 2)
        X[:n] = np.stack(anchors[:n])
        return X


class _FrontArchive(Callback):
    """Keeps the non-dominated feasible individuals among everything evaluated."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.X = np.zeros((0, space.n_var), dtype=np.int64)
        self.F: np.ndarray | None = None

    def notify(self, algorithm: NSGA2) -> None:
        batch = algorithm.off
        feasible = batch.get("CV")[:, 0] <= 0
        if not feasible.any():
            return
        X = self.space.canonical_genes(np.rint(batch.get("X")[feasible]).astype(np.int64))
        F = batch.get("F")[feasible]
        if self.F is not None:
            X, F = np.vstack([self.X, X]), np.vstack([self.F, F])
        X, first = np.unique(X, axis=0, return_index=True)
        F = F[first]
        front = non_dominated(F)
        self.X, self.F = X[front], F[front]


def _rescore(problem: SubnetProblem, X: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Score the archive in one batch, keep its non-dominated rows, sort them.

    Predictions of one row can differ in the last float32 bits between batch
    sizes, which can flip dominance between subnets that tie on a metric;
    filtering again on the values returned keeps the result self-consistent.
    """
    values = problem.predict(X)
    if len(X) == 0:
        return X, values
    F = np.column_stack([o.to_min(values[o.metric]) for o in problem.objectives])
    keep = non_dominated(F)
    keep = keep[np.lexsort(F[keep].T[::-1])]
    return X[keep], {name: v[keep] for name, v in values.items()}


def build_nsga2(space: SearchSpace, settings: SearchSettings) -> NSGA2:
    """NSGA-II with integer sampling, rounded SBX/PM and canonical duplicate elimination."""
    return NSGA2(
        pop_size=settings.pop_size,
        sampling=AnchoredSampling(space),
        crossover=SBX(prob=settings.crossover_prob, eta=settings.crossover_eta, vtype=float,
                      repair=RoundingRepair()),
        mutation=PM(eta=settings.mutation_eta, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=CanonicalDuplicates(space),
    )


def search(problem: SubnetProblem, settings: SearchSettings = SearchSettings()) -> SearchResult:
    """Run NSGA-II and return the predicted non-dominated set; same seed, same result.

    When no evaluated subnet satisfies the limits, the result is empty.
    """
    start = time.perf_counter()
    archive = _FrontArchive(problem.space)
    res = minimize(
        problem,
        build_nsga2(problem.space, settings),
        ("n_gen", settings.n_gen),
        seed=settings.seed,
        callback=archive,
        verbose=False,
    )
    X, values = _rescore(problem, archive.X)
    return SearchResult(X=X, values=values, n_evals=int(res.algorithm.evaluator.n_eval),
                        seconds=time.perf_counter() - start, settings=settings)
