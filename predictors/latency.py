"""Latency predictor: an additive, non-negative cost model with an XGBoost log-residual.

Latency on one device is close to a sum of per-layer costs, each roughly
proportional to its MACs or memory traffic, with a different rate per layer
kind (a 7x7 depthwise conv is slower per MAC than a 1x1), plus a fixed cost
per operator that dominates on overhead-bound devices (batch 1, small
inputs).  The base is a non-negative least-squares fit of the cost
components of :class:`predictors.features.ArchFeaturizer` (compute terms,
operator-count and memory-traffic terms, pooled over stages or not, as
cross-validation prefers for the device's regime and the data's noise
level); XGBoost then models
``log(latency / base)`` from the full feature set, so its corrections are
relative, matching multiplicative measurement noise.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from hwsearch.costs import is_overhead
from predictors.base import ResidualPredictor, _LinearBase, fit_nnls_base
from predictors.features import ArchFeaturizer

__all__ = ["LatencyPredictor", "latency_groupings"]


class LatencyPredictor(ResidualPredictor):
    """Per-device latency in ms from encoded genes; ``device_hash`` is checked on load."""

    target: ClassVar[str] = "latency_ms"
    log_link: ClassVar[bool] = True

    def _fit_base(self, F: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> _LinearBase:
        return fit_nnls_base(F, y, self._groupings(), groups=groups)

    def _groupings(self) -> dict[str, list[list[int]]]:
        return latency_groupings(self.featurizer)


def latency_groupings(featurizer: ArchFeaturizer) -> dict[str, list[list[int]]]:
    """Cost-column groupings for the NNLS base, coarse to fine (see :func:`fit_nnls_base`).

    ``macs``: total MACs (a FLOPs model); ``kind``: each compute component
    summed over stages (e.g. all 5x5 depthwise MACs together);
    ``overhead``: operator counts and memory traffic by kind plus total
    MACs (an overhead-bound device); ``kind+overhead``: both pooled
    families; ``stage`` and ``stage+overhead``: every per-stage component
    on its own, without and with the overhead terms.  Which one predicts
    best depends on the device's regime and the labels' noise, so
    cross-validation decides.
    """
    position = {name: i for i, name in enumerate(featurizer.names)}
    compute, overhead = [], []
    for name in featurizer.cost_names:
        (overhead if is_overhead(name) else compute).append(name)
    kind_groups = _pooled(compute, position)
    overhead_groups = _pooled(overhead, position)
    return {
        "macs": [[position["total_macs"]]],
        "kind": kind_groups,
        "overhead": overhead_groups + [[position["total_macs"]]],
        "kind+overhead": kind_groups + overhead_groups,
        "stage": [[position[name]] for name in compute],
        "stage+overhead": [[position[name]] for name in compute + overhead],
    }


def _pooled(columns: list[str], position: dict[str, int]) -> list[list[int]]:
    """Column indices grouped by component kind, summed over stages (``s2_ops_dw`` -> ``ops_dw``)."""
    by_kind: dict[str, list[int]] = {}
    for name in columns:
        by_kind.setdefault(re.sub(r"^s\d+_", "", name), []).append(position[name])
    return list(by_kind.values())
