"""``protocol.load_twice``: each model loaded again in reverse order, its two copies taking turns by round.

On this host a model's place in its session's load order moved its ratio:
the model loaded last read 1.8-5.1% faster than the one loaded first
(``bench/load_order.py``).  The protocol tests below pin the mechanism with
runners whose speed is set per copy; the last two load real exported models
through onnxruntime: the copies compute what their own model computes, and a
real ``load_twice`` session reports two loads per model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices.local import _loaded_again, measure_model_bytes
from devices.profile import DeviceProfile, ProfileError
from devices.protocol import make_runner, run_protocol
from tests.test_devices_local import QUICK, export_convnet

REFERENCE_MS = 2.0


class _Copy:
    """One loaded copy of a model: a fixed time per run, and how many runs it was given."""

    provider = "CPUExecutionProvider"

    def __init__(self, ms: float, machine: list[object] | None = None) -> None:
        self.ms, self.runs, self.machine = ms, 0, machine

    def run_ms(self) -> float:
        self.runs += 1
        if self.machine is None:
            return self.ms
        hot = self.machine[-1:] == [self]
        self.machine.append(self)
        return self.ms if hot else 3 * self.ms


def _profile(timing: str = "interleaved", rounds: int = 16) -> DeviceProfile:
    return DeviceProfile.from_dict({
        "name": "copies", "timing": timing, "warmup": {"runs": 1, "seconds": 0.0},
        "protocol": {"min_rounds": rounds, "max_rounds": rounds, "ci_target": 0.5, "load_twice": True}})


def test_a_model_loaded_twice_runs_each_copy_in_alternate_rounds_and_reports_both() -> None:
    first, second = _Copy(0.10), _Copy(0.12)  # the same model, loaded at two places of the order
    session = run_protocol(_Copy(REFERENCE_MS), [first], _profile(rounds=16), copies=[second])
    warm_up_runs = 1
    assert first.runs == second.runs == 8 + warm_up_runs
    assert session.models[0].n_runs == 16
    assert session.models[0].ratio == pytest.approx((0.10 + 0.12) / 2 / REFERENCE_MS)


def test_hot_timing_runs_the_untimed_and_the_timed_run_on_the_same_copy() -> None:
    machine: list[object] = []  # what ran last: a run is fast only right after its own copy's run
    reference = _Copy(REFERENCE_MS)
    first, second = _Copy(0.1, machine), _Copy(0.1, machine)
    session = run_protocol(reference, [first], _profile("hot"), copies=[second])
    assert session.models[0].ratio == pytest.approx(0.1 / REFERENCE_MS)


def test_copies_must_match_the_models_one_for_one() -> None:
    with pytest.raises(ValueError, match="1 copies for 2 models"):
        run_protocol(_Copy(REFERENCE_MS), [_Copy(0.1), _Copy(0.2)], _profile(), copies=[_Copy(0.1)])


@pytest.mark.parametrize("value", [1, "yes", None])
def test_load_twice_is_true_or_false(value: object) -> None:
    with pytest.raises(ProfileError, match="'protocol.load_twice'"):
        DeviceProfile.from_dict({"name": "x", "protocol": {"load_twice": value}})


def test_real_models_loaded_again_are_the_same_models_in_model_order(tmp_path: Path) -> None:
    """Each second copy computes exactly what its first load computes: outputs, not timings, prove the pairing.

    Three nets of different widths: a copy list left in load order (reversed)
    would pair the first model with the last one's copy.
    """
    files = [export_convnet(tmp_path / f"w{width}.onnx", width).read_bytes() for width in (8, 16, 32)]
    profile = DeviceProfile.from_dict({"name": "twice-test", "protocol": {"load_twice": True}})
    first_loads = [make_runner(model, profile) for model in files]
    copies = _loaded_again(files, profile)
    outputs = [runner.session.run(None, runner.feeds)[0] for runner in first_loads]
    assert not np.allclose(outputs[0], outputs[2])  # the nets differ, so a swapped copy cannot pass
    for runner, copy, expected in zip(first_loads, copies, outputs):
        np.testing.assert_array_equal(copy.session.run(None, runner.feeds)[0], expected)


@pytest.mark.usefixtures("calibration_dir")  # tests/conftest.py
def test_real_models_measured_with_load_twice_report_two_loads_and_keep_their_order(tmp_path: Path) -> None:
    """A small and a 40x larger conv net measured in one ``load_twice`` session.

    Each model's two copies take turns, so a copy paired with the other model
    would average the two nets and bring their ratios within 2x of each other.
    Both are compared inside one session: across two sessions a tiny net's
    ratio is at the mercy of whatever else shares the memory system (it read
    3.2x apart once, with another test worker running beside it).
    """
    files = [export_convnet(tmp_path / "small.onnx", 8).read_bytes(),
             export_convnet(tmp_path / "large.onnx", 96).read_bytes()]
    twice = DeviceProfile.from_dict({"name": "twice-test", **QUICK,
                                     "protocol": {**QUICK["protocol"], "load_twice": True}})
    small, large = measure_model_bytes(twice, files, twice.reference_bytes())
    assert large.ratio > 5 * small.ratio
    for measured in (small, large):
        assert measured.env["loads_per_model"] == 2 and measured.env["protocol"]["load_twice"] is True
        assert measured.n_runs >= QUICK["protocol"]["min_rounds"]
