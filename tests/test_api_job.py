"""A whole job through the HTTP service, and a service crash in the middle of one.

Real ``hwsearch serve`` processes on 127.0.0.1 over one SQLite store, real
Ray, real exports and onnxruntime measurements.  The supernet is a small
variant of OFA MobileNetV3 with random weights (see ``tests/_jobs.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from hwsearch.store import SQLiteStore
from tests._jobs import SUPERNET, fast_device, random_dataset
from tests._server import Agent, Server

pytestmark = pytest.mark.slow


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 600,
             seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if job["state"] in states:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job['state']}: {job}")


def run_one_device_job(client: httpx.Client, registry: str, dataset: Path, *, budget: int = 0) -> dict[str, Any]:
    """Register ``registry`` as supernet ``net`` and a fast device ``cpu``, run a 4-subnet job to its end, return it."""
    created = client.post("/supernets", json={"name": "net", "registry": registry})
    assert created.status_code == 201, created.text
    assert client.post("/devices", json={"profile": fast_device("cpu")}).status_code == 201
    accepted = client.post("/jobs", json={"supernet": "net", "devices": ["cpu"], "dataset": str(dataset),
                                          "n_profile": 4, "budget": budget})
    assert accepted.status_code == 202, accepted.text
    return wait_for(client, accepted.json()["id"], ("succeeded", "failed"))


def register(client: httpx.Client, devices: list[dict[str, Any]]) -> dict[str, str]:
    """Register the test supernet and devices; return the devices' hashes by name."""
    created = client.post("/supernets", json=SUPERNET)
    assert created.status_code == 201, created.text
    hashes = {}
    for profile in devices:
        response = client.post("/devices", json={"profile": profile})
        assert response.status_code == 201, response.text
        hashes[profile["name"]] = response.json()["hash"]
    return hashes


AGENT_TOKEN = "agent-secret-of-16-chars"


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[Agent]:
    edge = Agent(tmp_path / "agent", AGENT_TOKEN)
    yield edge
    edge.stop()


@pytest.fixture()
def server(tmp_path: Path, agent: Agent) -> Iterator[Server]:
    """A service whose operator declared the agent ``edge`` (token from the environment)."""
    srv = Server(tmp_path / "store.sqlite", extra=("--agent", f"edge={agent.url}"),
                 env={"HWSEARCH_AGENT_TOKEN_EDGE": AGENT_TOKEN}).start()
    yield srv
    srv.stop()


def test_submit_poll_fronts_export_and_profile(server: Server, agent: Agent,
                                               tmp_path: Path) -> None:
    dataset = random_dataset(tmp_path / "val.npz")
    edge = {**fast_device("edge"), "where": {"kind": "agent", "name": "edge"}}
    with server.client() as client:
        register(client, [fast_device("cpu-a"), fast_device("cpu-b", 2), edge])
        accepted = client.post("/jobs", json={
            "supernet": "tiny-mbv3", "devices": ["cpu-a", "cpu-b"], "dataset": str(dataset),
            "n_profile": 4, "budget": 1, "targets": {"cpu-a": {"budgets_ms": [1000.0]}}})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        assert accepted.json()["status_url"].endswith(f"/jobs/{job_id}")
        seen: list[dict[str, Any]] = []
        job = wait_for(client, job_id, ("succeeded", "failed"), seen=seen)
        assert job["state"] == "succeeded", job
        steps = {s["progress"]["step"] for s in seen if s["progress"]}
        assert {"profile", "accuracy", "search"} <= steps
        assert set(job["result"]["predictors"]) >= {"accuracy", "latency@cpu-a", "latency@cpu-b"}
        data = job["result"]["accuracy_data"]
        assert data["n_validation"] > 0 and 0 < data["ci95_halfwidth_max"] < 0.5
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        ordered = list(dict.fromkeys(e["step"] for e in events))
        assert ordered == ["prepare", "profile", "accuracy", "train", "search", "done"], ordered
        later = client.get(f"/jobs/{job_id}/events", params={"after": 3}).json()["events"]
        assert later == events[3:]

        fronts = client.get(f"/jobs/{job_id}/fronts").json()["fronts"]
        assert set(fronts) == {"cpu-a", "cpu-b"}
        point = fronts["cpu-a"]["points"][0]
        assert point["index"] == 0 and {"accuracy", "latency_ms"} <= set(point["measured"])
        conditions = point["latency_conditions"]
        assert conditions["clock"] == "wall" and isinstance(conditions["stable"], bool)
        assert conditions["latency_source"] in ("calibrated", "median_ms")
        assert conditions["reference_ms"] > 0
        assert conditions["session_offset"] is None or conditions["session_offset"] > 0
        assert (conditions["row_offset"] is None) == (conditions["session_offset"] is None)
        assert conditions["offset_precision"] == ("fp32" if conditions["session_offset"] is not None else None)
        assert conditions["latency_ci"] is None or conditions["latency_ci"] >= conditions["ratio_ci"]
        assert client.get(f"/jobs/{job_id}/fronts/cpu-b").json()["device"] == "cpu-b"
        assert fronts["cpu-a"]["settings"]["targets"]["budgets_ms"] == [1000.0]

        # A budget instead of an index: the most accurate measured point within it.
        best = max(fronts["cpu-a"]["points"], key=lambda p: p["measured"]["accuracy"])
        by_budget = client.post("/exports", json={"job_id": job_id, "device": "cpu-a",
                                                  "budget_ms": 1000.0})
        assert by_budget.status_code == 201, by_budget.text
        assert by_budget.json()["arch_key"] == best["arch_key"]
        too_tight = client.post("/exports", json={"job_id": job_id, "device": "cpu-a",
                                                  "budget_ms": 1e-6})
        assert too_tight.status_code == 422
        assert too_tight.json()["detail"][0]["loc"] == ["body", "budget_ms"]

        export = client.post("/exports", json={"job_id": job_id, "device": "cpu-a", "point": 0})
        assert export.status_code == 201, export.text
        info = export.json()
        assert info["arch_key"] == point["arch_key"] and info["max_abs_diff"] < 1e-3
        onnx_bytes = client.get(info["download_url"]).content
        assert len(onnx_bytes) == info["bytes"]
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(info["input_shape"]).astype(np.float32)
        [logits] = session.run(None, {session.get_inputs()[0].name: x})
        assert logits.shape == (1, 10)

        native = {"ks": [3] * 20, "e": [4] * 20, "d": [2, 3, 4, 2, 3], "r": [32]}
        by_arch = client.post("/exports", json={"supernet": "tiny-mbv3", "arch": native})
        assert by_arch.status_code == 201, by_arch.text
        assert by_arch.json()["arch"]["depths"] == [2, 3, 4, 2, 3]

        outside = client.post("/exports", json={"supernet": "tiny-mbv3",
                                                "arch": {**native, "r": [224]}})
        assert outside.status_code == 422
        [error] = outside.json()["detail"]
        assert error["loc"] == ["body", "arch"] and "r=224 is not allowed" in error["msg"]  # the native field

        profiled = client.post("/profiles", json={"job_id": job_id, "device": "cpu-a", "point": 0,
                                                  "on": "cpu-b"})
        assert profiled.status_code == 202, profiled.text
        done = wait_for(client, profiled.json()["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done
        assert done["kind"] == "profile" and done["result"]["measurement"]["median_ms"] > 0
        assert done["result"]["arch_key"] == point["arch_key"]

        on_agent = client.post("/profiles", json={"job_id": job_id, "device": "cpu-a", "point": 0,
                                                  "on": "edge"})
        assert on_agent.status_code == 202, on_agent.text
        remote = wait_for(client, on_agent.json()["id"], ("succeeded", "failed"))
        assert remote["state"] == "succeeded", remote
        assert remote["result"]["device"] == "edge"
        assert remote["result"]["measurement"]["n_runs"] > 0

        quantized = client.post("/profiles", json={"job_id": job_id, "device": "cpu-a",
                                                   "point": 0, "on": "cpu-b", "precision": "int8"})
        assert quantized.status_code == 202, quantized.text
        int8 = wait_for(client, quantized.json()["id"], ("succeeded", "failed"))
        assert int8["state"] == "succeeded", int8
        assert int8["result"]["precision"] == "int8"
        assert int8["result"]["device_hash"].endswith("@int8")
        assert int8["result"]["measurement"]["median_ms"] > 0
        for body, loc in [({"precision": "int8"}, ["body", "dataset"]),
                          ({"precision": "int4"}, ["body", "precision"])]:
            refused = client.post("/profiles", json={"supernet": "tiny-mbv3", "arch": native,
                                                     "on": "cpu-b", **body})
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == loc, refused.json()

        jobs = {j["id"] for j in client.get("/jobs").json()["jobs"]}
        assert jobs == {job_id, done["id"], remote["id"], int8["id"]}
        assert client.get(f"/jobs/{done['id']}/fronts").status_code == 409
        # A body's job_id is named when it is at fault, as a body's supernet or device is.
        for path, extra in (("/exports", {}), ("/profiles", {"on": "cpu-b"})):
            for named, status, says in ((done["id"], 409, "is a profile job"), ("nope", 422, "does not exist")):
                refused = client.post(path, json={"job_id": named, "device": "cpu-a", "point": 0, **extra})
                assert refused.status_code == status and says in refused.text, refused.text
                answer = refused.json()
                loc = answer["loc"] if status == 409 else answer["detail"][0]["loc"]
                assert loc == ["body", "job_id"], answer

        # The agent's address stays with the operator: not in what clients read, not even in an error.
        remote_events = client.get(f"/jobs/{remote['id']}/events").json()
        assert agent.url not in json.dumps([remote, remote_events, client.get("/devices").json()])
        agent.stop()
        unreachable = client.post("/profiles", json={"job_id": job_id, "device": "cpu-a", "point": 0,
                                                     "on": "edge"})
        failed = wait_for(client, unreachable.json()["id"], ("succeeded", "failed"))
        assert failed["state"] == "failed" and failed["error"].startswith("AgentError"), failed
        assert "<url>" in failed["error"] and agent.url.split("//")[1] not in failed["error"]


def local_rows(store: SQLiteStore, profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The test supernet's rows of a local device: filed under the profile on this host."""
    from devices import open_profiler
    from devices.profile import DeviceProfile
    from hwsearch.jobs import SupernetRef, build_supernet

    key = open_profiler(DeviceProfile.from_dict(profile)).device_key()
    return store.get_latencies(key, build_supernet(SupernetRef(**SUPERNET)).space.network_id)


def test_a_restart_in_the_middle_of_a_job_keeps_its_measurements(tmp_path: Path) -> None:
    dataset = random_dataset(tmp_path / "val.npz")
    store_path = tmp_path / "store.sqlite"
    cpu_a = fast_device("cpu-a")
    first = Server(store_path).start()
    try:
        with first.client() as client:
            register(client, [cpu_a, fast_device("cpu-b", 2)])
            job_id = client.post("/jobs", json={
                "supernet": "tiny-mbv3", "devices": ["cpu-a", "cpu-b"], "dataset": str(dataset),
                "n_profile": 5}).json()["id"]
            store = SQLiteStore(store_path)
            deadline = time.monotonic() + 600
            while len(local_rows(store, cpu_a)) < 5:  # a session's rows are committed one by one
                assert time.monotonic() < deadline, client.get(f"/jobs/{job_id}").json()
                time.sleep(0.2)
            assert client.get(f"/jobs/{job_id}").json()["state"] == "running"
    finally:
        first.kill()  # the whole process group, Ray included: a crash, not a shutdown
    measured = local_rows(store, cpu_a)
    assert len(measured) == 5

    second = Server(store_path).start()
    try:
        with second.client() as client:
            job = client.get(f"/jobs/{job_id}").json()
            assert job["state"] == "interrupted" and "measurements are kept" in job["error"]
            assert local_rows(store, cpu_a) == measured

            resumed = client.post(f"/jobs/{job_id}/resume")
            assert resumed.status_code == 202, resumed.text
            job = wait_for(client, job_id, ("succeeded", "failed"))
            assert job["state"] == "succeeded", job
            profiling = job["result"]["devices"]["cpu-a"]["profiling"]
            assert profiling["measured"] == 0 and profiling["skipped"] == 5
            after = local_rows(store, cpu_a)
            assert {k: after[k] for k in measured} == measured, "nothing was measured twice"
    finally:
        second.stop()
