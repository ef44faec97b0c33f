"""A device's precisions are measured together: a subnet's FP32 and INT8 files in one session.

Real exports, real quantization, real onnxruntime sessions and a real store;
the profiler is the device's own, wrapped only to record which files each
session was given (as ``tests/test_pipeline.py`` does for retries).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from devices.profile import DeviceProfile
from hwsearch.store import MemoryStore
from tests._jobs import SUPERNET, fast_device, random_dataset


class _RecordingProfiler:
    """A real profiler that records each session's files (sha256 → name and size) before measuring."""

    def __init__(self, profiler: Any) -> None:
        self.profiler, self.sessions = profiler, []

    @property
    def profile(self) -> Any:
        return self.profiler.profile

    def measure_many(self, paths: list[Path], **options: Any) -> list[Any]:
        files = {}
        for path in map(Path, paths):
            body = path.read_bytes()
            files[hashlib.sha256(body).hexdigest()] = (path.name, len(body))
        self.sessions.append(files)
        return self.profiler.measure_many(paths, **options)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from devices import open_profiler
    from hwsearch.data import load_images
    from hwsearch.jobs.context import JobDevice
    from hwsearch.jobs.spec import SupernetRef, build_supernet
    from hwsearch.pipeline import select_subnets

    root = tmp_path_factory.mktemp("precision-sessions")
    net = build_supernet(SupernetRef(**SUPERNET))
    profile = DeviceProfile.from_dict(fast_device("both") | {"precisions": ["fp32", "int8"]})
    device = JobDevice(profile=profile, token=None, key=open_profiler(profile).device_key())
    images = load_images(random_dataset(root / "d.npz", n=40), size=32)
    return {"net": net, "device": device, "images": images,
            "archs": select_subnets(net.space, 3, seed=11)}


def _rows(store: MemoryStore, setting: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from hwsearch.jobs.precision import device_keys

    network = setting["net"].space.network_id
    return {p: store.get_latencies(key, network)
            for p, key in device_keys(setting["device"]).items()}


def _profile(setting: dict[str, Any], store: MemoryStore, profiler: Any, archs: list[Any],
             **options: Any) -> dict[str, Any]:
    from hwsearch.jobs.precision import device_keys
    from hwsearch.pipeline import profile_precisions

    return profile_precisions(setting["net"], archs, profiler, device_keys(setting["device"]),
                              store, calibration=setting["images"], **options)


@pytest.fixture(scope="module")
def profiled(setting: dict[str, Any]) -> tuple[MemoryStore, _RecordingProfiler, dict[str, Any]]:
    """The three subnets profiled at both precisions once: the store, the sessions, the reports."""
    store = MemoryStore()
    spy = _RecordingProfiler(setting["device"].profiler())
    reports = _profile(setting, store, spy, setting["archs"], retries=0)
    return store, spy, reports


def test_fp32_and_int8_of_each_subnet_share_one_session_and_carry_their_own_file_figures(
        setting: dict[str, Any], profiled: tuple[MemoryStore, _RecordingProfiler, Any]) -> None:
    store, spy, reports = profiled
    assert {p: r.measured for p, r in reports.items()} == {"fp32": 3, "int8": 3}
    [session] = spy.sessions  # every precision of every subnet: one session, one reference
    assert sorted(name.endswith(".int8.onnx") for name, _ in session.values()) == [False] * 3 + [True] * 3
    rows = _rows(store, setting)
    for arch in setting["archs"]:
        fp32, int8 = rows["fp32"][arch.key()], rows["int8"][arch.key()]
        assert fp32["session_id"] == int8["session_id"]
        assert (fp32["env"]["session_start"], fp32["env"]["session_end"]) == (
            int8["env"]["session_start"], int8["env"]["session_end"])
        assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
        # Each row's bytes are those of the very file its measurement ran (matched by sha256).
        for row, suffix in ((fp32, ".onnx"), (int8, ".int8.onnx")):
            name, size = session[row["model_sha256"]]
            assert name.endswith(suffix) and row["onnx_bytes"] == size
        assert int8["onnx_bytes"] < fp32["onnx_bytes"]
        assert int8["quantization"]["fp32_bytes"] == fp32["onnx_bytes"]
        assert int8["export_seconds"] == pytest.approx(
            fp32["export_seconds"] + int8["quantization"]["quantize_seconds"])
        assert 0.0 <= int8["quantization"]["top1_agreement"] <= 1.0
        assert int8["export_start"] >= fp32["export_end"]  # quantized after its own FP32 export
    assert len({rows["fp32"][a.key()]["session_id"] for a in setting["archs"]}) == 1


def test_a_subnet_stored_at_one_precision_is_measured_again_at_both_in_one_session(
        setting: dict[str, Any], profiled: tuple[MemoryStore, _RecordingProfiler, Any]) -> None:
    from hwsearch.jobs.precision import device_keys

    full, store = profiled[0], MemoryStore()
    network = setting["net"].space.network_id
    lone = setting["archs"][0].key()
    for precision, key in device_keys(setting["device"]).items():  # all but the lone INT8 row
        for arch_key, row in full.get_latencies(key, network).items():
            if (precision, arch_key) != ("int8", lone):
                store.put_latency(key, network, arch_key, row)
    old = store.get_latencies(device_keys(setting["device"])["fp32"], network)[lone]

    spy = _RecordingProfiler(setting["device"].profiler())
    reports = _profile(setting, store, spy, setting["archs"], retries=0)
    assert reports["int8"].skipped == 2 and reports["int8"].measured == 1
    [session] = spy.sessions
    assert len(session) == 2  # the lone subnet's FP32 and INT8 files, nothing else
    rows = _rows(store, setting)
    assert rows["fp32"][lone]["session_id"] == rows["int8"][lone]["session_id"] != old["session_id"]


def test_an_unstable_subnet_is_measured_again_with_its_other_precision(
        setting: dict[str, Any]) -> None:
    from devices import open_profiler

    strict = DeviceProfile.from_dict(fast_device("strict") | {
        "protocol": {"min_rounds": 6, "max_rounds": 6, "ci_target": 1e-9}})
    store = MemoryStore()
    spy = _RecordingProfiler(open_profiler(strict))
    archs = setting["archs"][:2]
    _profile(setting, store, spy, archs, retries=1)
    assert [len(s) for s in spy.sessions] == [4, 4]  # the retry re-measures every pair whole
    rows = _rows(store, setting)
    for arch in archs:
        assert rows["fp32"][arch.key()]["session_id"] == rows["int8"][arch.key()]["session_id"]
