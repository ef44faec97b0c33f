"""Latency predictor: an additive, non-negative cost model with an XGBoost log-residual.

Latency on one device is close to a sum of per-layer costs, each roughly
proportional to its MACs or memory traffic, with a different rate per layer
kind (a 7x7 depthwise conv is slower per MAC than a 1x1).  The base is a
non-negative least-squares fit of the per-stage cost components of
:class:`predictors.features.ArchFeaturizer`; XGBoost then models
``log(latency / base)`` from the full feature set, so its corrections are
relative, matching multiplicative measurement noise.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from predictors.base import ResidualPredictor, _LinearBase, fit_nnls_base

__all__ = ["LatencyPredictor"]


class LatencyPredictor(ResidualPredictor):
    """Per-device latency in ms from encoded genes; ``device_hash`` is checked on load."""

    target: ClassVar[str] = "latency_ms"
    log_link: ClassVar[bool] = True

    def _fit_base(self, F: np.ndarray, y: np.ndarray) -> _LinearBase:
        return fit_nnls_base(F, y, self._cost_columns())
