"""A real ``hwsearch serve`` process on 127.0.0.1 for the API tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hwsearch.api.catalog import default_data_dir
from hwsearch.ray_session import private_temp_dir

TOKEN = "test-token-123-of-20c"


#: Each server's log is a file of its own beside its store (a store may be served twice, one after the other).
_LOG_NUMBERS = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``hwsearch serve`` in its own process group, so a test can kill it (and its Ray) at once.

    Unless ``extra`` says otherwise, the store's folder is the service's data root, so
    files a test writes beside the store can be named in requests.  ``store_url``, when
    given, is what the service is told to open instead of the file (a store plug-in's URL).
    """

    def __init__(self, store: Path, *, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, factory: bool = False, store_url: str | None = None) -> None:
        self.store = store
        self.store_arg = store_url or str(store)
        self.factory = factory  # started as ``uvicorn --factory`` would be, not by ``hwsearch serve``
        self.port = 0  # the service binds a port of its own choosing, read from its log by start()
        self.extra = extra
        self.env = env or {}
        self.scheme = "https" if "--ssl-certfile" in extra else "http"
        self.url = ""
        # a self-signed certificate is its own authority
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=extra[extra.index("--ssl-certfile") + 1]) if self.scheme == "https"
            else True)
        self.log = store.with_suffix(f".{next(_LOG_NUMBERS)}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Server:
        env = {**os.environ, "HWSEARCH_TOKEN": TOKEN, "RAY_AUTH_MODE": "disabled",
               "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", **self.env}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self._command(env), env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            if not self.url and (found := re.search(rf"running on {self.scheme}://127\.0\.0\.1:(\d+)",
                                                    self.log.read_text(errors="replace"))):
                self.port = int(found.group(1))
                self.url = f"{self.scheme}://127.0.0.1:{self.port}"
            try:
                if self.url and httpx.get(f"{self.url}/health", timeout=1.0, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server did not start: {self.log.read_text()[-3000:]}")

    def _command(self, env: dict[str, str]) -> list[str]:
        """``hwsearch serve``'s command line, or uvicorn's (which takes its settings from ``env``)."""
        if self.factory:
            env.update(HWSEARCH_STORE=self.store_arg, HWSEARCH_DATA_ROOTS=str(self.store.parent))
            return [sys.executable, "-m", "uvicorn", "--factory", "hwsearch.api.app:create_app_from_env",
                    "--port", "0", *self.extra]
        roots = () if "--data-root" in self.extra else ("--data-root", str(self.store.parent))
        return [sys.executable, "-m", "hwsearch.cli.main", "serve", "--store", self.store_arg,
                "--port", "0", *roots, *self.extra]

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120.0, verify=self.verify)

    def kill(self) -> None:
        """Kill the server and everything it started (Ray included), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then kill what is left of the process group."""
        if self.process is None:
            return
        stopped = False
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
                stopped = True
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(private_temp_dir(str(self.data_dir)), ignore_errors=True)
        if not stopped:  # a service that stops removes its temp files itself (tests check it)
            shutil.rmtree(private_temp_dir(str(self.data_dir), "tmp"), ignore_errors=True)

    @property
    def data_dir(self) -> Path:
        """The service's data directory, as ``hwsearch serve`` derives it."""
        if "--data-dir" in self.extra:
            return Path(self.extra[self.extra.index("--data-dir") + 1])
        if self.factory and "HWSEARCH_DATA" in self.env:
            return Path(self.env["HWSEARCH_DATA"])
        return default_data_dir(self.store)


class Agent:
    """A real edge agent (``python -m devices.agent``) on 127.0.0.1."""

    def __init__(self, state_dir: Path, token: str, *, env: dict[str, str] | None = None) -> None:
        """Started on a port the agent picks itself and prints: a port picked here and bound seconds later
        (after the agent's imports) could be taken meanwhile by another test's Ray or server."""
        self.log = state_dir / "agent.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        earlier = self.log.stat().st_size if self.log.exists() else 0  # a restarted agent appends
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devices.agent", "--port", "0", "--token", token,
                 "--state-dir", str(state_dir)], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            said = self.log.read_bytes()[earlier:].decode(errors="replace")
            if found := re.search(r"listening on http://127\.0\.0\.1:(\d+)", said):
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                return
            assert self.process.poll() is None, said
            time.sleep(0.2)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
