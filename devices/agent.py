"""Edge agent: a small HTTP server that profiles ONNX models on the box it runs on.

It needs only onnxruntime, numpy and the standard library (``http.server``),
so it installs on an edge device without torch, ray or hwsearch (copy the
``devices/`` folder there).  Start it with
``DEVICES_AGENT_TOKEN=... python -m devices.agent --port 8765``: the token
from the environment, since a ``--token`` value shows in ``ps``.

API (every endpoint needs ``Authorization: Bearer <token>``; every answer,
errors included, is JSON, errors as ``{"detail": ...}``):

* ``GET /health`` – device facts, counters, the limits below and the size of
  the model and result stores.
* ``PUT /models/<sha256>`` – upload one ONNX file (raw body).  Content
  addressed, so re-uploading is harmless; rejected with 413 above the size
  limit and 400 when the bytes are not a loadable ONNX model or do not match
  the hash.
* ``POST /measure`` – JSON ``{request_id, profile, reference_sha256,
  model_sha256s}``; runs the interleaved protocol and returns the
  Measurements.  404 ``{"detail": {"missing_models": [...]}}`` lists models
  the agent does not have (upload them and retry).

Design choices that make retries safe: a request id is measured at most
once.  A retry that arrives while the first attempt still runs waits for that
attempt; a retry after it finished gets the stored result, which is written to
``state_dir`` so it even survives a restart of the agent.  Measurements are
serialised by one device lock, so two requests never profile at the same time
on this device.

Limits (the agent may face the internet, so every client input is bounded in
bytes and seconds; each has a command-line flag):

* Body framing is checked before a byte of the body is read: no
  ``Content-Length`` on a PUT/POST answers 411, ``Transfer-Encoding``
  (chunked) 411, a non-numeric, negative or repeated ``Content-Length`` 400,
  and one above the limit (``--max-upload-mb``, 64 MiB; 1 MiB for
  ``/measure``) 413.  A body shorter than its ``Content-Length`` answers 400
  once the read timeout passes.
* An upload must be a model onnxruntime loads, with its weights inside the
  file: a tensor naming an external data file is refused with 400, so a
  model cannot make the agent read a file beside it.  The model's bytes are
  scanned for such tensors (``devices/onnx_scan.py``) before onnxruntime
  sees them, since onnxruntime before 1.21 cannot be told not to read them.
* A model's inputs, built from the shapes it declares, may take at most
  1 GiB (``devices.ort.MAX_INPUT_BYTES``); a larger one is refused with 400
  before they are allocated.  A model onnxruntime fails to load or run is
  a 400 too (it fails the same way on every retry), anything else a 500.
* Requests are authenticated from their headers alone; a wrong token answers
  401 without reading the body.  Any answer sent while a body is still unread
  closes the connection after draining at most 256 KiB for at most 1 s, so
  the client sees the answer and a client that keeps streaming is cut off.
* ``--read-timeout-s`` (30 s) bounds every read, and also the request line
  plus headers as a whole, so idle or trickling (slowloris) connections are
  closed; a body may take that long plus 1 s per 64 KiB.
* ``--max-connections`` (16) bounds open connections, each served by one
  thread.  When every slot is taken, the connection that has waited longest
  without showing the token (a stranger's, or an idle one that never sent a
  request), one that never sent a byte before one that did, is closed to
  make room (:class:`_Strangers`), and one address's
  strangers hold at most half the slots: a client without the token who
  kept reconnecting idle sockets locked token holders out for as long as it
  kept at it.  Only when every slot is held by a token holder's connection
  does the agent answer 503 with ``Retry-After`` and close, without starting
  a thread.  A ``/measure`` waiting for its measurement
  holds its connection, including one whose client already gave up, so at
  most that many requests wait for the device lock.  A waiting request pins
  its models (a missing one is answered 404 at once) but reads their bytes
  only once it holds the lock.
* ``--max-models`` (256) and ``--max-model-mb`` (2048) bound the model
  store and ``--max-results`` (1024) the stored results.  Least recently used
  models (uploaded, re-uploaded or measured) and the oldest results are pruned
  after each upload and each measurement; models pinned by a measurement in
  progress, and the model just uploaded, are never pruned, so the store can
  exceed its bounds by those until the next prune.  A pruned model is simply
  uploaded again by the client on the 404 above; a pruned result means a very
  old request id would be measured again.  A measurement that needs more
  distinct models than ``--max-models`` is refused with 400.

With ``--ssl-certfile`` and ``--ssl-keyfile`` the agent speaks HTTPS, so its
token and the models never cross the network in clear.  The TLS handshake
runs in the connection's own thread under the read timeout, never in the
accepting thread, so a client that stalls its handshake holds one connection
slot for at most that long; over the connection bound, a TLS client is
closed without an answer (a plain-text 503 would not reach it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import io
import json
import math
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from stat import S_ISREG
from typing import Any, Callable

from devices.cpuload import beside_sessions
from devices.local import describe_machine, measure_model_bytes
from devices.network import has_unread_bytes, is_loopback, served_token_problem
from devices.ort import ModelInputError, bound_session_memory, require_threads_here, validate_onnx_bytes
from devices.plain import NONFINITE_HEADER, dumps
from devices.profile import DeviceProfile, ProfileError
from devices.protocol import SessionOverrun

MiB = 1024 * 1024
#: Both are matched whole (``fullmatch``): ``$`` also matches before a trailing newline, and a request id
#: ``"evil\n"`` passed ``re.match`` and was written as the file ``requests/evil\n.json``.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_DIGITS = re.compile(r"[0-9]+")
_MAX_LENGTH_DIGITS = 18  # more digits than this is far beyond any limit (and int() of huge strings is slow)
_MAX_JSON_BYTES = 1 * MiB
_MIN_BODY_BYTES_PER_S = 64 * 1024
_READ_BUFFER_BYTES = 64 * 1024
_LINGER_BYTES = 256 * 1024
_LINGER_S = 1.0
_BUSY_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class AgentLimits:
    """Every bound the agent enforces (see the module docstring); each has a command-line flag."""

    max_upload_bytes: int = 64 * MiB
    max_models: int = 256
    max_model_bytes: int = 2048 * MiB
    max_results: int = 1024
    max_connections: int = 16
    read_timeout_s: float = 30.0
    #: What onnxruntime may allocate for the sessions of a measurement (``devices.ort.bound_session_memory``).
    max_session_bytes: int = field(default_factory=lambda: _physical_memory_bytes() * 3 // 4)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"agent limit {name} must be positive, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for /health."""
        return asdict(self)


def _physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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


class ModelStore:
    """Content-addressed ONNX files, pruned least recently used first by count and by bytes.

    The recency order lives in memory, because several uploads can share one
    file-system timestamp tick; mtimes are touched on every use only so the
    order survives a restart.  Pinned models (a measurement in progress needs
    them) are never pruned, nor is the model just stored: its uploader is about
    to measure it.
    """

    def __init__(self, folder: Path, max_models: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.pruned = 0
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob(".tmp-*"):  # left by a crash mid-upload
            stray.unlink(missing_ok=True)
        stored = [(path.stat(), path.stem) for path in folder.glob("*.onnx") if _SHA256.fullmatch(path.stem)]
        for stat, sha256 in sorted(stored, key=lambda item: (item[0].st_mtime_ns, item[1])):
            self._sizes[sha256] = stat.st_size
        with self._lock:
            self._prune(keep=None)

    def touch(self, sha256: str) -> bool:
        """Mark a stored model as used; False when it is not stored."""
        with self._lock:
            if not self._stored(sha256):
                return False
            self._use(sha256)
            return True

    def add(self, sha256: str, body: bytes) -> None:
        """Store a validated model, then prune the least recently used others."""
        temp = _write_temp(self.folder, body)
        with self._lock:
            os.replace(temp, self._path(sha256))
            self._sizes[sha256] = len(body)
            self._sizes.move_to_end(sha256)
            self._prune(keep=sha256)

    def pin(self, shas: list[str]) -> list[str]:
        """Pin every model of a measurement, or none: returns the missing ones (pinned nothing then)."""
        with self._lock:
            missing = [sha for sha in dict.fromkeys(shas) if not self._stored(sha)]
            if not missing:
                for sha in shas:
                    self._pins[sha] += 1
                    self._use(sha)
            return missing

    def unpin(self, shas: list[str]) -> None:
        """Release a measurement's pins and prune what they held back."""
        with self._lock:
            self._pins.subtract(shas)
            self._pins = +self._pins  # drop the zero counts
            self._prune(keep=None)

    def read(self, sha256: str) -> bytes:
        """The bytes of a stored (pinned) model; FileNotFoundError, and the file gone, if they are not that model.

        A stored file overwritten (by hand, or a failing disk) was measured as
        its name said and refused by the client as a malformed measurement,
        forever; reported missing, it is uploaded again.
        """
        data = self._path(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            with self._lock:
                self._path(sha256).unlink(missing_ok=True)
                self._sizes.pop(sha256, None)
            raise FileNotFoundError(f"stored model {sha256[:12]} no longer holds its bytes")
        return data

    def stats(self) -> dict[str, int]:
        """Store size for /health."""
        with self._lock:
            return {
                "models_stored": len(self._sizes),
                "model_bytes": sum(self._sizes.values()),
                "models_pinned": len(self._pins),
                "models_pruned": self.pruned,
            }

    def _path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.onnx"

    def _stored(self, sha256: str) -> bool:
        """Whether a model is stored; forgets one whose file an operator deleted, so it is uploaded again."""
        if sha256 in self._sizes and not self._path(sha256).exists():
            del self._sizes[sha256]
        return sha256 in self._sizes

    def _use(self, sha256: str) -> None:
        self._sizes.move_to_end(sha256)
        os.utime(self._path(sha256))

    def _prune(self, keep: str | None) -> None:
        total = sum(self._sizes.values())
        for sha256 in list(self._sizes):
            if len(self._sizes) <= self.max_models and total <= self.max_bytes:
                return
            if sha256 == keep or self._pins[sha256]:
                continue
            total -= self._sizes.pop(sha256)
            self._path(sha256).unlink(missing_ok=True)
            self.pruned += 1


class ResultStore:
    """Measurement results by request id, so a retry (even after a restart) is not measured twice.

    Only the newest ``max_results`` are kept; each is a small JSON file.
    """

    def __init__(self, folder: Path, max_results: int) -> None:
        self.folder = folder
        self.max_results = max_results
        self.pruned = 0
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def read(self, request_id: str, fingerprint: str) -> dict[str, Any] | None:
        """The stored result, None when there is none; 409 when the id was used for another request."""
        path = self.folder / f"{request_id}.json"
        if not path.exists():
            return None
        result = json.loads(path.read_text())
        if result["fingerprint"] != fingerprint:
            raise ApiError(HTTPStatus.CONFLICT, f"request id {request_id} was used for a different request")
        return result

    def write(self, request_id: str, result: dict[str, Any]) -> None:
        """Store a result, then prune the oldest beyond the limit."""
        temp = _write_temp(self.folder, json.dumps(result).encode())
        with self._lock:
            os.replace(temp, self.folder / f"{request_id}.json")
            stored = [(path.stat().st_mtime_ns, path.name, path) for path in self.folder.glob("*.json")]
            newest_first = sorted(stored, reverse=True)
            for _, name, path in newest_first[self.max_results:]:
                if name != f"{request_id}.json":
                    path.unlink(missing_ok=True)
                    self.pruned += 1

    def count(self) -> int:
        """How many results are stored."""
        return sum(1 for _ in self.folder.glob("*.json"))


class AgentState:
    """Everything the handlers share: limits, token, the model and result stores, the device lock."""

    def __init__(self, token: str, state_dir: Path, limits: AgentLimits) -> None:
        self.token = token
        self.limits = limits
        self.models = ModelStore(state_dir / "models", limits.max_models, limits.max_model_bytes)
        self.results = ResultStore(state_dir / "requests", limits.max_results)
        self.device_lock = threading.Lock()
        self.jobs_lock = threading.Lock()
        self.jobs: dict[str, _Job] = {}
        self.sessions_run = 0

    def store_model(self, sha256: str, body: bytes) -> bool:
        """Validate and store an upload; returns False when it was already stored.

        Validating builds an onnxruntime session (a valid 6.7 MB graph of
        230,000 nodes took 9.9 s of CPU) beside whatever session another
        client is measuring, so its CPU counts as foreign load there
        (:func:`devices.cpuload.beside_sessions`): it was this process's own,
        and a session it slowed said nothing of it.  It does not wait for
        sessions: compute waits behind every queued session, and a busy
        agent's uploads would wait for its whole queue.
        """
        with beside_sessions():
            if hashlib.sha256(body).hexdigest() != sha256:
                raise ApiError(HTTPStatus.BAD_REQUEST, "body does not match the sha256 in the URL")
            if self.models.touch(sha256):
                return False
            try:
                validate_onnx_bytes(body)
            except ValueError as error:
                raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
            self.models.add(sha256, body)
            return True

    def measure(self, request: Any) -> dict[str, Any]:
        """Measure a request once per request id; see the module docstring.

        The stored result is looked up again under ``jobs_lock`` because the
        job that wrote it leaves ``jobs`` right after; a retry therefore finds
        either the running job or its result, never neither.
        """
        request_id, profile, shas = _parse_measure_request(request)
        try:
            require_threads_here(profile)  # at once, not after waiting for the device
        except ProfileError as error:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid profile: {error}") from None
        if len(shas) > self.limits.max_models:  # listed, not distinct: each listed model gets a row back
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"the request lists {len(shas)} models with the reference; this agent measures at most "
                f"{self.limits.max_models} at once (--max-models)",
            )
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        with self.jobs_lock:
            stored = self.results.read(request_id, fingerprint)
            if stored is not None:
                return stored
            job = self.jobs.get(request_id)
            owner = job is None
            if owner:
                missing = self.models.pin(shas)
                if missing:
                    raise ApiError(HTTPStatus.NOT_FOUND, {"missing_models": missing})
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
        """Measure with the models pinned; store the result before the job leaves ``jobs``.

        A model listed twice is loaded and measured once and its row repeated:
        each copy would have been another session, another input and another
        thread pool (one 16 MiB model listed 100 times took 4.9 GiB).  The
        models' bytes are read only once the device lock is held: read before
        it, every request waiting for the lock held its models in memory
        (8 waiting requests of three 24 MB models took the agent from 147 to
        709 MiB); their pins already answered a missing model with 404.
        """
        try:
            distinct = list(dict.fromkeys(shas[1:]))
            with self.device_lock:
                models = self._read_pinned([shas[0], *distinct])
                measured = dict(zip(distinct, measure_model_bytes(profile, models[1:], models[0])))
                del models
                self.sessions_run += 1
            job.result = {
                "request_id": request_id,
                "fingerprint": job.fingerprint,
                "measurements": [measured[sha].to_dict() for sha in shas[1:]],
            }
            self.results.write(request_id, job.result)
        except ApiError as error:
            job.error = error
        except (ModelInputError, ProfileError, SessionOverrun) as error:  # unfit for this box: no retry helps
            job.error = ApiError(HTTPStatus.BAD_REQUEST, str(error))
        except Exception as error:  # report any measurement failure to the waiting clients
            job.error = _measurement_failure(error)
        finally:
            self.models.unpin(shas)
            job.done.set()
            with self.jobs_lock:
                self.jobs.pop(request_id, None)

    def _read_pinned(self, shas: list[str]) -> list[bytes]:
        """The bytes of pinned models; 404 naming those whose file an operator deleted meanwhile."""
        models, missing = [], []
        for sha in shas:
            try:
                models.append(self.models.read(sha))
            except FileNotFoundError:
                missing.append(sha)
        if missing:
            raise ApiError(HTTPStatus.NOT_FOUND, {"missing_models": missing})
        return models

    def health(self) -> dict[str, Any]:
        """Device facts, counters, limits and store size, for clients, operators and tests."""
        results_stored = self.results.count()
        return {
            "status": "ok",
            "busy": self.device_lock.locked(),
            "device": describe_machine(),
            "sessions_run": self.sessions_run,
            "results_stored": results_stored,
            "max_upload_bytes": self.limits.max_upload_bytes,
            "limits": self.limits.to_dict(),
            "store": {**self.models.stats(), "results_stored": results_stored, "results_pruned": self.results.pruned},
        }


def _parse_measure_request(request: Any) -> tuple[str, DeviceProfile, list[str]]:
    """Validate a /measure body; returns (request id, profile, [reference sha, model shas...])."""
    expected = {"request_id", "profile", "reference_sha256", "model_sha256s"}
    if not isinstance(request, dict) or set(request) != expected:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body must have exactly the fields {sorted(expected)}")
    request_id = request["request_id"]
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ApiError(HTTPStatus.BAD_REQUEST, "request_id must be 1-128 characters of [A-Za-z0-9_.-]")
    model_shas = request["model_sha256s"]
    if not isinstance(model_shas, list) or not model_shas:
        raise ApiError(HTTPStatus.BAD_REQUEST, "model_sha256s must be a non-empty list")
    shas = [request["reference_sha256"], *model_shas]
    if not all(isinstance(s, str) and _SHA256.fullmatch(s) for s in shas):
        raise ApiError(HTTPStatus.BAD_REQUEST, "reference_sha256 and model_sha256s must be lowercase sha256 hex")
    if not isinstance(request["profile"], dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "profile must be a JSON object")
    try:
        profile_data = {k: v for k, v in request["profile"].items() if k not in ("where", "reference_model")}
        profile = DeviceProfile.from_dict(profile_data)
    except ProfileError as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid profile: {error}") from None
    return request_id, profile, shas


def _write_temp(folder: Path, data: bytes) -> Path:
    """Write to a temporary file in ``folder``; renaming it into place makes the write atomic."""
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return Path(temp)


class _DeadlineReader(io.RawIOBase):
    """Socket reads bounded per read (``idle_s``) and in total (``deadline``, a monotonic time).

    The socket timeout alone bounds each ``recv``, so a client sending one byte
    every few seconds could hold a connection (and its thread) forever; the
    deadline caps a request line plus headers, or a whole body.
    """

    def __init__(self, sock: socket.socket, idle_s: float) -> None:
        super().__init__()
        self._sock = sock
        self.idle_s = idle_s
        self.deadline = time.monotonic() + idle_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait = min(self.idle_s, self.deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError("read deadline passed")
        self._sock.settimeout(wait)
        return self._sock.recv_into(buffer)


def _linger_close(sock: socket.socket) -> None:
    """Half-close, then drop a bounded tail of an unread body before the socket is closed.

    Closing with unread bytes makes the kernel send a reset, which can destroy
    the answer just sent before the client reads it; draining a little lets a
    well-behaved client see the answer, while one that keeps streaming is cut
    off after ``_LINGER_BYTES`` or ``_LINGER_S``.
    """
    deadline = time.monotonic() + _LINGER_S
    drained = 0
    try:
        sock.shutdown(socket.SHUT_WR)
        while drained < _LINGER_BYTES and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(min(_READ_BUFFER_BYTES, _LINGER_BYTES - drained))
            if not chunk:
                return
            drained += len(chunk)
    except OSError:  # the client went away or stalled: nothing left to protect
        return


class AgentHandler(BaseHTTPRequestHandler):
    """Thin HTTP layer: bound the reads, authenticate, parse, call AgentState, answer JSON."""

    server: AgentServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Swap the stdlib's socket reader for one with a total deadline."""
        self.timeout = self.server.state.limits.read_timeout_s
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader, _READ_BUFFER_BYTES)
        self._body_unread = False
        self._first_deadline = self.server.first_deadline(self.connection)

    def handle_one_request(self) -> None:
        """Give each request line plus headers ``read_timeout_s`` in total (idle keep-alive included)."""
        first, self._first_deadline = self._first_deadline, None
        self._reader.deadline = first if first is not None else time.monotonic() + self.timeout
        self._body_unread = False
        super().handle_one_request()

    def finish(self) -> None:
        super().finish()
        if self._body_unread:
            _linger_close(self.connection)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(self._get)

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch(self._put)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _get(self) -> tuple[HTTPStatus, Any]:
        if self.path != "/health":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}")
        return HTTPStatus.OK, {**self.server.state.health(), "connections_refused": self.server.refused}

    def _put(self) -> tuple[HTTPStatus, Any]:
        match = re.fullmatch(r"/models/([0-9a-f]{64})", self.path)
        if match is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "upload to /models/<sha256>")
        body = self._read_body(self.server.state.limits.max_upload_bytes)
        created = self.server.state.store_model(match.group(1), body)
        return (HTTPStatus.CREATED if created else HTTPStatus.OK), {"sha256": match.group(1)}

    def _post(self) -> tuple[HTTPStatus, Any]:
        if self.path != "/measure":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}")
        body = self._read_body(_MAX_JSON_BYTES)
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
            raise ApiError(HTTPStatus.BAD_REQUEST, "body must be JSON") from None
        return HTTPStatus.OK, self.server.state.measure(request)

    def handle_expect_100(self) -> bool:
        """Refuse before the client sends its body: wrong token, bad framing or oversize."""
        self._body_unread = self._declares_body()
        try:
            self._authenticate()
            if self.command in ("PUT", "POST"):
                self._declared_length(self._body_limit())
        except ApiError as error:
            self._send_json(error.status, {"detail": error.detail})
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (malformed request line, oversize headers) answer JSON too."""
        self.close_connection = True
        self._send_json(HTTPStatus(code), {"detail": message or HTTPStatus(code).phrase})

    def _dispatch(self, route: Callable[[], tuple[HTTPStatus, Any]]) -> None:
        self._body_unread = self._declares_body()
        try:
            self._authenticate()
            status, payload = route()
        except ApiError as error:
            status, payload = error.status, {"detail": error.detail}
        self._send_json(status, payload)

    def _authenticate(self) -> None:
        """Check the token from the headers alone, so a stranger's body is never read."""
        header = self.headers.get("Authorization", "")
        supplied = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(supplied.encode(), self.server.state.token.encode()):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong token in the Authorization header")
        self.server.strangers.trusted(self.connection.fileno())

    def _declares_body(self) -> bool:
        """Whether body bytes may follow the headers; until they are read the connection cannot be reused."""
        length = self.headers.get("Content-Length")
        if "Transfer-Encoding" in self.headers or (length is None and self.command in ("PUT", "POST")):
            return True
        return length not in (None, "0")

    def _body_limit(self) -> int:
        return self.server.state.limits.max_upload_bytes if self.command == "PUT" else _MAX_JSON_BYTES

    def _declared_length(self, limit: int) -> int:
        """The body length the headers declare, checked before a byte of the body is read."""
        if "Transfer-Encoding" in self.headers:
            raise ApiError(
                HTTPStatus.LENGTH_REQUIRED,
                "Transfer-Encoding is not supported (no chunked bodies); send the body with a Content-Length header",
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "the Content-Length header is required")
        if len(values) > 1:
            raise ApiError(HTTPStatus.BAD_REQUEST, "send exactly one Content-Length header")
        value = values[0].strip()
        if not _DIGITS.fullmatch(value):
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"the Content-Length header must be a non-negative integer, got {value[:40]!r}"
            )
        if len(value) > _MAX_LENGTH_DIGITS or int(value) > limit:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the Content-Length header declares {value[:40]} bytes; the limit is {limit}",
            )
        return int(value)

    def _read_body(self, limit: int) -> bytes:
        """Read exactly the declared body, within the read timeout plus time for its size."""
        length = self._declared_length(limit)
        self._reader.deadline = time.monotonic() + self.timeout + length / _MIN_BODY_BYTES_PER_S
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"body shorter than Content-Length: {length} bytes did not arrive in time "
                f"(read timeout {self.timeout:g} s)",
            ) from None
        if len(body) < length:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"body shorter than Content-Length: the client closed after {len(body)} of {length} bytes",
            )
        self._body_unread = False
        return body

    def _send_json(self, status: HTTPStatus, payload: Any) -> None:
        """Answer; an unread body means the connection cannot carry another request, so close it.

        Standard JSON (:func:`devices.plain.dumps`) for a client that asks for
        it (:data:`~devices.plain.NONFINITE_HEADER`): a row's ratio_ci of inf
        (no CI) or latency of NaN goes as null, which the client reads back;
        ``Infinity`` is refused by other JSON readers.  A client that does not
        ask (a service from before) gets ``Infinity`` and ``NaN`` as it always
        did: it refuses a null, and every row without a CI failed its job.
        """
        if self._body_unread:
            self.close_connection = True
        body = (dumps(payload) if self._reads_null() else json.dumps(payload)).encode()
        self.connection.settimeout(self.timeout)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reads_null(self) -> bool:
        """Whether the request asked for standard JSON (no headers yet: a request line refused, say)."""
        headers = getattr(self, "headers", None)
        return headers is not None and headers.get(NONFINITE_HEADER, "").lower() == "null"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if os.environ.get("DEVICES_AGENT_LOG"):
            super().log_message(format, *args)


def _measurement_failure(error: Exception) -> ApiError:
    """400 when onnxruntime refused to load or run a model, 500 for anything else.

    A model whose session cannot start or whose run fails (an operator that
    asks for more memory than the box has, one the build lacks) fails the
    same way every time; as a 500 the client retried it, starting the
    measurement over each time, before giving up.
    """
    if type(error).__module__.startswith("onnxruntime"):
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        return ApiError(HTTPStatus.BAD_REQUEST, f"the model failed in onnxruntime on this device: {first_line[:500]}")
    return ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"measurement failed: {error}")


class _Strangers:
    """Open connections that have not yet shown the token: the ones to drop to make room.

    Keyed by file descriptor, which stays the same when a connection is
    wrapped in TLS, with the address it came from and whether it has sent
    anything.  A connection leaves the set once a request on it carries the
    token, and for good when it closes.

    The silent go first, oldest first; then those that spoke.  A token
    holder speaks at once, but over TLS shows its token only after a
    handshake of several round trips: dropped by plain age, it was the
    oldest stranger within a few arrivals of a stranger reconnecting silent
    sockets from several addresses, and one health check in 8-30 failed on a
    busy host.  What this does not stop (Y20): a stranger that sends one
    byte on each connection is back to plain age; and a client whose first
    bytes are not in yet when the next stranger arrives is the silent one,
    dropped before older strangers that sent a byte (by age it would have
    lasted ``--max-connections`` arrivals).  On a network its first bytes
    follow the accept within a packet's time; its retries cover the rest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._from: dict[int, str] = {}  # descriptor -> client address, in order of arrival (oldest first)
        self._spoke: set[int] = set()

    def arrived(self, descriptor: int, address: str) -> None:
        with self._lock:
            self._from[descriptor] = address
            self._spoke.discard(descriptor)

    def spoke(self, descriptor: int) -> None:
        """The connection has sent its first bytes (its thread saw them before reading them)."""
        with self._lock:
            if descriptor in self._from:
                self._spoke.add(descriptor)

    def trusted(self, descriptor: int) -> None:
        with self._lock:
            self._from.pop(descriptor, None)
            self._spoke.discard(descriptor)

    def left(self, descriptor: int) -> None:
        self.trusted(descriptor)

    def count(self, address: str) -> int:
        with self._lock:
            return sum(peer == address for peer in self._from.values())

    def drop_oldest(self, address: str | None = None) -> bool:
        """Shut the oldest silent stranger's connection (from ``address``, if given) down, else the oldest
        one that spoke; False if there is none.

        Its thread then reads end-of-file, ends, and frees its slot.
        """
        with self._lock:
            candidates = [held for held, peer in self._from.items() if address in (None, peer)]
            if not candidates:
                return False
            descriptor = next((held for held in candidates if not self._has_spoken(held)), candidates[0])
            del self._from[descriptor]
            self._spoke.discard(descriptor)
            # shut down through a duplicate: the connection's own socket object (TLS-wrapped perhaps)
            # belongs to the thread serving it; a shutdown wakes that thread's blocked read with EOF
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(descriptor)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
            return True

    def _has_spoken(self, descriptor: int) -> bool:
        """Marked by its thread, or bytes (or its end) already waiting unread: a thread not yet scheduled
        must not cost a client that spoke its slot."""
        return descriptor in self._spoke or has_unread_bytes(descriptor)


class AgentServer(ThreadingHTTPServer):
    """Threaded server so health checks and retries are answered during a measurement.

    One thread per connection, at most ``max_connections`` of them.  Past
    that, the connection that has waited longest without showing the token
    is closed to make room; if every connection has shown it, the accepting
    thread itself answers 503 (never blocking on a client) and closes.  One
    address's strangers hold at most half the slots: past that, it makes room
    from its own, so a stranger reconnecting as fast as it can never closes
    another address's connections.
    """

    daemon_threads = True
    #: Connections the kernel queues before they are accepted (the stdlib's 5 dropped a token holder's
    #: connection attempts, to time out, while a stranger reconnected flat out).
    request_queue_size = 128
    #: How long the accepting thread waits for a dropped stranger's thread to free its slot.
    _MAKE_ROOM_S = 2.0

    def __init__(self, address: tuple[str, int], state: AgentState,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(address, AgentHandler)
        self.state = state
        self.tls = tls
        self.refused = 0
        self.strangers = _Strangers()
        self._first_deadlines: dict[socket.socket, float] = {}  # a plain connection's, until its handler takes it
        self._slots = threading.BoundedSemaphore(state.limits.max_connections)
        self._strangers_per_address = max(1, state.limits.max_connections // 2)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._take_slot(client_address[0]):
            self.refused += 1
            if self.tls is None:
                _answer_busy(request, self.state.limits.max_connections)
            self.shutdown_request(request)
            return
        self.strangers.arrived(request.fileno(), client_address[0])
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.strangers.left(request.fileno())
            self._slots.release()
            raise

    def shutdown_request(self, request: socket.socket) -> None:
        """Close a connection, first forgetting it as a stranger: its descriptor may be reused at once."""
        self.strangers.left(request.fileno())
        super().shutdown_request(request)

    def _take_slot(self, address: str) -> bool:
        """A slot for a connection from ``address``; False if token holders hold them all.

        An address already holding its share of strangers gives up its own
        oldest; otherwise a free slot, or one freed by dropping the oldest
        stranger from anywhere.
        """
        if self.strangers.count(address) >= self._strangers_per_address:
            made_room = self.strangers.drop_oldest(address)
        elif self._slots.acquire(blocking=False):
            return True
        else:
            made_room = self.strangers.drop_oldest()
        return made_room and self._slots.acquire(timeout=self._MAKE_ROOM_S)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            deadline = time.monotonic() + self.state.limits.read_timeout_s
            if not self._first_bytes(request, deadline):
                self.shutdown_request(request)
                return
            if self.tls is not None:
                request = self._handshake(request, deadline)
                if request is None:
                    return
            else:
                self._first_deadlines[request] = deadline
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._first_deadlines.pop(request, None)
        finally:
            self._slots.release()

    def first_deadline(self, connection: socket.socket) -> float | None:
        """When a plain connection's first request line and headers are due: its read timeout counts from
        the accept, the wait for its first bytes included; None over TLS (its handshake had that time)."""
        return self._first_deadlines.pop(connection, None)

    def _first_bytes(self, request: socket.socket, deadline: float) -> bool:
        """Wait until the client sends something, then mark it as having spoken (see :class:`_Strangers`);
        False if it stayed silent until ``deadline``, hung up, or was dropped."""
        try:
            request.settimeout(max(deadline - time.monotonic(), 0.0))
            if not request.recv(1, socket.MSG_PEEK):
                return False
        except OSError:
            return False
        self.strangers.spoke(request.fileno())
        return True

    def _handshake(self, request: socket.socket, deadline: float) -> ssl.SSLSocket | None:
        """The connection wrapped in TLS, its handshake done by ``deadline``; None if it failed.

        CPython holds a blocking handshake to the socket's timeout as one
        deadline across all its reads (measured: a hello sent a byte every
        0.3 s was cut off at the 1 s timeout), so a trickle cannot stretch it.
        """
        assert self.tls is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.shutdown_request(request)
            return None
        request.settimeout(remaining)
        descriptor = request.fileno()  # read first: wrapping moves it over, and may fail after that
        secured = None
        try:
            secured = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            secured.do_handshake()
        except (OSError, ssl.SSLError):  # stalled, plain text, or a client that rejects our certificate
            self.strangers.left(descriptor)
            (request if secured is None else secured).close()
            return None
        return secured

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is routine; only real faults get a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _answer_busy(sock: socket.socket, max_connections: int) -> None:
    """503 without blocking the accepting thread; drain what already arrived so close sends no reset."""
    body = json.dumps(
        {"detail": f"the agent already serves its limit of {max_connections} connections (--max-connections)"}
    ).encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: {_BUSY_RETRY_AFTER_S}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        sock.setblocking(False)
        sock.send(head + body)
        sock.recv(_READ_BUFFER_BYTES)
    except OSError:  # nothing to drain yet (BlockingIOError), or the client is gone
        pass


class AgentSettingError(ValueError):
    """An option or setting the agent cannot start with; the message names it.

    ``python -m devices.agent`` and ``hwsearch agent`` both print it as one
    ``error: ...`` line and exit 2, as every other usage error of hwsearch.
    """


def check_agent_token(token: str | None) -> None:
    """Refuse a token the agent cannot serve (:class:`AgentSettingError`), never quoting it.

    Missing; one no HTTP header can carry (" " was served, and matched no
    client's header); one short enough to guess ("t" was served).
    """
    if not token:
        raise AgentSettingError("an agent needs a token (--token or DEVICES_AGENT_TOKEN)")
    problem = served_token_problem(token)
    if problem is not None:
        raise AgentSettingError(f"the agent's token (--token or DEVICES_AGENT_TOKEN) {problem}")


def serve(
    host: str,
    port: int,
    token: str,
    state_dir: Path | None = None,
    max_upload_mb: float = 64.0,
    *,
    max_models: int = AgentLimits.max_models,
    max_model_mb: float = AgentLimits.max_model_bytes / MiB,
    max_results: int = AgentLimits.max_results,
    max_connections: int = AgentLimits.max_connections,
    read_timeout_s: float = AgentLimits.read_timeout_s,
    max_session_mb: float | None = None,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
) -> None:
    """Run the agent until interrupted; over HTTPS when given a certificate and its key.

    ``max_session_mb`` bounds what onnxruntime may allocate for a measurement
    (default: three quarters of this box's memory).
    """
    check_agent_token(token)
    try:
        session_bytes = {} if max_session_mb is None else {
            "max_session_bytes": _megabytes(max_session_mb, "--max-session-mb")}
        limits = AgentLimits(
            max_upload_bytes=_megabytes(max_upload_mb, "--max-upload-mb"), max_models=max_models,
            max_model_bytes=_megabytes(max_model_mb, "--max-model-mb"), max_results=max_results,
            max_connections=max_connections,
            read_timeout_s=_bounded(read_timeout_s, "--read-timeout-s", _MAX_READ_TIMEOUT_S),
            **session_bytes,
        )
    except ValueError as error:  # AgentLimits' own checks
        raise AgentSettingError(str(error)) from None
    if not bound_session_memory(limits.max_session_bytes):
        print("this onnxruntime cannot share a bounded allocator: a model may allocate what the box has",
              file=sys.stderr, flush=True)
    tls = server_tls_context(ssl_certfile, ssl_keyfile)  # first: a refused start leaves no state folder behind
    state_path = state_dir or Path(tempfile.mkdtemp(prefix="devices-agent-"))
    try:
        state = AgentState(token, state_path, limits)
    except OSError as error:  # /etc/passwd, a folder in /proc: a traceback, on the box a user set up by hand
        raise AgentSettingError(f"--state-dir {state_path}: {error.strerror or error}") from None
    try:
        server = AgentServer((host, port), state, tls)
    except (OSError, OverflowError) as error:  # a port in use or out of range, an address not this box's
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise AgentSettingError(f"cannot listen on {host}:{port} (--host, --port): {reason}") from None
    scheme = "http" if tls is None else "https"
    if tls is None and not is_loopback(host):
        print(f"warning: serving plain HTTP on {host}: clients' token crosses the network in clear; "
              "give --ssl-certfile and --ssl-keyfile", file=sys.stderr, flush=True)
    url = f"{scheme}://{host}:{server.server_address[1]}"
    print(f"devices agent listening on {url} (state in {state_path})", flush=True)
    if ssl_certfile is not None:
        pin = certificate_sha256(ssl_certfile)
        if pin is None:
            print(f"the certificate's SHA-256 could not be read from {ssl_certfile}; `openssl x509 -noout "
                  "-fingerprint -sha256` prints it, for hwsearch serve --agent NAME=URL#sha256=...", flush=True)
        else:
            print(f"certificate sha256 {pin}: pin it with hwsearch serve --agent NAME={url}#sha256={pin}, "
                  "or where.cert_sha256 in a device profile", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


#: Upper bounds of the agent's size options (MiB, 16 TiB) and of its read timeout (seconds), as ``hwsearch serve``.
_MAX_OPTION_MB = 16.0 * 1024 * 1024
_MAX_READ_TIMEOUT_S = 3600.0


def _bounded(value: float, option: str, maximum: float) -> float:
    """``value`` if it lies in (0, ``maximum``]; else the agent stops with one line naming ``option``.

    Infinity passed the options' lower bounds and crashed the start with an
    ``OverflowError`` traceback, and so did 1e300 later: a read timeout past
    the platform's ``time_t`` failed every connection, a session bound past
    ``size_t`` failed in onnxruntime's allocator settings.
    """
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise AgentSettingError(f"{option} must be a number above 0 and at most {maximum:g}, got {value}")
    return value


def _megabytes(value: float, option: str) -> int:
    """A size option given in MiB, in bytes (see :func:`_bounded`)."""
    return int(_bounded(value, option, _MAX_OPTION_MB) * MiB)


def server_tls_context(certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext | None:
    """A server TLS context for the pair, or None for plain HTTP; a bad pair is an :class:`AgentSettingError`.

    ``hwsearch serve`` loads its own pair with it too, so both servers refuse
    the same files in the same words (a FIFO, one of the two alone, a key
    that is not the certificate's).
    """
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise AgentSettingError("give both --ssl-certfile and --ssl-keyfile, or neither")
    for path, option in ((certfile, "--ssl-certfile"), (keyfile, "--ssl-keyfile")):
        try:  # loading a FIFO (mkfifo) waited forever
            regular = S_ISREG(os.stat(path).st_mode)
        except OSError as error:
            raise AgentSettingError(f"{option}: cannot use {path}: {error.strerror or error}") from None
        if not regular:
            raise AgentSettingError(f"{option}: {path} is not a regular file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        raise AgentSettingError(f"cannot use {certfile} with {keyfile}: {error}") from None
    return context


_PEM_CERTIFICATE = re.compile(r"-----BEGIN ((?:TRUSTED |X509 )?CERTIFICATE)-----(.*?)-----END \1-----", re.DOTALL)


def certificate_sha256(certfile: Path) -> str | None:
    """The SHA-256 of the first certificate in a PEM file (the one served), as a client pins it; None if unread.

    OpenSSL serves a ``TRUSTED CERTIFICATE`` or ``X509 CERTIFICATE`` block
    too; the first holds trust settings after the certificate, which the
    digest leaves out (the first DER element is the certificate).
    """
    found = _PEM_CERTIFICATE.search(certfile.read_text(encoding="ascii", errors="replace"))
    try:
        der = base64.b64decode("".join(found.group(2).split()), validate=True) if found else b""
        return hashlib.sha256(_first_der_element(der)).hexdigest()
    except ValueError:  # binascii.Error included
        return None


def _first_der_element(der: bytes) -> bytes:
    """The leading DER SEQUENCE of ``der`` (tag, length and content)."""
    if len(der) < 2 or der[0] != 0x30:
        raise ValueError("not a DER sequence")
    if der[1] < 0x80:
        end = 2 + der[1]
    else:
        count = der[1] & 0x7F
        end = 2 + count + int.from_bytes(der[2:2 + count], "big")
    if not 0 < end <= len(der):
        raise ValueError("a DER length past the end")
    return der[:end]


def main(argv: list[str] | None = None) -> None:
    """``DEVICES_AGENT_TOKEN=... python -m devices.agent --port 8765`` (``--token`` too, but it shows in ``ps``)."""
    defaults = AgentLimits()
    parser = argparse.ArgumentParser(prog="python -m devices.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=os.environ.get("DEVICES_AGENT_TOKEN", ""),
                        help="shared secret (default: $DEVICES_AGENT_TOKEN, which other users cannot see in ps)")
    parser.add_argument("--state-dir", type=Path, default=None, help="where uploads and results persist")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / MiB,
                        help="largest ONNX upload")
    parser.add_argument("--max-models", type=int, default=defaults.max_models,
                        help="models kept; least recently used are pruned")
    parser.add_argument("--max-model-mb", type=float, default=defaults.max_model_bytes / MiB,
                        help="total size of the models kept")
    parser.add_argument("--max-results", type=int, default=defaults.max_results,
                        help="measurement results kept; oldest are pruned")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="open connections served at once; past it the oldest that never showed the token "
                             "is closed first, and only when token holders hold them all are more answered 503")
    parser.add_argument("--read-timeout-s", type=float, default=defaults.read_timeout_s,
                        help="longest wait for a client's request headers, and for each read of its body")
    parser.add_argument("--max-session-mb", type=float, default=None,
                        help="what onnxruntime may allocate for a measurement (default: 3/4 of memory)")
    parser.add_argument("--ssl-certfile", type=Path, default=None,
                        help="serve HTTPS with this certificate (PEM); with --ssl-keyfile")
    parser.add_argument("--ssl-keyfile", type=Path, default=None, help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    try:
        serve(
            args.host, args.port, args.token, args.state_dir, args.max_upload_mb,
            max_models=args.max_models, max_model_mb=args.max_model_mb, max_results=args.max_results,
            max_connections=args.max_connections, read_timeout_s=args.read_timeout_s,
            max_session_mb=args.max_session_mb, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
        )
    except AgentSettingError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
