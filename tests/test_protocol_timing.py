"""What the protocol times: each model with its own data cached (``timing: warm``), whatever else runs.

Measured on this machine (``docs/measurement.md``): a small demo subnet timed
among 15 other subnets took 1.6-1.9x what it took timed alone, because the
others evicted its weights between its runs; with hot timing the two agreed
within 3%.  These tests pin the mechanism with a cache of one model: a run
costs ``cold_ms`` unless the previous run on the machine was of the same
model.  They run the real protocol (rounds, references, filters, stopping).

The reference is a model too: timed right after a large model it read 1.31x
what it reads warm (docs/measurement.md), so under ``timing: hot`` large
models' ratios came out low.  A reference here pays for what the model
before it evicted.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

import numpy as np

from devices.profile import DeviceProfile, ProfileError
from devices.protocol import MAX_RUNS_PER_SAMPLE, SAMPLE_MS, SessionResult, run_protocol


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


@pytest.mark.parametrize("timing", ["warm", "hot"])
def test_hot_timing_measures_the_model_with_its_own_data_cached_whatever_the_session_holds(timing: str) -> None:
    alone, crowded = _ratio(timing, 0), _ratio(timing, 15)
    assert alone == crowded == pytest.approx(0.1 / 2.0)


class _Reference:
    """A reference that runs in ``hot_ms`` after itself (give or take 0.1%, so a session runs all its rounds), and
    slower by what the model run before it evicted."""

    provider = "CPUExecutionProvider"

    def __init__(self, machine: _Machine, hot_ms: float) -> None:
        self.machine, self.hot_ms, self.runs = machine, hot_ms, 0

    def run_ms(self) -> float:
        before = self.machine.last
        self.machine.last = self
        self.runs += 1
        hot_ms = self.hot_ms * (1.0 + 0.001 * (self.runs % 3))
        return hot_ms if before is self else hot_ms + getattr(before, "evicts_ms", 0.0)


class _EvictingModel(_CachedModel):
    """A cached model whose run costs the reference after it ``evicts_ms`` (a larger model evicts more)."""

    def __init__(self, machine: _Machine, hot_ms: float, evicts_ms: float) -> None:
        super().__init__(machine, hot_ms=hot_ms, cold_ms=hot_ms * 2)
        self.evicts_ms = evicts_ms


def _ratios_beside_a_large_model(timing: str, *, evicting_checks: bool = False) -> tuple[float, float, int]:
    """A small and a large model's ratios in one session (with three small peers), against a 2 ms reference,
    and how many samples the session dropped.  ``evicting_checks``: the session's checks between rounds (its
    progress report, a store write) evict what the large model does."""
    machine = _Machine()
    profile = DeviceProfile.from_dict({
        "name": "cached", "timing": timing, "warmup": {"runs": 1, "seconds": 0.0},
        "protocol": {"min_rounds": 15, "max_rounds": 30, "ci_target": 1e-9, "reference_ceiling_percentile": 100}})
    small = _EvictingModel(machine, hot_ms=0.1, evicts_ms=0.05)
    large = _EvictingModel(machine, hot_ms=4.0, evicts_ms=0.6)
    peers = [_EvictingModel(machine, hot_ms=0.2, evicts_ms=0.05) for _ in range(3)]

    def check(_: dict) -> None:
        if evicting_checks:
            machine.last = large

    result = run_protocol(_Reference(machine, hot_ms=2.0), [small, large, *peers], profile, progress=check)
    assert result.rounds == 30
    return result.models[0].ratio, result.models[1].ratio, sum(m.n_runs - m.n_kept for m in result.models)


def test_warm_timing_times_the_reference_warm_whatever_model_ran_before_it() -> None:
    small, large, _ = _ratios_beside_a_large_model("warm")
    assert small == pytest.approx(0.1 / 2.0, rel=0.003)
    assert large == pytest.approx(4.0 / 2.0, rel=0.003)


def test_warm_timing_warms_the_reference_at_every_rounds_start() -> None:
    """What ran between rounds (a progress report, a store write) is no model, and left the reference cold: 13 of
    300 samples dropped as reference jumps when only the first round's first reference was warmed (Y4)."""
    small, large, dropped = _ratios_beside_a_large_model("warm", evicting_checks=True)
    assert dropped == 0
    assert (small, large) == (pytest.approx(0.1 / 2.0, rel=0.003), pytest.approx(4.0 / 2.0, rel=0.003))


def test_hot_timing_loses_a_large_model_to_the_reference_it_slowed() -> None:
    """What ``warm`` mends: the reference after the large model ran 2.6 ms, against 2.05 before it.

    Each of its samples then looks like the host changing state between its
    two references, and is dropped; where nothing else varies (here) none
    is left.  On a real host, whose noise widens what counts as a change,
    some are kept, and read low.
    """
    small, large, _ = _ratios_beside_a_large_model("hot")
    assert small == pytest.approx(0.1 / 2.05, rel=0.02)
    assert math.isnan(large)


def test_interleaved_timing_measures_whatever_the_previous_run_left() -> None:
    assert _ratio("interleaved", 15) == pytest.approx(0.3 / 2.0)


def test_timing_is_part_of_the_device_identity() -> None:
    default = DeviceProfile(name="d")
    hashes = {default.hash(), *(dataclasses.replace(default, timing=t).hash() for t in ("loop", "hot", "interleaved"))}
    assert default.timing == "warm" and len(hashes) == 4
    with pytest.raises(ProfileError, match="timing"):
        DeviceProfile.from_dict({"name": "d", "timing": "lukewarm"})


class _Jittery:
    """A runner whose runs scatter around ``typical_ms`` (log-normal, seeded): one inference's own jitter."""

    provider = "CPUExecutionProvider"

    def __init__(self, typical_ms: float, sigma: float, seed: int) -> None:
        self.typical_ms, self.sigma = typical_ms, sigma
        self.rng = np.random.default_rng(seed)

    def run_ms(self) -> float:
        return float(self.typical_ms * self.rng.lognormal(0.0, self.sigma))


def _jittery_session(timing: str, typical_ms: float = 0.06) -> SessionResult:
    profile = DeviceProfile.from_dict({
        "name": "jittery", "timing": timing, "warmup": {"runs": 1, "seconds": 0.0},
        "protocol": {"min_rounds": 40, "max_rounds": 40, "ci_target": 1e-6, "peer_normalisation": False}})
    return run_protocol(_Jittery(2.0, sigma=0.0, seed=0), [_Jittery(typical_ms, sigma=0.3, seed=1)], profile)


def test_loop_timing_times_a_tiny_model_by_a_sample_of_runs_and_narrows_its_ci() -> None:
    """A 0.06 ms model whose single runs scatter by 30%: one run per sample (``warm``) against a loop of runs
    lasting ``SAMPLE_MS`` (``loop``), over the same 40 rounds."""
    warm, loop = _jittery_session("warm"), _jittery_session("loop")
    runs = loop.models[0].runs_per_sample
    assert runs > 1 and runs * 0.06 == pytest.approx(SAMPLE_MS, rel=0.5)
    assert warm.models[0].runs_per_sample == 1 and loop.reference_runs == 40 * 2  # one run per reference sample
    assert loop.models[0].n_runs == 40 * runs
    assert loop.models[0].ratio_ci < warm.models[0].ratio_ci / 2
    mean_ms = 0.06 * math.exp(0.3 ** 2 / 2)  # a loop's mean of a log-normal run time, above its median
    assert loop.models[0].ratio == pytest.approx(mean_ms / 2.0, rel=0.03)
    assert warm.models[0].ratio == pytest.approx(0.06 / 2.0, rel=0.1)


def test_loop_timing_caps_the_runs_of_a_sample_and_times_a_large_model_by_single_runs() -> None:
    tiny, large = _jittery_session("loop", typical_ms=0.001), _jittery_session("loop", typical_ms=2 * SAMPLE_MS)
    assert tiny.models[0].runs_per_sample == MAX_RUNS_PER_SAMPLE
    assert tiny.models[0].n_runs == 40 * MAX_RUNS_PER_SAMPLE
    assert large.models[0].runs_per_sample == 1 and large.models[0].n_runs == 40
