"""Precision as part of a subnet's identity: profiles, store keys, fronts and the API.

A whole job at both precisions is the demo's (tests/test_demo.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from devices.profile import DeviceProfile, ProfileError
from hwsearch.problem import accuracy_latency
from hwsearch.quantize import PRECISIONS, PrecisionError, check_precision, precision_key
from hwsearch.results import Candidate, ParetoFront
from tests._jobs import SUPERNET, fast_device, random_dataset
from tests._server import Server

# --------------------------------------------------------------------------- profiles and keys


def test_profiles_list_their_precisions_default_fp32_and_refuse_anything_else() -> None:
    assert DeviceProfile(name="d").precisions == ("fp32",)
    both = DeviceProfile.from_dict({"name": "d", "precisions": ["fp32", "int8"]})
    assert both.precisions == ("fp32", "int8")
    assert DeviceProfile.from_dict(both.to_dict()) == both
    for bad, says in [(["int4"], "at most once"), ([], "at least one"), ("int8", "a list"),
                      (["int8", "int8"], "at most once"), (["fp32", "int8", "fp16"], "at most once")]:
        with pytest.raises(ProfileError, match=f"field 'precisions'.*{says}"):
            DeviceProfile.from_dict({"name": "d", "precisions": bad})
    with pytest.raises(ProfileError, match="'int8' only with input_dtype float32"):
        DeviceProfile.from_dict({"name": "d", "input_dtype": "float16", "precisions": ["int8"]})


def test_the_device_and_the_hwsearch_side_name_the_same_precisions() -> None:
    from devices.profile import PRECISIONS as DEVICE_PRECISIONS

    assert DEVICE_PRECISIONS == PRECISIONS


def test_listing_precisions_keeps_the_device_hash_so_fp32_rows_stay_where_they_were() -> None:
    plain = DeviceProfile(name="d")
    both = DeviceProfile.from_dict({"name": "d", "precisions": ["fp32", "int8"]})
    assert plain.hash() == both.hash()
    assert plain.identity("0123456789abcdef", "1.0") == both.identity("0123456789abcdef", "1.0")


def test_precision_changes_the_store_key() -> None:
    assert precision_key("abcd", "fp32") == "abcd"
    assert precision_key("abcd", "int8") == "abcd@int8"
    with pytest.raises(PrecisionError, match=r"precision 'INT8' is not one of \['fp32', 'int8'\]"):
        precision_key("abcd", "INT8")
    with pytest.raises(PrecisionError, match="body.precision 3"):
        check_precision(3, "body.precision")


def test_int8_latencies_are_measured_on_quantized_files_and_filed_under_their_own_key(
        tmp_path: Path) -> None:
    """A real profiling run at INT8 only: rows go under the device key's ``@int8``, never the bare key."""
    from devices import open_profiler
    from hwsearch.data import load_images
    from hwsearch.jobs.context import JobDevice
    from hwsearch.jobs.precision import Target
    from hwsearch.jobs.spec import SupernetRef, build_supernet
    from hwsearch.pipeline import profile_precisions, select_subnets
    from hwsearch.store import MemoryStore

    net = build_supernet(SupernetRef(**SUPERNET))
    profile = DeviceProfile.from_dict(fast_device("cpu-1t") | {"precisions": ["fp32", "int8"]})
    device = JobDevice(profile=profile, token=None, key=open_profiler(profile).device_key())
    target = Target(device, "int8")
    assert target.label == "cpu-1t@int8" and target.key == f"{device.key}@int8"
    images = load_images(random_dataset(tmp_path / "d.npz", n=40), size=32)
    store = MemoryStore()
    archs = select_subnets(net.space, 2, seed=3)
    with pytest.raises(PrecisionError, match="give calibration images"):
        profile_precisions(net, archs, device.profiler(), {"int8": target.key}, store)
    report = profile_precisions(net, archs, device.profiler(), {"int8": target.key}, store,
                                calibration=images)["int8"]
    assert report.measured == 2
    rows = store.get_latencies(target.key, net.space.network_id)
    assert set(rows) == {a.key() for a in archs}
    assert all(row["latency_ms"] > 0 and row["precision"] == "int8" for row in rows.values())
    assert all(row["quantization"]["n_images"] == 32 for row in rows.values())
    assert store.get_latencies(device.key, net.space.network_id) == {}


# --------------------------------------------------------------------------- fronts


def _candidate(space: Any, seed: int, accuracy: float, latency: float, precision: str) -> Candidate:
    return Candidate(arch=space.sample(seed, 1)[0], measured={"accuracy": accuracy,
                                                            "latency_ms": latency},
                     precision=precision)


def test_fronts_from_before_precision_load_as_fp32_and_new_ones_round_trip() -> None:
    from hwsearch.demo import demo_space

    point = _candidate(demo_space(), 0, 0.9, 1.0, "int8")
    data = point.to_dict()
    assert data["precision"] == "int8"
    assert Candidate.from_dict(data).precision == "int8"
    del data["precision"]
    assert Candidate.from_dict(data).precision == "fp32"


def test_a_device_front_merges_its_precisions_and_labels_every_point() -> None:
    from hwsearch.demo import demo_space
    from hwsearch.jobs.precision import merge_fronts

    space = demo_space()
    objectives = accuracy_latency("latency_ms")

    def front(points: list[Candidate], reference: tuple[float, float]) -> ParetoFront:
        return ParetoFront.build(device="d", space_name=space.name, candidates=points,
                                 objectives=objectives, reference_point=reference, seed=0,
                                 settings={"n_new": len(points)})

    fp32 = front([_candidate(space, 1, 0.95, 2.0, "fp32"), _candidate(space, 2, 0.90, 1.0, "fp32")],
                 (-0.8, 3.0))
    int8 = front([_candidate(space, 1, 0.94, 1.5, "int8"), _candidate(space, 3, 0.80, 1.2, "int8")],
                 (-0.7, 2.5))
    merged = merge_fronts("d", {"fp32": fp32, "int8": int8}, {"fp32": {}, "int8": {}})
    labelled = [(p.precision, p.measured["latency_ms"]) for p in merged.points]
    # int8 at 1.2 ms is dominated by fp32 at 1.0 ms (faster and more accurate); the rest stay.
    assert sorted(labelled, key=lambda x: x[1]) == [("fp32", 1.0), ("int8", 1.5), ("fp32", 2.0)]
    assert merged.reference_point == (-0.7, 3.0)
    assert merged.hypervolume > max(fp32.hypervolume, int8.hypervolume) * 0.999
    assert set(merged.settings["precisions"]) == {"fp32", "int8"}
    again = ParetoFront.from_json(merged.to_json())
    assert [p.precision for p in again.points] == [p.precision for p in merged.points]


def test_a_labelled_point_shows_its_rows_latency_as_the_row_reads_now() -> None:
    """A point showed the 0.112887 ms refinement had read, beside the conditions of its row's 0.113053:
    the anchor had corrected the row since, against a moved norm."""
    from hwsearch.demo import demo_space
    from hwsearch.jobs.precision import label_front

    space = demo_space()
    point = _candidate(space, 1, 0.95, 0.112887, "fp32")
    front = ParetoFront.build(device="d", space_name=space.name, candidates=[point],
                              objectives=accuracy_latency("latency_ms"), reference_point=(-0.8, 3.0), seed=0)
    row = {"arch": point.arch.to_dict(), "latency_ms": 0.113053, "stable": True, "row_offset": 1.0015,
           "session_offset": 1.002, "ratio_ci": 0.014, "latency_ci": 0.016, "env": {"clock": "thread_cpu"}}
    [labelled] = label_front(front, "int8", {point.arch.key(): row})
    assert labelled.measured == {**point.measured, "latency_ms": 0.113053} and labelled.precision == "int8"
    assert labelled.latency_conditions["row_offset"] == 1.0015 and labelled.latency_conditions["stable"]
    [unknown] = label_front(front, "fp32", {})
    assert unknown.measured == point.measured and unknown.latency_conditions == {}


# --------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("precision-api")
    random_dataset(root / "val.npz", n=64)
    srv = Server(root / "store.sqlite").start()
    yield srv
    srv.stop()


def _refused(response: httpx.Response, loc: list[Any]) -> str:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][:len(loc)] == loc, error
    return str(error["msg"])


def test_api_exports_int8_on_request_and_names_the_field_it_refuses(server: Server) -> None:
    with server.client() as client:
        assert client.post("/supernets", json=SUPERNET).status_code == 201
        arch = {"resolution": 32, "depths": [2] * 5, "kernel": [3] * 10, "expand": [3] * 10}
        base = {"supernet": "tiny-mbv3", "arch": arch}
        _refused(client.post("/exports", json={**base, "precision": "int4"}), ["body", "precision"])
        _refused(client.post("/exports", json={**base, "precision": 8}), ["body", "precision"])
        assert "give 'dataset'" in _refused(client.post("/exports", json={**base, "precision": "int8"}),
                                            ["body", "dataset"])
        _refused(client.post("/exports", json={**base, "precision": "int8",
                                               "dataset": "/etc/passwd"}), ["body", "dataset"])
        _refused(client.post("/devices", json={"profile": {"name": "q", "precisions": ["int4"]}}),
                 ["body", "profile"])

        made = client.post("/exports", json={**base, "precision": "int8", "dataset": "val.npz"})
        assert made.status_code == 201, made.text
        info = made.json()
        assert info["precision"] == "int8"
        assert 0.0 <= info["quantization"]["top1_agreement"] <= 1.0
        assert info["quantization"]["method"] == "minmax"
        fp32 = client.post("/exports", json=base).json()
        assert fp32["precision"] == "fp32" and fp32["id"] != info["id"]

        body = client.get(info["download_url"]).content
        model = onnx.load_model_from_string(body)
        assert "QuantizeLinear" in {n.op_type for n in model.graph.node}
        from hwsearch.quantize import session

        [logits] = session(body).run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})
        assert logits.shape == (1, 10) and np.isfinite(logits).all()
        assert len(body) < 0.5 * len(client.get(fp32["download_url"]).content)
        assert client.get("/health").status_code == 200
