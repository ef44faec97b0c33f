"""A profile whose execution provider is missing is refused, not measured on the CPU under its name.

onnxruntime only warns when a listed provider is missing and runs the model
on the next one: a GPU device's profile measured on a box without the GPU
would store CPU latencies as the GPU's.  Refused at every place a profile
meets a runtime: a session, a local device's registration, an agent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from devices.client import AgentClient, AgentError
from devices.ort import OrtRunner, require_runtime_here
from devices.profile import KNOWN_ORT_PROVIDERS, DeviceProfile, ProfileError
from devices.reference import reference_model_bytes
from tests._server import Server
from tests.test_agent_hardening import MEASURING, TOKEN, RunningAgent, profile_for, tiny_model

MISSING = next(p for p in KNOWN_ORT_PROVIDERS if p not in ort.get_available_providers())


def local(*providers: str) -> dict[str, object]:
    return {"name": "gpu-box", "providers": list(providers)}


@pytest.mark.parametrize("providers", [(MISSING,), (MISSING, "CPUExecutionProvider")])
def test_a_session_on_a_missing_provider_is_refused(providers: tuple[str, ...]) -> None:
    profile = DeviceProfile.from_dict(local(*providers))
    with pytest.raises(ProfileError, match=f"'providers' starts with '{MISSING}'"):
        require_runtime_here(profile)
    with pytest.raises(ProfileError, match=f"'providers' starts with '{MISSING}'.*CPUExecutionProvider"):
        OrtRunner(reference_model_bytes(), profile)
    cpu = DeviceProfile.from_dict(local("CPUExecutionProvider", MISSING))  # a fallback after a provider here
    require_runtime_here(cpu)
    assert OrtRunner(reference_model_bytes(), cpu).run_ms() > 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("runtime-here") / "store.sqlite").start()
    yield srv
    srv.stop()


def test_a_local_device_this_host_cannot_run_is_not_registered(server: Server) -> None:
    with server.client() as client:
        refused = client.post("/devices", json={"profile": local(MISSING, "CPUExecutionProvider")})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", "profile"] and MISSING in error["msg"] and "providers" in error["msg"]
        assert "gpu-box" not in [d["name"] for d in client.get("/devices").json()]
        assert client.post("/devices", json={"profile": local("CPUExecutionProvider")}).status_code == 201


def test_an_agent_refuses_a_profile_it_cannot_run_with_400(tmp_path: Path) -> None:
    agent = RunningAgent(tmp_path / "agent", MEASURING)
    try:
        model = tmp_path / "model.onnx"
        model.write_bytes(tiny_model(seed=41))
        profile = dataclasses.replace(profile_for(agent.url), providers=(MISSING,))
        with pytest.raises(AgentError, match=f"(?s)400.*'providers' starts with '{MISSING}'"):
            AgentClient(profile, token=TOKEN).measure_many([model])
        assert agent.health()["sessions_run"] == 0
        # It still measures what it can run (the raw median: under CI load a session of 5-10 rounds has
        # kept too few clean ratios for a latency, NaN, and said so).
        assert AgentClient(profile_for(agent.url), token=TOKEN).measure_many([model])[0].median_ms > 0
    finally:
        agent.stop()
