"""The local onnxruntime (and OpenVINO) profiler on real exported models."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from devices import open_profiler
from devices.local import LocalProfiler
from devices.ort import ModelInputError, OrtRunner, session_options, validate_onnx_bytes
from devices.profile import DeviceProfile, ProfileError
from devices.reference import REFERENCE_INPUT_SHAPE, reference_model_bytes

torch = pytest.importorskip("torch")

QUICK = {"warmup": {"runs": 3, "seconds": 0.2}, "protocol": {"min_rounds": 9, "max_rounds": 40, "max_seconds": 20}}


def export_convnet(path: Path, width: int, *, resolution: int = 96, dynamic_batch: bool = False) -> Path:
    """A small MobileNet-style conv net exported with the TorchScript exporter."""
    torch.manual_seed(width)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, 2, 1), torch.nn.BatchNorm2d(width), torch.nn.Hardswish(),
        torch.nn.Conv2d(width, width, 5, 1, 2, groups=width), torch.nn.ReLU(),
        torch.nn.Conv2d(width, 2 * width, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(2 * width, 2 * width, 3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(2 * width, 10),
    ).eval()
    axes = {"x": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(net, torch.randn(1, 3, resolution, resolution), path, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return path


pytestmark = pytest.mark.usefixtures("calibration_dir")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("models")
    return [export_convnet(folder / "small.onnx", 8), export_convnet(folder / "large.onnx", 96)]


def test_reference_is_deterministic_across_processes_and_loads() -> None:
    code = ("import hashlib; from devices.reference import reference_model_bytes as r; "
            "print(hashlib.sha256(r()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == hashlib.sha256(reference_model_bytes()).hexdigest()
    onnx.checker.check_model(onnx.load_from_string(reference_model_bytes()))
    runner = OrtRunner(reference_model_bytes(), DeviceProfile.from_dict({"name": "r"}))
    assert runner.feeds["input"].shape == REFERENCE_INPUT_SHAPE
    assert runner.run_ms() > 0


def test_measure_many_returns_consistent_measurements(models: list[Path]) -> None:
    profile = DeviceProfile.from_dict({"name": "local", **QUICK})
    progress: list[dict] = []
    measurements = open_profiler(profile).measure_many(models, progress=progress.append)
    assert [m.model_sha256 for m in measurements] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in models]
    assert progress and progress[-1]["models"] == 2
    for m in measurements:
        assert m.min_ms <= m.p10_ms <= m.median_ms <= m.p90_ms <= m.p99_ms
        assert m.latency_ms == pytest.approx(m.ratio * m.env["reference_ms"])
        assert m.device_hash == profile.hash()
        assert m.stable == (m.ratio_ci <= profile.protocol.ci_target
                            and m.env["reference_slowdown"] <= m.env["max_reference_slowdown"]
                            and m.env["foreign_cpu_cores"] <= profile.protocol.max_foreign_cores)
        assert m.env["max_reference_slowdown"] == profile.reference_slowdown_limit() == 0.04  # wall clock
        assert profile.protocol.min_rounds <= m.n_runs <= profile.protocol.max_rounds
        assert m.env["onnxruntime"] and m.env["provider"] == "CPUExecutionProvider" and m.env["cpu"]
        assert m.env["intra_op_threads"] == 1 and len(m.env["load_average_before"]) == 3
    # The wide model does ~100x the work of the narrow one; noise cannot swap them.
    assert measurements[1].ratio > 3 * measurements[0].ratio


def test_same_model_twice_gets_the_same_ratio(models: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(models[1].read_bytes())
    profile = DeviceProfile.from_dict({"name": "local", **QUICK})
    first, second = LocalProfiler(profile).measure_many([models[1], copy])
    assert first.model_sha256 == second.model_sha256
    assert second.ratio == pytest.approx(first.ratio, rel=0.25)


def test_sessions_share_the_device_calibration(models: list[Path], calibration_dir: Path) -> None:
    # Load from other tests must not make the first session's ruler provisional: the host is not the point here.
    profile = DeviceProfile.from_dict({"name": "local", **QUICK,
                                       "protocol": {**QUICK["protocol"], "max_foreign_cores": 4.0}})
    first = LocalProfiler(profile).measure_many(models[:1])[0]
    second = LocalProfiler(profile).measure_many(models[:1])[0]
    assert first.env["reference_source"] == "this-session"
    assert first.env["reference_ms"] == first.env["session_reference_ms"]
    assert second.env["reference_source"] == "stored"
    assert second.env["reference_ms"] == first.env["reference_ms"]
    assert second.latency_ms == pytest.approx(second.ratio * first.env["reference_ms"])
    assert [p.name for p in calibration_dir.iterdir()] == [f"{profile.hash()}.json"]


def test_a_pinned_reference_latency_sets_the_scale(models: list[Path]) -> None:
    profile = DeviceProfile.from_dict({"name": "local", "reference_ms": 5.0, **QUICK})
    assert profile.hash() != DeviceProfile.from_dict({"name": "local", **QUICK}).hash()
    measurement = LocalProfiler(profile).measure_many(models[:1])[0]
    assert measurement.env["reference_source"] == "profile"
    assert measurement.latency_ms == pytest.approx(measurement.ratio * 5.0)


def test_thread_cpu_clock_measures_the_same_models(models: list[Path]) -> None:
    profile = DeviceProfile.from_dict({"name": "cpu-clock", "clock": "thread_cpu", **QUICK})
    small, large = LocalProfiler(profile).measure_many(models)
    assert small.env["clock"] == "thread_cpu" and 0 < small.min_ms <= small.median_ms
    assert large.ratio > 3 * small.ratio


def test_caps_stop_rounds_and_flag_instability(models: list[Path]) -> None:
    profile = DeviceProfile.from_dict(
        {"name": "strict", "warmup": {"runs": 1, "seconds": 0},
         "protocol": {"min_rounds": 6, "max_rounds": 6, "ci_target": 1e-9}}
    )
    measurements = LocalProfiler(profile).measure_many(models)
    assert all(m.n_runs == 6 and not m.stable for m in measurements)


def test_loop_timing_rows_say_how_many_runs_each_sample_took(models: list[Path]) -> None:
    """``timing: loop`` on real onnxruntime sessions: a model far under ``SAMPLE_MS`` is timed by samples of several
    runs, and each row says so; the reference is timed by single runs whatever it takes."""
    from devices.protocol import SAMPLE_MS

    profile = DeviceProfile.from_dict({"name": "loop", "timing": "loop", "warmup": {"runs": 1, "seconds": 0},
                                       "protocol": {"min_rounds": 6, "max_rounds": 6, "ci_target": 1e-9}})
    small, large = LocalProfiler(profile).measure_many(models)
    for row in (small, large):
        runs = row.env["runs_per_sample"]
        assert row.n_runs == 6 * runs, row.env
        if row.median_ms < SAMPLE_MS / 2:
            assert runs >= 2
        assert runs * row.median_ms == pytest.approx(SAMPLE_MS, rel=1.0) or runs == 1
    assert small.env["runs_per_sample"] >= large.env["runs_per_sample"]
    assert small.env["reference_runs"] == small.env["rounds"] * 3  # one run per reference sample, three per round


def test_session_options_follow_the_profile() -> None:
    import onnxruntime as ort

    profile = DeviceProfile.from_dict(
        {"name": "t", "intra_op_threads": 2, "inter_op_threads": 1, "graph_optimization": "basic",
         "allow_spinning": False, "thread_affinity": "2"}
    )
    options = session_options(profile)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.intra_op_thread_affinities") == "2"
    runner = OrtRunner(reference_model_bytes(), profile)
    assert runner.run_ms() > 0


@pytest.mark.parametrize("entry", ["{lacking}", "1,{lacking}", "1-{lacking}"])
def test_a_local_session_refuses_an_affinity_naming_a_processor_this_host_lacks(models: list[Path],
                                                                                 entry: str) -> None:
    """onnxruntime logs 'pthread_setaffinity_np failed' and runs the thread unpinned, under the pinned name."""
    lacking = max(os.sched_getaffinity(0)) + 2  # onnxruntime numbers processors from 1
    profile = DeviceProfile.from_dict({"name": "away", "intra_op_threads": 2,
                                       "thread_affinity": entry.format(lacking=lacking)})
    with pytest.raises(ProfileError, match=rf"field 'thread_affinity' names logical processor\(s\) {lacking}"):
        LocalProfiler(profile).measure_many(models)


def test_batch_from_profile_fills_a_symbolic_batch(tmp_path: Path) -> None:
    path = export_convnet(tmp_path / "dyn.onnx", 8, dynamic_batch=True)
    runner = OrtRunner(path.read_bytes(), DeviceProfile.from_dict({"name": "b", "batch": 3}))
    assert runner.feeds["x"].shape == (3, 3, 96, 96)
    assert runner.session.run(None, runner.feeds)[0].shape == (3, 10)


def test_input_dtype_mismatch_is_an_error(models: list[Path]) -> None:
    with pytest.raises(ModelInputError, match="input_dtype is float16"):
        OrtRunner(models[0].read_bytes(), DeviceProfile.from_dict({"name": "h", "input_dtype": "float16"}))


def test_non_onnx_bytes_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        validate_onnx_bytes(b"definitely not protobuf")


def test_openvino_is_a_distinct_device(models: list[Path]) -> None:
    pytest.importorskip("openvino")
    profile = DeviceProfile.from_dict({"name": "ov", "runtime": "openvino", **QUICK})
    assert profile.hash() != DeviceProfile.from_dict({"name": "ov", **QUICK}).hash()
    small, large = LocalProfiler(profile).measure_many(models)
    assert small.env["provider"] == "OpenVINO-CPU" and small.env["runtime"] == "openvino"
    assert np.isfinite(small.latency_ms) and large.ratio > 3 * small.ratio
