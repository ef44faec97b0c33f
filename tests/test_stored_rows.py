"""A job row an earlier version stored is run, resumed or exported only as a new request would be.

Before commit e1ed324 the service stored a client's device profile as sent,
``where.url``, ``where.token_env`` and ``reference_model`` included.  Such a
row left ``running`` was run by ``hwsearch serve --resume`` unchecked: within
16 s the service sent its own token to the row's URL and uploaded a file from
outside its data roots there.  Each test writes such a row with
``store.create_job``, as the older version did, into a real SQLite file, starts
the real service (or runs the real executor), and keeps a listening socket of
its own at the row's URL to prove that nothing contacts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hwsearch.store import SQLiteStore
from tests._listeners import Listener
from tests._jobs import SUPERNET, fast_device, random_dataset, tiny_spec
from tests._server import Server

#: The OFA native form of one tiny-mbv3 subnet (docs/service.md).
ARCH = {"ks": [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5], "e": [4] * 20,
        "d": [2, 3, 4, 2, 3], "r": [32]}
NAMED = ("where.url", "where.token_env", "reference_model")


@pytest.fixture()
def listener() -> Iterator[Listener]:
    held = Listener()
    yield held
    held.close()


def old_device(listener: Listener, outside: Path) -> dict[str, Any]:
    """A device profile as an earlier version stored it: the client's URL, token variable and reference file."""
    reference = outside / "reference.onnx"
    reference.parent.mkdir(exist_ok=True)
    reference.write_bytes(b"not the service's to read")
    return fast_device("edge") | {"reference_model": str(reference),
                                  "where": {"kind": "agent", "url": listener.url, "token_env": "HWSEARCH_TOKEN",
                                            "timeout_s": 2, "retries": 0}}


def old_row(store: SQLiteStore, listener: Listener, tmp_path: Path, state: str) -> str:
    """A search job row an earlier version left in ``state``, its device as the client sent it."""
    dataset = random_dataset(store.path.parent / "val.npz")
    job_id = store.create_job(tiny_spec(dataset, [old_device(listener, tmp_path / "outside")]).to_dict())
    store.update_job(job_id, state=state)
    return job_id


@pytest.mark.parametrize("factory", [False, True], ids=["serve --resume", "uvicorn HWSEARCH_RESUME"])
def test_a_resume_at_start_fails_an_old_row_that_names_a_url_and_contacts_nothing(
        tmp_path: Path, listener: Listener, factory: bool) -> None:
    store = SQLiteStore(tmp_path / "served" / "store.sqlite")
    job_id = old_row(store, listener, tmp_path, "running")  # what a killed older service left
    server = Server(store.path, extra=() if factory else ("--resume",), factory=factory,
                    env={"HWSEARCH_RESUME": "true"} if factory else None).start()
    try:
        with server.client() as client:
            job = client.get(f"/jobs/{job_id}").json()
            time.sleep(5)  # the old code had sent GET /health to the row's URL by 16 s (Ray started by then)
            assert client.get(f"/jobs/{job_id}").json()["state"] == "failed"
    finally:
        server.stop()
    assert job["state"] == "failed", job
    assert job["error"].startswith("not resumed at start-up:") and "\n" not in job["error"], job["error"]
    assert all(field in job["error"] for field in NAMED), job["error"]
    assert listener.received == [], "the service contacted the URL a stored row named"
    assert f"job {job_id} is not resumed" in server.log.read_text()


def readable_front(space: Any) -> dict[str, Any]:
    """A front of one measured subnet of ``space`` as a search stores it: only its job's checkpoint is wrong."""
    from hwsearch.problem import accuracy_latency
    from hwsearch.results import Candidate, ParetoFront

    point = Candidate(arch=space.sample(0, 1)[0], measured={"accuracy": 0.5, "latency_ms": 1.0})
    return ParetoFront.build(device="cpu-1t", space_name=space.name, candidates=[point],
                             objectives=accuracy_latency(), reference_point=(-0.5, 10.0), seed=0).to_dict()


def test_a_resume_request_and_an_export_refuse_an_old_row_by_the_fields_it_names(
        tmp_path: Path, listener: Listener) -> None:
    """``POST /jobs/{id}/resume`` names the fields; a front point's export does not read its job's checkpoint.

    Before, the resume was refused only by accident (agent ``None`` is not
    declared), and the export built the supernet from the job's checkpoint
    wherever it lay: a file outside the data roots was loaded.
    """
    import torch

    from hwsearch.jobs import SupernetRef, build_supernet

    store = SQLiteStore(tmp_path / "served" / "store.sqlite")
    stopped = old_row(store, listener, tmp_path, "interrupted")
    supernet = build_supernet(SupernetRef(**SUPERNET))
    outside = tmp_path / "outside" / "weights.pt"  # real weights, so only the data roots can refuse them
    torch.save(supernet.module.state_dict(), outside)
    spec = tiny_spec(store.path.parent / "val.npz", [fast_device("cpu-1t")]).to_dict()
    finished = store.create_job(spec | {"supernet": {**SUPERNET, "checkpoint": str(outside)}})
    store.update_job(finished, state="succeeded", result={"fronts": {"cpu-1t": readable_front(supernet.space)}})
    server = Server(store.path).start()
    try:
        with server.client() as client:
            resumed = client.post(f"/jobs/{stopped}/resume")
            exported = client.post("/exports", json={"job_id": finished, "device": "cpu-1t", "point": 0})
            state = client.get(f"/jobs/{stopped}").json()["state"]
    finally:
        server.stop()
    assert resumed.status_code == 409, resumed.text
    assert all(field in resumed.json()["detail"] for field in NAMED), resumed.text
    assert state == "interrupted" and listener.received == []
    assert exported.status_code == 409, exported.text
    assert exported.json()["loc"] == ["body", "job_id"] and "supernet.checkpoint" in exported.json()["detail"]


def test_the_services_runner_refuses_a_stored_profile_that_names_a_url(
        tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: a row that reached a service runner anyway (the service's agents table, here none)
    fails naming the fields, and its URL is never contacted nor its token variable read."""
    from hwsearch.agents import UndeclaredReach
    from hwsearch.jobs import ProfileSpec, SupernetRef, execute

    monkeypatch.setenv("HWSEARCH_TOKEN", "the-services-own-token")  # what the row's token_env names

    store = SQLiteStore(tmp_path / "store.sqlite")
    spec = ProfileSpec(supernet=SupernetRef(**SUPERNET), device=old_device(listener, tmp_path / "outside"),
                       arch=ARCH).to_dict()
    job_id = store.create_job(spec)
    with pytest.raises(UndeclaredReach):
        execute(spec, store, job_id, {})
    record = store.get_job(job_id)
    assert record.state == "failed" and record.error is not None
    assert record.error.startswith("UndeclaredReach") and all(field in record.error for field in NAMED)
    assert listener.received == []


def test_a_library_dispatcher_runs_the_operators_own_profile_as_written_and_a_service_only_declared_agents(
        tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dispatcher told its profiles are the operator's own (``agents=None``) runs a ``where.url`` profile as
    written; one defaulting to ``{}`` had failed it with UndeclaredReach.  The service's dispatcher, built without
    agents, keeps the empty table, so the same profile is refused there and its URL never contacted."""
    from devices.client import AgentError
    from hwsearch.agents import UndeclaredReach
    from hwsearch.api.app import create_app
    from hwsearch.dispatch import JobDispatcher
    from hwsearch.jobs import ProfileSpec, SupernetRef, execute

    monkeypatch.setenv("EDGE_AGENT_TOKEN", "the-operators-agent-token")
    store = SQLiteStore(tmp_path / "store.sqlite")
    own = fast_device("edge") | {"where": {"kind": "agent", "url": listener.url, "token_env": "EDGE_AGENT_TOKEN",
                                           "timeout_s": 2, "retries": 0}}  # examples/devices/agent-edge.yaml
    spec = ProfileSpec(supernet=SupernetRef(**SUPERNET), device=own, arch=ARCH).to_dict()
    service = create_app(store, token="a-token-of-16-chars", data_dir=tmp_path / "data", agents=None)
    assert service.state.dispatcher.agents == {}
    with pytest.raises(UndeclaredReach):
        execute(spec, store, store.create_job(spec), service.state.dispatcher.agents)
    assert listener.received == []

    library = JobDispatcher(store, agents=None)  # said explicitly: there is no default
    assert library.agents is None
    job_id = store.create_job(spec)
    with pytest.raises(AgentError):  # the listener never answers: the profile reached it as written
        execute(spec, store, job_id, library.agents)
    assert any(b"the-operators-agent-token" in sent for sent in listener.received), listener.received
    assert store.get_job(job_id).state == "failed"
