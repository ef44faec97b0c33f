"""How a session's shift grows with the subnet's size: the slope that one offset per session leaves out.

The anchor's offset (:mod:`hwsearch.anchor`) divides every row of a session
by one number, the shift of its middle-sized anchor subnets.  But a host's
speed states do not move every subnet alike: in the sessions where the
demo's 1-thread host had changed state by 1.3-1.6x, the smallest of 24
subnets moved 10-16% less than its session's median (2026-12-01).  A row
far from the anchor's size then keeps part of its session's shift.

So a shift is modelled as growing with the subnet's log MACs about the
anchor's: a row's log ratio carries ``log offset × (1 + slope × size)``,
``size = log MACs − mean log MACs of the anchor subnets``.  The slope is
fitted per device and anchor from subnets measured in two sessions at
different offsets (a shifted session and its retry, the same subnets in
another run): each such pair's difference, less the difference of the
sessions' offsets, is ``slope × (difference of offsets) × size``.  In
calm sessions (offset 1) the slope changes nothing; it matters where the
offsets differ most, which is where the pairs that fit it come from.

Replayed on the kept rows of ten ``bench/contention.py`` comparisons
(runs 12-21 of docs/measurement.md, every run's sessions as the host now
keeps them), the slope came out between -0.35 and +0.06.  Over the 30
contended cells the median deviation from the solo runs went from 1.75%
to 1.65% (median over cells), the share within ±5% rose by 1.1 points on
average and 18 cells met the goal (median ≤ 2%, ≥ 98% within ±10%)
against 16.  The gain is uneven: run 19's 1-thread rows beside the
2-thread device went from 2.39% to 1.50%, while run 17's 2-thread rows
went from 2.32% to 2.97% (a slope of -0.14 fitted mostly on the solo
runs, which it brought from 2.16% to 1.85%).  Live, read as a job
reads them (the slope from the host's 60 latest sessions), run 22's
contended cells went from 2.27%, 3.46% and 1.82% to 1.98%, 3.08% and
1.66%, and run 21's (slopes near 0) from 1.92%, 1.69% and 1.56% to 1.81%,
1.77% and 1.44%.  The slopes differ by device
and by hour, so they are fitted from the device's recent sessions, never
fixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import NamedTuple

import numpy as np

__all__ = ["MIN_PAIRS", "RIDGE", "ShiftSlope", "fit_shift_slope", "size_against"]

#: Fewer pairs than this leave the slope at 0.
MIN_PAIRS = 10
#: The slope's ridge: a pair's noise variance ((4% per pair, seen 2.6-5.0%)²) over the slope's
#: prior variance (0.3²), so a few pairs move it a little and hundreds decide it.
RIDGE = 0.04**2 / 0.3**2
#: Beyond this, a slope would say small subnets move against their session: not a size effect.
MAX_SLOPE = 1.0
#: Pairs further than this many robust SDs from the first fit are dropped before the second.
OUTLIER_SDS = 4.0

#: One subnet in one session: its uncorrected ratio and its MACs.
Member = tuple[float, float]


class ShiftSlope(NamedTuple):
    """The fitted slope (0 when the data cannot say) and how many pairs it stands on."""

    slope: float
    pairs: int


def size_against(macs: float, anchor_log_macs: float) -> float:
    """A subnet's size about the anchor's: its log MACs less the anchor subnets' mean log MACs."""
    return math.log(macs) - anchor_log_macs


def fit_shift_slope(sessions: Iterable[tuple[float, Mapping[str, Member]]], anchor_log_macs: float
                    ) -> ShiftSlope:
    """The slope from subnets measured in more than one of ``sessions`` (``(offset, {key: member})`` each).

    Sessions at the same offset say nothing about it and add no weight.  A
    ridge (:data:`RIDGE`) pulls a slope standing on a few pairs towards 0,
    pairs far off the first fit (:data:`OUTLIER_SDS`) are dropped, and the
    result is clipped to ``±MAX_SLOPE``.
    """
    by_key: dict[str, list[tuple[float, float, float]]] = {}
    for offset, members in sessions:
        if not (math.isfinite(offset) and offset > 0):
            continue
        for key, (ratio, macs) in members.items():
            if math.isfinite(ratio) and ratio > 0 and macs > 0:
                by_key.setdefault(key, []).append((math.log(offset), math.log(ratio),
                                                   size_against(macs, anchor_log_macs)))
    x, y = [], []
    for measured in by_key.values():
        for (o1, r1, size), (o2, r2, _) in combinations(measured, 2):
            x.append((o1 - o2) * size)
            y.append((r1 - r2) - (o1 - o2))
    if len(x) < MIN_PAIRS:
        return ShiftSlope(0.0, len(x))
    xs, ys = np.array(x), np.array(y)
    slope = _ridge(xs, ys)
    residuals = ys - slope * xs
    spread = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
    kept = np.abs(residuals) <= OUTLIER_SDS * spread if spread > 0 else np.ones(len(xs), dtype=bool)
    if kept.sum() < MIN_PAIRS:
        return ShiftSlope(0.0, int(kept.sum()))
    return ShiftSlope(float(np.clip(_ridge(xs[kept], ys[kept]), -MAX_SLOPE, MAX_SLOPE)), int(kept.sum()))


def _ridge(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / (x @ x + RIDGE))
