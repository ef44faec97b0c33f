"""The HTTP service's contract at its edges, against a real ``hwsearch serve`` process.

Auth, request size limits, validation errors with the field named, and the
OpenAPI schema.  The whole job flow is in ``test_api_job.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._jobs import SUPERNET, random_dataset
from tests._server import Server

GOOD_PROFILE = {"name": "cpu-1t", "intra_op_threads": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("api")
    srv = Server(root / "store.sqlite",
                 extra=("--max-body-mb", "0.05", "--max-upload-mb", "5")).start()
    yield srv
    srv.stop()


def test_health_and_openapi_need_no_token(server: Server) -> None:
    with server.client(token=None) as anonymous:
        assert anonymous.get("/health").json()["status"] == "ok"
        schema = anonymous.get("/openapi.json").json()
    paths = {"/jobs", "/jobs/{job_id}/fronts", "/exports", "/profiles", "/devices"}
    assert paths <= set(schema["paths"])
    # Unique, as OpenAPI requires and generated clients need (Y16: a download's GET and HEAD shared one).
    operations = [operation["operationId"] for path in schema["paths"].values() for operation in path.values()]
    assert len(operations) == len(set(operations))
    assert set(schema["paths"]["/exports/{export_id}"]) == {"get", "head"}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_everything_else_needs_the_token(server: Server, token: str | None) -> None:
    with server.client(token=token) as c:
        for method, path in [("GET", "/jobs"), ("GET", "/devices"), ("POST", "/jobs"),
                             ("GET", "/supernets"), ("GET", "/exports/x")]:
            response = c.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"


def test_device_profiles_are_validated_and_listed(client: httpx.Client) -> None:
    created = client.post("/devices", json={"profile": GOOD_PROFILE})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "cpu-1t" and created.json()["hash"]
    assert "cpu-1t" in [d["name"] for d in client.get("/devices").json()]

    bad = client.post("/devices", json={"profile": {"name": "x", "intra_op_threads": -3}})
    assert bad.status_code == 422
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "profile"] and "intra_op_threads" in error["msg"]

    unknown = client.post("/devices", json={"profile": {"name": "x", "threads_please": 2}})
    assert unknown.status_code == 422 and "threads_please" in unknown.text

    # onnxruntime would refuse it only at the job's first session, in C++ words
    pinned = client.post("/devices", json={"profile": {"name": "pinned", "intra_op_threads": 2,
                                                       "thread_affinity": "0-0"}})
    assert pinned.status_code == 422 and "thread_affinity" in pinned.json()["detail"][0]["msg"]
    assert "pinned" not in [d["name"] for d in client.get("/devices").json()]


def test_unknown_references_are_refused_with_the_field(client: httpx.Client) -> None:
    response = client.post("/jobs", json={"supernet": "no-such-net", "devices": ["cpu-1t"]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "supernet"] and "not registered" in error["msg"]

    assert client.get("/jobs/does-not-exist").status_code == 404
    assert client.get("/jobs/does-not-exist/fronts").status_code == 404
    assert client.get("/exports/nothing-here").status_code == 404

    malformed = client.post("/jobs", json={"supernet": "x", "devices": []})
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["body", "devices"]


def test_oversize_bodies_get_413(server: Server, client: httpx.Client) -> None:
    big = {"profile": {"name": "big", "padding": "x" * 100_000}}
    assert client.post("/devices", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"profile": {"name": "big", "padding": "'
        for _ in range(20):
            yield b"x" * 10_000
        yield b'"}}'

    streamed = client.post("/devices", content=chunks(),
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/health").status_code == 200


@pytest.fixture(scope="module")
def registered(server: Server) -> str:
    with server.client() as c:
        response = c.post("/supernets", json=SUPERNET)
    assert response.status_code == 201, response.text
    return response.json()["name"]


def test_supernets_are_registered_listed_and_checked(client: httpx.Client, registered: str) -> None:
    [listed] = [s for s in client.get("/supernets").json() if s["name"] == registered]
    assert listed["options"] == {"n_classes": 10, "resolutions": [32]} and listed["size"] > 1
    builders = client.get("/supernets/registry").json()["builders"]
    assert SUPERNET["registry"] in builders

    unknown = client.post("/supernets", json={**SUPERNET, "registry": "resnet9000"})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "registry"]
    assert SUPERNET["registry"] in unknown.json()["detail"][0]["msg"], "it lists the choices"

    missing = client.post("/supernets", json={**SUPERNET, "name": "x", "checkpoint": "/no/such.pt"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "checkpoint"]

    bad_name = client.post("/supernets", json={**SUPERNET, "name": "../etc"})
    assert bad_name.status_code == 422


def test_supernet_options_are_the_familys_to_judge_and_blamed_on_options(client: httpx.Client) -> None:
    """The schema refused the demos' own input sizes below 32 px, and a size a family cannot take was blamed on
    ``checkpoint`` when none was given (Z11)."""
    small = client.post("/supernets", json={"name": "vit28", "registry": "demo_vit_mnist",
                                            "options": {"resolutions": [28]}})
    assert small.status_code == 201, small.text
    narrowed = client.post("/supernets", json={"name": "mbv3-16", "registry": "demo_mbv3_mnist",
                                               "options": {"resolutions": [16, 24]}})
    assert narrowed.status_code == 201, narrowed.text
    for registry, sizes, loc in (("demo_vit_mnist", [32], ["body", "options"]),
                                 ("demo_mbv3_mnist", [4], ["body", "options", "resolutions", 0])):
        refused = client.post("/supernets", json={"name": "odd", "registry": registry,
                                                  "options": {"resolutions": sizes}})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == loc, error
    assert "resolutions" in client.post("/supernets", json={
        "name": "odd", "registry": "demo_vit_mnist", "options": {"resolutions": [32]}}).json()["detail"][0]["msg"]
    assert "odd" not in [s["name"] for s in client.get("/supernets").json()]


def test_checkpoint_uploads_are_loaded_and_limited(client: httpx.Client, tmp_path: Path) -> None:
    import io

    import torch

    from hwsearch.jobs import SupernetRef, build_supernet

    net = build_supernet(SupernetRef(name="d", registry="demo_mbv3_mnist"))
    buffer = io.BytesIO()
    torch.save(net.module.state_dict(), buffer)
    form = {"name": "demo-upload", "registry": "demo_mbv3_mnist"}
    uploaded = client.post("/supernets/upload", data=form,
                           files={"checkpoint": ("demo.pt", buffer.getvalue())})
    assert uploaded.status_code == 201, uploaded.text
    assert Path(uploaded.json()["checkpoint"]).read_bytes() == buffer.getvalue()

    garbage = client.post("/supernets/upload", data={**form, "name": "garbage"},
                          files={"checkpoint": ("x.pt", b"not a checkpoint")})
    assert garbage.status_code == 422 and "checkpoint" in garbage.json()["detail"][0]["msg"]

    too_big = client.post("/supernets/upload", data={**form, "name": "big"},
                          files={"checkpoint": ("big.pt", bytes(6 * 1024 * 1024))})
    assert too_big.status_code == 413

    # Options are parsed as JSON bodies are: a repeated key was taken, the last one winning.
    for options, says in (('{"n_classes": 1, "n_classes": 10}', "key 'n_classes' appears twice"),
                          ('{"n_classes": ' + "9" * 5000 + "}", "not JSON without repeated keys"),
                          ('{"n_classes": 10.5}', "options: n_classes")):
        refused = client.post("/supernets/upload", data={**form, "name": "twice", "options": options},
                              files={"checkpoint": ("demo.pt", buffer.getvalue())})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", "options"] and says in error["msg"], error

    # A form's fields too: FastAPI took a repeated field's last value and dropped unknown ones.
    for fields, loc, says in (({"name": ["first", "second"]}, "name", "field 'name' is given 2 times"),
                              ({"options": ["{}", '{"n_classes": 5}']}, "options", "given 2 times"),
                              ({"resoltions": "[32]"}, "resoltions", "no field 'resoltions'"),
                              ({"x" * 300: "1"}, "x" * 100, "no field 'xxx")):
        data = {**form, **fields}
        refused = client.post("/supernets/upload", data=data, files={"checkpoint": ("demo.pt", buffer.getvalue())})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", loc] and says in error["msg"], error
        assert len(refused.text) < 1000
    assert {s["name"] for s in client.get("/supernets").json()} & {"first", "second", "twice"} == set()
    again = client.post("/supernets/upload", data=form, files={"checkpoint": ("demo.pt", buffer.getvalue())})
    assert again.status_code == 201, again.text


def test_archs_outside_the_space_are_refused_naming_the_field(client: httpx.Client,
                                                              registered: str) -> None:
    arch = {"resolution": 32, "depths": [2, 2, 2, 2, 2], "kernel": [3] * 10, "expand": [3] * 10}
    cases = [
        ({**arch, "resolution": 224}, "resolution=224"),
        ({**arch, "depths": [2, 2, 2, 2, 9]}, "depths[4]=9"),
        ({**arch, "kernel": [3] * 9 + [4]}, "kernel[9]=4"),
        ({**arch, "kernels": [3]}, "unknown field"),
        ({"ks": [3] * 20, "e": [3] * 20}, "missing field"),
    ]
    client.post("/devices", json={"profile": GOOD_PROFILE})
    for bad, says in cases:
        for path, extra in (("/exports", {}), ("/profiles", {"on": "cpu-1t"})):
            response = client.post(path, json={"supernet": registered, "arch": bad, **extra})
            assert response.status_code == 422, (path, bad, response.text)
            [error] = response.json()["detail"]
            assert error["loc"] == ["body", "arch"] and says in error["msg"], error


def test_job_references_are_checked_before_anything_runs(client: httpx.Client, registered: str,
                                                         tmp_path: Path) -> None:
    client.post("/devices", json={"profile": GOOD_PROFILE})
    base = {"supernet": registered, "devices": ["cpu-1t"], "dataset": str(tmp_path)}
    cases = [
        ({**base, "devices": ["cpu-1t", "nope"]}, ["body", "devices", 1]),
        ({**base, "devices": ["cpu-1t", "cpu-1t"]}, ["body", "devices"]),
        ({**base, "dataset": "/no/such/data.npz"}, ["body", "dataset"]),
        ({**base, "limits": [{"metric": "latency_ms"}]}, ["body", "limits", 0]),
        ({**base, "limits": [{"metric": "latency_ms", "upper": 0.0}]}, ["body", "limits", 0]),
        ({**base, "limits": [{"metric": "macs", "lower": -1.0}]}, ["body", "limits", 0]),
        ({**base, "limits": [{"metric": "params", "lower": 5e6, "upper": 2e6}]}, ["body", "limits", 0]),
        ({**base, "limits": [{"metric": "latency_ms", "upper": 9.0}, {"metric": "accuracy", "lower": 1.5}]},
         ["body", "limits", 1]),
        ({**base, "budget": -1}, ["body", "budget"]),
        ({**base, "targets": {"nope": {"budgets_ms": [5.0]}}}, ["body", "targets", "nope"]),
        ({**base, "targets": {"cpu-1t": {"band_ms": [9.0, 3.0]}}}, ["body", "targets", "cpu-1t"]),
        ({**base, "targets": {"cpu-1t": {"budgets_ms": [-1.0]}}},
         ["body", "targets", "cpu-1t", "budgets_ms", 0]),
        ({**base, "targets": {"cpu-1t": {"budgets_ms": ["5"]}}},
         ["body", "targets", "cpu-1t", "budgets_ms", 0]),
    ]
    for body, loc in cases:
        response = client.post("/jobs", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"][0]["loc"] == loc, response.json()
    assert client.get("/jobs").json()["jobs"] == [], "no refused job was queued"
    both = client.post("/exports", json={"job_id": "x", "device": "cpu-1t", "point": 0,
                                          "budget_ms": 5.0})
    assert both.status_code == 422 and "budget_ms" in both.text
    profile = client.post("/profiles", json={"supernet": registered, "on": "nope",
                                             "arch": {"resolution": 32, "depths": [2] * 5}})
    assert profile.status_code == 422 and profile.json()["detail"][0]["loc"] == ["body", "on"]


def test_an_int8_profile_on_a_float16_device_is_refused_before_it_is_queued(client: httpx.Client, registered: str,
                                                                            server: Server) -> None:
    """It was queued (202), then failed in its job with the quantizer's "expected: (tensor(float16))" (Z11)."""
    dataset = random_dataset(server.store.parent / "int8-calibration.npz")
    assert client.post("/devices", json={"profile": {"name": "half", "input_dtype": "float16"}}).status_code == 201
    before = client.get("/jobs").json()["jobs"]
    arch = {"resolution": 32, "depths": [2] * 5, "kernel": [3] * 10, "expand": [3] * 10}
    refused = client.post("/profiles", json={"supernet": registered, "arch": arch, "on": "half",
                                             "precision": "int8", "dataset": str(dataset)})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "precision"] and "float16" in error["msg"], error
    assert client.get("/jobs").json()["jobs"] == before


def test_a_local_device_with_more_threads_than_this_host_runs_is_refused(client: httpx.Client) -> None:
    """Its sessions would refuse to run (``devices.ort.require_threads_here``); registering it would store a dud."""
    threads = len(os.sched_getaffinity(0)) + 1
    wide = client.post("/devices", json={"profile": {"name": "wide", "intra_op_threads": threads}})
    assert wide.status_code == 422, wide.text
    [error] = wide.json()["detail"]
    assert error["loc"] == ["body", "profile"] and f"field 'intra_op_threads' is {threads}" in error["msg"]
    assert "wide" not in [d["name"] for d in client.get("/devices").json()]


def test_a_profile_number_of_400_digits_is_a_422_naming_it(client: httpx.Client) -> None:
    """math.isfinite of such an int raised OverflowError: the service answered 500."""
    body = '{"profile": {"name": "huge", "warmup": {"seconds": 1' + "0" * 400 + "}}}"
    huge = client.post("/devices", content=body, headers={"Content-Type": "application/json"})
    assert huge.status_code == 422, huge.text
    [error] = huge.json()["detail"]
    assert error["loc"] == ["body", "profile"] and "field 'warmup.seconds' must be a number" in error["msg"], error
    assert "huge" not in [d["name"] for d in client.get("/devices").json()]


def test_a_local_device_pinned_to_a_processor_this_host_lacks_is_refused(client: httpx.Client) -> None:
    """onnxruntime only logs that it cannot pin there, and measured unpinned rows under a pinned device's name."""
    lacking = max(os.sched_getaffinity(0)) + 2  # onnxruntime numbers processors from 1
    pinned = client.post("/devices", json={"profile": {"name": "pinned-away", "intra_op_threads": 2,
                                                       "thread_affinity": str(lacking)}})
    assert pinned.status_code == 422, pinned.text
    [error] = pinned.json()["detail"]
    assert error["loc"] == ["body", "profile"], error
    assert f"field 'thread_affinity' names logical processor(s) {lacking}, which this process" in error["msg"]
    assert "pinned-away" not in [d["name"] for d in client.get("/devices").json()]
    here = client.post("/devices", json={"profile": {"name": "pinned-here", "intra_op_threads": 2,
                                                     "thread_affinity": str(lacking - 1)}})
    assert here.status_code == 201, here.text


@pytest.mark.parametrize("point, budget_ms, field", [(0, None, "point"), (None, 5.0, "budget_ms")])
def test_a_front_without_points_says_so(point: int | None, budget_ms: float | None, field: str) -> None:
    """It said "point 0 is outside the front (0..-1)" and "the fastest takes nan ms"."""
    from hwsearch.api.service import Invalid, _point_index

    with pytest.raises(Invalid) as refused:
        _point_index({"points": []}, point, budget_ms)
    assert (refused.value.message, refused.value.field) == ("this front has no points", ("body", field))
