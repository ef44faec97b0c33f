"""Latency predictors for a new device from a handful of measurements.

Devices disagree on *how much* each layer kind costs, but far less on which
subnets are slow: a subnet slow on one CPU is usually slow on another.  So a
new device is fitted as a correction of predictors already trained on other
devices: ``log(latency_new) ~ a + sum_i b_i * log(pred_i)`` plus a few
analytic cost terms, with ridge shrinkage chosen by leave-one-out CV.  With
one source device this is a power-law rescaling of its predictions; with
several, a blend.  Twenty measurements pin down these few coefficients,
where a from-scratch model has hundreds of features to fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import RidgeCV

from predictors.latency import LatencyPredictor

__all__ = ["FewShotLatencyPredictor"]


class FewShotLatencyPredictor:
    """Fits a new device's latency as a correction of other devices' predictors."""

    def __init__(self, sources: Sequence[LatencyPredictor]) -> None:
        if not sources:
            raise ValueError("few-shot prediction needs at least one source predictor")
        spaces = {p.space.name for p in sources}
        if len(spaces) != 1:
            raise ValueError(f"source predictors cover different spaces: {sorted(spaces)}")
        self.sources = list(sources)
        self.space = self.sources[0].space
        self._model: RidgeCV | None = None

    def _design(self, X: np.ndarray) -> np.ndarray:
        logs = [np.log(p.predict(X)) for p in self.sources]
        macs = self.sources[0].featurizer.macs(X)
        return np.column_stack(logs + [np.log(macs)])

    def fit(self, X: np.ndarray, latency_ms: np.ndarray) -> "FewShotLatencyPredictor":
        """Fit on the new device's measured subnets (3 or more; 10-20 is the intended use)."""
        y = np.asarray(latency_ms, dtype=np.float64).ravel()
        if len(y) < 3:
            raise ValueError(f"need at least 3 measurements on the new device, got {len(y)}")
        if np.any(y <= 0):
            raise ValueError("latencies must be positive")
        self._model = RidgeCV(alphas=np.logspace(-4, 2, 13)).fit(self._design(X), np.log(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) on the new device."""
        if self._model is None:
            raise RuntimeError("FewShotLatencyPredictor is not fitted")
        return np.exp(self._model.predict(self._design(np.atleast_2d(X))))
