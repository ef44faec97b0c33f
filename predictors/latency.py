"""Latency predictor: an additive, non-negative cost model with an XGBoost log-residual.

Latency on one device is close to a sum of per-layer costs, each roughly
proportional to its MACs or memory traffic, with a different rate per layer
kind (a 7x7 depthwise conv is slower per MAC than a 1x1).  The base is a
non-negative least-squares fit of the cost components of
:class:`predictors.features.ArchFeaturizer` (pooled over stages or not, as
cross-validation prefers at the data's noise level); XGBoost then models
``log(latency / base)`` from the full feature set, so its corrections are
relative, matching multiplicative measurement noise.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from predictors.base import ResidualPredictor, _LinearBase, fit_nnls_base

__all__ = ["LatencyPredictor"]


class LatencyPredictor(ResidualPredictor):
    """Per-device latency in ms from encoded genes; ``device_hash`` is checked on load."""

    target: ClassVar[str] = "latency_ms"
    log_link: ClassVar[bool] = True

    def _fit_base(self, F: np.ndarray, y: np.ndarray) -> _LinearBase:
        return fit_nnls_base(F, y, self._groupings())

    def _groupings(self) -> dict[str, list[list[int]]]:
        """Cost-column groupings for the base, coarse to fine (see :func:`fit_nnls_base`).

        ``macs``: total MACs (a FLOPs model); ``kind``: each component summed
        over stages (e.g. all 5x5 depthwise MACs together); ``stage``: every
        per-stage component on its own.
        """
        names = self.featurizer.names
        position = {name: i for i, name in enumerate(names)}
        by_kind: dict[str, list[int]] = {}
        for name in self.featurizer.cost_names:
            by_kind.setdefault(re.sub(r"^s\d+_", "", name), []).append(position[name])
        return {
            "macs": [[position["total_macs"]]],
            "kind": list(by_kind.values()),
            "stage": [[position[name]] for name in self.featurizer.cost_names],
        }
