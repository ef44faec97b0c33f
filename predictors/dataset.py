"""Labelled subnets: the rows predictors are trained and scored on.

Rows are identified by arch key, so splits are made *by key* (a subnet
measured twice never lands on both sides of a split) and are stable across
runs: the same key always falls on the same side for a given seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwsearch.checks import is_real
from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace

__all__ = ["MAX_LATENCY_MS", "MAX_RATIO", "MIN_RATIO", "MeasurementSet", "Screened", "calibrated_latencies",
           "parse_key", "screen_accuracies", "screen_latencies"]

#: Longest time one run can take: ten minutes, as ``devices.calibration.MAX_REFERENCE_MS`` bounds the
#: rulers and rows devices accept (predictors do not import devices).
MAX_LATENCY_MS = 600_000.0

#: Bounds of a plausible latency ratio: the subnet's time over the reference model's, timed in the
#: same session (``devices.protocol``).  The reference is an MBv3-like network at 160 px, 99 MMACs
#: (``devices.reference``); measured ratios run 0.02-0.16 (the demo supernet, 0.2-0.55 ms against
#: 3.4-8.9 ms) and 0.5-3 (OFA-MBv3 at 224 px, docs/predictors.md).  The largest subnet of any
#: registered supernet (autoformer_base, 16.5 GMACs) at the largest batch a profile allows (1024)
#: is 1.7e5 times the reference's MACs, and no network runs a million times faster than a
#: 99 MMAC one on the same device (a single runtime call costs microseconds where the reference
#: takes about a millisecond or more).  So 1e-6 and 1e6 leave room for every real row and refuse
#: only what cannot be a measurement: a ratio of 1e300 trained and saved a model with RMSE inf.
MIN_RATIO, MAX_RATIO = 1e-6, 1e6


def calibrated_latencies(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per-key latency on one scale for the whole device: ``ratio * median(reference_ms)``.

    A measurement's ``latency_ms`` is its reference ratio times the *session's*
    reference time, and on a shared CPU that time moves between sessions
    (3.4 ms in a quiet session vs 8.9 ms under load, same reference, same
    day).  Ratios are stable across sessions, so predictors learn the ratio
    scaled by one per-device constant: the median session reference time
    over all rows that recorded a plausible one (a single NaN ruler made the
    median NaN and emptied the set).  Rows without a finite ratio (the
    protocol found too few clean rounds) are left out rather than guessed;
    rows from a profiler that reports no ratio keep their ``latency_ms``.
    """
    refs = [ruler for r in rows.values() if "ratio" in r and (ruler := _ruler(r)) is not None]
    if not refs:
        values = {k: float(r["latency_ms"]) for k, r in rows.items()}
    else:
        scale = float(np.median(refs))
        values = {k: float(r["ratio"]) * scale if "ratio" in r else float(r["latency_ms"])
                  for k, r in rows.items()}
    return {k: v for k, v in values.items() if np.isfinite(v) and v > 0}


def _ruler(row: Mapping[str, Any]) -> float | None:
    """The session reference time a row records, if it is a time a run can take."""
    env = row.get("env")
    ruler = env.get("reference_ms") if isinstance(env, Mapping) else None
    return float(ruler) if _within(ruler, 0.0, MAX_LATENCY_MS) else None


def _within(value: Any, low: float, high: float) -> bool:
    """``value`` is a real number with ``low < value <= high`` (NaN and infinity never are)."""
    return is_real(value) and low < value <= high


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


@dataclass(frozen=True)
class Screened:
    """Stored rows a training set can use (``rows``) and the others, by why they cannot be right.

    A store can hold rows no measurement produces (hand edits, another
    version's bugs, a damaged file); one such row failed ``hwsearch train``
    with a traceback, emptied the whole set (a NaN ruler) or trained a
    model on infinity, so each is set aside by itself and reported.
    """

    rows: dict[str, Any]
    skipped: dict[str, list[str]]  # reason -> arch keys, in key order

    @property
    def n_skipped(self) -> int:
        return sum(map(len, self.skipped.values()))

    def summary(self, examples: int = 3) -> str:
        """``skipped N of M rows that cannot be right: K <reason> (e.g. 'key', ...), ...``; empty if none was."""
        if not self.skipped:
            return ""
        parts = []
        for reason, keys in self.skipped.items():
            shown = ", ".join(map(repr, keys[:examples])) + (", ..." if len(keys) > examples else "")
            parts.append(f"{len(keys)} {reason} (e.g. {shown})")
        total = len(self.rows) + self.n_skipped
        return f"skipped {self.n_skipped} of {total} rows that cannot be right: {'; '.join(parts)}"


def screen_latencies(space: SearchSpace, rows: Mapping[str, Any],
                     also: Callable[[Mapping[str, Any]], str | None] | None = None) -> Screened:
    """The latency rows (``Store.get_latencies``) :meth:`MeasurementSet.from_latencies` can use, and the others.

    Set aside: keys that are no subnet of ``space``; rows that are not
    objects or whose ``env`` is not one; a recorded ruler (``env.reference_ms``)
    that is no time (NaN, 0, negative, text, past :data:`MAX_LATENCY_MS`); a
    ratio that is NaN (its session could not measure the subnet) or outside
    [:data:`MIN_RATIO`, :data:`MAX_RATIO`]; a ``latency_ms`` that is no time.
    ``also``: why a row that passed these checks still cannot be read, or
    None, for what reads the rows before they are fitted and that predictors
    do not know (``hwsearch train`` passes :func:`hwsearch.anchor.norm_problem`).
    """
    def problem(row: Any) -> str | None:
        return _latency_problem(row) or (also(row) if also is not None else None)

    return _screen(space, rows, problem)


def screen_accuracies(space: SearchSpace, rows: Mapping[str, Any]) -> Screened:
    """The accuracy rows (``Store.get_accuracies``) that are fractions in [0, 1] of subnets of ``space``."""
    return _screen(space, rows, _accuracy_problem)


def _screen(space: SearchSpace, rows: Mapping[str, Any], problem_of: Callable[[Any], str | None]) -> Screened:
    kept: dict[str, Any] = {}
    skipped: dict[str, list[str]] = {}
    for key in sorted(rows, key=str):
        problem = _key_problem(space, key) or problem_of(rows[key])
        if problem is None:
            kept[key] = rows[key]
        else:
            skipped.setdefault(problem, []).append(key)
    return Screened(kept, skipped)


def _key_problem(space: SearchSpace, key: Any) -> str | None:
    try:
        parse_key(space, key)
    except ArchValidationError:
        return f"not a subnet of {space.name}"
    except (ValueError, TypeError, AttributeError):
        return "not an arch key"
    return None


def _latency_problem(row: Any) -> str | None:
    if not isinstance(row, Mapping):
        return "not a measurement (a JSON object)"
    env = row.get("env", {})
    if not isinstance(env, Mapping):
        return "with env not an object"
    if "reference_ms" in env and _ruler(row) is None:
        return f"with env.reference_ms not a time in (0, {MAX_LATENCY_MS:.0f}] ms"
    ratio = row.get("ratio", 1.0)
    if is_real(ratio) and math.isnan(ratio):
        return "with no ratio (NaN: its session could not measure it)"
    if not (is_real(ratio) and MIN_RATIO <= ratio <= MAX_RATIO):
        return f"with a ratio that is not a number in [{MIN_RATIO:g}, {MAX_RATIO:g}]"
    if not _within(row.get("latency_ms"), 0.0, MAX_LATENCY_MS):
        return f"with latency_ms not a time in (0, {MAX_LATENCY_MS:.0f}] ms"
    return None


def _accuracy_problem(accuracy: Any) -> str | None:
    if not (is_real(accuracy) and math.isfinite(accuracy)):
        return "with an accuracy that is not a finite number"
    if not 0.0 <= accuracy <= 1.0:
        return "with an accuracy outside [0, 1]"
    return None
