"""Latency predictors for a new device from a handful of measurements, chosen by CV on the shots.

Devices disagree on *how much* each layer kind costs, but often agree on
which subnets are slow, so a new device can be fitted as a correction of
predictors already trained on other devices (**transfer**).  That holds
within one regime and breaks across regimes: a batch-8 device's order of
subnets is set by MACs, a batch-1 device's by operator count, and the
correction of one into the other can come out anti-correlated.  A model
fitted **from scratch** on the shots (the additive cost model, whose
grouping is chosen by leave-one-out CV among compute-bound and
overhead-bound forms) has no such bias but more variance.

So every candidate is fitted and scored by leave-one-out CV on the shots
(K-fold above :data:`LOO_MAX` shots; a subnet shot more than once is left out
with all its repeats, see :func:`predictors.base.arch_groups`):

* ``rescale:<i>`` - source ``i``'s prediction times a constant (one parameter);
* ``affine:<i>`` - ``log y = a + b log pred_i`` (the dynamic range may differ);
* ``transfer`` - ridge on every source's log prediction plus three analytic cost
  groups (depthwise MACs, dense MACs, activation volume), where devices differ most;
* ``scratch`` - the NNLS cost model on the shots alone.

**The choice averages rather than picks.**  Candidates whose out-of-fold
squared error is not worse than the best one's by more than
:data:`KEEP_WITHIN_SE` standard errors (paired over the shots) are kept, and
the prediction is their average in log space weighted by one over their CV
mean squared error.  Why not the single CV winner: with 5-20 shots the CV
errors of transfer and scratch are often within noise of each other, so
the winner flips with the draw, and picking it lost up to 0.03 τ against
the better of the two on a real pair (OFA opt on -> off) while averaging
lost at most 0.01 and gained up to 0.1 on the others (``docs/predictors.md``).
A candidate that is clearly worse (an anti-correlated transfer across
regimes) falls outside the band and gets no weight at all.  With one
candidate kept the choice is that candidate.

With several sources each one's rescale/affine competes, and ``transfer``
weighs them jointly.  The choice, its weights and every candidate's CV
quality are kept in :attr:`FewShotLatencyPredictor.choice` and printed by
``report()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from scipy import stats

from predictors.base import arch_groups, fit_nnls_base, group_folds, ridge_by_subnet, space_identity
from predictors.latency import LatencyPredictor, latency_groupings

__all__ = ["KEEP_WITHIN_SE", "LOO_MAX", "FewShotChoice", "FewShotLatencyPredictor"]

LOO_MAX = 30
"""Up to this many shots the CV is leave-one-out; above it, 10-fold."""

KEEP_WITHIN_SE = 3.0
"""A candidate joins the average unless its CV error exceeds the best's by more SEs than this.

Chosen on the benchmark's six source->target pairs: at 1 or 2 SE the
average often dropped a useful candidate (the better of transfer and
scratch lost by up to 0.018 τ), at 3 SE by at most 0.009, the same as no
band at all; the band still removes a clearly anti-correlated transfer
(``tests/test_fewshot.py``).
"""

MIN_WEIGHT = 0.02
"""Kept candidates under this share of the weights are dropped (the rest are rescaled)."""


@dataclass(frozen=True)
class FewShotChoice:
    """What the few-shot fit chose and how every candidate did in CV on the shots.

    ``method`` is a candidate's name when only that one was kept, else
    ``"average"``; ``weights`` maps each kept candidate to its weight (they
    sum to 1).  ``cv[name]`` holds ``rmse_log`` (root mean squared
    out-of-fold error of log latency: the weights are ``1 / rmse_log**2``),
    ``mape`` (%), ``within_10`` (share) and ``tau`` (Kendall, of the
    out-of-fold predictions), for every candidate and, when averaged, for
    ``"average"`` (its out-of-fold predictions averaged with the final
    weights, so slightly optimistic).
    """

    method: str
    n_shots: int
    folds: int
    cv: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def quality(self) -> dict[str, float]:
        """The chosen candidate's CV quality."""
        return self.cv[self.method]


@dataclass
class _Design:
    """Everything candidates need about a set of rows, computed once per ``X``."""

    source_logs: np.ndarray  # (n, n_sources) log predictions of the sources
    cost_logs: np.ndarray  # (n, 3) log of depthwise MACs, dense MACs, activations
    features: np.ndarray  # (n, n_features) the featurizer's columns, for scratch

    def rows(self, index: np.ndarray) -> _Design:
        return _Design(self.source_logs[index], self.cost_logs[index], self.features[index])


class FewShotLatencyPredictor:
    """A new device's latency from a few shots: transfer, scratch or their CV-weighted average."""

    def __init__(self, sources: Sequence[LatencyPredictor], *,
                 keep_within_se: float = KEEP_WITHIN_SE) -> None:
        if not sources:
            raise ValueError("few-shot prediction needs at least one source predictor")
        spaces = {space_identity(p.space) for p in sources}
        if len(spaces) != 1:
            raise ValueError(f"source predictors cover different spaces: {sorted(spaces)}")
        self.sources = list(sources)
        self.space = self.sources[0].space
        self.featurizer = self.sources[0].featurizer
        self.keep_within_se = float(keep_within_se)
        self._groupings = latency_groupings(self.featurizer)
        self._fitted: dict[str, Callable[[_Design], np.ndarray]] = {}
        self.choice: FewShotChoice | None = None

    # ------------------------------------------------------------------ design

    def _design(self, X: np.ndarray) -> _Design:
        X = np.atleast_2d(np.asarray(X))  # the featurizer checks the genes; a cast would hide bad ones
        logs = np.column_stack([np.log(p.predict(X)) for p in self.sources])
        columns = self.featurizer.costs(X).columns
        depthwise = sum(v for k, v in columns.items() if "_macs_dw" in k)
        dense = sum(v for k, v in columns.items() if "_macs" in k and "_macs_dw" not in k)
        activations = sum(v for k, v in columns.items() if k.endswith("_act"))
        costs = np.column_stack([np.log(np.asarray(g, dtype=np.float64) + 1.0)
                                 for g in (depthwise, dense, activations)])
        return _Design(logs, costs, self.featurizer.transform(X))

    # ------------------------------------------------------------------ candidates

    def _candidates(self) -> dict[str, Callable[[_Design, np.ndarray], Callable[[_Design],
                                                                              np.ndarray]]]:
        """name -> fit(design, log y) returning predict(design) of log latency."""
        out: dict[str, Callable[[_Design, np.ndarray], Callable[[_Design], np.ndarray]]] = {}
        for i in range(len(self.sources)):
            out[f"rescale:{i}"] = partial(_fit_rescale, i=i)
            out[f"affine:{i}"] = partial(_fit_affine, i=i)
        out["transfer"] = _fit_transfer
        out["scratch"] = self._fit_scratch
        return out

    def _fit_scratch(self, design: _Design, log_y: np.ndarray) -> Callable[[_Design], np.ndarray]:
        return _Scratch(fit_nnls_base(design.features, np.exp(log_y), self._groupings))

    # ------------------------------------------------------------------ fitting

    def fit(self, X: np.ndarray, latency_ms: np.ndarray) -> FewShotLatencyPredictor:
        """Fit on the new device's measured subnets (3 or more; 5-20 is the intended use)."""
        y = np.asarray(latency_ms, dtype=np.float64).ravel()
        if len(y) < 3:
            raise ValueError(f"need at least 3 measurements on the new device, got {len(y)}")
        if len(y) != len(np.atleast_2d(X)):
            raise ValueError(f"X has {len(np.atleast_2d(X))} rows but latency_ms has {len(y)}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("latencies must be positive and finite")
        if np.ptp(y) == 0:  # every candidate would fit the constant and score a perfect CV
            raise ValueError(f"all {len(y)} latencies are {y[0]:g} ms: measurements without spread "
                             "rank no subnet above another, so there is nothing to fit")
        design, log_y = self._design(X), np.log(y)
        groups = arch_groups(design.features)
        if groups.max() + 1 < 3:
            raise ValueError(f"need at least 3 distinct subnets on the new device, got "
                             f"{groups.max() + 1} (repeats of one subnet are one subnet in CV)")
        folds = _folds(groups)
        candidates = self._candidates()
        oof = {name: _out_of_fold(fit, design, log_y, folds) for name, fit in candidates.items()}
        cv = {name: _cv_quality(log_y, pred) for name, pred in oof.items()}
        weights = _average_weights(oof, log_y, self.keep_within_se)
        method = next(iter(weights)) if len(weights) == 1 else "average"
        if method == "average":
            cv["average"] = _cv_quality(log_y, sum(w * oof[n] for n, w in weights.items()))
        self.choice = FewShotChoice(method=method, n_shots=len(y), folds=len(folds), cv=cv,
                                    weights=weights)
        transfer_family = [n for n in candidates if n != "scratch"]
        best_transfer = min(transfer_family, key=lambda n: cv[n]["rmse_log"])
        self._fitted = {name: candidates[name](design, log_y)
                        for name in set(weights) | {"transfer", "scratch", best_transfer}}
        self._fitted["best_transfer"] = self._fitted[best_transfer]
        self._fitted["chosen"] = _Weighted(tuple((w, self._fitted[n]) for n, w in weights.items()))
        return self

    # ------------------------------------------------------------------ prediction

    def predict(self, X: np.ndarray, method: str = "chosen") -> np.ndarray:
        """Predicted latency (ms) on the new device.

        ``method`` is ``"chosen"`` (the CV-weighted average, or the one kept
        candidate), or for comparisons ``"transfer"`` (the joint ridge
        correction), ``"scratch"``, ``"best_transfer"`` (the transfer-family
        candidate with the lowest CV error) or any other candidate that was kept.
        """
        if self.choice is None:
            raise RuntimeError("FewShotLatencyPredictor is not fitted")
        if method not in self._fitted:
            raise ValueError(f"unknown method {method!r}; one of {sorted(self._fitted)}")
        return np.exp(self._fitted[method](self._design(X)))

    def report(self) -> str:
        """What was chosen and the CV quality of every candidate, best first."""
        if self.choice is None:
            return "FewShotLatencyPredictor: not fitted"
        c = self.choice
        cv = "leave-one-out" if c.folds == c.n_shots else f"{c.folds}-fold"
        lines = [(f"few-shot latency for {self.space.name} from {len(self.sources)} source(s), "
                  f"{c.n_shots} shots, {cv} CV: chose {c.method} ("
                  + ", ".join(f"{n} {w:.2f}" for n, w in c.weights.items()) + ")")]
        for name, q in sorted(c.cv.items(), key=lambda kv: kv[1]["rmse_log"]):
            weight = f" weight={c.weights[name]:.2f}" if name in c.weights else ""
            lines.append(f"  {name:>12}: rmse_log={q['rmse_log']:.4f} MAPE={q['mape']:.2f}% "
                         f"within10={100 * q['within_10']:.1f}% tau={q['tau']:.3f}{weight}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- fitted candidates
#
# Each fit returns one of these small module-level callables rather than a
# closure, so a fitted FewShotLatencyPredictor pickles with the standard
# library (a lambda cannot: "Can't pickle local object") and can be saved or
# sent to another process like the other predictors.


@dataclass(frozen=True)
class _Affine:
    """``shift + slope * log pred_i``: the source's log prediction, shifted and scaled."""

    source: int
    shift: float
    slope: float = 1.0

    def __call__(self, design: _Design) -> np.ndarray:
        return self.shift + self.slope * design.source_logs[:, self.source]


@dataclass(frozen=True)
class _Transfer:
    """The ridge model on the sources' log predictions and the log cost groups."""

    model: Any

    def __call__(self, design: _Design) -> np.ndarray:
        return self.model.predict(np.column_stack([design.source_logs, design.cost_logs]))


@dataclass(frozen=True)
class _Scratch:
    """The NNLS model fitted on the shots alone, as log latency (floored above 0)."""

    base: Any

    def __call__(self, design: _Design) -> np.ndarray:
        return np.log(np.maximum(self.base.predict(design.features).astype(np.float64), 1e-12))


@dataclass(frozen=True)
class _Weighted:
    """The kept candidates' log predictions, averaged with their CV weights."""

    parts: tuple[tuple[float, Callable[[_Design], np.ndarray]], ...]

    def __call__(self, design: _Design) -> np.ndarray:
        return sum(w * part(design) for w, part in self.parts)


# --------------------------------------------------------------------------- candidate fits


def _fit_rescale(design: _Design, log_y: np.ndarray, i: int) -> Callable[[_Design], np.ndarray]:
    shift = float(np.mean(log_y - design.source_logs[:, i]))
    return _Affine(i, shift)


def _fit_affine(design: _Design, log_y: np.ndarray, i: int) -> Callable[[_Design], np.ndarray]:
    """``log y = a + b log pred_i``; the slope is kept in ``[0, 2]``: a source is never inverted."""
    x = design.source_logs[:, i]
    spread = float(np.var(x))
    slope = float(np.cov(x, log_y, bias=True)[0, 1] / spread) if spread > 0 else 1.0
    slope = min(max(slope, 0.0), 2.0)
    shift = float(np.mean(log_y) - slope * np.mean(x))
    return _Affine(i, shift, slope)


def _fit_transfer(design: _Design, log_y: np.ndarray) -> Callable[[_Design], np.ndarray]:
    """Ridge on all sources' log predictions and the cost groups (penalty by leave-one-subnet-out)."""
    model = ridge_by_subnet(np.column_stack([design.source_logs, design.cost_logs]), log_y,
                            np.logspace(-4, 2, 13), arch_groups(design.features))
    return _Transfer(model)


# --------------------------------------------------------------------------- cross-validation


def _folds(groups: np.ndarray) -> list[np.ndarray]:
    """Leave-one-subnet-out up to :data:`LOO_MAX` subnets, else 10 interleaved folds (deterministic).

    ``groups`` (:func:`predictors.base.arch_groups`) keeps a subnet's repeated
    shots in one fold, so no candidate is scored on a subnet it was fitted to.
    """
    n_groups = int(groups.max()) + 1
    return group_folds(groups, n_groups if n_groups <= LOO_MAX else 10, 0)


def _out_of_fold(fit: Callable[[_Design, np.ndarray], Callable[[_Design], np.ndarray]],
                 design: _Design, log_y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(log_y))
    everything = np.arange(len(log_y))
    for test in folds:
        train = np.setdiff1d(everything, test)
        out[test] = fit(design.rows(train), log_y[train])(design.rows(test))
    return out


def _rmse(pred: np.ndarray, log_y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - log_y) ** 2)))


def _cv_quality(log_y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    rel = np.abs(np.exp(pred - log_y) - 1.0)
    tau = stats.kendalltau(log_y, pred).statistic
    return {"rmse_log": _rmse(pred, log_y), "mape": float(100 * rel.mean()),
            "within_10": float(np.mean(rel <= 0.10)), "tau": float(np.nan_to_num(tau))}


def _average_weights(oof: dict[str, np.ndarray], log_y: np.ndarray,
                     keep_within_se: float) -> dict[str, float]:
    """Weights ``1 / MSE`` over the candidates within ``keep_within_se`` SEs of the best.

    The SE is that of the mean paired difference of squared out-of-fold
    errors (candidate minus best) over the shots, so a candidate is dropped
    only when the shots show it worse beyond their noise.  Candidates under
    :data:`MIN_WEIGHT` of the total are dropped.  Sorted by weight, largest first.
    """
    errors = {name: (pred - log_y) ** 2 for name, pred in oof.items()}
    best = min(errors, key=lambda n: errors[n].mean())
    n = len(log_y)
    kept = {}
    for name, e in errors.items():
        excess = e - errors[best]
        se = float(excess.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if excess.mean() <= keep_within_se * se:
            kept[name] = 1.0 / max(float(e.mean()), 1e-12)
    total = sum(kept.values())
    # An erratic candidate's errors widen its own SE, so it can stay in the band with a
    # negligible weight; dropping those keeps the reported choice to what carries it.
    kept = {name: w for name, w in kept.items() if w / total >= MIN_WEIGHT}
    total = sum(kept.values())
    return {name: w / total for name, w in sorted(kept.items(), key=lambda kv: -kv[1])}
