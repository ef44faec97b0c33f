"""Latency predictors for a new device from a handful of measurements.

Devices disagree on *how much* each layer kind costs, but far less on which
subnets are slow: a subnet slow on one CPU is usually slow on another.  So a
new device is fitted as a correction of predictors already trained on other
devices: ``log(latency_new) ~ a + sum_i b_i * log(pred_i)`` plus three
analytic cost groups (depthwise MACs, dense MACs, activation volume), with
ridge shrinkage chosen by leave-one-out CV.  The cost groups are where
devices differ most: one runtime fuses batch norm and activations into the
convolutions and another does not (then activation traffic dominates), one
CPU has fast depthwise kernels and another slow ones.  With one source
device this is a rescaling of its predictions; with several, a blend.
Twenty measurements pin down these few coefficients, where a from-scratch
model has hundreds of features to fit.
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
        return np.column_stack(logs + [np.log(group) for group in self._cost_groups(X)])

    def _cost_groups(self, X: np.ndarray) -> list[np.ndarray]:
        """Depthwise MACs, other (dense) MACs and activation volume of each row."""
        columns = self.sources[0].featurizer.costs(X).columns
        depthwise = sum(v for k, v in columns.items() if "_macs_dw" in k)
        dense = sum(v for k, v in columns.items() if "_macs" in k and "_macs_dw" not in k)
        activations = sum(v for k, v in columns.items() if k.endswith("_act"))
        return [np.asarray(g, dtype=np.float64) + 1.0 for g in (depthwise, dense, activations)]

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
