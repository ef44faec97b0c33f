"""The search problem: subnets of a space scored through predictors, a population at a time.

pymoo hands :meth:`SubnetProblem._evaluate` the whole population as one
``(n, n_var)`` integer matrix; every metric is predicted for all rows in one
call, so a generation costs one batched predictor call per metric instead of
one call per individual (DyNAS-T's row-by-row evaluation spends most of an
inner search in predictor overhead).

Metrics are named (``accuracy``, ``latency_ms``, ``params``, ``latency_ms@phone``,
...).  Each objective and each limit refers to a metric by name, so a second
device's latency or a parameter count is added without a new class.

A metric is either

* a **predictor** - anything with ``predict(X) -> (n,)`` over canonical gene
  rows (hwsearch's fitted predictors, :class:`Cost`); a predictor that knows
  its ``space`` and was fitted on a larger space (the one a sub-space came
  from) gets the rows re-encoded for that space; or
* a **plain vectorised function** ``fn(batch) -> (n,)`` of an
  :class:`~hwsearch.batch.ArchBatch`: the population decoded once, as
  per-knob arrays (``batch.resolution``, ``batch.kernel``, ...) or OFA dicts
  (``batch.native()``), shared by every function metric of the population.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pymoo.core.problem import Problem

from hwsearch.batch import ArchBatch
from hwsearch.checks import is_finite_real, is_real
from hwsearch.space import SearchSpace
from predictors.features import ArchFeaturizer

__all__ = [
    "Cost",
    "Limit",
    "Metric",
    "Objective",
    "Predictor",
    "SubnetProblem",
    "UncertainPredictor",
    "accuracy_latency",
    "analytic_costs",
    "finite_number",
]

SENSES = ("min", "max")


@runtime_checkable
class Predictor(Protocol):
    """What the search needs from a predictor: batched predictions over canonical genes."""

    def predict(self, X: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class UncertainPredictor(Predictor, Protocol):
    """A predictor that also reports its spread; only uncertainty-aware steps need it
    (refinement's optimistic bounds), a plain search never calls ``predict_dist``."""

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


Metric = Predictor | Callable[[ArchBatch], np.ndarray]
"""A predictor over genes, or a vectorised function of a decoded :class:`ArchBatch`."""


class Cost:
    """Any deterministic, vectorised function of canonical gene rows, dressed as a predictor.

    Analytic costs (MACs, parameters) are the built-in use; a lookup table
    indexed by genes is another.  With no uncertainty the spread is zero, so
    objectives and limits treat costs and learned predictors alike.  Pass
    ``space`` when the genes are read with a particular layout: the problem
    then re-encodes a sub-space's rows for it (or refuses a space it cannot
    map), like it does for fitted predictors.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray],
                 space: SearchSpace | None = None) -> None:
        self.fn = fn
        self.space = space

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
    return {metric: Cost(partial(_cost_total, featurizer, metric), space)
            for metric in ("macs", "params")}


def finite_number(value: object, name: str) -> float:
    """``value`` as a float, or a ValueError naming ``name`` when it is not a finite real number.

    A NaN compares false with everything, so a NaN bound or setting passes
    every range check and only fails far downstream (a search that keeps no
    row); a string or a bool is a typo, not a number.  Both are refused here.
    """
    if not is_real(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not is_finite_real(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Objective:
    """One objective: a metric and whether larger is better.

    Only ``"min"`` and ``"max"`` are senses: anything else (``"maximize"``)
    would silently be minimised, so it is refused when the objective is made.
    """

    metric: str
    sense: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Objective metric must be a metric name, got {self.metric!r}")
        if self.sense not in SENSES:
            raise ValueError(f"Objective sense of {self.metric!r} must be 'min' or 'max', "
                             f"got {self.sense!r}")

    def to_min(self, values: np.ndarray) -> np.ndarray:
        """pymoo minimises; maximised metrics are negated."""
        return -values if self.sense == "max" else values

    def from_min(self, values: np.ndarray) -> np.ndarray:
        return -values if self.sense == "max" else values


@dataclass(frozen=True)
class Limit:
    """A constraint ``lower ≤ metric ≤ upper`` (either side optional, at least one set).

    Bounds are checked when the limit is made: a NaN bound makes every
    violation NaN, neither feasible nor infeasible, and a string fails only
    once the first population is scored.
    """

    metric: str
    upper: float | None = None
    lower: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Limit metric must be a metric name, got {self.metric!r}")
        if self.upper is None and self.lower is None:
            raise ValueError(f"Limit on {self.metric!r} needs an upper or a lower bound")
        for side in ("upper", "lower"):
            value = getattr(self, side)
            if value is not None:
                object.__setattr__(self, side, finite_number(value, f"Limit {side} of {self.metric!r}"))
        if self.upper is not None and self.lower is not None and self.lower > self.upper:
            raise ValueError(f"Limit on {self.metric!r}: lower={self.lower:g} is above "
                             f"upper={self.upper:g}, so no subnet can meet it")

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
    """Subnets of ``space`` as pymoo integer vectors, scored by named metrics.

    ``metrics`` maps a name to a :data:`Metric`; ``objectives`` and ``limits``
    refer to those names.  Rows are canonicalised (genes of switched-off
    blocks set to 0) before scoring, so two encodings of one subnet always
    score the same, and decoded at most once per call however many function
    metrics read them.
    """

    def __init__(
        self,
        space: SearchSpace,
        metrics: Mapping[str, Metric],
        objectives: Sequence[Objective] = accuracy_latency(),
        limits: Sequence[Limit] = (),
    ) -> None:
        _check_arguments(space, metrics, objectives, limits)
        names = [o.metric for o in objectives] + [lim.metric for lim in limits]
        missing = sorted(set(names) - set(metrics))
        if missing:
            raise ValueError(f"no predictor for metric(s) {missing}; have {sorted(metrics)}")
        if len(objectives) < 1:
            raise ValueError("a search needs at least one objective")
        for name, metric in metrics.items():
            if not (hasattr(metric, "predict") or callable(metric)):
                raise TypeError(f"metric {name!r} is neither a predictor (predict(X)) nor a "
                                f"function of an ArchBatch")
        self.space = space
        self.metrics = dict(metrics)
        self.objectives = tuple(objectives)
        self.limits = tuple(limits)
        self._metric_spaces = {name: _predictor_space(name, self.metrics[name], space)
                               for name in self.metric_names}
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
        """Every metric an objective or limit needs, for every row, one batched call each.

        ``X`` is ``(n, n_var)`` whole-number genes in bounds (one row may be
        given flat); pymoo's own rows are rounded in :meth:`_evaluate` instead.
        """
        X = np.asarray(X)
        return self._predict_canonical(self.space.canonical_genes(self.space.checked_genes(
            X[None, :] if X.ndim == 1 else X)))

    def _predict_canonical(self, Xc: np.ndarray) -> dict[str, np.ndarray]:
        if len(Xc) == 0:
            return {name: np.zeros(0) for name in self.metric_names}
        batch: ArchBatch | None = None
        genes_for: dict[SearchSpace | None, np.ndarray] = {}  # by space, not name: a name may keep other choices
        values = {}
        for name in self.metric_names:
            metric, target = self.metrics[name], self._metric_spaces[name]
            if hasattr(metric, "predict"):
                if target not in genes_for:
                    genes_for[target] = Xc if target is None else self.space.genes_in(target, Xc)
                out = metric.predict(genes_for[target])
            else:
                batch = batch if batch is not None else ArchBatch.decode(self.space, Xc)
                out = metric(batch)
            values[name] = _checked(name, out, len(Xc))
        return values

    def score(self, Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """``(F, G, values)`` of *canonical* integer gene rows: pymoo's form and the raw metrics.

        The search loop keeps its rows canonical already, so it skips
        :meth:`predict`'s rounding and canonicalisation.
        """
        values = self._predict_canonical(Xc)
        F = np.column_stack([o.to_min(values[o.metric]) for o in self.objectives])
        G = None
        if self.limits:
            G = np.column_stack(
                [g for lim in self.limits for g in lim.violations(values[lim.metric])]
            )
        return F, G, values

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics objectives and limits use, in order, each once."""
        names = [o.metric for o in self.objectives] + [lim.metric for lim in self.limits]
        return tuple(dict.fromkeys(names))

    def _evaluate(self, X: np.ndarray, out: dict, *args: object, **kwargs: object) -> None:
        X = np.rint(np.asarray(X, dtype=np.float64).reshape(-1, self.n_var)).astype(np.int64)
        F, G, _ = self.score(self.space.canonical_genes(X))
        out["F"] = F
        if G is not None:
            out["G"] = G


def _check_arguments(space: object, metrics: object, objectives: object, limits: object) -> None:
    """Refuse arguments of the wrong kind by name: ``("latency",)`` for objectives raised an AttributeError."""
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must map names to predictors or functions, got {type(metrics).__name__}")
    for argument, items, kind in (("objectives", objectives, Objective), ("limits", limits, Limit)):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(f"{argument} must be a sequence of {kind.__name__}, got {type(items).__name__}")
        wrong = next((item for item in items if not isinstance(item, kind)), None)
        if wrong is not None:
            raise TypeError(f"{argument} must hold {kind.__name__} objects (e.g. {kind.__name__}('latency_ms', "
                            f"...)), got {wrong!r}")


def _predictor_space(name: str, metric: Metric, space: SearchSpace) -> SearchSpace | None:
    """The space whose genes a predictor reads, when it is not ``space`` itself.

    A predictor fitted on the full space scores a sub-space's rows after they
    are re-encoded for it; one fitted on a space the rows cannot be mapped to
    is refused here, before any search, instead of reading genes wrongly.
    """
    own = getattr(metric, "space", None) if hasattr(metric, "predict") else None
    if not isinstance(own, SearchSpace) or (own == space and own.same_layout(space)):
        return None
    xu = space.bounds()[1]
    probe = np.minimum(np.arange(int(xu.max()) + 1)[:, None], xu[None, :])
    try:
        space.genes_in(own, probe)
    except ValueError as exc:
        raise ValueError(f"metric {name!r} was made for another space, which cannot score this one: {exc}") from exc
    return own


def _checked(name: str, out: object, n: int) -> np.ndarray:
    """A metric's output as ``(n,)`` finite float64, or an error naming the metric.

    A NaN objective is neither better nor worse than anything, so it slips
    through non-dominated sorting into the front (and an ``inf`` one
    dominates every other point); neither is a value a subnet can have.
    """
    try:
        values = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metric {name!r} returned something other than numbers: {error}") from None
    if values.shape not in ((n,), (n, 1)):  # flattened first, an (n/2, 2) array passed as n values
        raise ValueError(f"metric {name!r} returned shape {values.shape} for {n} rows; expected ({n},) or ({n}, 1)")
    values = values.reshape(-1)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(f"metric {name!r} returned {bad} non-finite value(s) (NaN or inf) for "
                         f"{n} rows; a metric must return a finite number for every row")
    return values
