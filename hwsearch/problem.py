"""The search problem: subnets of a space scored through predictors, a population at a time.

pymoo hands :meth:`SubnetProblem._evaluate` the whole population as one
``(n, n_var)`` integer matrix; every metric is predicted for all rows in one
call, so a generation costs one batched predictor call per metric instead of
one call per individual (DyNAS-T's row-by-row evaluation spends most of an
inner search in predictor overhead).

Metrics are named (``accuracy``, ``latency_ms``, ``params``, ``latency_ms@phone``,
...).  Each objective and each limit refers to a metric by name, so a second
device's latency or a parameter count is added without a new class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pymoo.core.problem import Problem

from hwsearch.space import SearchSpace
from predictors.features import ArchFeaturizer

__all__ = [
    "Cost",
    "Limit",
    "Objective",
    "Predictor",
    "SubnetProblem",
    "accuracy_latency",
    "analytic_costs",
]


@runtime_checkable
class Predictor(Protocol):
    """What the search needs from a predictor: batched predictions over encoded genes."""

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Cost:
    """A deterministic, vectorised metric (parameters, MACs) dressed as a predictor.

    Analytic costs have no uncertainty, so their spread is zero; wrapping them
    lets objectives and limits treat costs and learned predictors alike.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(X), dtype=np.float64)

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = self.predict(X)
        return mean, np.zeros_like(mean)


def _cost_total(featurizer: ArchFeaturizer, metric: str, X: np.ndarray) -> np.ndarray:
    return getattr(featurizer.costs(X), metric)


def analytic_costs(space: SearchSpace) -> dict[str, Cost]:
    """``macs`` and ``params`` of encoded rows, from the layout (``Supernet.count``'s convention).

    Exact and cheap, so they serve as objectives or limits without a learned model.
    """
    featurizer = ArchFeaturizer(space)
    return {metric: Cost(partial(_cost_total, featurizer, metric)) for metric in ("macs", "params")}


@dataclass(frozen=True)
class Objective:
    """One objective: a metric and whether larger is better."""

    metric: str
    sense: Literal["min", "max"] = "min"

    def to_min(self, values: np.ndarray) -> np.ndarray:
        """pymoo minimises; maximised metrics are negated."""
        return -values if self.sense == "max" else values

    def from_min(self, values: np.ndarray) -> np.ndarray:
        return -values if self.sense == "max" else values


@dataclass(frozen=True)
class Limit:
    """A constraint ``lower ≤ metric ≤ upper`` (either side optional)."""

    metric: str
    upper: float | None = None
    lower: float | None = None

    def violations(self, values: np.ndarray) -> list[np.ndarray]:
        """pymoo's ``G ≤ 0`` form, one column per side that is set."""
        out = []
        if self.upper is not None:
            out.append(values - self.upper)
        if self.lower is not None:
            out.append(self.lower - values)
        return out

    @property
    def n_constr(self) -> int:
        return (self.upper is not None) + (self.lower is not None)


def accuracy_latency(latency_metric: str = "latency_ms") -> tuple[Objective, Objective]:
    """The usual pair: accuracy (maximised) and latency on the device (minimised)."""
    return Objective("accuracy", "max"), Objective(latency_metric, "min")


class SubnetProblem(Problem):
    """Subnets of ``space`` as pymoo integer vectors, scored by named predictors.

    ``metrics`` maps a name to a predictor; ``objectives`` and ``limits`` refer
    to those names.  Rows are canonicalised (genes of switched-off blocks set
    to 0) before prediction, so two encodings of one subnet always score the same.
    """

    def __init__(
        self,
        space: SearchSpace,
        metrics: Mapping[str, Predictor],
        objectives: Sequence[Objective] = accuracy_latency(),
        limits: Sequence[Limit] = (),
    ) -> None:
        names = [o.metric for o in objectives] + [lim.metric for lim in limits]
        missing = sorted(set(names) - set(metrics))
        if missing:
            raise ValueError(f"no predictor for metric(s) {missing}; have {sorted(metrics)}")
        if len(objectives) < 1:
            raise ValueError("a search needs at least one objective")
        self.space = space
        self.metrics = dict(metrics)
        self.objectives = tuple(objectives)
        self.limits = tuple(limits)
        xl, xu = space.bounds()
        super().__init__(
            n_var=space.n_var,
            n_obj=len(self.objectives),
            n_ieq_constr=sum(lim.n_constr for lim in self.limits),
            xl=xl,
            xu=xu,
            vtype=int,
        )

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric an objective or limit needs, for every row, one batched call each."""
        X = np.rint(np.asarray(X, dtype=np.float64).reshape(-1, self.n_var)).astype(np.int64)
        if len(X) == 0:
            return {name: np.zeros(0) for name in self.metric_names}
        Xc = self.space.canonical_genes(X)
        return {name: np.asarray(self.metrics[name].predict(Xc), dtype=np.float64)
                for name in self.metric_names}

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics objectives and limits use, in order, each once."""
        names = [o.metric for o in self.objectives] + [lim.metric for lim in self.limits]
        return tuple(dict.fromkeys(names))

    def _evaluate(self, X: np.ndarray, out: dict, *args: object, **kwargs: object) -> None:
        values = self.predict(X)
        out["F"] = np.column_stack([o.to_min(values[o.metric]) for o in self.objectives])
        if self.limits:
            out["G"] = np.column_stack(
                [g for lim in self.limits for g in lim.violations(values[lim.metric])]
            )
