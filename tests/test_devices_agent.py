"""A real edge agent process on 127.0.0.1, and the client that talks to it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from devices import open_profiler
from devices.client import AgentClient, AgentError
from devices.profile import DeviceProfile
from devices.reference import mobilenet_like_onnx, reference_model_bytes

TOKEN = "s3cret-token-of-16-chars"
MAX_UPLOAD_MB = 8.0
SMALL_BLOCKS = ((32, 16, 3, 2), (48, 24, 5, 2))
LARGE_BLOCKS = ((64, 32, 3, 2), (128, 48, 5, 1), (192, 64, 7, 2))


class Agent:
    """One `python -m devices.agent` process; can be killed and restarted on the same port."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "DEVICES_CALIBRATION_DIR": str(self.state_dir / "calibration"),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devices.agent", "--port", str(self.port), "--token", TOKEN,
             "--state-dir", str(self.state_dir), "--max-upload-mb", str(MAX_UPLOAD_MB)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", headers=auth(), timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"agent did not start: {self.process.stdout.read1().decode()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", headers=auth(), timeout=30).json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path / "agent-state")
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.kill()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("agent-models")
    paths = []
    for name, blocks in (("small", SMALL_BLOCKS), ("large", LARGE_BLOCKS)):
        path = folder / f"{name}.onnx"
        path.write_bytes(mobilenet_like_onnx(blocks, seed=7, input_shape=(1, 3, 96, 96)))
        paths.append(path)
    return paths


def agent_profile(agent: Agent, load_twice: bool = False, **where: object) -> DeviceProfile:
    return DeviceProfile.from_dict(
        {
            "name": "edge",
            "warmup": {"runs": 2, "seconds": 0.2},
            "protocol": {"min_rounds": 9, "max_rounds": 30, "max_seconds": 20, "load_twice": load_twice},
            "where": {"kind": "agent", "url": agent.url, "token_env": "EDGE_TOKEN", "retries": 5, **where},
        }
    )


def test_agent_measures_and_reports_device_facts(agent: Agent, model_files: list[Path], monkeypatch) -> None:
    monkeypatch.setenv("EDGE_TOKEN", TOKEN)
    profile = agent_profile(agent)
    profiler = open_profiler(profile)
    facts = profiler.describe()
    assert facts["device"]["onnxruntime"] and facts["device"]["logical_cores"] >= 1
    measurements = profiler.measure_many(model_files)
    assert [m.model_sha256 for m in measurements] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in model_files]
    assert all(m.device_hash == profile.hash() for m in measurements)
    assert measurements[1].ratio > measurements[0].ratio
    assert agent.health()["sessions_run"] == 1


def test_an_agent_loads_every_model_twice_when_the_profile_asks_and_its_rows_say_so(
    agent: Agent, model_files: list[Path], monkeypatch
) -> None:
    """The profile travels to the agent whole, so ``protocol.load_twice`` is honoured there too.

    ``loads_per_model`` is what the agent's session did, not an echo of the
    setting, and the setting does not change the device's identity.
    """
    monkeypatch.setenv("EDGE_TOKEN", TOKEN)
    once, twice = agent_profile(agent), agent_profile(agent, load_twice=True)
    rows = {name: open_profiler(profile).measure_many(model_files) for name, profile in
            (("once", once), ("twice", twice))}
    assert [row.env["loads_per_model"] for row in rows["once"]] == [1, 1]
    assert [row.env["loads_per_model"] for row in rows["twice"]] == [2, 2]
    assert [row.env["protocol"]["load_twice"] for row in rows["twice"]] == [True, True]
    assert rows["twice"][0].env["protocol"]["min_rounds"] == 9
    assert {row.device_hash for row in rows["once"] + rows["twice"]} == {once.hash()}
    assert all(row.ratio < other.ratio for row, other in ((rows[name][0], rows[name][1]) for name in rows))


def test_wrong_or_missing_token_is_refused(agent: Agent, model_files: list[Path]) -> None:
    assert httpx.get(f"{agent.url}/health", headers=auth("wrong"), timeout=10).status_code == 401
    assert httpx.get(f"{agent.url}/health", timeout=10).status_code == 401
    body = model_files[0].read_bytes()
    put = httpx.put(f"{agent.url}/models/{hashlib.sha256(body).hexdigest()}", content=body, headers=auth("x"),
                    timeout=10)
    assert put.status_code == 401
    client = AgentClient(agent_profile(agent), token="wrong")
    # naming the device: in a job of several agents, "GET /health answered HTTP 401" left the wrong token unknown
    with pytest.raises(AgentError, match=rf"\(agent of profile '{agent_profile(agent).name}'\) answered HTTP 401"):
        client.measure_many(model_files)


def test_uploads_are_checked(agent: Agent) -> None:
    oversize = os.urandom(int(MAX_UPLOAD_MB * 1024 * 1024) + 1)
    answer = httpx.put(f"{agent.url}/models/{hashlib.sha256(oversize).hexdigest()}", content=oversize,
                       headers=auth(), timeout=60)
    assert answer.status_code == 413
    junk = b"PK\x03\x04 this is a zip file, not an ONNX model"
    answer = httpx.put(f"{agent.url}/models/{hashlib.sha256(junk).hexdigest()}", content=junk, headers=auth(),
                       timeout=10)
    assert answer.status_code == 400 and "not a valid ONNX model" in answer.json()["detail"]
    model = mobilenet_like_onnx(SMALL_BLOCKS, seed=1, input_shape=(1, 3, 64, 64))
    answer = httpx.put(f"{agent.url}/models/{'0' * 64}", content=model, headers=auth(), timeout=10)
    assert answer.status_code == 400 and "sha256" in answer.json()["detail"]
    answer = httpx.post(f"{agent.url}/measure", content=b"{not json", headers=auth(), timeout=10)
    assert answer.status_code == 400


def _measure_request(profile: DeviceProfile, model_files: list[Path], request_id: str) -> dict:
    return {
        "request_id": request_id,
        "profile": profile.to_dict(),
        "reference_sha256": hashlib.sha256(reference_model_bytes()).hexdigest(),
        "model_sha256s": [hashlib.sha256(p.read_bytes()).hexdigest() for p in model_files],
    }


def _upload_all(agent: Agent, model_files: list[Path]) -> None:
    for body in [reference_model_bytes(), *(p.read_bytes() for p in model_files)]:
        answer = httpx.put(f"{agent.url}/models/{hashlib.sha256(body).hexdigest()}", content=body, headers=auth(),
                           timeout=60)
        assert answer.status_code in (200, 201)


def test_a_request_id_is_measured_once_even_after_a_restart(agent: Agent, model_files: list[Path]) -> None:
    profile = agent_profile(agent)
    request = _measure_request(profile, model_files, uuid.uuid4().hex)
    _upload_all(agent, model_files)
    first = httpx.post(f"{agent.url}/measure", json=request, headers=auth(), timeout=120).json()
    agent.kill()
    agent.start()
    again = httpx.post(f"{agent.url}/measure", json=request, headers=auth(), timeout=120).json()
    assert again == first
    assert agent.health()["sessions_run"] == 0  # answered from the stored result
    reused = {**request, "model_sha256s": request["model_sha256s"][:1]}
    assert httpx.post(f"{agent.url}/measure", json=reused, headers=auth(), timeout=120).status_code == 409


def test_retry_after_client_timeout_joins_the_running_measurement(
    agent: Agent, model_files: list[Path], monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_TOKEN", TOKEN)
    slow = agent_profile(agent, timeout_s=1.0, retries=10).to_dict()
    slow["warmup"] = {"runs": 2, "seconds": 4.0}
    measurements = AgentClient(DeviceProfile.from_dict(slow)).measure_many(model_files)
    assert len(measurements) == 2
    health = agent.health()
    assert health["sessions_run"] == 1 and health["results_stored"] == 1


def test_killing_the_agent_mid_request_yields_exactly_one_result(
    agent: Agent, model_files: list[Path], monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_TOKEN", TOKEN)
    profile = agent_profile(agent).to_dict()
    profile["warmup"] = {"runs": 2, "seconds": 3.0}
    outcome: dict = {}

    def run_client() -> None:
        try:
            outcome["measurements"] = AgentClient(DeviceProfile.from_dict(profile)).measure_many(model_files)
        except Exception as error:  # surfaced by the assertion below
            outcome["error"] = error

    client = threading.Thread(target=run_client)
    client.start()
    deadline = time.monotonic() + 60
    while not agent.health()["busy"]:
        assert time.monotonic() < deadline, "agent never started measuring"
        time.sleep(0.05)
    agent.kill()
    stored_before_restart = list((agent.state_dir / "requests").glob("*.json"))
    agent.start()
    client.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert [m.model_sha256 for m in outcome["measurements"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in model_files
    ]
    assert stored_before_restart == []
    stored = list((agent.state_dir / "requests").glob("*.json"))
    assert len(stored) == 1 and len(json.loads(stored[0].read_text())["measurements"]) == 2
    assert agent.health()["sessions_run"] == 1


def test_agent_imports_no_heavy_dependencies() -> None:
    code = (
        "import sys, devices.agent, devices.local, devices.client;"
        "heavy = [m for m in ('torch', 'ray', 'onnx', 'hwsearch', 'predictors', 'fastapi') if m in sys.modules];"
        "print(heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_an_agent_older_than_the_warm_timing_is_answered_with_what_to_do() -> None:
    """An agent that knows only ``hot`` and ``interleaved`` refuses every profile naming no timing (Y4)."""
    from devices.client import AgentError, _answer

    older = b'{"detail": "invalid profile: field \'timing\' must be one of (\'hot\', \'interleaved\'), got \'warm\'"}'
    with pytest.raises(AgentError, match="upgrade the agent, or name 'timing: hot' in the profile"):
        _answer(400, older, "POST", "/measure")
    with pytest.raises(AgentError) as other:
        _answer(400, b'{"detail": "invalid profile: field \'batch\' must be at most 1024"}', "POST", "/measure")
    assert "upgrade" not in str(other.value)
    # One that knows warm but not loop: naming hot would change the device and not help (Y19).
    knows_warm = (b'{"detail": "invalid profile: field \'timing\' must be one of (\'warm\', \'hot\', '
                  b'\'interleaved\'), got \'loop\'"}')
    with pytest.raises(AgentError, match="does not know timing 'loop': upgrade it") as loop:
        _answer(400, knows_warm, "POST", "/measure")
    assert "timing: hot" not in str(loop.value)
