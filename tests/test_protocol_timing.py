"""What the protocol times: a model with its own data cached (``timing: hot``), whatever else runs.

Measured on this machine (``docs/measurement.md``): a small demo subnet timed
among 15 other subnets took 1.6-1.9x what it took timed alone, because the
others evicted its weights between its runs; with hot timing the two agreed
within 3%.  These tests pin the mechanism with a cache of one model: a run
costs ``cold_ms`` unless the previous run on the machine was of the same
model.  They run the real protocol (rounds, references, filters, stopping).
"""

from __future__ import annotations

import dataclasses

import pytest

from devices.profile import DeviceProfile, ProfileError
from devices.protocol import run_protocol


class _Machine:
    """A one-model cache: which model ran last."""

    last: object | None = None


class _CachedModel:
    """A runner whose run is fast only right after its own previous run."""

    provider = "CPUExecutionProvider"

    def __init__(self, machine: _Machine, hot_ms: float, cold_ms: float) -> None:
        self.machine, self.hot_ms, self.cold_ms = machine, hot_ms, cold_ms

    def run_ms(self) -> float:
        hot = self.machine.last is self
        self.machine.last = self
        return self.hot_ms if hot else self.cold_ms


def _ratio(timing: str, n_others: int) -> float:
    """The first model's measured ratio when it shares the session with ``n_others`` models."""
    machine = _Machine()
    profile = DeviceProfile.from_dict({
        "name": "cached", "timing": timing, "warmup": {"runs": 1, "seconds": 0.0},
        "protocol": {"min_rounds": 15, "max_rounds": 15, "ci_target": 0.5}})
    reference = _CachedModel(machine, hot_ms=2.0, cold_ms=2.0)
    models = [_CachedModel(machine, hot_ms=0.1, cold_ms=0.3) for _ in range(1 + n_others)]
    return run_protocol(reference, models, profile).models[0].ratio


def test_hot_timing_measures_the_model_with_its_own_data_cached_whatever_the_session_holds() -> None:
    alone, crowded = _ratio("hot", 0), _ratio("hot", 15)
    assert alone == crowded == pytest.approx(0.1 / 2.0)


def test_interleaved_timing_measures_whatever_the_previous_run_left() -> None:
    assert _ratio("interleaved", 15) == pytest.approx(0.3 / 2.0)


def test_timing_is_part_of_the_device_identity() -> None:
    hot = DeviceProfile(name="d")
    interleaved = dataclasses.replace(hot, timing="interleaved")
    assert hot.timing == "hot" and hot.hash() != interleaved.hash()
    with pytest.raises(ProfileError, match="timing"):
        DeviceProfile.from_dict({"name": "d", "timing": "warm"})
