"""Profiling streams: exports overlap an agent's measurements, agent devices measure at once
and share their exports.

Real edge agents (``python -m devices.agent`` on 127.0.0.1), each with its
own measurement lock so that each acts as a separate host; real exports and
onnxruntime sessions.  What the tests read is what the rows record: each
session's ``session_start``/``session_end`` (wall clock, taken by whoever
measured) and each export's ``export_start``/``export_end``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devices import open_profiler
from devices.profile import DeviceProfile
from hwsearch.jobs.context import JobContext, job_device
from hwsearch.jobs.control import start_job
from hwsearch.jobs.spec import SupernetRef, build_supernet
from hwsearch.jobs.stages import profile_devices
from hwsearch.pipeline import profile_subnets, select_subnets
from hwsearch.store import MemoryStore
from tests._jobs import SUPERNET, fast_device
from tests._server import Agent

TOKEN = "streaming-hosts-token"
#: Sessions of a second or more (these 32 px subnets run in well under a millisecond), so that
#: sessions meant to run at once overlap even on a loaded host; a wide CI target, so that rows
#: are rarely measured again (a row keeps the better of its measurements, so a retry can hide
#: the session that came first).  The test's two "hosts" are agents on this one machine, so each
#: is the other's busy neighbour: the limits on other programs' CPU (devices.cpuload) and on the
#: reference's slowdown (devices.calibration) are lifted.
SLOW = {"protocol": {"min_rounds": 60, "max_rounds": 60, "max_seconds": 30, "ci_target": 0.5,
                     "max_foreign_cores": 4.0, "max_reference_slowdown": 100.0}}
#: Sessions long enough that two sessions started together still overlap when the loaded host delays
#: one of them: 600 rounds, each of whose timed runs follows 5 ms of warm-up runs (``timing: warm``),
#: so 12 s or more; on a slow host 551 rounds took the 30 s bound (a CI run), hence 120 s here.
LONG = {"protocol": {**SLOW["protocol"], "min_rounds": 600, "max_rounds": 600, "max_seconds": 120}}

Interval = tuple[float, float]


@pytest.fixture(scope="module")
def net() -> Any:
    return build_supernet(SupernetRef(**SUPERNET))


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Agent]]:
    """Two agents that act as two hosts: each has its own measurement lock."""
    root = tmp_path_factory.mktemp("agents")
    started = [Agent(root / f"agent-{i}", TOKEN, env={"DEVICES_LOCK_DIR": str(root / f"locks-{i}")})
               for i in range(2)]
    yield started
    for agent in started:
        agent.stop()


def agent_device(name: str, agent: Agent, protocol: dict[str, Any] = SLOW) -> dict[str, Any]:
    return {**fast_device(name), **protocol,
            "where": {"kind": "agent", "url": agent.url, "token_env": "STREAMING_TOKEN"}}


def overlaps(a: Interval, b: Interval) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def session(row: dict[str, Any]) -> Interval:
    return row["env"]["session_start"], row["env"]["session_end"]


def export(row: dict[str, Any]) -> Interval:
    return row["export_start"], row["export_end"]


def test_an_agent_measures_while_the_next_chunk_exports(net: Any, agents: list[Agent],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMING_TOKEN", TOKEN)
    profiler = open_profiler(DeviceProfile.from_dict(agent_device("edge", agents[0])))
    store = MemoryStore()
    archs = select_subnets(net.space, 3, seed=5)
    key = profiler.device_key()
    profile_subnets(net, archs, profiler, key, store, chunk=1)
    rows = [store.get_latencies(key, net.space.network_id)[a.key()] for a in archs]
    # Chunk k+1's export began before chunk k's session on the agent ended; exported
    # after each measurement (the previous pipeline), it would start only once that returned.
    assert all(export(rows[k + 1])[0] < session(rows[k])[1] for k in range(2)), rows
    assert all(export(rows[k])[1] <= session(rows[k])[0] for k in range(3))  # measured once exported


def test_a_local_device_never_exports_during_its_sessions(net: Any) -> None:
    profiler = open_profiler(DeviceProfile.from_dict(fast_device("cpu-1t")))
    store = MemoryStore()
    archs = select_subnets(net.space, 3, seed=6)
    key = profiler.device_key()
    profile_subnets(net, archs, profiler, key, store, chunk=1)
    rows = list(store.get_latencies(key, net.space.network_id).values())
    assert len(rows) == 3
    assert not [(e, s) for e in map(export, rows) for s in map(session, rows) if overlaps(e, s)]


def test_two_agent_devices_measure_at_the_same_time_in_one_job(net: Any, agents: list[Agent],
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setenv("STREAMING_TOKEN", TOKEN)
    store = MemoryStore()
    job_id = store.create_job({"kind": "search"})
    devices = [job_device(agent_device(f"edge-{i}", agent, LONG), None)  # the operator's own profiles
               for i, agent in enumerate(agents)]
    job = JobContext(store=store, job_id=job_id, net=net, devices=devices, data=None,
                     dataset_id="unused", archs=select_subnets(net.space, 2, seed=7))
    reports = profile_devices(start_job(store, job_id), job)
    assert [reports[d.name]["measured"] for d in devices] == [2, 2]
    per_device = [{session(row) for row in store.get_latencies(d.key, net.space.network_id).values()}
                  for d in devices]
    assert all(per_device)  # one session each, and a second where a row was measured again
    across = [(a, b) for a in per_device[0] for b in per_device[1] if overlaps(a, b)]
    assert across, f"the two agents measured one after the other: {per_device}"
    # Both devices measure at batch 1 in float32: each subnet was exported once, for both.
    rows = [store.get_latencies(d.key, net.space.network_id) for d in devices]
    assert {k: export(r) for k, r in rows[0].items()} == {k: export(r) for k, r in rows[1].items()}
