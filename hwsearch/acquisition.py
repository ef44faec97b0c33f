"""Where refinement spends its measurements when the user says which latencies matter.

Users rarely pick from the whole front: they ask for "the most accurate
subnet under 25 ms".  Greedy hypervolume gain with optimistic predictions
spends much of a budget at the two ends of the front, where nobody deploys.
:class:`LatencyTargets` states what the user will pick from, and two rules
turn it into a batch:

* **budgets** (``budgets_ms``): for every budget ``t``, the expected
  improvement of the best *measured* accuracy under ``t``, weighted by the
  probability that the candidate really runs under ``t``
  (``P(lat ≤ t) · EI(acc; best_t)``), summed over budgets.  Each pick is then
  believed at its predicted mean (a "kriging believer") so one batch does not
  pile onto one budget.
* **band** (``band_ms``): hypervolume gain counted only inside the band —
  slower points add nothing, and being faster than the band's lower edge is
  worth no more than reaching it.

Every function here works on plain arrays (one row per candidate), so each
part of the rule is testable on its own and the refinement loop only passes
predictions in and indices out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from hwsearch.checks import is_finite_real, is_real
from hwsearch.results import hypervolume, non_dominated

__all__ = [
    "MAX_BUDGETS",
    "LatencyTargets",
    "band_hypervolume",
    "best_under",
    "expected_improvement",
    "pick_for_band",
    "pick_for_budgets",
]

MAX_BUDGETS = 32
_STD_FLOOR = 1e-6


def _finite_positive(value: Any, name: str) -> float:
    if not is_real(value):
        raise ValueError(f"{name} must be a number of milliseconds, got {value!r}")
    if not is_finite_real(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of milliseconds above 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LatencyTargets:
    """The latencies a user will choose from on one device: budgets, a band, or both.

    ``budgets_ms`` are upper limits ("the best subnet under 25 ms"), kept sorted
    and unique; ``band_ms`` is ``(low, high)``, the range the front matters in.
    An empty instance means "the whole front", today's behaviour.
    """

    budgets_ms: tuple[float, ...] = ()
    band_ms: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        budgets = tuple(_finite_positive(b, "budgets_ms") for b in self.budgets_ms)
        if len(budgets) > MAX_BUDGETS:
            raise ValueError(f"budgets_ms holds {len(budgets)} budgets; at most {MAX_BUDGETS}")
        object.__setattr__(self, "budgets_ms", tuple(sorted(set(budgets))))
        if self.band_ms is not None:
            if len(self.band_ms) != 2:
                raise ValueError(f"band_ms must be (low, high), got {self.band_ms!r}")
            low, high = (_finite_positive(v, "band_ms") for v in self.band_ms)
            if low >= high:
                raise ValueError(f"band_ms low ({low:g}) must be below high ({high:g})")
            object.__setattr__(self, "band_ms", (low, high))

    @classmethod
    def parse(cls, budgets: str | None = None, band: str | None = None) -> LatencyTargets:
        """Read the CLI forms ``"15,20,25"`` and ``"15:40"``; errors name the option."""
        try:
            values = tuple(float(v) for v in budgets.split(",")) if budgets else ()
        except ValueError:
            raise ValueError(f"targets-ms must be comma-separated numbers, got {budgets!r}") \
                from None
        span = None
        if band:
            parts = band.split(":")
            try:
                span = (float(parts[0]), float(parts[1])) if len(parts) == 2 else None
            except ValueError:
                span = None
            if span is None:
                raise ValueError(f"band-ms must be LOW:HIGH in milliseconds, got {band!r}")
        return cls(values, span)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LatencyTargets:
        if not data:
            return cls()
        band = data.get("band_ms")
        return cls(tuple(data.get("budgets_ms") or ()), None if band is None else tuple(band))

    def to_dict(self) -> dict[str, Any]:
        return {"budgets_ms": list(self.budgets_ms),
                "band_ms": None if self.band_ms is None else list(self.band_ms)}

    def __bool__(self) -> bool:
        return bool(self.budgets_ms) or self.band_ms is not None

    @property
    def ceiling_ms(self) -> float:
        """The slowest latency any target cares about (inf without targets)."""
        tops = list(self.budgets_ms) + ([self.band_ms[1]] if self.band_ms else [])
        return max(tops) if tops else math.inf


# --------------------------------------------------------------------------- budgets


def best_under(accuracy: np.ndarray, latency: np.ndarray, budget_ms: float) -> float:
    """The best accuracy among rows whose latency is within ``budget_ms`` (-inf if none)."""
    inside = np.asarray(latency, np.float64) <= budget_ms
    return float(np.max(np.asarray(accuracy, np.float64)[inside])) if inside.any() else -math.inf


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """Gaussian expected improvement of a maximised value over ``best``.

    With no incumbent (``best = -inf``) any candidate improves by its whole
    value, so the mean itself is returned and the budget's feasibility term
    decides.
    """
    mean = np.asarray(mean, np.float64)
    if not math.isfinite(best):
        return mean.copy()
    std = np.maximum(np.asarray(std, np.float64), _STD_FLOOR)
    z = (mean - best) / std
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return (mean - best) * ndtr(z) + std * pdf


def _probability_under(mean: np.ndarray, std: np.ndarray, budget_ms: float) -> np.ndarray:
    std = np.maximum(np.asarray(std, np.float64), _STD_FLOOR)
    return ndtr((budget_ms - np.asarray(mean, np.float64)) / std)


def pick_for_budgets(
    acc_mean: np.ndarray, acc_std: np.ndarray, lat_mean: np.ndarray, lat_std: np.ndarray,
    measured_accuracy: np.ndarray, measured_latency: np.ndarray,
    budgets_ms: Sequence[float], k: int,
) -> list[int]:
    """Up to ``k`` candidate rows, each maximising ``Σ_t P(lat ≤ t)·EI(acc; best_t)``.

    After each pick the candidate is believed at its predicted means: every
    budget its mean latency fits under takes its mean accuracy as the new
    incumbent, so the next pick goes where improvement is still expected.
    Returns fewer than ``k`` rows when no candidate is expected to improve
    any budget.
    """
    best = [best_under(measured_accuracy, measured_latency, t) for t in budgets_ms]
    p_under = [_probability_under(lat_mean, lat_std, t) for t in budgets_ms]
    picks: list[int] = []
    for _ in range(min(k, len(acc_mean))):
        score = sum(p * expected_improvement(acc_mean, acc_std, b) for p, b in zip(p_under, best))
        score = np.asarray(score, np.float64)
        score[picks] = -np.inf
        i = int(np.argmax(score))
        if not score[i] > 0:
            break
        picks.append(i)
        best = [max(b, float(acc_mean[i])) if lat_mean[i] <= t else b
                for b, t in zip(best, budgets_ms)]
    return picks


# --------------------------------------------------------------------------- band


def band_hypervolume(F: np.ndarray, band_ms: tuple[float, float], worst_error: float) -> float:
    """Hypervolume of ``F = [-accuracy, latency]`` rows counted inside the latency band only.

    Rows slower than the band add nothing; a row faster than the band's low
    edge counts as if it were at the edge.  ``worst_error`` is the reference
    point's ``-accuracy``.
    """
    F = np.asarray(F, np.float64).reshape(-1, 2)
    low, high = band_ms
    F = F[F[:, 1] <= high]
    if len(F) == 0:
        return 0.0
    clipped = np.column_stack([F[:, 0], np.maximum(F[:, 1], low)])
    return hypervolume(clipped[non_dominated(clipped)], (worst_error, high))


def pick_for_band(F_optimistic: np.ndarray, F_mean: np.ndarray, measured_F: np.ndarray,
                  band_ms: tuple[float, float], worst_error: float, k: int) -> list[int]:
    """Up to ``k`` rows by greedy band-hypervolume gain of their optimistic values.

    Each pick then enters the front at its predicted mean, as in the
    whole-front rule, so a batch spreads along the band.
    """
    front = np.asarray(measured_F, np.float64).reshape(-1, 2)
    base = band_hypervolume(front, band_ms, worst_error)
    picks: list[int] = []
    for _ in range(min(k, len(F_optimistic))):
        gains = np.array([
            -np.inf if i in picks
            else band_hypervolume(np.vstack([front, row]), band_ms, worst_error) - base
            for i, row in enumerate(F_optimistic)
        ])
        i = int(np.argmax(gains))
        if not gains[i] > 0:
            break
        picks.append(i)
        front = np.vstack([front, F_mean[i]])
        base = band_hypervolume(front, band_ms, worst_error)
    return picks
