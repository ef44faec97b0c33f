"""The HTTP service's contract at its edges, against a real ``hwsearch serve`` process.

Auth, request size limits, validation errors with the field named, and the
OpenAPI schema.  The whole job flow is in ``test_api_job.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._server import Server

GOOD_PROFILE = {"name": "cpu-1t", "intra_op_threads": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("api")
    srv = Server(root / "store.sqlite", extra=("--max-body-mb", "0.05")).start()
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def test_health_and_openapi_need_no_token(server: Server) -> None:
    with server.client(token=None) as anonymous:
        assert anonymous.get("/health").json()["status"] == "ok"
        schema = anonymous.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}/fronts", "/exports", "/profiles", "/devices"} <= set(schema["paths"])


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_everything_else_needs_the_token(server: Server, token: str | None) -> None:
    with server.client(token=token) as c:
        for method, path in [("GET", "/jobs"), ("GET", "/devices"), ("POST", "/jobs"),
                             ("GET", "/supernets"), ("GET", "/exports/x")]:
            response = c.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"


def test_device_profiles_are_validated_and_listed(client: httpx.Client) -> None:
    created = client.post("/devices", json={"profile": GOOD_PROFILE})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "cpu-1t" and created.json()["hash"]
    assert "cpu-1t" in [d["name"] for d in client.get("/devices").json()]

    bad = client.post("/devices", json={"profile": {"name": "x", "intra_op_threads": -3}})
    assert bad.status_code == 422
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "profile"] and "intra_op_threads" in error["msg"]

    unknown = client.post("/devices", json={"profile": {"name": "x", "threads_please": 2}})
    assert unknown.status_code == 422 and "threads_please" in unknown.text


def test_unknown_references_are_refused_with_the_field(client: httpx.Client) -> None:
    response = client.post("/jobs", json={"supernet": "no-such-net", "devices": ["cpu-1t"]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "supernet"] and "not registered" in error["msg"]

    assert client.get("/jobs/does-not-exist").status_code == 404
    assert client.get("/jobs/does-not-exist/fronts").status_code == 404
    assert client.get("/exports/nothing-here").status_code == 404

    malformed = client.post("/jobs", json={"supernet": "x", "devices": []})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["loc"] == ["body", "devices"]


def test_oversize_bodies_get_413(server: Server, client: httpx.Client) -> None:
    big = {"profile": {"name": "big", "padding": "x" * 100_000}}
    assert client.post("/devices", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"profile": {"name": "big", "padding": "'
        for _ in range(20):
            yield b"x" * 10_000
        yield b'"}}'

    streamed = client.post("/devices", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/health").status_code == 200
