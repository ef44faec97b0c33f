"""Real Ray actors holding device resources: parallel across devices, serial per device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from devices.profile import DeviceProfile
from devices.reference import mobilenet_like_onnx

ray = pytest.importorskip("ray")

from devices.ray_pool import create_device_actor, device_resource  # noqa: E402 (after the importorskip)

SETTINGS = {"warmup": {"runs": 2, "seconds": 1.5}, "protocol": {"min_rounds": 9, "max_rounds": 20, "max_seconds": 10}}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    calibration = tmp_path_factory.mktemp("calibration")
    ray.init(
        num_cpus=2,
        resources={"device:alpha": 1, "device:beta": 1},
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        runtime_env={
            "env_vars": {
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                "DEVICES_CALIBRATION_DIR": str(calibration),
            }
        },
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("ray-models")
    paths = []
    for seed in (1, 2):
        path = folder / f"m{seed}.onnx"
        path.write_bytes(mobilenet_like_onnx(((32, 16, 3, 2), (64, 24, 5, 2)), seed=seed, input_shape=(1, 3, 64, 64)))
        paths.append(str(path))
    return paths


def _overlap(a: dict, b: dict) -> bool:
    return max(a["started"], b["started"]) < min(a["finished"], b["finished"])


def test_devices_measure_in_parallel_but_never_twice_at_once(ray_cluster: None, model_paths: list[str]) -> None:
    alpha = DeviceProfile.from_dict({"name": "alpha", **SETTINGS})
    beta = DeviceProfile.from_dict({"name": "beta", **SETTINGS})
    assert device_resource(alpha) == "device:alpha"
    actors = {p.name: create_device_actor(p, num_cpus=0.5) for p in (alpha, beta)}
    facts = ray.get([actor.describe.remote() for actor in actors.values()])
    assert all(f["onnxruntime"] for f in facts)

    first_alpha = actors["alpha"].measure_many.remote(model_paths)
    only_beta = actors["beta"].measure_many.remote(model_paths)
    second_alpha = actors["alpha"].measure_many.remote(model_paths)
    a1, b, a2 = ray.get([first_alpha, only_beta, second_alpha], timeout=300)

    assert not _overlap(a1, a2), "one device ran two measurements at once"
    assert _overlap(a1, b) or _overlap(a2, b), "different devices did not measure in parallel"
    for result, profile in ((a1, alpha), (a2, alpha), (b, beta)):
        assert result["device"] == profile.name
        assert [m["device_hash"] for m in result["measurements"]] == [profile.hash()] * 2
    assert ray.available_resources().get("device:alpha", 0) == 0  # held by alpha's actor
    with pytest.raises(ValueError, match="device:alpha"):
        create_device_actor(alpha)  # a second owner for the same device is refused
