"""Accuracy predictor for one supernet and dataset: resolution-aware blend, soft top, calibrated sd.

Labels are accuracies in ``[0, 1]``.  Three models are fitted and blended
with weights chosen by K-fold CV on the training rows (mean absolute error):

* **interaction ridge** - ridge regression on the features, capacity
  summaries (log MACs, log parameters, log parameters per stage), a one-hot
  of the resolution group and every feature times that one-hot, so each
  resolution group gets its own slopes, shrunk together by one penalty;
* **per-resolution ridge** - a ridge per resolution group with its own
  penalty (leave-one-out), so a group whose labels are mostly noise is
  shrunk to its mean while a group with real structure keeps its slopes
  (groups with too few rows take the interaction ridge);
* **trees** - XGBoost on the features, summaries and the group one-hot,
  fitted to the labels directly (not to a residual: averaging two
  different models cut CV error more than boosting one's residual).

Why: on the demo supernet, resolution sets the level (16 px: 0.60-0.82, 20-32
px: 0.87-0.95) *and* the sign of capacity's effect (at 16 px more parameters
mean lower accuracy, Kendall tau -0.42; at 28-32 px higher), so a model with
one slope per feature missed both; and at 20-28 px the labels' spread
across subnets (~1 point) is barely above a 1,000-image validation set's
binomial noise (~0.85 point), which only a per-group penalty can recognise.
The two ridges are linear in the same columns, so their blend is stored as
one linear model.  Monotone constraints (accuracy non-decreasing in depth,
expand, kernel) were not used: the demo's 16 px subnets contradict them.

**Saturating link.**  Accuracy flattens as capacity grows, so a model
linear in capacity overshoots at the top: the demo's refinement candidates
were all predicted at 0.998-1.000 and measured at 0.915-0.939.  The blend
goes through a soft ceiling (:func:`_soft_ceiling`): the identity below a
knee just under the best accuracy observed, then bending smoothly to a
ceiling a small margin above it (at most :data:`MAX_MARGIN`, 1 point; the
margin is chosen by the same K-fold CV as the weights among
:data:`MARGINS`).  A prediction can approach the ceiling but never pass it;
the map is strictly increasing, so the order of subnets is kept.  A logit
link on ``accuracy / ceiling`` bounded the top as well but let the few
subnets nearest the ceiling dominate a least-squares fit (held-out MAE on
the demo rose from 2.2 to 3.6 points at 100 training subnets).

**Calibrated spread.**  The bootstrap members' spread measures how much the
model would move with other training rows, not the label noise, so it
understated the error several-fold.  The stated sd is ``noise`` (the larger
of the absolute out-of-fold errors' 68th percentile and half their 95th,
scaled by ``sqrt((k - 1) / k)`` for the rows the fold models did not see, so
``mean +- sd`` covers about 68% of held-out errors and ``+- 2 sd`` about
95%), widened by the members' spread beyond its typical value where the
model extrapolates.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, ClassVar

import numpy as np
import xgboost as xgb

from hwsearch.space import SearchSpace
from predictors.base import (ResidualPredictor, _LinearBase, arch_groups, fit_ridge_base, group_folds,
                             ridge_by_subnet)
from predictors.features import FEATURE_VERSION, ArchFeaturizer

__all__ = ["MARGINS", "MAX_MARGIN", "AccuracyFeaturizer", "AccuracyPredictor",
           "interval_coverage"]

MARGINS = (0.0025, 0.005, 0.01)
"""Candidate gaps (absolute accuracy) between the best observed label and the link's ceiling."""
MAX_MARGIN = max(MARGINS)
MAX_GROUPS = 5
"""Resolutions are pooled into at most this many contiguous groups (OFA has 25 resolutions)."""
MIN_GROUP_ROWS = 6
"""A resolution group needs this many training rows for a ridge of its own."""
GROUP_ALPHAS = np.logspace(0, 5, 11)
PARTS = ("shared", "interaction", "per_group", "trees")
WEIGHT_GRID = tuple(w for w in itertools.product((0.0, 0.25, 0.5, 0.75, 1.0), repeat=len(PARTS))
                    if abs(sum(w) - 1.0) < 1e-9)
"""Blend weights tried by CV: every split of 1 into quarters over :data:`PARTS`."""
LINEAR_PARTS = PARTS[:-1]
DEFAULT_WEIGHTS = {"shared": 0.0, "interaction": 0.25, "per_group": 0.25, "trees": 0.5}
"""Without CV (``cv_folds < 2``): the blend that won CV on the demo at 100-200 rows."""
_ONLY_SHARED = {"shared": 1.0, "interaction": 0.0, "per_group": 0.0, "trees": 0.0}


def interval_coverage(y_true: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                      k: float = 1.0) -> float:
    """Share of rows whose error ``|y - mean|`` lies within ``k * sd`` (nominal: 68% at k=1, 95% at 2)."""
    y_true, mean, sd = (np.asarray(a, dtype=np.float64).ravel() for a in (y_true, mean, sd))
    if not (y_true.shape == mean.shape == sd.shape) or y_true.size == 0:
        raise ValueError("y_true, mean and sd must be non-empty and of one shape")
    return float(np.mean(np.abs(y_true - mean) <= k * sd))


def _ceiling(y: np.ndarray, margin: float) -> float:
    return float(min(1.0, np.max(y) + margin))


def _soft_ceiling(p: np.ndarray, best: float | np.ndarray,
                  ceiling: float | np.ndarray) -> np.ndarray:
    """Identity up to a knee below the best label, then bending smoothly up to ``ceiling``.

    ``g(p) = p`` for ``p <= knee`` and ``knee + w * (1 - exp(-(p - knee) / w))``
    above it, with ``knee = best - (ceiling - best)`` and ``w = ceiling - knee``:
    continuous with slope 1 at the knee, strictly increasing (the order of
    subnets is kept), and below ``ceiling`` everywhere.  ``best`` and
    ``ceiling`` may be per-row arrays (each CV fold has its own).
    """
    p = np.asarray(p, dtype=np.float64)
    best, ceiling = np.asarray(best, dtype=np.float64), np.asarray(ceiling, dtype=np.float64)
    knee = best - (ceiling - best)
    width = ceiling - knee
    safe = np.where(width > 0, width, 1.0)
    above = knee + safe * -np.expm1(-np.maximum(p - knee, 0.0) / safe)
    bent = np.where(width > 0, np.where(p > knee, above, p), np.minimum(p, ceiling))
    return np.maximum(bent, 0.0)


class AccuracyFeaturizer:
    """:class:`ArchFeaturizer`'s columns plus capacity summaries, resolution groups and products.

    Column order: the plain columns (:attr:`base_names`: the cost model's
    features and the summaries), one indicator per resolution group, then
    every plain column times each indicator.  The trees see the first two
    blocks only (:attr:`n_tree`); the ridges see all.  Stateless apart from
    the space, like :class:`ArchFeaturizer`.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.arch = ArchFeaturizer(space)
        names = self.arch.names
        self._stage_params = [names.index(n) for n in self.arch.cost_names
                              if re.fullmatch(r"s\d+_params", n)]
        self._totals = [names.index("total_macs"), names.index("total_params")]
        self.base_names = names + ["log_macs", "log_params"] + [
            f"log_{names[i]}" for i in self._stage_params]
        n_res = len(space.resolutions)
        self.groups = np.array_split(np.arange(n_res), min(MAX_GROUPS, n_res))
        self._group_of = np.empty(n_res, dtype=np.int64)
        for g, chunk in enumerate(self.groups):
            self._group_of[chunk] = g
        group_names = [f"res_group_{g}" for g in range(len(self.groups))]
        self.n_plain = len(self.base_names)
        self.n_tree = self.n_plain + len(group_names)
        self.names = self.base_names + group_names + [
            f"{n}*{g}" for g in group_names for n in self.base_names]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, len(self.names))`` float32, in the column order above."""
        plain = self.arch.transform(X)
        logs = np.log(plain[:, self._totals + self._stage_params].astype(np.float64) + 1e-3)
        base = np.hstack([plain, logs.astype(np.float32)])
        genes = np.atleast_2d(np.asarray(X, dtype=np.int64))
        onehot = np.eye(len(self.groups), dtype=np.float32)[self._group_of[genes[:, 0]]]
        return np.hstack([base, onehot] + [base * onehot[:, [g]]
                                           for g in range(len(self.groups))])


def _raw(base: _LinearBase, n_columns: int) -> tuple[np.ndarray, float]:
    """A fitted ridge as plain coefficients on all ``n_columns`` columns plus an intercept."""
    coef = np.zeros(n_columns)
    columns = [g[0] for g in base.groups]
    scaled = np.asarray(base.coef) / np.asarray(base.scale)
    coef[columns] = scaled
    return coef, float(base.intercept - scaled @ np.asarray(base.mean))


def _per_group(F: np.ndarray, y: np.ndarray, groups: np.ndarray, subnets: np.ndarray,
               featurizer: AccuracyFeaturizer, fallback: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    """One ridge per resolution group (own penalty by leave-one-subnet-out) as coefficients on ``F``.

    Group ``g``'s model lives on its indicator and product columns, which are
    zero for other groups' rows.  A group with fewer than
    :data:`MIN_GROUP_ROWS` distinct subnets (``subnets``) takes the
    interaction ridge's own coefficients.
    """
    n_plain, n_groups = featurizer.n_plain, len(featurizer.groups)
    coef = np.zeros(F.shape[1])
    fb_coef, fb_intercept = fallback
    for g in range(n_groups):
        products = slice(featurizer.n_tree + g * n_plain, featurizer.n_tree + (g + 1) * n_plain)
        indicator = n_plain + g
        rows = groups == g
        if len(np.unique(subnets[rows])) < MIN_GROUP_ROWS:
            coef[products] = fb_coef[:n_plain] + fb_coef[products]
            coef[indicator] = fb_intercept + fb_coef[indicator]
            continue
        B = F[rows, :n_plain].astype(np.float64)
        mean, scale = B.mean(axis=0), B.std(axis=0)
        scale[scale == 0] = 1.0
        ridge = ridge_by_subnet((B - mean) / scale, y[rows], GROUP_ALPHAS, subnets[rows])
        coef[products] = ridge.coef_ / scale
        coef[indicator] = float(ridge.intercept_ - coef[products] @ mean)
    return coef, 0.0


class AccuracyPredictor(ResidualPredictor):
    """Top-1 accuracy from encoded genes; no device.  Predictions stay below :attr:`ceiling`."""

    target: ClassVar[str] = "accuracy"
    log_link: ClassVar[bool] = False
    ties_are_data: ClassVar[bool] = True  # a few subnets on a small validation set can score the same
    feature_version: ClassVar[str] = f"{FEATURE_VERSION}+acc2"

    def __init__(self, space: SearchSpace, **settings: Any) -> None:
        super().__init__(space, **settings)
        self.featurizer: AccuracyFeaturizer = AccuracyFeaturizer(space)

    # ------------------------------------------------------------------ link

    @property
    def ceiling(self) -> float:
        """The link's upper bound: no prediction reaches it (1.0 before fitting)."""
        return float(self.calibration.get("ceiling", 1.0))

    @property
    def weights(self) -> dict[str, float]:
        """The blend's weights over :data:`PARTS` (chosen by CV when fitted)."""
        return dict(self.calibration.get("weights", _ONLY_SHARED))

    def _tree_features(self, F: np.ndarray) -> np.ndarray:
        return F[:, :self.featurizer.n_tree]

    def _linear_parts(self, F: np.ndarray, y: np.ndarray, subnets: np.ndarray | None = None
                      ) -> dict[str, tuple[np.ndarray, float]]:
        """Each linear part as plain coefficients on all columns of ``F`` and an intercept.

        ``subnets`` (default :func:`arch_groups`) are the rows each ridge's
        leave-one-out leaves out together (:func:`ridge_by_subnet`).
        """
        n_plain, n_tree = self.featurizer.n_plain, self.featurizer.n_tree
        subnets = arch_groups(F) if subnets is None else subnets
        shared = _raw(fit_ridge_base(F, y, list(range(n_plain)), subnets), F.shape[1])
        interaction = _raw(fit_ridge_base(F, y, list(range(F.shape[1])), subnets), F.shape[1])
        resolutions = np.argmax(F[:, n_plain:n_tree], axis=1)
        return {"shared": shared, "interaction": interaction,
                "per_group": _per_group(F, y, resolutions, subnets, self.featurizer, interaction)}

    def _fit_base(self, F: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> _LinearBase:
        """The ridges blended with their CV weights, stored as one linear model (``groups``: see _linear_parts)."""
        weights = {p: w for p, w in self.weights.items() if p in LINEAR_PARTS and w > 0}
        weights = weights or {"shared": 1.0}
        total = sum(weights.values())
        parts = self._linear_parts(F, y, groups)
        coef = sum(w / total * parts[p][0] for p, w in weights.items())
        intercept = sum(w / total * parts[p][1] for p, w in weights.items())
        n = F.shape[1]
        name = "ridge blend " + ", ".join(f"{p} {w / total:.2f}" for p, w in weights.items())
        return _LinearBase([[c] for c in range(n)], [0.0] * n, [1.0] * n, coef.tolist(),
                           float(intercept), name=name)

    def _residual(self, base_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The trees model the labels themselves (about their mean), not the base's residual."""
        return y - float(self.calibration.get("tree_offset", 0.0))

    def _residual_rounds(self, params: dict[str, Any], data: xgb.DMatrix, groups: np.ndarray,
                         seed: int) -> int:
        """The tree count CV chose on all rows in :meth:`_calibrate_link` (none if unweighted).

        Choosing it again inside every fold and member cost ten XGBoost CV
        runs per fit for a count that barely moves.
        """
        if self.weights["trees"] == 0:
            return 0
        return int(self.calibration.get("tree_rounds", 0))

    def _combine(self, base_pred: np.ndarray, resid: np.ndarray) -> np.ndarray:
        weights = self.weights
        trees = float(self.calibration.get("tree_offset", 0.0)) + resid
        blend = sum(weights[p] for p in LINEAR_PARTS) * base_pred + weights["trees"] * trees
        best = float(self.calibration.get("best_observed", 1.0))
        return _soft_ceiling(blend, best, self.ceiling)

    def _fold_calibration(self, F: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Weights, margin, ceiling and offsets from the fold's rows; the tree count chosen on all rows.

        Choosing the count again in every fold (an ``xgb.cv`` each) would add
        a third to the fold's cost for a count that barely moves, and a count
        leaks far less than a choice scored on the reported rows.
        """
        return self._calibrate_link(F, y, tree_rounds=int(self.calibration.get("tree_rounds", 0)))

    def _calibrate_link(self, F: np.ndarray, y: np.ndarray, tree_rounds: int | None = None) -> dict[str, Any]:
        """Blend weights and the ceiling's margin with the lowest K-fold mean absolute error.

        Each fold fits the four parts once; every weight split of
        :data:`WEIGHT_GRID` and every margin is then scored on the same
        out-of-fold predictions.  Too small a margin squeezes the best subnets
        against the ceiling, too large one lets the top run on as the linear
        model would; each fold's ceiling comes from that fold's own labels.
        Without CV the defaults hold.  The tree count is chosen once on all
        rows (none below 20 rows, too few to split, or with ``n_estimators=0``).
        """
        calibration: dict[str, Any] = {"best_observed": float(np.max(y)),
                                       "tree_offset": float(np.mean(y)),
                                       "tree_rounds": self._tree_rounds(F, y) if tree_rounds is None
                                       else tree_rounds}
        folds = self._n_folds(F)
        if not folds:
            weights = dict(DEFAULT_WEIGHTS if calibration["tree_rounds"] else _ONLY_SHARED)
            return calibration | {"weights": weights, "margin": MAX_MARGIN,
                                  "ceiling": _ceiling(y, MAX_MARGIN)}
        oof, best = self._oof_parts(F, y, folds, calibration["tree_rounds"])
        grid = [w for w in WEIGHT_GRID if calibration["tree_rounds"] or w[-1] == 0.0]
        scores = {}
        for w, m in itertools.product(grid, MARGINS):
            blend = sum(wi * oof[p] for wi, p in zip(w, PARTS))
            pred = _soft_ceiling(blend, best, np.minimum(best + m, 1.0))
            scores[w, m] = float(np.mean(np.abs(pred - y)))
        w, margin = min(scores, key=scores.__getitem__)
        return calibration | {"weights": dict(zip(PARTS, w)), "margin": margin,
                              "ceiling": _ceiling(y, margin), "cv_blend_mae": scores[w, margin]}

    def _tree_rounds(self, F: np.ndarray, y: np.ndarray) -> int:
        """How many trees the labels deserve: K-fold CV with early stopping on all rows."""
        params = self._tree_params(self.settings["seed"])
        data = xgb.DMatrix(self._tree_features(F), label=y - np.mean(y), nthread=1)
        return ResidualPredictor._residual_rounds(self, params, data, arch_groups(F),
                                                  self.settings["seed"])

    def _oof_parts(self, F: np.ndarray, y: np.ndarray, folds: int, rounds: int
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Out-of-fold predictions of each part, and the best label each row's fold model saw.

        A subnet's repeats share a fold, as in :meth:`ResidualPredictor._oof_predictions`.
        """
        seed = self.settings["seed"]
        oof = {p: np.empty(len(y)) for p in PARTS}
        best = np.empty(len(y))
        offset = float(np.mean(y))
        everything = np.arange(len(y))
        for test in group_folds(arch_groups(F), folds, seed):
            train = np.setdiff1d(everything, test)
            for name, (coef, intercept) in self._linear_parts(F[train], y[train]).items():
                oof[name][test] = F[test].astype(np.float64) @ coef + intercept
            oof["trees"][test] = offset
            if rounds:
                oof["trees"][test] += self._fold_trees(F[train], y[train] - offset, F[test],
                                                       seed, rounds)
            best[test] = np.max(y[train])
        return oof, best

    def _fold_trees(self, F: np.ndarray, target: np.ndarray, F_test: np.ndarray,
                    seed: int, rounds: int) -> np.ndarray:
        data = xgb.DMatrix(self._tree_features(F), label=target, nthread=1)
        booster = xgb.train(self._tree_params(seed), data, num_boost_round=rounds)
        return booster.inplace_predict(self._tree_features(F_test)).astype(np.float64)

    def _calibrate_spread(self, F: np.ndarray, y: np.ndarray,
                          oof: np.ndarray | None) -> dict[str, Any]:
        """Noise level from out-of-fold errors; the members' typical spread on training rows.

        The sd is the larger of the errors' 68th percentile and half their
        95th, so that neither ``+-1 sd`` nor ``+-2 sd`` under-covers when the
        errors have heavier tails than a normal's (they do: a few subnets far
        off the trend).  Each out-of-fold model saw ``(k - 1) / k`` of the
        rows; where error variance falls like one over the rows, the full
        model's error is ``sqrt((k - 1) / k)`` of theirs, so the sd is scaled by that.
        """
        if oof is None:
            return {}
        errors = np.abs(np.asarray(oof) - y)
        folds = self._n_folds(F)
        shrink = np.sqrt((folds - 1) / folds)
        q68, q95 = np.quantile(errors, [0.68, 0.95])
        return {"noise_sd": float(shrink * max(q68, q95 / 2)),
                "cv_abs_error_p95": float(q95),
                "typical_spread": float(np.median(self._member_spread(F)))}

    # ------------------------------------------------------------------ prediction

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, sd)``: the CV-calibrated error, widened where the members disagree unusually.

        Out-of-fold errors already contain the model's own variance at typical
        rows, so only the members' spread *beyond* its typical value on the
        training rows is added: a subnet unlike any measured one (where
        exploring pays) gets a wider sd, a typical one the calibrated sd.
        Without CV (too few rows) the members' spread is all there is.
        """
        mean, spread = super().predict_dist(X)  # without members, the calibrated sd alone
        if "noise_sd" not in self.calibration:
            return mean, spread
        extra = np.maximum(spread - self.calibration["typical_spread"], 0.0)
        return mean, np.sqrt(self.calibration["noise_sd"] ** 2 + extra**2)

    def _has_spread(self) -> bool:
        """The CV-calibrated error is a spread even without members."""
        return super()._has_spread() or "noise_sd" in self.calibration

    def _check_xy(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X, y = super()._check_xy(X, y)
        if np.any((y < 0) | (y > 1)):
            raise ValueError("accuracy labels must lie in [0, 1] (fractions, not percent)")
        return X, y
