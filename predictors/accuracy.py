"""Accuracy predictor for one supernet on one dataset.

Accuracy has no additive structure to exploit, but it moves smoothly with
capacity, so the base is ridge regression on all features (masked one-hot
codes and per-stage costs); XGBoost fits what remains.  Labels are
accuracies in ``[0, 1]``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from predictors.base import ResidualPredictor, _LinearBase, fit_ridge_base

__all__ = ["AccuracyPredictor"]


class AccuracyPredictor(ResidualPredictor):
    """Top-1 accuracy from encoded genes; no device."""

    target: ClassVar[str] = "accuracy"
    log_link: ClassVar[bool] = False

    def _fit_base(self, F: np.ndarray, y: np.ndarray) -> _LinearBase:
        return fit_ridge_base(F, y, list(range(F.shape[1])))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted accuracy, clipped to ``[0, 1]``."""
        return np.clip(super().predict(X), 0.0, 1.0)

    def predict_dist(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)``, the mean clipped to ``[0, 1]`` as in :meth:`predict`."""
        mean, std = super().predict_dist(X)
        return np.clip(mean, 0.0, 1.0), std

    def _check_xy(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X, y = super()._check_xy(X, y)
        if np.any((y < 0) | (y > 1)):
            raise ValueError("accuracy labels must lie in [0, 1] (fractions, not percent)")
        return X, y
