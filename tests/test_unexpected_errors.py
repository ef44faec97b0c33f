"""A bug answered as a 500 closes its connection, so the client's next request is answered, not reset.

Fuzzing found requests that answered 500 (now 422s, in ``test_service_safety``); each also broke the
client's keep-alive connection: Starlette re-raises the error after the 500 is sent and uvicorn then
drops the transport, while the answer said nothing of it, so the client's next request on that
connection met ``Connection reset by peer`` (and httpx does not retry a POST).  A real uvicorn on
127.0.0.1 serving the real app, with one route of the test's own that fails as a bug would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from hwsearch.api.app import create_app
from hwsearch.store import SQLiteStore
from tests._server import free_port

TOKEN = "a-token-of-16-chars"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    app = create_app(SQLiteStore(tmp_path / "store.sqlite"), token=TOKEN, data_dir=tmp_path / "data", agents={})

    @app.get("/a-bug")
    def a_bug() -> None:
        raise RuntimeError("a bug's message, which only the server log may hold")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_a_500_closes_its_connection_and_the_next_request_is_answered(served: str) -> None:
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        assert client.get("/health").status_code == 200  # the connection the 500 will travel on
        failed = client.get("/a-bug")
        assert failed.status_code == 500 and failed.headers.get("connection") == "close", failed.headers
        assert failed.json() == {"detail": "internal error; the operator can find it in the server log"}
        assert "a bug's message" not in failed.text
        assert client.post("/devices", json={"profile": {"name": "after-a-bug"}}).status_code == 201


def test_no_answer_redirects_to_the_clients_own_host_header(served: str) -> None:
    """``GET /jobs/`` answered 307 to ``http://<the request's Host>/jobs``; the service's links never use Host."""
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        for path in ("/jobs/", "/devices/", "/jobs/%2F"):
            answer = client.get(path, headers={"Host": "evil.example"})
            assert answer.status_code == 404 and "location" not in answer.headers, (path, answer.headers)
        assert client.get("/jobs").status_code == 200
