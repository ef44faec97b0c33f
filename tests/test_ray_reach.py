"""A Ray cluster nothing answers at fails fast and alone; a stopped or crashed runner leaves nothing behind.

Measured against Ray 2.60 before these checks: ``ray.init(address=...)`` for
an address where nothing listens logged "Failed to connect to GCS" every
~35 s and never returned.  The service called it holding its dispatcher's
lock, so its job stayed ``queued``, ``/limits``, submissions and cancels hung
and SIGTERM could not stop it; ``hwsearch search`` hung for minutes.  Each
test runs the real command (``hwsearch serve``, ``hwsearch search``) in its
own process, with real files; no test waits on anything shorter than its
generous bound.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hwsearch.ray_session import private_temp_dir
from tests._jobs import SUPERNET, fast_device, random_dataset
from tests._server import Server, free_port

#: The OFA native form of one tiny-mbv3 subnet (docs/service.md).
ARCH = {"ks": [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5], "e": [4] * 20,
        "d": [2, 3, 4, 2, 3], "r": [32]}


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


class _FakeGcs:
    """A gRPC server that answers the first call Ray's clients make to a GCS, until closed or silenced.

    Enough for the address check before ``ray.init``; ``ray.init`` itself then
    gets no further, as with a cluster that answered and then went away.
    Silenced, its port accepts connections and never speaks.
    """

    def __init__(self) -> None:
        import grpc

        self._server = grpc.server(ThreadPoolExecutor(2))
        answers = {"GetClusterId": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "ray.rpc.NodeInfoGcsService", answers),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self._silent: socket.socket | None = None

    def silence(self) -> None:
        self._server.stop(None).wait()
        self._silent = socket.socket()
        self._silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._silent.bind(("127.0.0.1", self.port))
        self._silent.listen(8)

    def close(self) -> None:
        self._server.stop(None).wait()
        if self._silent is not None:
            self._silent.close()


@contextmanager
def _grpc_port() -> Iterator[int]:
    """A port held by a gRPC server that serves nothing of Ray's: it passes an HTTP/2 check, and is not Ray."""
    import grpc

    server = grpc.server(ThreadPoolExecutor(2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()


@contextmanager
def _silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (its backlog) and never speaks: not Ray, or a host half gone."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextmanager
def _http1_port() -> Iterator[int]:
    """A port held by a plain HTTP/1 server: something answers, but not Ray."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _unanswered_address(kind: str) -> Iterator[int]:
    """A port where Ray is not: nothing listening, a silent listener, or an HTTP/1 server."""
    if kind == "nothing listens":
        yield free_port()  # bound and released
    elif kind == "a silent listener":
        with _silent_port() as port:
            yield port
    else:
        with _http1_port() as port:
            yield port


_NOT_RAY = ("nothing listens", "a silent listener", "an HTTP/1 server")


def test_a_grpc_server_that_is_not_ray_is_refused_before_ray_init() -> None:
    """It passed the HTTP/2 check, and ``ray.init`` then logged about 20 s of Ray's C++ errors (probe Z10)."""
    from hwsearch.ray_session import RayUnreachable, check_ray_address

    with _grpc_port() as port:
        started = time.monotonic()
        with pytest.raises(RayUnreachable, match=f"port {port} speaks gRPC, but not as Ray's GCS .UNIMPLEMENTED."):
            check_ray_address(f"127.0.0.1:{port}")
        assert time.monotonic() - started < 5
    cluster = _FakeGcs()
    try:
        check_ray_address(f"127.0.0.1:{cluster.port}")  # what answers as a GCS passes
    finally:
        cluster.close()


def test_a_proxy_in_the_environment_does_not_turn_a_gcs_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's channels ignore http_proxy and grpc_proxy; the probe's did not, and refused a working cluster (Y5)."""
    from hwsearch.ray_session import RayUnreachable, check_ray_address

    for variable in ("http_proxy", "https_proxy", "grpc_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    cluster = _FakeGcs()
    try:
        check_ray_address(f"127.0.0.1:{cluster.port}")
        with pytest.raises(RayUnreachable, match=r"in brackets, as \[HOST\]:PORT"):
            check_ray_address(f"::1:{cluster.port}")
    finally:
        cluster.close()


def _wait_state(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


@pytest.mark.parametrize("kind", _NOT_RAY)
def test_serve_refuses_a_ray_address_nothing_answers_at(tmp_path: Path, kind: str) -> None:
    """One usage line naming ``--ray-address``, before anything starts.

    Nothing listening, it served and queued jobs for ever; a silent listener or
    another server passed a TCP check and held the dispatcher in ``ray.init``.
    """
    with _unanswered_address(kind) as port:
        server = Server(tmp_path / "s.sqlite", extra=("--ray-address", f"127.0.0.1:{port}"))
        try:
            with pytest.raises(RuntimeError, match="server exited") as exited:
                server.start(timeout=60)
        finally:
            server.stop()
    log = str(exited.value)
    assert "--ray-address" in log and f"cannot reach Ray at 127.0.0.1:{port}" in log, log
    assert server.process is not None and server.process.returncode == 2


@pytest.mark.parametrize("gone", ["closed", "silent"])
def test_a_job_whose_ray_went_away_fails_in_seconds_and_the_service_keeps_answering(tmp_path: Path,
                                                                                    gone: str) -> None:
    """The cluster answered at start-up and is gone by the first job: the job fails with one line.

    Gone means its port refuses connections, or still accepts them and never
    speaks (which passed a TCP check and held the dispatcher's thread in
    ``ray.init`` for ever).  Meanwhile ``/limits``, a second submission and a
    cancel answer, and SIGTERM ends the service.
    """
    random_dataset(tmp_path / "val.npz")
    cluster = _FakeGcs()
    port = cluster.port
    try:
        server = Server(tmp_path / "s.sqlite", extra=("--ray-address", f"127.0.0.1:{port}")).start()
    finally:
        if gone == "closed":
            cluster.close()
        else:
            cluster.silence()
    try:
        with server.client() as client:
            client.timeout = httpx.Timeout(30.0)  # every answer within 30 s (it hung for ever)
            assert client.post("/supernets", json=SUPERNET).status_code == 201
            assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
            body = {"supernet": "tiny-mbv3", "devices": ["cpu-1t"], "dataset": "val.npz", "n_profile": 4,
                    "budget": 0}
            first = client.post("/jobs", json=body)
            assert first.status_code == 202, first.text
            assert client.get("/limits").status_code == 200
            second = client.post("/jobs", json=body)
            assert second.status_code == 202, second.text
            job = _wait_state(client, first.json()["id"], ("failed",), timeout=90)
            assert job["state"] == "failed", job
            # the cluster's address is the operator's, in the service's log; a client reads the job's error
            assert "cannot reach Ray at <address>" in job["error"] and "127.0.0.1" not in job["error"], job
            assert "\n" not in job["error"]
            cancelled = client.post(f"/jobs/{second.json()['id']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            # every job waiting when Ray could not be reached fails with the same line
            assert client.get(f"/jobs/{second.json()['id']}").json()["state"] in ("failed", "cancelled")
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=60) is not None  # it never ended before
    finally:
        server.stop()
        cluster.close()


def _search(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "cpu.yaml").write_text("name: cpu-1t\nintra_op_threads: 1\n")
    random_dataset(tmp_path / "val.npz")
    return [sys.executable, "-m", "hwsearch.cli.main", "search", "--supernet", "demo_mbv3_mnist",
            "--device", str(tmp_path / "cpu.yaml"), "--data", str(tmp_path / "val.npz"),
            "--out", str(tmp_path / "out"), *extra]


def _demo(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hwsearch.cli.main", "demo", "--n-profile", "4", "--budget", "0",
            "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("command", [_search, _demo], ids=["search", "demo"])
@pytest.mark.parametrize("kind", _NOT_RAY)
def test_a_ray_address_nothing_answers_at_is_refused_before_a_job_is_recorded(tmp_path: Path, kind: str,
                                                                               command: Any) -> None:
    """The demo recorded a failed job, its runners folder and its data, naming no option, in 3-5 s (Z10)."""
    with _unanswered_address(kind) as port:
        try:
            done = subprocess.run(command(tmp_path, "--ray-address", f"127.0.0.1:{port}"), capture_output=True,
                                  text=True, env=_env(), timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("hwsearch still waited for Ray after 120 s")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "--ray-address" in done.stderr and f"cannot reach Ray at 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "out").exists(), "nothing recorded for a run that never started"


def _job_states(store: Path) -> list[str]:
    if not store.exists():
        return []
    with sqlite3.connect(store, timeout=30) as conn:
        return [state for (state,) in conn.execute("SELECT state FROM jobs")]


def test_a_search_stopped_by_sigterm_leaves_its_job_interrupted(tmp_path: Path, short_temp_dir: Path) -> None:
    """Killed from outside, it left its job ``running`` in ``--out``'s store for ever; now it says why it stopped."""
    store = tmp_path / "out" / "store.db"
    search = subprocess.Popen(_search(tmp_path), env={**_env(), "TMPDIR": str(short_temp_dir)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _job_states(store) != ["running"]:
            assert search.poll() is None, search.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the search's job never started"
            time.sleep(0.5)
        search.send_signal(signal.SIGTERM)
        search.wait(timeout=60)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait(timeout=30)
    assert _job_states(store) == ["interrupted"]
    # 128 + SIGTERM, as shells report it: it was 15, or -6 when Ray's failure-signal handler aborted the exit
    assert search.returncode == 143, (search.returncode, search.stderr.read()[-3000:] if search.stderr else "")
    assert search.stderr is not None and search.stderr.read().strip().splitlines()[-1] == "terminated"


DEAD_OWNER = """
import os, sys, time
from hwsearch.tempdirs import owned_temp_dir
with owned_temp_dir("exports") as folder:
    (folder / "subnet.onnx").write_bytes(os.urandom(1 << 20))
    print(folder, flush=True)
    time.sleep(600)
"""


def test_the_service_clears_a_dead_workers_temp_folder_when_a_job_ends(tmp_path: Path) -> None:
    """A worker killed mid-export left its folder (50-110 MB) until the service restarted.

    The folder is made as a job's export folder is (:func:`hwsearch.tempdirs.owned_temp_dir`) in the
    service's temp folder, by a process that is then killed with SIGKILL, as the kernel's OOM killer
    ends a worker; the next job that ends, a profile, must take it away.
    """
    server = Server(tmp_path / "s.sqlite").start()
    owner = None
    try:
        temp = private_temp_dir(str(server.data_dir), "tmp")
        owner = subprocess.Popen([sys.executable, "-c", DEAD_OWNER], env={**_env(), "TMPDIR": str(temp)},
                                 stdout=subprocess.PIPE, text=True)
        assert owner.stdout is not None
        folder = Path(owner.stdout.readline().strip())
        assert folder.parent == temp and (folder / "subnet.onnx").exists()
        owner.kill()
        owner.wait(timeout=30)
        with server.client() as client:
            assert client.post("/supernets", json=SUPERNET).status_code == 201
            assert client.post("/devices", json={"profile": fast_device("cpu-1t")}).status_code == 201
            profile = client.post("/profiles", json={"supernet": "tiny-mbv3", "arch": ARCH, "on": "cpu-1t"})
            assert profile.status_code == 202, profile.text
            job = _wait_state(client, profile.json()["id"], ("succeeded", "failed"), timeout=300)
            assert job["state"] == "succeeded", job
            deadline = time.monotonic() + 30
            while folder.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
        assert not folder.exists(), "the dead owner's folder is still there"
        assert server.process is not None and server.process.poll() is None, "swept while the service runs"
    finally:
        if owner is not None and owner.poll() is None:
            owner.kill()
        server.stop()
