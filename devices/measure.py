"""Measurements and the robust statistics behind them.

Latency samples on a shared CPU are not Gaussian: they have a floor (the
uncontended speed), a long right tail (preemption) and, on this kind of
machine, whole seconds spent in a slower state.  Means and standard
deviations are dominated by the tail, so everything here uses order
statistics: medians, low percentiles, the MAD and a distribution-free
confidence interval for the median.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_MAD_TO_SIGMA = 1.4826
_Z95 = 1.959964


@dataclass(frozen=True)
class Measurement:
    """One model's latency on one device (see docs/contracts.md, "Devices").

    ``latency_ms`` is the value predictors learn: the model's median ratio to
    the reference, times the reference's robust latency over the session, so
    every model of one session shares one scale and machine drift cancels.
    The absolute ``*_ms`` fields describe the raw timed runs.

    ``env`` records the conditions the number was taken under, so a row can
    be checked before it is trusted or reused: ``host_fingerprint``,
    ``runtime``/``runtime_version``, ``providers``, threads, ``clock``,
    ``batch``, the model's ``input_shape``, the session's wall-clock
    interval (``session_start``/``session_end``, epoch seconds, during which
    it held the host alone) and ``lock_wait_s``, the time it waited for the host.
    """

    model_sha256: str
    latency_ms: float
    ratio: float
    ratio_ci: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mad_ms: float
    n_runs: int
    stable: bool
    device_hash: str
    env: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`; ignores nothing and invents nothing."""
        return cls(**data)


def time_summary(times_ms: np.ndarray) -> dict[str, float]:
    """Robust summary of raw run times (median, percentiles, min, MAD)."""
    t = np.asarray(times_ms, dtype=np.float64)
    p10, p50, p90, p99 = np.percentile(t, [10, 50, 90, 99])
    return {
        "median_ms": float(p50),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "min_ms": float(t.min()),
        "mad_ms": float(np.median(np.abs(t - p50))),
    }


def median_ci_halfwidth(values: np.ndarray) -> float:
    """Relative half-width of a distribution-free 95% CI of the median.

    Uses the binomial order-statistic interval: the median lies between the
    j-th and k-th order statistics with j, k = n/2 ∓ 1.96·√n/2.  It assumes
    nothing about the shape of the distribution, which matters here because
    ratios from a flipping machine are not normal.  Returns ``inf`` when there
    are too few values for any interval.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n < 6:
        return math.inf
    half_span = _Z95 * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half_span)), 0)
    hi = min(int(math.ceil(n / 2.0 + half_span)), n - 1)
    median = float(np.median(v))
    if median <= 0:
        return math.inf
    return float((v[hi] - v[lo]) / 2.0 / median)


def rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling median; the ends are reflected so the output keeps the input's length."""
    v = np.asarray(values, dtype=np.float64)
    half = min(window // 2, max(v.size - 1, 0))
    padded = np.pad(v, half, mode="reflect") if half else v
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def reference_jumps(reference_ms: np.ndarray, k_mads: float, window: int = 15) -> np.ndarray:
    """Boolean mask of reference runs that jumped away from their neighbourhood.

    A run is a jump when it sits more than ``k_mads`` robust standard
    deviations (MAD·1.4826 of the residuals) from the rolling median of the
    reference sequence.  A model run timed beside such a reference saw a
    transient the ratio cannot cancel (the disturbance hit only one of the
    two), so those samples are dropped.
    """
    r = np.log(np.asarray(reference_ms, dtype=np.float64))
    if r.size < 3:
        return np.zeros(r.size, dtype=bool)
    residual = r - rolling_median(r, window)
    scale = _MAD_TO_SIGMA * float(np.median(np.abs(residual - np.median(residual))))
    scale = max(scale, 1e-3)
    return np.abs(residual) > k_mads * scale
