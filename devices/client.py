"""Client for the edge agent, with time limits and safe retries.

A measurement can take minutes and the network to an edge box is not
reliable.  Each :meth:`AgentClient.measure_many` call picks one request id and
keeps it across retries; the agent measures a request id at most once, so a
connection dropped mid-measurement is simply retried and still yields exactly
one set of results.  Uploads are content-addressed (``PUT /models/<sha256>``)
and therefore idempotent too; when the agent lost them (a restart with a
fresh state directory) it answers 404 with the missing hashes and the client
uploads those again.

The agent is a box at the edge, less trusted than the machine the client
runs on, so its answers are bounded like a client's requests: each must
arrive whole, after decompression, within :data:`MAX_ANSWER_BYTES` and
within the request's timeout (a stalled read is cut off by the same timeout).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from devices.measure import Measurement
from devices.profile import DeviceProfile
from devices.protocol import ProgressFn

_CONNECT_TIMEOUT_S = 10.0
#: Largest answer read from an agent: a session's rows are a few KiB per model.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class AgentError(RuntimeError):
    """The agent refused the request, or stayed unreachable through every retry."""


class AgentClient:
    """Profiler that runs measurements on a remote agent (``where.kind: agent``)."""

    def __init__(self, profile: DeviceProfile, *, token: str | None = None) -> None:
        if profile.where.kind != "agent" or profile.where.url is None:
            raise ValueError(f"profile '{profile.name}' does not describe an agent "
                             f"(where.kind is {profile.where.kind})")
        self.profile = profile
        self.base_url = profile.where.url.rstrip("/")
        self.token = token if token is not None else _token_from_env(profile)
        self._host: tuple[str, str] | None = None

    def describe(self) -> dict[str, Any]:
        """The agent's health answer: device facts and counters."""
        return self._request_with_retries("GET", "/health", timeout_s=_CONNECT_TIMEOUT_S * 3)

    def device_key(self) -> str:
        """What this device's measurements are filed under: the profile on the agent's host and runtime.

        Asks the agent once for its host fingerprint (unless the profile pins
        one) and the version of the profile's runtime there, so a profile
        pointed at other hardware, or at an upgraded runtime, is another device.
        """
        if self._host is None:
            self._host = self._described_host()
        return self.profile.identity(*self._host)

    def _described_host(self) -> tuple[str, str]:
        device = self.describe().get("device")
        device = device if isinstance(device, dict) else {}
        host = self.profile.host_fingerprint or device.get("host_fingerprint")
        if not isinstance(host, str) or not host:
            raise AgentError(f"agent {self.base_url} did not say which host it runs on")
        version = device.get(self.profile.runtime)
        if self.profile.measured_host(host, None) == host:  # the agent's fingerprint names its onnxruntime
            return host, version if isinstance(version, str) else ""
        if not isinstance(version, str) or not version:
            raise AgentError(f"agent {self.base_url} did not say which {self.profile.runtime} it runs "
                             "(is it installed there?)")
        return host, version

    def measure_many(self, onnx_paths: list[Path], *, progress: ProgressFn | None = None) -> list[Measurement]:
        """Upload the models and the reference, measure them in one interleaved session.

        ``progress`` is called once when the agent answers; the agent does
        not stream intermediate rounds.
        """
        contents = [Path(p).read_bytes() for p in onnx_paths]
        model_shas = [hashlib.sha256(c).hexdigest() for c in contents]
        reference = self.profile.reference_bytes()
        reference_sha = hashlib.sha256(reference).hexdigest()
        blobs = {**dict(zip(model_shas, contents)), reference_sha: reference}
        for sha in dict.fromkeys([reference_sha, *model_shas]):
            self._upload(sha, blobs[sha])
        request = {
            "request_id": uuid.uuid4().hex,
            "profile": self.profile.to_dict(),
            "reference_sha256": reference_sha,
            "model_sha256s": model_shas,
        }
        answer = self._measure(request, blobs)
        if progress is not None:
            progress({"round": None, "active": 0, "models": len(model_shas), "elapsed_s": None})
        return _rows_from(answer, model_shas, self.base_url)

    def _measure(self, request: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
        for _ in range(self.profile.where.retries + 1):
            try:
                return self._request_with_retries(
                    "POST", "/measure", json=request, timeout_s=self.profile.where.timeout_s
                )
            except _MissingModels as missing:
                if not isinstance(missing.shas, list) or not all(isinstance(sha, str) and sha in blobs
                                                                 for sha in missing.shas):
                    raise AgentError(f"agent {self.base_url} asked for models it was never sent") from None
                for sha in missing.shas:
                    self._upload(sha, blobs[sha])
        raise AgentError(f"agent {self.base_url} kept losing uploaded models")

    def _upload(self, sha256: str, body: bytes) -> None:
        self._request_with_retries(
            "PUT", f"/models/{sha256}", content=body, timeout_s=_CONNECT_TIMEOUT_S * 6,
            headers={"Content-Type": "application/octet-stream"},
        )

    def _request_with_retries(self, method: str, path: str, *, timeout_s: float, **kwargs: Any) -> dict[str, Any]:
        """Send, retrying transport failures and 5xx answers with back-off.

        4xx answers are the caller's fault and are raised at once (except the
        404 that lists missing models, which the caller repairs).
        """
        import httpx

        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        timeout = httpx.Timeout(timeout_s, connect=_CONNECT_TIMEOUT_S)
        last_problem = ""
        attempts = self.profile.where.retries + 1
        for attempt in range(attempts):
            try:
                status, body = _bounded_exchange(method, self.base_url + path, headers=headers,
                                                 timeout=timeout, **kwargs)
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
            else:
                if status < 500:
                    return _answer(status, body, method, path)
                last_problem = f"HTTP {status}: {body[:300].decode(errors='replace')}"
            if attempt + 1 < attempts:
                time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
        raise AgentError(f"{method} {self.base_url}{path} failed after {attempts} attempts; last: {last_problem}")


_NUMBER_FIELDS = ("latency_ms", "ratio", "ratio_ci", "median_ms", "p10_ms", "p90_ms", "p99_ms",
                  "min_ms", "mad_ms")


def _rows_from(answer: dict[str, Any], model_shas: list[str], url: str) -> list[Measurement]:
    """The answer's rows, one per model in order, or AgentError: a row is stored and reused, so check it."""
    rows = answer.get("measurements")
    if not isinstance(rows, list) or len(rows) != len(model_shas):
        raise AgentError(f"agent {url} answered without one measurement per model ({len(model_shas)})")
    try:
        measurements = [Measurement.from_dict(row) for row in rows]
    except TypeError as error:  # missing or unknown fields, or a row that is not an object
        raise AgentError(f"agent {url} answered a malformed measurement: {error}") from None
    for sha, m in zip(model_shas, measurements):
        if not _well_formed(m, sha):
            raise AgentError(f"agent {url} answered a malformed measurement for model {sha[:12]}")
    return measurements


def _well_formed(m: Measurement, sha: str) -> bool:
    """Fields of the types a stored row has (NaN is a number: a session may report one)."""
    numbers = [getattr(m, name) for name in _NUMBER_FIELDS]
    return (m.model_sha256 == sha and isinstance(m.device_hash, str) and isinstance(m.stable, bool)
            and isinstance(m.env, dict) and isinstance(m.n_runs, int) and not isinstance(m.n_runs, bool)
            and all(_is_number(n) for n in numbers))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _MissingModels(Exception):
    def __init__(self, shas: list[str]) -> None:
        super().__init__(f"agent is missing {len(shas)} models")
        self.shas = shas


def _bounded_exchange(method: str, url: str, *, timeout: Any, **kwargs: Any) -> tuple[int, bytes]:
    """Send one request; read its answer within ``timeout.read`` seconds and MAX_ANSWER_BYTES in all.

    httpx's read timeout bounds each read only, so an agent sending a byte
    every few seconds would hold the caller forever: the total is checked
    as the answer streams in.  A too-large answer is the agent's fault and
    is not retried.
    """
    import httpx

    deadline = time.monotonic() + timeout.read
    with httpx.stream(method, url, timeout=timeout, **kwargs) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise AgentError(f"{method} {url} answered {declared} bytes; at most {MAX_ANSWER_BYTES} are read")
        body = bytearray()
        for chunk in response.iter_bytes():  # decoded: a compressed answer counts at its real size
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise AgentError(f"{method} {url} answered more than {MAX_ANSWER_BYTES} bytes")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"the answer took over {timeout.read:g} s to arrive")
        return response.status_code, bytes(body)


def _answer(status: int, body: bytes, method: str, path: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {"detail": body[:300].decode(errors="replace")}
    if status < 400:
        if not isinstance(payload, dict):
            raise AgentError(f"{method} {path} answered something other than a JSON object")
        return payload
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if status == 404 and isinstance(detail, dict) and "missing_models" in detail:
        raise _MissingModels(detail["missing_models"])
    raise AgentError(f"{method} {path} answered HTTP {status}: {detail}")


def _token_from_env(profile: DeviceProfile) -> str:
    name = profile.where.token_env
    if name is None:
        raise AgentError(f"profile '{profile.name}': no token given and no where.token_env to read one from")
    token = os.environ.get(name)
    if not token:
        raise AgentError(f"profile '{profile.name}': environment variable {name} (where.token_env) holds no token")
    return token
