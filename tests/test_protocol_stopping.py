"""A model is reported with the CI that let it stop: converged models are judged again at every check.

A sample's filters depend on the whole session's references (the jump
filter's scale is the MAD over all of them), so references run after a
model left the rotation can drop its samples.  Judged only once, 11 of 76
rows in four sessions of OFA-MobileNetV3 subnets on the 1-thread device
left with a CI within 1% and ended wider, unstable, and each of those
sessions was measured again whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devices import open_profiler
from devices.profile import DeviceProfile
from devices.protocol import run_protocol
from devices.reference import mobilenet_like_onnx

CALM_AFTER_REFERENCE_RUNS = 40


class _Host:
    """Counts reference runs: the host is noisy for the first ones, then calm."""

    reference_runs = 0

    @property
    def calm(self) -> bool:
        return self.reference_runs >= CALM_AFTER_REFERENCE_RUNS


class _Reference:
    """A reference that wobbles by ±5% while the host is noisy and runs steadily after."""

    provider = "CPUExecutionProvider"
    _WOBBLE = (2.0, 2.1, 1.9, 2.05, 1.95)

    def __init__(self, host: _Host) -> None:
        self.host = host

    def run_ms(self) -> float:
        self.host.reference_runs += 1
        return 2.0 if self.host.calm else self._WOBBLE[self.host.reference_runs % len(self._WOBBLE)]


class _Model:
    """A model of steady time, or one that swings between two times until the host is calm."""

    provider = "CPUExecutionProvider"

    def __init__(self, host: _Host, swings: bool) -> None:
        self.host, self.swings, self.runs = host, swings, 0

    def run_ms(self) -> float:
        self.runs += 1
        return 3.0 if self.swings and not self.host.calm and self.runs % 2 else 1.0


def test_a_model_whose_samples_a_later_calm_drops_comes_back_and_converges() -> None:
    """The steady model converges in the noisy start; the calm that follows makes those samples jumps."""
    host = _Host()
    steady, swinging = _Model(host, swings=False), _Model(host, swings=True)
    profile = DeviceProfile.from_dict({
        "name": "scripted", "timing": "interleaved", "warmup": {"runs": 0, "seconds": 0.0},
        "protocol": {"min_rounds": 6, "max_rounds": 400, "max_seconds": 60.0, "ci_target": 0.05}})
    session = run_protocol(_Reference(host), [steady, swinging], profile)
    # It left the rotation after the sixth round, in the noisy start; the calm dropped those samples.
    assert steady.runs > 6 + 3, "the steady model did not come back once its samples were dropped"
    assert host.calm and session.rounds < profile.protocol.max_rounds
    for model in session.models:
        assert model.ratio_ci <= profile.protocol.ci_target and model.n_kept >= 6
    assert session.models[0].ratio == pytest.approx(0.5)


def test_real_rows_that_left_the_rotation_are_within_the_ci_target(tmp_path: Path) -> None:
    """On real models, every row that stopped before the cap stopped with the CI it is reported with.

    These models run in about 40 us, where timer noise is large: a 2% target
    took 279 rounds (9 s) in a calm hour and ran past 30 s in a slow one, so
    no row stopped and the claim went unchecked.  A 3% target took 84-150
    rounds (2-5 s) in a calm hour, but in a clean-clone CI on a slow host all
    five rows were still at 2.8-3.8% after 914 rounds, when the 60 s cap
    ended the session, and the test failed for want of a stopped row.  The
    claim holds at any target, so the target is 5%: that host's rows would
    have met it by about 530 rounds, and the 120 s cap leaves twice that
    time again.
    """
    paths = []
    for index, width in enumerate((4, 8, 16, 24, 32)):
        path = tmp_path / f"m{index}.onnx"
        path.write_bytes(mobilenet_like_onnx(((width, 8, 3, 1),), seed=index, input_shape=(1, 3, 16, 16)))
        paths.append(path)
    profile = DeviceProfile.from_dict({
        "name": "stopping-1t", "clock": "thread_cpu", "warmup": {"runs": 3, "seconds": 0.1},
        "protocol": {"min_rounds": 6, "max_rounds": 3000, "max_seconds": 120.0, "ci_target": 0.05}})
    rows = open_profiler(profile).measure_many(paths)
    # A session that the time cap ended reports a little less than max_seconds (Y9: 2.989-2.999 s of a 3 s cap):
    # its deadline counts from before the warm-up, which overruns warmup.seconds.  A converged one ends far sooner.
    stopped = [row for row in rows if row.env["rounds"] < profile.protocol.max_rounds
               and row.env["session_seconds"] < 0.9 * profile.protocol.max_seconds]
    assert stopped, ("no row stopped before the caps", [(row.env["rounds"], row.ratio_ci) for row in rows])
    assert all(row.ratio_ci <= profile.protocol.ci_target for row in stopped), [r.ratio_ci for r in stopped]
