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
HOST = "f" * 16
HEALTH = {"device": {"host_fingerprint": HOST, "onnxruntime": "1.0"}}

# What the box sends for POST /measure, given the request it got.
Answer = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


def well_formed_rows(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows shaped as a real agent's, one per model in order, naming the profile sent and the host described."""
    device_hash = DeviceProfile.from_dict(request["profile"]).hash_with_reference(request["reference_sha256"])
    now = time.time()
    return [{"model_sha256": sha, "latency_ms": 1.0 + i, "ratio": (1.0 + i) / 2, "ratio_ci": 0.01, "median_ms": 1.0,
             "p10_ms": 0.9, "p90_ms": 1.1, "p99_ms": 1.2, "min_ms": 0.8, "mad_ms": 0.05, "n_runs": 20,
             "stable": True, "device_hash": device_hash,
             "env": {"clock": "wall", "host_fingerprint": HOST, "runtime_version": "1.0", "reference_ms": 2.0,
                     "session_start": now - 1.0, "session_end": now}}
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
        self.uploads = 0
        box = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                send_json(self, box.health)

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                box.uploads += 1
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
    return AgentClient(profile, token="edge-token-of-16-chars")


def measure_against(box: HostileBox, models: list[Path], answer: Answer) -> tuple[Any, float]:
    """What measure_many returns or raises against ``answer``, and how long it took."""
    box.answer, box.health = answer, HEALTH
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


def corrupt_unstable(field: str, value: Any) -> Answer:
    """A row that says it is not stable, with ``field`` set to ``value``: the checks a stable row meets are not all."""
    def answer(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        rows = well_formed_rows(request)
        rows[1].update({"stable": False, field: value})
        send_json(handler, {"measurements": rows})
    return answer


def corrupt_env(field: str, value: Any) -> Answer:
    def answer(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        rows = well_formed_rows(request)
        rows[1]["env"][field] = value
        send_json(handler, {"measurements": rows})
    return answer


def send_raw(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.mark.parametrize("answer", [
    lambda h, r: send_json(h, [1, 2]),
    lambda h, r: send_json(h, {"measurements": "many"}),
    lambda h, r: send_json(h, {"measurements": well_formed_rows(r)[:1]}),
    lambda h, r: send_json(h, {"measurements": [1, 2]}),
    corrupt("model_sha256", "0" * 64),
    corrupt("latency_ms", "1.5"),
    corrupt("ratio", None),
    corrupt("stable", "yes"),
    corrupt("n_runs", 2.5),
    corrupt("env", ["wall"]),
    lambda h, r: send_json(h, {"detail": {"missing_models": ["f" * 64]}}, status=404),
    lambda h, r: send_json(h, {"detail": {"missing_models": [{"sha": 1}]}}, status=404),
    # Integers no float holds raised OverflowError in the row's checks (a traceback), or were stored.
    corrupt("median_ms", 10**400),
    corrupt("latency_ms", 10**400),
    corrupt("n_runs", 10**4000),
    corrupt_env("session_start", 10**400),
    corrupt_env("lock_wait_s", 10**400),
    lambda h, r: send_raw(h, b"[" * 200_000),
], ids=["a-list", "rows-not-a-list", "too-few-rows", "rows-not-objects", "another-model",
        "string-latency", "null-ratio", "string-stable", "fractional-runs", "env-a-list",
        "asks-for-a-model-never-sent", "asks-for-an-object", "huge-int-median", "huge-int-latency",
        "huge-int-runs", "huge-int-session", "huge-int-lock-wait", "nested-past-the-parser"])
def test_malformed_answers_are_refused_not_stored(box: HostileBox, models: list[Path], answer: Answer) -> None:
    outcome, _ = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError), outcome


def without_latency(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    rows = well_formed_rows(request)
    rows[1].update(latency_ms=float("nan"), ratio=float("nan"), ratio_ci=float("inf"))
    send_json(handler, {"measurements": rows})


@pytest.mark.parametrize("answer, says", [
    (corrupt("latency_ms", -5.0), "latency_ms is -5.0"),
    (corrupt("latency_ms", float("inf")), "latency_ms is inf"),
    (corrupt("latency_ms", 1e308), "latency_ms is 1e+308"),
    (corrupt("ratio", 0.0), "at ratio 0.0"),
    (corrupt("median_ms", float("nan")), "median_ms is nan"),
    (corrupt("median_ms", 0.0), "median_ms is 0.0"),
    (corrupt("min_ms", -1.0), "min_ms is -1.0"),
    (corrupt("p99_ms", float("inf")), "p99_ms is inf"),
    (corrupt("n_runs", -7), "n_runs is -7"),
    (corrupt("n_runs", 0), "n_runs is 0"),
    (corrupt("n_runs", 2 * 10**9), "n_runs is 2000000000"),
    (corrupt("ratio_ci", 0.9), "ratio_ci is 0.9"),
    (corrupt("ratio_ci", -0.1), "ratio_ci is -0.1"),
    (corrupt_unstable("ratio_ci", float("nan")), "ratio_ci is nan"),
    (without_latency, "without a latency says it is stable"),
    (corrupt("device_hash", "d" * 16), "not the profile sent"),
    (corrupt_env("host_fingerprint", "0" * 16), "measured on host '0000000000000000'"),
    (corrupt_env("host_fingerprint", None), "measured on host None"),
    (corrupt_env("reference_ms", 1e300), "env.reference_ms is 1e+300"),
    (corrupt_env("reference_ms", None), "env.reference_ms is None"),
    (corrupt_env("session_end", 1e18), "env.session_end is 1e+18"),
    (corrupt_env("session_end", "late"), "env.session_end is 'late'"),
    (corrupt_env("session_start", float("nan")), "env.session_start is nan"),
    (corrupt("latency_ms", 5.0), "is not its ratio 1.0 times its ruler 2.0"),
], ids=["negative", "infinite", "absurd", "zero-ratio", "nan-median", "zero-median", "negative-min", "infinite-p99",
        "negative-runs", "no-runs", "too-many-runs", "stable-above-target", "negative-ci", "nan-ci",
        "stable-without-latency", "another-profile", "another-host", "no-host", "huge-ruler", "no-ruler",
        "future-session", "string-session", "nan-session", "latency-not-ratio-times-ruler"])
def test_impossible_rows_are_refused_not_stored(box: HostileBox, models: list[Path], answer: Answer,
                                                says: str) -> None:
    """A fake agent's -5 ms and infinite latencies, and rows of another host, were taken and stored as stable."""
    outcome, _ = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError) and says in str(outcome), outcome


def test_an_agent_asking_for_one_model_over_and_over_gets_no_upload_loop(box: HostileBox,
                                                                         models: list[Path]) -> None:
    """A 404 listing one model 200,000 times had it uploaded 200,000 times (1,168 uploads in the first 30 s)."""
    uploads_before = box.uploads

    def answer(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        send_json(handler, {"detail": {"missing_models": [request["model_sha256s"][0]] * 200_000}}, status=404)

    outcome, seconds = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError) and "asked for a model more than once" in str(outcome), outcome
    assert box.uploads - uploads_before <= len(models) + 1 and seconds < 30  # each model and the reference once


def test_a_row_without_a_latency_is_taken_when_it_says_it_is_unstable(box: HostileBox, models: list[Path]) -> None:
    def answer(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        rows = well_formed_rows(request)
        rows[1].update(latency_ms=float("nan"), ratio=float("nan"), ratio_ci=float("inf"), stable=False)
        send_json(handler, {"measurements": rows})

    rows, _ = measure_against(box, models, answer)
    assert rows[0].stable and not rows[1].stable and rows[1].median_ms == 1.0


@pytest.mark.parametrize("health", [[], {"device": ["host"]}, {"device": {"host_fingerprint": 7}},
                                    {"device": {"host_fingerprint": ""}}])
def test_a_box_that_will_not_say_its_host_gets_no_device_identity(box: HostileBox, health: Any) -> None:
    box.health = health
    with pytest.raises(AgentError, match="JSON object|which host"):
        client_for(box).device_key()


def test_a_job_stops_measuring_on_an_agent_replaced_since_it_started(box: HostileBox, models: list[Path]) -> None:
    """The job filed every row under the identity it fixed at its start, whatever host answered later."""
    from hwsearch.agents import AgentEndpoint
    from hwsearch.jobs import job_device
    from hwsearch.jobs.context import DeviceChanged

    box.health, box.answer = HEALTH, lambda h, r: send_json(h, {"measurements": well_formed_rows(r)})
    agents = {"edge": AgentEndpoint("edge", box.url, "edge-token-of-16-chars")}
    device = job_device({"name": "edge", "where": {"kind": "agent", "name": "edge", "timeout_s": TIMEOUT_S,
                                                   "retries": 0}}, agents)
    assert [m.latency_ms for m in device.profiler().measure_many(models)] == [1.0, 2.0]
    box.health = {"device": {"host_fingerprint": "e" * 16, "onnxruntime": "1.0"}}  # another box at that address
    with pytest.raises(DeviceChanged, match="host or runtime changed"):
        device.profiler()
    assert job_device(device.profile.to_dict() | {"where": {"kind": "agent", "name": "edge"}},
                      agents).key != device.key  # a resume measures it as the new device


def header_trickle(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(400):  # a header byte every 0.1 s: each read is quick, the headers never end
        handler.wfile.write(b"X")
        handler.wfile.flush()
        time.sleep(0.1)


def endless_continue(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    for _ in range(400):
        handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        handler.wfile.flush()
        time.sleep(0.1)


@pytest.mark.parametrize("answer", [header_trickle, endless_continue], ids=["header-trickle", "endless-100"])
def test_an_answer_whose_headers_never_end_is_given_up_within_the_timeout(box: HostileBox, models: list[Path],
                                                                          answer: Answer) -> None:
    """Only the body was bounded: both held the client past 30 s against a 2 s timeout."""
    outcome, took = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError) and "ReadTimeout" in str(outcome), outcome
    assert took < TIMEOUT_S + 5



def test_a_tls_answer_whose_headers_never_end_is_given_up_within_the_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS the deadline shut the plain socket the TLS layer had detached: the trickle ran its 15 s."""
    import socket
    import ssl

    import httpx

    from devices.client import _bounded_exchange
    from tests._tls import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def trickle_headers() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            tls.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(150):
                tls.sendall(b"X")
                time.sleep(0.1)

    threading.Thread(target=trickle_headers, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match="took over 2 s"):
        _bounded_exchange("GET", f"https://127.0.0.1:{listener.getsockname()[1]}/health",
                          timeout=httpx.Timeout(TIMEOUT_S, connect=10.0))
    assert time.monotonic() - started < TIMEOUT_S + 2
    listener.close()
