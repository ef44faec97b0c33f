"""A deterministic analytic ground truth for search tests and the search benchmark.

Search correctness (reproducibility, constraints, exhaustive comparison,
refinement bookkeeping) needs targets that are real functions of the subnet,
cheap to evaluate for every subnet of a small space, and exactly repeatable.
Device latencies and trained-network accuracies are none of these, so:

* **latency oracle** - an additive roofline-style cost model over the exact
  per-stage MACs and activation sizes of :class:`predictors.features.ArchFeaturizer`
  (depthwise MACs costlier per MAC than pointwise, larger kernels costlier,
  activation traffic charged separately).  It is *not* a device measurement.
* **accuracy proxy** - a saturating function of log-parameters, log-MACs and
  input resolution.  It is *not* a trained network's accuracy.

Both are ordinary deterministic targets; predictors are trained on them for
real and the search is judged against them for real.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.space import SearchSpace, StageSpec
from predictors.accuracy import AccuracyPredictor
from predictors.features import ArchFeaturizer
from predictors.latency import LatencyPredictor

__all__ = ["ORACLE_NOTE", "AnalyticOracle", "OracleMeasurer", "small_space", "trained_predictors"]

ORACLE_NOTE = (
    "analytic oracle: latency = additive roofline cost model over exact per-stage MACs and "
    "activation sizes (not a device measurement); accuracy = saturating function of "
    "log-params, log-MACs and resolution (not a trained network's accuracy)"
)

_MS_PER_MAC = {"pw": 1.0e-8, "se": 2.0e-8, "conv": 1.2e-8, "fc": 1.0e-8}
_MS_PER_DW_MAC = {3: 3.0e-8, 5: 3.4e-8, 7: 4.0e-8}
_MS_PER_ACT = 6.0e-8
_MS_PER_BLOCK = 0.04


def small_space(
    n_stages: int = 2,
    resolutions: tuple[int, ...] = (160, 224),
    depths: tuple[int, ...] = (2, 3, 4),
    kernels: tuple[int, ...] = (3, 7),
    expands: tuple[int, ...] = (3, 6),
) -> SearchSpace:
    """A reduced OFA-MBv3 space that can be enumerated: first stages, fewer choices, real layout.

    The defaults give 225,792 subnets.
    """
    layout = ofa_mbv3_space().layout
    layout = replace(
        layout,
        stage_widths=layout.stage_widths[:n_stages],
        stage_strides=layout.stage_strides[:n_stages],
        stage_acts=layout.stage_acts[:n_stages],
        stage_se=layout.stage_se[:n_stages],
    )
    return SearchSpace(
        name=f"mbv3_small_{n_stages}st_r{len(resolutions)}_d{len(depths)}",
        resolutions=resolutions,
        stages=tuple(StageSpec(depths) for _ in range(n_stages)),
        kernels=kernels,
        expands=expands,
        layout=layout,
    )


class AnalyticOracle:
    """Latency (ms) and accuracy (0..1) of encoded subnets, from the analytic cost model."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.featurizer = ArchFeaturizer(space)
        full = self.featurizer.costs(space.encode_many([space.smallest(), space.largest()]))
        self._log_macs = np.log(full.macs)
        self._log_params = np.log(full.params)

    def latency_ms(self, X: np.ndarray) -> np.ndarray:
        table = self.featurizer.costs(np.atleast_2d(X))
        total = np.zeros(len(np.atleast_2d(X)))
        for name, value in table.columns.items():
            total += value * self._weight(name)
        return total

    def accuracy(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        table = self.featurizer.costs(X)
        m = (np.log(table.macs) - self._log_macs[0]) / np.ptp(self._log_macs)
        p = (np.log(table.params) - self._log_params[0]) / np.ptp(self._log_params)
        r = np.asarray(self.space.resolutions, dtype=np.float64)[X[:, 0]] / 224.0
        capacity = 1.2 * p + 0.8 * m + 0.6 * r
        return 0.55 + 0.25 * (1.0 - np.exp(-1.5 * capacity))

    @staticmethod
    def _weight(name: str) -> float:
        if name.endswith("_blocks"):
            return _MS_PER_BLOCK
        if name.endswith("_act"):
            return _MS_PER_ACT
        if "_macs_dw_k" in name:
            return _MS_PER_DW_MAC[int(name.rsplit("k", 1)[1])]
        for kind, weight in _MS_PER_MAC.items():
            if f"_macs_{kind}" in name:
                return weight
        if name.endswith("_macs"):
            return _MS_PER_MAC["conv"]
        return 0.0


def trained_predictors(
    space: SearchSpace, n: int = 200, seed: int = 0, **settings: int
) -> tuple[AccuracyPredictor, LatencyPredictor]:
    """hwsearch's real predictors fitted on ``n`` random subnets labelled by the oracle."""
    oracle = AnalyticOracle(space)
    X = space.encode_many(space.sample(seed, n))
    kw = {"n_estimators": 100, "n_members": 4, "cv_folds": 1, "seed": seed} | settings
    accuracy = AccuracyPredictor(space, **kw).fit(X, oracle.accuracy(X))
    latency = LatencyPredictor(space, **kw).fit(X, oracle.latency_ms(X))
    return accuracy, latency


class OracleMeasurer:
    """Measures subnets with the oracle and counts every subnet it is asked about.

    Picklable, so Ray tasks can take it; ``calls`` lets tests prove nothing
    was measured twice.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.oracle = AnalyticOracle(space)
        self.calls: list[str] = []

    def measure_latency(self, archs: list) -> list[float]:
        self.calls += [a.key() for a in archs]
        return self.oracle.latency_ms(self.space.encode_many(archs)).tolist()

    def measure_accuracy(self, archs: list) -> list[float]:
        return self.oracle.accuracy(self.space.encode_many(archs)).tolist()
