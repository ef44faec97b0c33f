"""Edge agent: a small HTTP server that profiles ONNX models on the box it runs on.

It needs only onnxruntime, numpy and the standard library (``http.server``),
so it installs on an edge device without torch, ray or hwsearch.  Start it
with ``python -m devices.agent --port 8765 --token SECRET``.

API (every endpoint needs ``Authorization: Bearer <token>``):

* ``GET /health`` – device facts and counters.
* ``PUT /models/<sha256>`` – upload one ONNX file (raw body).  Content
  addressed, so re-uploading is harmless; rejected with 413 above the size
  limit and 400 when the bytes are not a loadable ONNX model or do not match
  the hash.
* ``POST /measure`` – JSON ``{request_id, profile, reference_sha256,
  model_sha256s}``; runs the interleaved protocol and returns the
  Measurements.  404 lists models the agent does not have (upload them and
  retry).

Design choices that make retries safe: a request id is measured at most
once.  A retry that arrives while the first attempt still runs waits for that
attempt; a retry after it finished gets the stored result, which is written to
``state_dir`` so it even survives a restart of the agent.  Measurements are
serialised by one device lock, so two requests never profile at the same time
on this device.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devices.local import describe_machine, measure_model_bytes
from devices.ort import validate_onnx_bytes
from devices.profile import DeviceProfile, ProfileError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_MAX_JSON_BYTES = 1 << 20
_DRAIN_CHUNK = 1 << 16


class ApiError(Exception):
    """An error with the HTTP status and JSON detail to answer with."""

    def __init__(self, status: HTTPStatus, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


@dataclass
class _Job:
    """One request id being measured; retries wait on ``done``."""

    fingerprint: str
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: ApiError | None = None


class AgentState:
    """Everything the handlers share: config, stored models and results, the device lock."""

    def __init__(self, token: str, state_dir: Path, max_upload_bytes: int) -> None:
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.models_dir = state_dir / "models"
        self.results_dir = state_dir / "requests"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.device_lock = threading.Lock()
        self.jobs_lock = threading.Lock()
        self.jobs: dict[str, _Job] = {}
        self.sessions_run = 0

    def store_model(self, sha256: str, body: bytes) -> bool:
        """Validate and store an upload; returns False when it was already stored."""
        if hashlib.sha256(body).hexdigest() != sha256:
            raise ApiError(HTTPStatus.BAD_REQUEST, "body does not match the sha256 in the URL")
        path = self.models_dir / f"{sha256}.onnx"
        if path.exists():
            return False
        try:
            validate_onnx_bytes(body)
        except ValueError as error:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
        _atomic_write(path, body)
        return True

    def measure(self, request: dict[str, Any]) -> dict[str, Any]:
        """Measure a request once per request id; see the module docstring."""
        request_id, profile, shas = _parse_measure_request(request)
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        stored = self._stored_result(request_id, fingerprint)
        if stored is not None:
            return stored
        with self.jobs_lock:
            job = self.jobs.get(request_id)
            owner = job is None
            if owner:
                job = self.jobs[request_id] = _Job(fingerprint)
        if job.fingerprint != fingerprint:
            raise ApiError(HTTPStatus.CONFLICT, f"request id {request_id} was used for a different request")
        if owner:
            self._run_job(job, request_id, profile, shas)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _run_job(self, job: _Job, request_id: str, profile: DeviceProfile, shas: list[str]) -> None:
        try:
            models = [self._load_model(sha) for sha in shas]
            with self.device_lock:
                measurements = measure_model_bytes(profile, models[1:], models[0])
                self.sessions_run += 1
            job.result = {
                "request_id": request_id,
                "fingerprint": job.fingerprint,
                "measurements": [m.to_dict() for m in measurements],
            }
            _atomic_write(self.results_dir / f"{request_id}.json", json.dumps(job.result).encode())
        except ApiError as error:
            job.error = error
        except Exception as error:  # report any measurement failure to the waiting clients
            job.error = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"measurement failed: {error}")
        finally:
            job.done.set()
            if job.error is not None:
                with self.jobs_lock:
                    self.jobs.pop(request_id, None)

    def _stored_result(self, request_id: str, fingerprint: str) -> dict[str, Any] | None:
        path = self.results_dir / f"{request_id}.json"
        if not path.exists():
            return None
        result = json.loads(path.read_text())
        if result["fingerprint"] != fingerprint:
            raise ApiError(HTTPStatus.CONFLICT, f"request id {request_id} was used for a different request")
        return result

    def _load_model(self, sha256: str) -> bytes:
        return (self.models_dir / f"{sha256}.onnx").read_bytes()

    def missing_models(self, shas: list[str]) -> list[str]:
        """Hashes this agent has no stored model for."""
        return [sha for sha in shas if not (self.models_dir / f"{sha}.onnx").exists()]

    def health(self) -> dict[str, Any]:
        """Device facts plus counters a client (or test) can check."""
        stored = sorted(self.results_dir.glob("*.json"))
        return {
            "status": "ok",
            "busy": self.device_lock.locked(),
            "device": describe_machine(),
            "sessions_run": self.sessions_run,
            "results_stored": len(stored),
            "max_upload_bytes": self.max_upload_bytes,
        }


def _parse_measure_request(request: dict[str, Any]) -> tuple[str, DeviceProfile, list[str]]:
    """Validate a /measure body; returns (request id, profile, [reference sha, model shas...])."""
    expected = {"request_id", "profile", "reference_sha256", "model_sha256s"}
    if not isinstance(request, dict) or set(request) != expected:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body must have exactly the fields {sorted(expected)}")
    request_id = request["request_id"]
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise ApiError(HTTPStatus.BAD_REQUEST, "request_id must be 1-128 characters of [A-Za-z0-9_.-]")
    shas = [request["reference_sha256"], *request["model_sha256s"]]
    if not request["model_sha256s"] or not all(isinstance(s, str) and _SHA256.match(s) for s in shas):
        raise ApiError(HTTPStatus.BAD_REQUEST, "reference_sha256 and model_sha256s must be lowercase sha256 hex")
    try:
        profile_data = {k: v for k, v in request["profile"].items() if k not in ("where", "reference_model")}
        profile = DeviceProfile.from_dict(profile_data)
    except (ProfileError, AttributeError) as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid profile: {error}") from None
    return request_id, profile, shas


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    os.replace(temp, path)


class AgentHandler(BaseHTTPRequestHandler):
    """Thin HTTP layer: authenticate, parse, call AgentState, answer JSON."""

    server: AgentServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(self._get)

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch(self._put)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _get(self) -> tuple[HTTPStatus, Any]:
        if self.path != "/health":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}")
        return HTTPStatus.OK, self.server.state.health()

    def _put(self) -> tuple[HTTPStatus, Any]:
        match = re.fullmatch(r"/models/([0-9a-f]{64})", self.path)
        if match is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "upload to /models/<sha256>")
        body = self._read_body(self.server.state.max_upload_bytes)
        created = self.server.state.store_model(match.group(1), body)
        return (HTTPStatus.CREATED if created else HTTPStatus.OK), {"sha256": match.group(1)}

    def _post(self) -> tuple[HTTPStatus, Any]:
        if self.path != "/measure":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}")
        try:
            request = json.loads(self._read_body(_MAX_JSON_BYTES))
        except json.JSONDecodeError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "body must be JSON") from None
        _, _, shas = _parse_measure_request(request)
        missing = self.server.state.missing_models(shas)
        if missing:
            raise ApiError(HTTPStatus.NOT_FOUND, {"missing_models": missing})
        return HTTPStatus.OK, self.server.state.measure(request)

    def handle_expect_100(self) -> bool:
        """Refuse an oversize upload before the client sends its body."""
        length = int(self.headers.get("Content-Length") or 0)
        if self.command == "PUT" and length > self.server.state.max_upload_bytes:
            self.close_connection = True
            self._send_json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"detail": f"body of {length} bytes exceeds the limit of {self.server.state.max_upload_bytes}"},
            )
            return False
        return super().handle_expect_100()

    def _dispatch(self, handler) -> None:
        try:
            self._authenticate()
            status, payload = handler()
        except ApiError as error:
            status, payload = error.status, {"detail": error.detail}
        self._send_json(status, payload)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        supplied = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(supplied.encode(), self.server.state.token.encode()):
            self._discard_body()
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong token")

    def _read_body(self, limit: int) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self._discard_body()
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds the limit of {limit}")
        return self.rfile.read(length)

    def _discard_body(self) -> None:
        """Read and drop the body so the client sees our answer instead of a reset.

        Bodies far beyond the limit are not drained; the connection is closed instead.
        """
        remaining = int(self.headers.get("Content-Length") or 0)
        if remaining > 16 * self.server.state.max_upload_bytes:
            self.close_connection = True
            return
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, _DRAIN_CHUNK))
            if not chunk:
                break
            remaining -= len(chunk)

    def _send_json(self, status: HTTPStatus, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if os.environ.get("DEVICES_AGENT_LOG"):
            super().log_message(format, *args)


class AgentServer(ThreadingHTTPServer):
    """Threaded server so health checks and retries are answered during a measurement."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: AgentState) -> None:
        super().__init__(address, AgentHandler)
        self.state = state


def serve(host: str, port: int, token: str, state_dir: Path | None = None, max_upload_mb: float = 64.0) -> None:
    """Run the agent until interrupted."""
    if not token:
        raise SystemExit("an agent needs a token (--token or DEVICES_AGENT_TOKEN)")
    state_path = state_dir or Path(tempfile.mkdtemp(prefix="devices-agent-"))
    state = AgentState(token, state_path, int(max_upload_mb * 1024 * 1024))
    server = AgentServer((host, port), state)
    print(f"devices agent listening on http://{host}:{server.server_address[1]} (state in {state_path})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    """``python -m devices.agent --port 8765 --token SECRET``."""
    parser = argparse.ArgumentParser(prog="python -m devices.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=os.environ.get("DEVICES_AGENT_TOKEN", ""), help="shared secret")
    parser.add_argument("--state-dir", type=Path, default=None, help="where uploads and results persist")
    parser.add_argument("--max-upload-mb", type=float, default=64.0)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.token, args.state_dir, args.max_upload_mb)


if __name__ == "__main__":
    main()
