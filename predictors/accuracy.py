"""Accuracy predictor for one supernet on one dataset: a saturating link and a calibrated spread.

Accuracy has no additive structure to exploit, but it moves smoothly with
capacity, so the base is ridge regression on all features (masked one-hot
codes and per-stage costs) and XGBoost fits what remains.  Labels are
accuracies in ``[0, 1]``.

**Saturating link.**  Accuracy flattens as capacity grows, so a model linear
in capacity overshoots at the top: the demo's refinement candidates were all
predicted at 0.998-1.000 and measured at 0.915-0.939, a linear extrapolation
hidden by a clip at 1.0.  Predictions here go through a soft ceiling
(:func:`_soft_ceiling`): the identity below a knee just under the best
accuracy observed, then bending smoothly to a ceiling a small margin above
it (at most :data:`MAX_MARGIN`, 1 point; the margin is chosen by K-fold CV
of the linear base among :data:`MARGINS`).  A prediction can approach the
ceiling but never pass it; the map is strictly increasing, so the order of
subnets (what a search needs) is kept; and the bulk of the range, where the
linear model is right, is untouched.  A logit link on ``accuracy / ceiling``
bounded the top as well but, fitted by least squares in logit space, let the
few subnets nearest the ceiling dominate the fit: held-out MAE on the demo
rose from 2.2 to 3.6 points at 100 training subnets (``docs/predictors.md``).

**Calibrated spread.**  The bootstrap members' spread measures how much the
model would move with other training rows, not the label noise (a
validation set of 1,000 images alone gives top-1 a standard error of ~0.8
points near 93%), so it understated the error several-fold.  The stated sd is
``noise`` (the 68th percentile of the absolute out-of-fold errors, scaled by
``sqrt((k - 1) / k)`` for the rows the fold models did not see, so
``mean +- sd`` covers about 68% of held-out errors), widened
by the members' spread beyond its typical value where the model extrapolates.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from predictors.base import ResidualPredictor, _LinearBase, fit_ridge_base

__all__ = ["MARGINS", "MAX_MARGIN", "AccuracyPredictor", "interval_coverage"]

MARGINS = (0.0025, 0.005, 0.01)
"""Candidate gaps (absolute accuracy) between the best observed label and the link's ceiling."""
MAX_MARGIN = max(MARGINS)
_EPS = 1e-4


def interval_coverage(y_true: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                      k: float = 1.0) -> float:
    """Share of rows whose error ``|y - mean|`` lies within ``k * sd`` (nominal: 68% at k=1, 95% at 2)."""
    y_true, mean, sd = (np.asarray(a, dtype=np.float64).ravel() for a in (y_true, mean, sd))
    if not (y_true.shape == mean.shape == sd.shape) or y_true.size == 0:
        raise ValueError("y_true, mean and sd must be non-empty and of one shape")
    return float(np.mean(np.abs(y_true - mean) <= k * sd))


def _ceiling(y: np.ndarray, margin: float) -> float:
    return float(min(1.0, np.max(y) + margin))


def _soft_ceiling(p: np.ndarray, best: float, ceiling: float) -> np.ndarray:
    """Identity up to a knee below the best label, then bending smoothly up to ``ceiling``.

    ``g(p) = p`` for ``p <= knee`` and ``knee + w * (1 - exp(-(p - knee) / w))``
    above it, with ``knee = best - (ceiling - best)`` and ``w = ceiling - knee``:
    continuous with slope 1 at the knee, strictly increasing (the order of
    subnets is kept), and below ``ceiling`` everywhere.
    """
    p = np.asarray(p, dtype=np.float64)
    knee = best - (ceiling - best)
    width = ceiling - knee
    if width <= 0:
        return np.minimum(p, ceiling)
    above = knee + width * -np.expm1(-np.maximum(p - knee, 0.0) / width)
    return np.maximum(np.where(p > knee, above, p), 0.0)


class AccuracyPredictor(ResidualPredictor):
    """Top-1 accuracy from encoded genes; no device.  Predictions stay below :attr:`ceiling`."""

    target: ClassVar[str] = "accuracy"
    log_link: ClassVar[bool] = False

    # ------------------------------------------------------------------ link

    @property
    def ceiling(self) -> float:
        """The link's upper bound: no prediction reaches it (1.0 before fitting)."""
        return float(self.calibration.get("ceiling", 1.0))

    def _fit_base(self, F: np.ndarray, y: np.ndarray) -> _LinearBase:
        return fit_ridge_base(F, y, list(range(F.shape[1])))

    def _combine(self, base_pred: np.ndarray, resid: np.ndarray) -> np.ndarray:
        best = float(self.calibration.get("best_observed", 1.0))
        return _soft_ceiling(base_pred + resid, best, self.ceiling)

    def _calibrate_link(self, F: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The ceiling's margin with the lowest K-fold squared error of the linear base.

        Too small a margin squeezes the best subnets against the ceiling, too
        large one lets the top run on as the linear model would; the labels
        say which.  Each fold's ceiling comes from that fold's own labels.
        """
        folds = min(self.settings["cv_folds"], len(y))
        if folds < 2 or len(y) < 10:
            margin = MAX_MARGIN
        else:
            order = np.random.default_rng(self.settings["seed"]).permutation(len(y))
            errors = dict.fromkeys(MARGINS, 0.0)
            for k in range(folds):
                test = order[k::folds]
                train = np.setdiff1d(order, test)
                best = float(np.max(y[train]))
                raw = fit_ridge_base(F[train], y[train], list(range(F.shape[1]))).predict(F[test])
                for m in MARGINS:
                    pred = _soft_ceiling(raw, best, _ceiling(y[train], m))
                    errors[m] += float(np.sum((pred - y[test]) ** 2))
            margin = min(MARGINS, key=errors.__getitem__)
        return {"ceiling": _ceiling(y, margin), "margin": margin,
                "best_observed": float(np.max(y))}

    def _calibrate_spread(self, F: np.ndarray, y: np.ndarray,
                          oof: np.ndarray | None) -> dict[str, Any]:
        """Noise level from out-of-fold errors; the members' typical spread on training rows.

        Each out-of-fold model saw ``(k - 1) / k`` of the rows; where error
        variance falls like one over the rows, the full model's error is
        ``sqrt((k - 1) / k)`` of theirs, so the 68th percentile is scaled by that.
        """
        if oof is None:
            return {}
        errors = np.abs(np.asarray(oof) - y)
        folds = min(self.settings["cv_folds"], len(y))
        shrink = np.sqrt((folds - 1) / folds)
        return {"noise_sd": float(shrink * np.quantile(errors, 0.68)),
                "cv_abs_error_p95": float(np.quantile(errors, 0.95)),
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
        mean, spread = super().predict_dist(X)
        if "noise_sd" not in self.calibration:
            return mean, spread
        extra = np.maximum(spread - self.calibration["typical_spread"], 0.0)
        return mean, np.sqrt(self.calibration["noise_sd"] ** 2 + extra**2)

    def _check_xy(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X, y = super()._check_xy(X, y)
        if np.any((y < 0) | (y > 1)):
            raise ValueError("accuracy labels must lie in [0, 1] (fractions, not percent)")
        return X, y
