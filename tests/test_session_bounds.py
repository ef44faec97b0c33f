"""What one measurement session may take of the machine that measures: its threads and its time.

Real onnxruntime sessions throughout; the models are small graphs built with
``onnx.helper`` whose run time is set by the size of a matrix product.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devices import open_profiler
from devices.profile import DeviceProfile, ProfileError
from devices.reference import mobilenet_like_onnx


@pytest.fixture(autouse=True)
def _own_lock_and_rulers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not queued behind other suites' sessions, and no ruler of theirs read or written."""
    monkeypatch.setenv("DEVICES_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("DEVICES_CALIBRATION_DIR", str(tmp_path / "calibration"))


@pytest.mark.parametrize("field", ["intra_op_threads", "inter_op_threads"])
def test_a_local_session_with_more_threads_than_the_machine_runs_is_refused_naming_the_field(
    tmp_path: Path, field: str,
) -> None:
    """Refused before a session starts: each model's session would start its own pool of that many threads."""
    threads = len(os.sched_getaffinity(0)) + 1
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((8, 8, 3, 2),), seed=1, input_shape=(1, 3, 32, 32)))
    profile = DeviceProfile.from_dict({"name": "wide", field: threads, "allow_spinning": False,
                                       "warmup": {"runs": 1, "seconds": 0.0},
                                       "protocol": {"min_rounds": 5, "max_rounds": 5, "max_seconds": 10}})
    with pytest.raises(ProfileError, match=f"field '{field}' is {threads}, but this machine"):
        open_profiler(profile).measure_many([model])
    assert not (tmp_path / "calibration").exists(), "nothing was measured"
