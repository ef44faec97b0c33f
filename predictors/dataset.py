"""Labelled subnets: the rows predictors are trained and scored on.

Rows are identified by arch key, so splits are made *by key* (a subnet
measured twice never lands on both sides of a split) and are stable across
runs: the same key always falls on the same side for a given seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwsearch.space import ArchConfig, SearchSpace

__all__ = ["MeasurementSet", "calibrated_latencies", "parse_key"]


def calibrated_latencies(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per-key latency on one scale for the whole device: ``ratio * median(reference_ms)``.

    A measurement's ``latency_ms`` is its reference ratio times the *session's*
    reference time, and on a shared CPU that time moves between sessions
    (3.4 ms in a quiet session vs 8.9 ms under load, same reference, same
    day).  Ratios are stable across sessions, so predictors learn the ratio
    scaled by one per-device constant: the median session reference time
    over all rows.  Rows without a finite ratio (the protocol found too few
    clean rounds) are left out rather than guessed; rows from a profiler that
    reports no ratio keep their ``latency_ms``.
    """
    refs = [float(r["env"]["reference_ms"]) for r in rows.values()
            if "ratio" in r and "reference_ms" in r.get("env", {})]
    if not refs:
        values = {k: float(r["latency_ms"]) for k, r in rows.items()}
    else:
        scale = float(np.median(refs))
        values = {k: float(r["ratio"]) * scale if "ratio" in r else float(r["latency_ms"])
                  for k, r in rows.items()}
    return {k: v for k, v in values.items() if np.isfinite(v) and v > 0}


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def parse_key(space: SearchSpace, key: str) -> ArchConfig:
    """Rebuild the configuration an ``ArchConfig.key()`` names (validated against ``space``)."""
    fields: dict[str, Any] = {}
    names = {"r": "resolution", "d": "depths", "k": "kernel", "e": "expand", "w": "width"}
    for part in key.split("-"):
        if not part or part[0] not in names:
            raise ValueError(f"cannot parse arch key {key!r}: bad part {part!r}")
        values = [_number(v) for v in part[1:].split(",")]
        fields[names[part[0]]] = values[0] if part[0] == "r" else values
    return space.arch(**fields)


@dataclass(frozen=True)
class MeasurementSet:
    """Arch keys, their encoded genes ``X`` (n, n_var) and targets ``y`` (n,)."""

    space: SearchSpace
    keys: tuple[str, ...]
    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.keys) == len(self.X) == len(self.y)):
            raise ValueError(f"{len(self.keys)} keys, {len(self.X)} gene rows, {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_archs(cls, space: SearchSpace, archs: Sequence[ArchConfig],
                   y: Sequence[float]) -> "MeasurementSet":
        return cls(space, tuple(a.key() for a in archs), space.encode_many(list(archs)),
                   np.asarray(y, dtype=np.float64))

    @classmethod
    def from_latencies(cls, space: SearchSpace,
                       rows: Mapping[str, Mapping[str, Any]]) -> "MeasurementSet":
        """From ``Store.get_latencies``; targets from :func:`calibrated_latencies`."""
        return cls.from_accuracies(space, calibrated_latencies(rows))

    @classmethod
    def from_accuracies(cls, space: SearchSpace, rows: Mapping[str, float]) -> "MeasurementSet":
        """From ``Store.get_accuracies`` (or any key -> value mapping)."""
        keys = sorted(rows)
        return cls.from_archs(space, [parse_key(space, k) for k in keys],
                              [float(rows[k]) for k in keys])

    def subset(self, index: np.ndarray | Sequence[int]) -> "MeasurementSet":
        index = np.asarray(index, dtype=np.int64)
        return MeasurementSet(self.space, tuple(self.keys[i] for i in index), self.X[index],
                              self.y[index])

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["MeasurementSet",
                                                                        "MeasurementSet"]:
        """``(train, test)`` by a hash of ``(seed, key)``: stable as rows are added."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        u = np.array([int(hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:12], 16) / 16**12
                      for k in self.keys])
        return self.subset(np.flatnonzero(u >= test_fraction)), self.subset(
            np.flatnonzero(u < test_fraction))
