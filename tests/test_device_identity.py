"""What a latency row is filed under: the device on its host, and the network with its head.

A row is reused by every later job that asks for the same key, so the key must
change whenever the latency could: another host or runtime version, another
batch, another classifier head.
"""

from __future__ import annotations

import json
from pathlib import Path

from devices import open_profiler
from devices.local import LocalProfiler, host_fingerprint, runtime_version
from devices.profile import DeviceProfile
from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.jobs import SupernetRef, build_supernet
from hwsearch.pipeline import profile_subnets
from hwsearch.store import MemoryStore
from tests._jobs import SUPERNET, fast_device

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "devices"


def test_the_same_profile_on_another_host_is_another_device() -> None:
    profile = DeviceProfile.from_dict(fast_device("box"))
    version = runtime_version("onnxruntime")
    here = open_profiler(profile).device_key()
    assert here == profile.identity(host_fingerprint(), version)
    assert profile.identity("0123456789abcdef", version) != here, "another host, another device"
    assert profile.identity(host_fingerprint(), version) != profile.hash(), "the host is part of it"
    pinned = DeviceProfile.from_dict({**fast_device("box"), "host_fingerprint": "0123456789abcdef"})
    assert open_profiler(pinned).device_key() == pinned.identity("fedcba9876543210", version), \
        "an operator who pins the host makes the profile one device everywhere"
    assert pinned.hash() == profile.hash(), "pinning does not change the settings"


def test_an_upgrade_of_the_profiles_own_runtime_is_another_device_and_another_ruler() -> None:
    """An OpenVINO device changes with OpenVINO's version, as an onnxruntime device does with onnxruntime's.

    The host fingerprint names only onnxruntime's version, so an OpenVINO
    upgrade had left an OpenVINO device, and its ruler, as they were.  An
    onnxruntime device keeps its identity (the fingerprint already changes
    with onnxruntime), and a pinned host, which names no version, adds it.
    """
    host = "0123456789abcdef"
    openvino = DeviceProfile.load(EXAMPLES / "openvino-1thread.yaml")
    assert openvino.identity(host, "2025.1.0") != openvino.identity(host, "2025.2.0")
    assert openvino.measured_host(host, "2025.1.0") != openvino.measured_host(host, "2025.2.0"), \
        "the ruler is kept per runtime version too"
    onnxruntime = DeviceProfile.load(EXAMPLES / "local-1thread.yaml")
    assert onnxruntime.measured_host(host, "1.22.0") == host, "its fingerprint names onnxruntime's version"
    assert onnxruntime.identity(host, "1.22.0") == DeviceProfile.load(EXAMPLES / "local-1thread.yaml").identity(
        host, None), "identities of onnxruntime devices on a fingerprint stay what they were"
    for profile in (openvino, onnxruntime):
        pinned = DeviceProfile.from_dict({**profile.to_dict(), "host_fingerprint": host})
        assert pinned.identity("fedcba9876543210", "1.0") != pinned.identity("fedcba9876543210", "1.1"), \
            f"{profile.name}: a pinned host names the hardware, not the runtime"


def test_the_calibration_is_kept_under_the_host_with_the_runtimes_version(tmp_path: Path,
                                                                           calibration_dir: Path) -> None:
    profile = DeviceProfile.from_dict(fast_device("box"))
    model = tmp_path / "reference.onnx"
    model.write_bytes(profile.reference_bytes())
    LocalProfiler(profile).measure_many([model])
    stored = json.loads((calibration_dir / f"{profile.hash()}.json").read_text())
    assert list(stored["hosts"]) == [profile.measured_host(host_fingerprint(), runtime_version("onnxruntime"))]


def test_another_head_is_another_network() -> None:
    assert ofa_mbv3_space(n_classes=10).network_id != ofa_mbv3_space(n_classes=1000).network_id
    assert ofa_mbv3_space(n_classes=10).name == ofa_mbv3_space(n_classes=1000).name
    narrowed = ofa_mbv3_space(resolutions=(32,), n_classes=10)
    assert narrowed.network_id == ofa_mbv3_space(n_classes=10).network_id, \
        "the resolution is in the arch key already"


def test_rows_measured_at_batch_2_never_serve_a_batch_1_query(tmp_path: Path) -> None:
    net = build_supernet(SupernetRef(**SUPERNET))
    archs = net.space.sample(0, 2)
    store = MemoryStore()
    batch2 = open_profiler(DeviceProfile.from_dict({**fast_device("box"), "batch": 2}))
    batch1 = open_profiler(DeviceProfile.from_dict(fast_device("box")))
    profile_subnets(net, archs, batch2, batch2.device_key(), store, workdir=tmp_path)
    rows = store.get_latencies(batch2.device_key(), net.space.network_id)
    assert set(rows) == {a.key() for a in archs}
    for row in rows.values():
        assert row["env"]["batch"] == 2
        assert [shape[0] for shape in row["env"]["input_shape"].values()] == [2]
    assert batch1.device_key() != batch2.device_key()
    assert store.get_latencies(batch1.device_key(), net.space.network_id) == {}


def test_a_float16_device_measures_float16_exports(tmp_path: Path) -> None:
    net = build_supernet(SupernetRef(**SUPERNET))
    archs = net.space.sample(1, 2)
    store = MemoryStore()
    half = open_profiler(DeviceProfile.from_dict({**fast_device("half"), "input_dtype": "float16"}))
    report = profile_subnets(net, archs, half, half.device_key(), store, workdir=tmp_path)
    assert report.measured == 2
    rows = store.get_latencies(half.device_key(), net.space.network_id)
    assert all(row["latency_ms"] > 0 for row in rows.values())
    full = open_profiler(DeviceProfile.from_dict(fast_device("half")))
    assert full.device_key() != half.device_key(), "the input dtype is part of the device"
