"""The agent client against a compromised edge box: a real HTTP server on 127.0.0.1 that answers badly.

An edge device is less trusted than the machine that runs jobs.  Whatever it
answers (endless, huge, compressed to explode, or shaped wrong), the client
must give up within its bounds with an :class:`AgentError`, never hang, hold
gigabytes, or hand a malformed row on to be stored.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devices.client import MAX_ANSWER_BYTES, AgentClient, AgentError
from devices.profile import DeviceProfile

TIMEOUT_S = 2.0

# What the box sends for POST /measure, given the request it got.
Answer = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


def well_formed_rows(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows shaped as a real agent's, one per model in order."""
    return [{"model_sha256": sha, "latency_ms": 1.0 + i, "ratio": 0.5, "ratio_ci": 0.01, "median_ms": 1.0,
             "p10_ms": 0.9, "p90_ms": 1.1, "p99_ms": 1.2, "min_ms": 0.8, "mad_ms": 0.05, "n_runs": 20,
             "stable": True, "device_hash": "d" * 16, "env": {"clock": "wall"}}
            for i, sha in enumerate(request["model_sha256s"])]


def send_json(handler: BaseHTTPRequestHandler, payload: Any, status: int = 200) -> None:
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class HostileBox:
    """Takes uploads like an agent, answers /measure however ``answer`` says and /health with ``health``."""

    def __init__(self) -> None:
        self.answer: Answer = lambda handler, request: send_json(handler, {})
        self.health: Any = {}
        box = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                send_json(self, box.health)

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                send_json(self, {"stored": True})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    box.answer(self, request)
                except OSError:  # the client gave up on us: that is the point
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def box() -> Iterator[HostileBox]:
    running = HostileBox()
    yield running
    running.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = [folder / f"m{i}.onnx" for i in range(2)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 1000)  # the client uploads bytes; only the box would parse them
    return paths


def client_for(box: HostileBox) -> AgentClient:
    profile = DeviceProfile.from_dict({"name": "edge", "where": {
        "kind": "agent", "url": box.url, "timeout_s": TIMEOUT_S, "retries": 0}})
    return AgentClient(profile, token="edge-token")


def measure_against(box: HostileBox, models: list[Path], answer: Answer) -> tuple[Any, float]:
    """What measure_many returns or raises against ``answer``, and how long it took."""
    box.answer = answer
    started = time.monotonic()
    try:
        outcome: Any = client_for(box).measure_many(models)
    except AgentError as error:
        outcome = error
    return outcome, time.monotonic() - started


def test_well_formed_answers_are_taken(box: HostileBox, models: list[Path]) -> None:
    rows, _ = measure_against(box, models, lambda h, r: send_json(h, {"measurements": well_formed_rows(r)}))
    assert [m.latency_ms for m in rows] == [1.0, 2.0]


def trickle(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    for _ in range(200):  # a byte every 0.1 s: each read is quick, the whole never comes
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.1)


def huge(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    handler.send_response(200)
    handler.end_headers()  # no length: read until closed
    block = b" " * 1024 * 1024
    for _ in range(MAX_ANSWER_BYTES // len(block) * 4):
        handler.wfile.write(block)


def declared_huge(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 40))
    handler.end_headers()
    handler.wfile.write(b"{")


def gzip_bomb(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    body = gzip.compress(b" " * (MAX_ANSWER_BYTES * 4), compresslevel=9)  # about 64 KiB on the wire
    handler.send_response(200)
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.mark.parametrize("answer, says", [
    (trickle, "ReadTimeout"),
    (huge, "more than"),
    (declared_huge, "at most"),
    (gzip_bomb, "more than"),
])
def test_endless_or_huge_answers_are_given_up_within_bounds(box: HostileBox, models: list[Path],
                                                            answer: Answer, says: str) -> None:
    outcome, took = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError) and says in str(outcome), outcome
    assert took < TIMEOUT_S * 2 + 5  # the trickle would otherwise take 20 s


def corrupt(field: str, value: Any, index: int = 1) -> Answer:
    def answer(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        rows = well_formed_rows(request)
        rows[index][field] = value
        send_json(handler, {"measurements": rows})
    return answer


@pytest.mark.parametrize("answer", [
    lambda h, r: send_json(h, [1, 2]),
    lambda h, r: send_json(h, {"measurements": "many"}),
    lambda h, r: send_json(h, {"measurements": well_formed_rows(r)[:1]}),
    lambda h, r: send_json(h, {"measurements": [1, 2]}),
    lambda h, r: send_json(h, {"measurements": [{**row, "extra": 1} for row in well_formed_rows(r)]}),
    corrupt("model_sha256", "0" * 64),
    corrupt("latency_ms", "1.5"),
    corrupt("ratio", None),
    corrupt("stable", "yes"),
    corrupt("n_runs", 2.5),
    corrupt("env", ["wall"]),
    lambda h, r: send_json(h, {"detail": {"missing_models": ["f" * 64]}}, status=404),
    lambda h, r: send_json(h, {"detail": {"missing_models": [{"sha": 1}]}}, status=404),
], ids=["a-list", "rows-not-a-list", "too-few-rows", "rows-not-objects", "unknown-field", "another-model",
        "string-latency", "null-ratio", "string-stable", "fractional-runs", "env-a-list",
        "asks-for-a-model-never-sent", "asks-for-an-object"])
def test_malformed_answers_are_refused_not_stored(box: HostileBox, models: list[Path], answer: Answer) -> None:
    outcome, _ = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError), outcome


@pytest.mark.parametrize("health", [[], {"device": ["host"]}, {"device": {"host_fingerprint": 7}},
                                    {"device": {"host_fingerprint": ""}}])
def test_a_box_that_will_not_say_its_host_gets_no_device_identity(box: HostileBox, health: Any) -> None:
    box.health = health
    with pytest.raises(AgentError, match="JSON object|which host"):
        client_for(box).device_key()
