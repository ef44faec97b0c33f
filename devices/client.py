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
Its rows are stored and reused by every later job, so each is checked
before it is returned (:func:`_row_problem`): times that a session can
produce (positive, finite, at most :data:`MAX_ROW_MS`), a latency that is
a number wherever the row says it is stable, and the device, host and
runtime the client filed it under.  A fake agent's -5 ms and infinite
latencies were stored as stable rows.  A row's ``env`` holds only the
fields a session records, each of its kind and bounded (:data:`_ENV_FIELDS`):
a fake agent's terminal codes and ``</script>`` in ``env.note`` were served
to every client.  Whatever an agent says that ends up in an error is shown
printable (:class:`AgentError`), and its traffic ignores the environment's
proxies (:func:`_client_options`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import os
import re
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from devices.calibration import MAX_REFERENCE_MS, plausible_ms
from devices.measure import Measurement
from devices.network import token_problem
from devices.plain import NONFINITE_HEADER, is_printable, printable
from devices.profile import DeviceProfile
from devices.protocol import ProgressFn

_CONNECT_TIMEOUT_S = 10.0
#: Largest answer read from an agent: a session's rows are a few KiB per model.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Longest time a row may report: no inference a session keeps runs ten minutes.
MAX_ROW_MS = MAX_REFERENCE_MS
#: The longest error message made of what an agent said, and the most of its detail quoted in one.
MAX_ERROR_CHARS = 2000
_MAX_DETAIL_CHARS = 500


class AgentError(RuntimeError):
    """The agent refused the request, or stayed unreachable through every retry.

    The message often quotes the agent (its error's detail, a row's value),
    and reaches the user's terminal, a job's record and the server's log: an
    agent's detail of terminal codes retitled and cleared the terminal and
    overwrote the error with "all good".  So it is made printable and bounded
    here, once for every message (:func:`devices.plain.printable`).
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(message, MAX_ERROR_CHARS))


class AgentClient:
    """Profiler that runs measurements on a remote agent (``where.kind: agent``)."""

    def __init__(self, profile: DeviceProfile, *, token: str | None = None) -> None:
        if profile.where.kind != "agent" or profile.where.url is None:
            raise ValueError(f"profile '{profile.name}' does not describe an agent "
                             f"(where.kind is {profile.where.kind})")
        self.profile = profile
        self.base_url = profile.where.url.rstrip("/")
        self.token = token if token is not None else _token_from_env(profile)
        problem = token_problem(self.token)
        if problem is not None:
            source = "given" if token is not None else f"in {profile.where.token_env} (where.token_env)"
            raise AgentError(f"profile '{profile.name}': the agent token {source} {problem}")
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
        expected = _Expected(self.device_key(), self.profile.hash_with_reference(reference_sha))
        answer = self._measure(request, blobs)
        if progress is not None:
            progress({"round": None, "active": 0, "models": len(model_shas), "elapsed_s": None})
        return _rows_from(answer, model_shas, self.base_url, self.profile, expected)

    def _measure(self, request: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
        for _ in range(self.profile.where.retries + 1):
            try:
                return self._request_with_retries(
                    "POST", "/measure", json=request, timeout_s=self.profile.where.timeout_s
                )
            except _MissingModels as missing:
                # Each model at most once: an agent listing one model 200,000 times had it uploaded
                # 200,000 times (about 85 minutes of a 1 MB model, on this host's loopback).
                if not isinstance(missing.shas, list) or not all(isinstance(sha, str) and sha in blobs
                                                                 for sha in missing.shas):
                    raise AgentError(f"agent {self.base_url} asked for models it was never sent") from None
                if len(set(missing.shas)) != len(missing.shas):
                    raise AgentError(f"agent {self.base_url} asked for a model more than once") from None
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

        headers = {"Authorization": f"Bearer {self.token}", NONFINITE_HEADER: "null", **kwargs.pop("headers", {})}
        timeout = httpx.Timeout(timeout_s, connect=_CONNECT_TIMEOUT_S)
        last_problem = ""
        attempts = self.profile.where.retries + 1
        for attempt in range(attempts):
            try:
                status, body = _bounded_exchange(method, self.base_url + path, headers=headers,
                                                 timeout=timeout, pin=self.profile.where.cert_sha256, **kwargs)
            except httpx.TransportError as error:  # its text may quote a header: the token never goes further
                last_problem = f"{type(error).__name__}: {error}".replace(f"Bearer {self.token}", "Bearer <token>")
                hint = _final_transport_problem(str(error))
                if hint is not None:  # no retry can pass a certificate check or change the agent's scheme
                    raise AgentError(f"{method} {self.base_url}{path} failed: {last_problem}{hint}") from None
            else:
                if status < 500:
                    return _answer(status, body, method, f"{path} (agent of profile '{self.profile.name}')")
                last_problem = f"HTTP {status}: {body[:_MAX_DETAIL_CHARS].decode(errors='replace')}"
            if attempt + 1 < attempts:
                time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
        raise AgentError(f"{method} {self.base_url}{path} failed after {attempts} attempts; last: {last_problem}")


_NUMBER_FIELDS = ("latency_ms", "ratio", "ratio_ci", "median_ms", "p10_ms", "p90_ms", "p99_ms",
                  "min_ms", "mad_ms")
_RAW_MS_FIELDS = ("median_ms", "p10_ms", "p90_ms", "p99_ms", "min_ms", "mad_ms")


class _Expected(NamedTuple):
    """What every row of an answer must be filed under: the device identity, and the profile's hash."""

    device_key: str
    profile_hash: str


def _rows_from(answer: dict[str, Any], model_shas: list[str], url: str, profile: DeviceProfile,
               expected: _Expected) -> list[Measurement]:
    """The answer's rows, one per model in order, or AgentError: a row is stored and reused, so check it."""
    rows = answer.get("measurements")
    if not isinstance(rows, list) or len(rows) != len(model_shas):
        raise AgentError(f"agent {url} answered without one measurement per model ({len(model_shas)})")
    try:
        measurements = [Measurement.from_dict(_from_wire(row)) for row in rows]
    except TypeError as error:  # missing or unknown fields, or a row that is not an object
        raise AgentError(f"agent {url} answered a malformed measurement: {error}") from None
    for sha, m in zip(model_shas, measurements):
        if not _well_formed(m, sha):
            raise AgentError(f"agent {url} answered a malformed measurement for model {sha[:12]}")
        problem = _row_problem(m, profile, expected)
        if problem is not None:
            raise AgentError(f"agent {url} answered an impossible measurement for model {sha[:12]}: {problem}")
    return measurements


#: What null means in a row on the wire, which is standard JSON (:func:`devices.plain.dumps`): a null
#: ``latency_ms`` or ``ratio`` is none (NaN here, in a row that is not stable), a null ``ratio_ci`` no CI (inf).
_NULL_MEANS = {"latency_ms": math.nan, "ratio": math.nan, "ratio_ci": math.inf}


def _from_wire(row: Any) -> Any:
    """A row as the agent sent it, with its nulls read as :data:`_NULL_MEANS` says, cut to the fields this client knows.

    A newer agent may record more than this client knows, in the row
    (another percentile) or its env (:data:`_ENV_FIELDS`); those fields are
    dropped rather than the row refused, so an agent can be upgraded before
    the services that use it.  A field this client needs and the row lacks
    still refuses it.
    """
    if not isinstance(row, dict):
        return row
    known = {name: value for name, value in row.items() if name in _MEASUREMENT_FIELDS}
    env = known.get("env")
    if isinstance(env, dict):
        known["env"] = {name: value for name, value in env.items() if name in _ENV_FIELDS}
    return {**known, **{name: meaning for name, meaning in _NULL_MEANS.items() if known.get(name, 0) is None}}


_MEASUREMENT_FIELDS = frozenset(field.name for field in dataclasses.fields(Measurement))


def _well_formed(m: Measurement, sha: str) -> bool:
    """Fields of the types a stored row has (NaN is a number: a session may report one)."""
    numbers = [getattr(m, name) for name in _NUMBER_FIELDS]
    return (m.model_sha256 == sha and isinstance(m.device_hash, str) and isinstance(m.stable, bool)
            and isinstance(m.env, dict) and _is_int(m.n_runs) and all(_is_number(n) for n in numbers))


def _row_problem(m: Measurement, profile: DeviceProfile, expected: _Expected) -> str | None:
    """What makes a well-formed row one no session of this device could have produced, or None.

    Raw times are finite, at least 0 and at most :data:`MAX_ROW_MS` (the
    median above 0: it stands in where no ratio could be made).  The ratio
    and latency are positive and finite, or both NaN in a row that is not
    stable; a stable row's CI meets the profile's target.  The row names
    the profile the client sent and a host and runtime whose identity is
    the one the client files it under: an agent replaced or upgraded since
    it described itself measures as another device.
    """
    problem = _env_problem(m.env)
    if problem is not None:
        return problem
    for name in _RAW_MS_FIELDS:
        value = float(getattr(m, name))
        if not 0.0 <= value <= MAX_ROW_MS or (name == "median_ms" and value == 0.0):
            return f"{name} is {value!r}"
    if not 1 <= m.n_runs <= _MAX_RUNS:
        return f"n_runs is {m.n_runs}"
    if math.isnan(m.latency_ms) and math.isnan(m.ratio):
        if m.stable:
            return "a row without a latency says it is stable"
    elif not (0.0 < m.ratio < math.inf and plausible_ms(m.latency_ms)):
        return f"latency_ms is {m.latency_ms!r} at ratio {m.ratio!r}"
    if not m.ratio_ci >= 0 or (m.stable and not m.ratio_ci <= profile.protocol.ci_target):  # NaN too
        return f"ratio_ci is {m.ratio_ci!r} in a row that says stable={m.stable}"
    problem = _session_problem(m)
    if problem is not None:
        return problem
    if m.device_hash != expected.profile_hash:
        return f"it names device {m.device_hash!r}, not the profile sent ({expected.profile_hash})"
    host, version = m.env.get("host_fingerprint"), m.env.get("runtime_version")
    if not isinstance(host, str) or not isinstance(version, (str, type(None))) \
            or profile.identity(host, version) != expected.device_key:
        return (f"it was measured on host {host!r} with {profile.runtime} {version!r}, not on the host and runtime "
                "the agent described (it was replaced or upgraded since)")
    return None


#: The most characters of a text in a row's env, and the most items of a list or object there.
_MAX_ENV_TEXT = 256
_MAX_ENV_ITEMS = 64


def _text(value: Any) -> bool:
    """A short printable string, or None (unknown)."""
    return value is None or (isinstance(value, str) and len(value) <= _MAX_ENV_TEXT and is_printable(value))


def _number(value: Any) -> bool:
    """A finite number, or None (unknown, or not finite: the wire has no NaN or infinity)."""
    return value is None or (_is_number(value) and math.isfinite(value))


def _is_int(value: Any) -> bool:
    """An int a float holds (bounds are judged later, naming the field)."""
    return isinstance(value, int) and _is_number(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= _MAX_ENV_ITEMS and all(v is not None and _text(v) for v in value)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= _MAX_ENV_ITEMS and all(_number(v) for v in value)


def _shapes(value: Any) -> bool:
    """The model's inputs: name -> list of dimensions."""
    return isinstance(value, dict) and len(value) <= _MAX_ENV_ITEMS and all(
        _text(name) and isinstance(dims, list) and len(dims) <= 16 and all(_count(d) for d in dims)
        for name, dims in value.items())


def _settings(value: Any) -> bool:
    """The profile's protocol: name -> a number, flag, text or null."""
    return isinstance(value, dict) and len(value) <= _MAX_ENV_ITEMS and all(
        _text(name) and (_flag(v) or _number(v) or _text(v)) for name, v in value.items())


#: The fields of a row's env, as a session records them (``devices.local._environment`` and
#: ``_to_measurement``), each with the check of its value.  An agent's row is stored and served to
#: every client, so nothing else is taken from it (other fields are dropped).
_ENV_FIELDS: dict[str, Any] = {
    "host_fingerprint": _text, "runtime": _text, "runtime_version": _text, "onnxruntime": _text,
    "provider": _text, "providers": _texts, "clock": _text, "intra_op_threads": _count,
    "inter_op_threads": _count, "batch": _count, "cpu": _text, "hostname": _text,
    "load_average_before": _numbers, "load_average_after": _numbers, "foreign_cpu_cores": _number,
    "session_start": _number, "session_end": _number, "lock_wait_s": _number, "lock_lost": _flag,
    "profile_name": _text, "profile_hash": _text, "reference_sha256": _text, "reference_ms": _number,
    "reference_source": _text, "session_reference_ms": _number, "reference_drift": _number,
    "host_fastest_reference_ms": _number, "reference_slowdown": _number, "max_reference_slowdown": _number,
    "reference_median_ms": _number, "reference_runs": _count, "reference_jumps_dropped": _count,
    "rounds": _count, "session_models": _count, "session_seconds": _number, "protocol": _settings,
    "loads_per_model": _count, "ratio_low": _number, "ratio_samples_kept": _count, "input_shape": _shapes,
    "unstable_reasons": _texts, "runs_per_sample": _count,
}


def _env_problem(env: dict[str, Any]) -> str | None:
    """The first env field whose value is not of its kind or out of bounds; None if there is none.

    Unknown fields were dropped as the row was read (:func:`_from_wire`).
    """
    for name, value in env.items():
        if not _ENV_FIELDS[name](value):
            return f"env.{name} is {printable(repr(value), 80)}"
    return None


#: A session's wall-clock times lie after 2020 and before this far past the client's clock (the
#: agent's clock may run ahead of it): a row claiming a session in 2001 or 33 million years on
#: would stay the device's latest for good, and readers take the latest session's ruler.
_EARLIEST_SESSION = 1_577_836_800.0  # 2020-01-01
_CLOCK_SKEW_S = 86_400.0


def _session_problem(m: Measurement) -> str | None:
    """What is impossible in the row's session: its ruler, its times, or a latency that is not ratio x ruler.

    Readers scale every row of a device to the ruler of its latest session
    (:func:`hwsearch.anchor.on_latest_ruler`), so one row with a ruler of
    1e300 or a session ending in the far future turned every honest row of
    the device into 1e300 ms.
    """
    env = m.env
    ruler = env.get("reference_ms")
    if not plausible_ms(ruler):
        return f"env.reference_ms is {ruler!r}"
    latest = time.time() + _CLOCK_SKEW_S
    for name in ("session_start", "session_end"):
        value = env.get(name)
        if not _is_number(value) or not _EARLIEST_SESSION <= value <= latest:
            return f"env.{name} is {value!r}"
    if env["session_end"] < env["session_start"]:
        return "its session ended before it started"
    if not math.isnan(m.latency_ms) and not math.isclose(m.latency_ms, m.ratio * ruler, rel_tol=1e-9):
        return f"latency_ms {m.latency_ms!r} is not its ratio {m.ratio!r} times its ruler {ruler!r}"
    return None


#: The most timed runs a row can hold: a session's rounds are bounded far below it (devices.profile.MAX_ROUNDS).
_MAX_RUNS = 10**9
#: The largest integer a row's number may be: a float holds every integer up to it exactly.
_MAX_WIRE_INT = 2**53


def _is_number(value: Any) -> bool:
    """A float (NaN and infinity included: a session may report them), or an int a float holds.

    A 400-digit integer raised OverflowError in every ``float()`` and
    ``math.isfinite`` a row's checks and readers make: a traceback, or a
    stored row no reader could use.
    """
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or isinstance(value, int) and abs(value) <= _MAX_WIRE_INT


class _MissingModels(Exception):
    def __init__(self, shas: list[str]) -> None:
        super().__init__(f"agent is missing {len(shas)} models")
        self.shas = shas


def _bounded_exchange(method: str, url: str, *, timeout: Any, pin: str | None = None,
                      **kwargs: Any) -> tuple[int, bytes]:
    """Send one request; have its whole answer within ``timeout.read`` seconds from the start (connecting
    included) and MAX_ANSWER_BYTES.

    httpx's timeouts bound each read only, so an agent sending a byte every
    few seconds would hold the caller for as long as it liked: in the body,
    in the headers (a header trickle ran on past 30 s against a 2 s
    timeout), or with an endless stream of ``100 Continue`` answers.  So a
    :class:`_Deadline` shuts the connection's socket when the time is up,
    wherever the exchange waits.  A too-large answer is the agent's fault
    and is not retried; a late one is a timeout (retried).  With a ``pin``
    (:attr:`devices.profile.Where.cert_sha256`) the agent's certificate must be
    that one (:func:`_check_pin`), checked before a byte of the request is sent.
    """
    import httpx

    deadline = _Deadline(timeout.read)
    pinned = False

    def trace(event: str, info: dict[str, Any]) -> None:
        nonlocal pinned
        deadline.trace(event, info)
        if pin is None:
            return
        if event == "connection.start_tls.complete" and info.get("return_value") is not None:
            stream = info["return_value"]
            try:
                _check_pin(stream.get_extra_info("ssl_object"), pin, url)
            except AgentError:
                stream.close()  # httpcore drops a connection that failed as it was made, but does not close it
                raise
            pinned = True
        elif event.endswith("send_request_headers.started") and not pinned:  # fail closed if the hook moved
            raise AgentError(f"{url}: the agent's certificate was not checked against its pin; nothing was sent")

    try:
        with deadline, httpx.Client(timeout=timeout, trust_env=False, verify=_verification(pin)) as client, \
                client.stream(method, url, extensions={"trace": trace}, **kwargs) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
                raise AgentError(f"{method} {url} answered {declared} bytes; at most {MAX_ANSWER_BYTES} are read")
            body = bytearray()
            for chunk in response.iter_bytes():  # decoded: a compressed answer counts at its real size
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise AgentError(f"{method} {url} answered more than {MAX_ANSWER_BYTES} bytes")
                deadline.check()
            deadline.check()
            return response.status_code, bytes(body)
    except httpx.TransportError:
        deadline.check()  # the shut socket's error is the deadline's
        raise


def _check_pin(connection: ssl.SSLObject | None, pin: str, url: str) -> None:
    """Raise :class:`AgentError` unless the TLS peer's certificate has SHA-256 ``pin``.

    Called as the handshake completes, before the request (and its token)
    is written.  Not retried: another try would meet the same certificate.
    """
    der = connection.getpeercert(True) if connection is not None else None  # DER; positional for _ssl's object
    seen = hashlib.sha256(der).hexdigest() if der else "none"
    if not hmac.compare_digest(seen, pin):
        raise AgentError(f"{url}: the agent's certificate has SHA-256 {seen}, not the pinned {pin}; "
                         "nothing was sent to it")


def _verification(pin: str | None = None) -> ssl.SSLContext:
    """What an agent's certificate is checked against: the CAs ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` name,
    or else certifi's bundle, as httpx checks by default; with a ``pin``, nothing but the pin.

    A pinned certificate is the whole check (:func:`_check_pin`), as SSH's
    known hosts are: the handshake takes any certificate and the pin
    rejects all but one, whatever authority signed it and whatever name it has.

    Exchanges ignore the environment (``trust_env=False``): a proxy set there
    for pip received the agent's token and the models.  That also stops
    httpx reading ``SSL_CERT_FILE``, which is how an operator trusts a
    self-signed agent (docs/service.md), so the two are read here.  Without
    them, certifi's bundle, not the system's: some Pythons (python.org's on
    macOS, standalone builds) find no system CAs at all.
    """
    if pin is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile, capath = os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


_CONNECTED = ("connection.connect_tcp.complete", "connection.start_tls.complete")


class _Deadline:
    """Shuts an exchange's socket once ``seconds`` have passed since it began; :meth:`check` raises then.

    httpx's ``trace`` extension hands over the connection as it is made
    (:meth:`trace`); a timer thread shuts its socket, which wakes a read
    blocked anywhere in the exchange.  Shutting, not closing: the client
    still owns the file descriptor and closes it itself.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: keep the socket of the connection just made, or of its TLS layer once it
        is wrapped (wrapping detaches the plain one, whose shutdown then woke nothing); shut at once if late."""
        if event not in _CONNECTED or info.get("return_value") is None:
            return
        with self._lock:
            self._socket = info["return_value"].get_extra_info("socket")
            if self.expired:
                _shut(self._socket)

    def check(self) -> None:
        """Raise httpx's ReadTimeout if the time is up."""
        import httpx

        if self.expired:
            raise httpx.ReadTimeout(f"the answer took over {self.seconds:g} s to arrive")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            _shut(self._socket)


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _final_transport_problem(text: str) -> str | None:
    """A hint for a transport failure no retry can mend (None for those worth retrying).

    A certificate that failed verification, or an https:// URL for an agent
    serving plain http, was retried four times (4 s) to the same end.
    """
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return " (pin the agent's certificate with where.cert_sha256, or trust its authority with SSL_CERT_FILE)"
    if "WRONG_VERSION_NUMBER" in text:
        return " (an https:// URL for an agent that serves plain http?)"
    return None


def _answer(status: int, body: bytes, method: str, path: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth ("[" * 200000)
        payload = None if status < 400 else {"detail": body[:_MAX_DETAIL_CHARS].decode(errors="replace")}
    if status < 400:
        if not isinstance(payload, dict):
            raise AgentError(f"{method} {path} answered something other than a JSON object")
        return payload
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if status == 404 and isinstance(detail, dict) and "missing_models" in detail:
        raise _MissingModels(detail["missing_models"])
    hint = _older_agent_hint(str(detail)) if status == 400 else ""
    raise AgentError(f"{method} {path} answered HTTP {status}: {printable(str(detail), _MAX_DETAIL_CHARS)}{hint}")


def _older_agent_hint(detail: str) -> str:
    """What to do when an agent older than the client refuses a setting it does not know yet ("" otherwise).

    ``timing: warm`` became the default after agents that know only ``hot``
    and ``interleaved`` were deployed: each refused every profile that named
    no timing, and said nothing of why.  ``loop`` came later still: an agent
    that knows ``warm`` refuses it, and naming ``hot`` would not help (Y19).
    """
    refused = re.search(r"field 'timing' must be one of .*, got '(\w+)'", detail)
    if refused is None:
        return ""
    if refused.group(1) == "warm":
        return (" (the agent is older than this client, whose default timing is 'warm': upgrade the agent, or "
                "name 'timing: hot' in the profile, which keeps the device as it was measured before)")
    return f" (the agent is older than this client and does not know timing '{refused.group(1)}': upgrade it)"


def _token_from_env(profile: DeviceProfile) -> str:
    name = profile.where.token_env
    if name is None:
        raise AgentError(f"profile '{profile.name}': no token given and no where.token_env to read one from")
    token = os.environ.get(name)
    if not token:
        raise AgentError(f"profile '{profile.name}': environment variable {name} (where.token_env) holds no token")
    return token
