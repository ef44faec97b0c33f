"""Declarative device profiles: which device, and exactly how to measure on it.

A profile is the identity of a latency number.  Two measurements are only
comparable when they were taken with the same runtime, threads, graph
optimisation, batch, input dtype and reference model, so :meth:`DeviceProfile.hash`
covers exactly those fields and predictors/stores key their data by it.
Settings that change how *long* or how *precisely* we measure (warm-up,
round caps, confidence target) or *how we reach* the device (agent URL, token)
do not change what is measured and stay out of the hash.

Profiles are read from YAML or JSON and validated strictly: an unknown field,
an impossible value or an unknown execution provider raises
:class:`ProfileError` naming the offending field, because a typo that silently
falls back to a default would produce plausible but wrong latencies.  A
profile file is small and plain: at most :data:`MAX_PROFILE_BYTES`, no YAML
aliases (a 298-byte alias bomb expanded to a 4.8 GB error message) and no
repeated keys (the last would silently win).  A ``reference_model`` must be a
regular ONNX file of at most :data:`MAX_REFERENCE_MODEL_BYTES` that
onnxruntime loads, checked when the profile is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import reprlib
import stat
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from devices.plain import is_printable

RUNTIMES = ("onnxruntime", "openvino")
KNOWN_ORT_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider", "DnnlExecutionProvider", "CoreMLExecutionProvider",
    "DmlExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
    "QNNExecutionProvider", "NnapiExecutionProvider", "XnnpackExecutionProvider",
    "ACLExecutionProvider", "ArmNNExecutionProvider", "WebGpuExecutionProvider",
    "VitisAIExecutionProvider", "CANNExecutionProvider", "AzureExecutionProvider",
)
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
CLOCKS = ("wall", "thread_cpu")
TIMINGS = ("warm", "loop", "hot", "interleaved")
INPUT_DTYPES = ("float32", "float16")
# Model precisions a device can run; hwsearch.quantize.PRECISIONS names the same ones.
PRECISIONS = ("fp32", "int8")


class ProfileError(ValueError):
    """A device profile is malformed; the message names the field."""


#: The largest profile file read; real ones are well under 1 KB.
MAX_PROFILE_BYTES = 64 * 1024
#: The largest ``reference_model`` read; the built-in reference is about 0.1 MB.
MAX_REFERENCE_MODEL_BYTES = 64 * 2**20

# Values quoted in error messages are shortened: a field's value may be a huge or deep structure.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


@dataclass(frozen=True)
class Warmup:
    """Warm-up before timing: both limits apply, whichever is reached last.

    Within the session's bound (:meth:`DeviceProfile.session_limit_s`): a
    warm-up whose ``runs`` take longer than ``seconds`` plus
    ``protocol.max_seconds`` fails the session instead of holding the host.
    """

    runs: int = 10
    seconds: float = 0.5


#: ``protocol.max_reference_slowdown`` of a profile that leaves it out, per clock.  Forty sessions of
#: the same 24 demo subnets on each demo device, shifted meaning a median offset over 5%:
#: on the 1-thread ``thread_cpu`` device the 7 shifted sessions ran their reference 10-17% above the
#: fastest session's, and 0.08 flagged all 7 and 2 of the 33 calm ones, where 0.04 flagged 14 calm
#: ones too; on the 2-thread wall-clock device shifted sessions began below 5% (0.04 flagged 8 of
#: 13 as they ran, 0.08 only 2).  docs/measurement.md has the tables.
DEFAULT_REFERENCE_SLOWDOWN = {"wall": 0.04, "thread_cpu": 0.08}


@dataclass(frozen=True)
class Protocol:
    """Stopping rules of the interleaved, reference-normalised protocol.

    Rounds continue until every model's ratio CI half-width is at most
    ``ci_target`` (relative) after at least ``min_rounds``, or a cap is hit:
    ``max_rounds``, ``max_seconds`` after the rounds began, or the whole
    session's bound, ``warmup.seconds + max_seconds`` from its first warm-up
    run (:meth:`DeviceProfile.session_limit_s`), which also bounds the
    warm-up and ``min_rounds``: a session that reaches it before those are
    done fails with ``SessionOverrun``.
    Samples whose pair reference is above the model's
    ``reference_ceiling_percentile`` were taken while the machine was in its
    slow state and can be dropped; the default 100 keeps them, because ratios
    proved state-invariant here and dropping half the samples cost precision.
    ``low_percentile`` is the session's robust reference latency (and the
    ``ratio_low`` reported beside the median).  A wall-clock session during
    which other processes used more than ``max_foreign_cores`` cores' worth
    of CPU is not stable, whatever its CI (:mod:`devices.cpuload`).  A
    session whose robust reference time ran more than ``max_reference_slowdown``
    above the fastest of the device's recent sessions on this host is not
    stable either: the host was in a slow state, and on this machine such
    sessions shifted all their ratios together, by up to 58% (see
    :mod:`devices.calibration`).  Left out (``None``), the limit is the
    clock's (:data:`DEFAULT_REFERENCE_SLOWDOWN`,
    :meth:`DeviceProfile.reference_slowdown_limit`).  ``peer_normalisation``
    divides each sample by its round's common move over the session's other
    models (:func:`devices.protocol._peer_normalised`); turn it off for a
    session whose models should not be assumed to move together.
    ``load_twice`` loads every model a second time, in reverse order, and
    alternates the two copies by round, so that where a model sits in the
    session's load order cancels out: on this host the model loaded last
    read 1.8-5.1% faster than the one loaded first (``bench/load_order.py``).
    It doubles the models' memory and load time.
    """

    min_rounds: int = 15
    max_rounds: int = 300
    max_seconds: float = 600.0
    ci_target: float = 0.01
    reference_jump_mads: float = 5.0
    reference_ceiling_percentile: float = 100.0
    low_percentile: float = 25.0
    max_foreign_cores: float = 0.25
    max_reference_slowdown: float | None = None
    peer_normalisation: bool = True
    load_twice: bool = False


@dataclass(frozen=True)
class Where:
    """Where the device is: this process, or an agent reached over HTTP.

    ``token_env`` names the environment variable holding the agent's token so
    a profile file never contains a secret.  It may be left out when whoever
    opens the profiler hands the token over directly (the service does: its
    operator declares agents and their tokens, clients only name them).

    ``cert_sha256`` pins an ``https://`` agent to the one certificate whose
    SHA-256 it is (the agent prints it when it starts): that certificate is
    then the whole check, with no authority and no host name.  Without a pin
    the agent's certificate must chain to a trusted authority; where that
    authority is an agent's own self-signed certificate (``SSL_CERT_FILE``),
    whoever holds that agent's key could issue a certificate for any other.
    """

    kind: Literal["local", "agent"] = "local"
    url: str | None = None
    token_env: str | None = None
    cert_sha256: str | None = None
    timeout_s: float = 900.0
    retries: int = 3


@dataclass(frozen=True)
class DeviceProfile:
    """One device and the exact measurement settings used on it.

    ``intra_op_threads`` and ``inter_op_threads`` are at most :data:`MAX_THREADS`
    here; the machine that measures refuses more than it runs this process on
    (:func:`devices.ort.require_threads_here`), which a profile cannot know.

    ``clock: thread_cpu`` times each run with the calling thread's CPU clock
    instead of the wall clock.  With one onnxruntime thread the whole
    inference runs on the calling thread, so CPU time is the latency the run
    would have had without being preempted; on a machine shared with other
    work (load far above the core count) it is the only stable signal,
    while wall time mostly measures the scheduler.

    ``timing: warm`` (the default) runs each model, and the reference, untimed
    for 5 ms (at least once) right before every timed run of it, so the
    timed run finds its own weights and buffers in the caches, as a deployed
    model run in a loop does.  ``loop`` warms so too, and then times a
    sample of back-to-back runs lasting about 1 ms (a count fixed per model
    after the warm-up, at most 64) as their mean, where ``warm`` times one
    run: a model much shorter than the reference is then not timed by one
    inference's jitter (:data:`devices.protocol.SAMPLE_MS`).  Models of 1 ms
    and more are timed as under ``warm``.  ``hot`` (the default before) ran each model
    once and the reference not at all: a 0.6 ms model then read 1.12-1.36x
    what a loop reads, the more so after a large model, and the reference
    timed after a large model 1.31x, so large models' ratios came out low
    and their sessions failed the reference-slowdown check.  With
    ``interleaved`` (measurements before either) a timed run follows other
    models' runs, and a small model measured among 15 others took 1.6-1.9x
    what it took measured alone: its latency depended on what else the
    session held and on when those models left the rotation.
    """

    name: str
    runtime: str = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    thread_affinity: str | None = None
    allow_spinning: bool = True
    graph_optimization: str = "all"
    batch: int = 1
    input_dtype: str = "float32"
    clock: str = "wall"
    timing: str = "warm"
    reference_model: str | None = None
    reference_ms: float | None = None
    host_fingerprint: str | None = None
    precisions: tuple[str, ...] = ("fp32",)
    warmup: Warmup = field(default_factory=Warmup)
    protocol: Protocol = field(default_factory=Protocol)
    where: Where = field(default_factory=Where)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        """Read a YAML (``.yaml``/``.yml``) or JSON profile file."""
        path = Path(path)
        data = _read_mapping_file(path)
        if not isinstance(data, dict):
            raise ProfileError(f"{path}: a profile must be a mapping of fields, got {type(data).__name__}")
        try:
            profile = cls.from_dict(data)
            if profile.reference_model is not None:
                _check_reference_model(profile.reference_model)
        except ProfileError as error:
            raise ProfileError(f"{path}: {error}") from None
        return profile

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProfile:
        """Build a profile from plain data, rejecting unknown fields."""
        return _build(cls, data, prefix="")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; ``from_dict(to_dict())`` round-trips."""
        data = dataclasses.asdict(self)
        data["providers"] = list(self.providers)
        data["precisions"] = list(self.precisions)
        return data

    def session_limit_s(self) -> float:
        """The longest a measurement session may run, warm-up and rounds: ``warmup.seconds + protocol.max_seconds``.

        A session holds the host (and an agent's device), so it must end
        within a bound its profile states, whatever its models: 10,000
        warm-up runs of a 0.32 s model once kept an agent busy for 53
        minutes of a session whose ``max_seconds`` was 2.  Rounds stop, as
        ever, at ``max_seconds`` after they began or once the models
        converge; if that comes after this bound (a long counted warm-up),
        the round under way ends at the bound and the session is judged from
        the rounds it ran.  A session that reaches the bound before its
        warm-up or ``protocol.min_rounds`` are done fails with
        :class:`devices.protocol.SessionOverrun` (an agent answers 400).
        The bound is checked after every run, and an inference still running
        at it is stopped within a second, so a session ends within about a
        second of it.  Loading the models comes before and is not counted.
        """
        return float(self.warmup.seconds) + float(self.protocol.max_seconds)

    def reference_slowdown_limit(self) -> float:
        """How much slower than the host's fastest recent session a session's reference may run and stay stable.

        The profile's ``protocol.max_reference_slowdown``, or the clock's
        default (:data:`DEFAULT_REFERENCE_SLOWDOWN`): a ``thread_cpu``
        session's ratios held within 3% of their medians at slowdowns up to
        8% where a wall-clock session's already shifted.
        """
        configured = self.protocol.max_reference_slowdown
        return DEFAULT_REFERENCE_SLOWDOWN[self.clock] if configured is None else float(configured)

    def measured_host(self, host_fingerprint: str, runtime_version: str | None) -> str:
        """The host as this device's rows and ruler know it: its fingerprint, with the profile's runtime where needed.

        The host fingerprint (``devices.local.host_fingerprint``) already names
        onnxruntime's version, so an onnxruntime device on it is the
        fingerprint alone, and its identity and ruler stay what they were.
        An OpenVINO device's latencies move with OpenVINO's version, which
        the fingerprint does not name, and a pinned fingerprint names no
        version at all: those add the profile's runtime and its version, so
        an upgrade of the runtime that measures is another ruler and another
        device.  Calibrations are kept under it.
        """
        if self.runtime == "onnxruntime" and not self.host_fingerprint:
            return host_fingerprint
        return f"{self.host_fingerprint or host_fingerprint} {self.runtime} {runtime_version}"

    def identity(self, host_fingerprint: str, runtime_version: str | None) -> str:
        """The device's identity: these settings on one host, measured by one version of the profile's runtime.

        Stores file latencies under it, so the same profile used on another
        machine, or after an upgrade of its runtime, is another device.  An
        operator who knows two hosts are the same hardware pins
        ``host_fingerprint`` in the profile, and that value is used instead;
        the runtime's version still counts (:meth:`measured_host`).
        """
        host = self.measured_host(host_fingerprint, runtime_version)
        return hashlib.sha256(f"{self.hash()}:{host}".encode()).hexdigest()[:16]

    def hash(self) -> str:
        """Stable hash of everything that changes the measured latency on a given host."""
        return self.hash_with_reference(self.reference_sha256())

    def hash_with_reference(self, reference_sha256: str) -> str:
        """The hash given the reference's content hash.

        The reference enters by content, not by path, so an agent that received
        the reference as bytes computes the same hash as the client.
        """
        data = self.to_dict()
        for ignored in ("warmup", "protocol", "where", "host_fingerprint", "precisions"):
            data.pop(ignored)
        data["reference_model"] = reference_sha256
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def reference_sha256(self) -> str:
        """Content hash of the reference model this profile calibrates against."""
        if self.reference_model is None:
            from devices.reference import reference_sha256

            return reference_sha256()
        return hashlib.sha256(_read_reference(self.reference_model)).hexdigest()

    def reference_bytes(self) -> bytes:
        """The reference model's serialized bytes."""
        if self.reference_model is None:
            from devices.reference import reference_model_bytes

            return reference_model_bytes()
        return _read_reference(self.reference_model)


def _read_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refused unread if it is not one or is over ``limit`` bytes.

    ``/dev/zero`` would be read until memory ran out, and a FIFO waited on forever.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ProfileError(f"{path} is not a regular file")
    if info.st_size > limit:
        raise ProfileError(f"{path} is {info.st_size} bytes; the limit is {limit}")
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise ProfileError(f"{path} is over {limit} bytes")
    return data


def _read_reference(reference_model: str) -> bytes:
    """The bytes of a profile's own reference model, bounded; unreadable is a :class:`ProfileError`."""
    try:
        return _read_bounded(Path(reference_model), MAX_REFERENCE_MODEL_BYTES)
    except OSError as error:
        raise ProfileError(f"field 'reference_model' cannot be read ({error.strerror or error})") from None


def _check_reference_model(reference_model: str) -> None:
    """Refuse a reference model that onnxruntime cannot load, when the profile is loaded, not at measure time."""
    from devices.ort import validate_onnx_bytes

    try:
        validate_onnx_bytes(_read_reference(reference_model))
    except ProfileError as error:
        raise ProfileError(f"field 'reference_model' {reference_model}: {error}") from None
    except ValueError as error:
        raise ProfileError(f"field 'reference_model' {reference_model} is {error}") from None


def _read_mapping_file(path: Path) -> Any:
    """The parsed YAML/JSON of ``path``; any read or syntax problem is a :class:`ProfileError`."""
    import yaml

    try:
        text = _read_bounded(path, MAX_PROFILE_BYTES).decode()
        if path.suffix.lower() in (".yaml", ".yml"):
            return yaml.load(text, Loader=_plain_loader())  # noqa: S506 - a SafeLoader without aliases
        return json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise ProfileError(f"{path} is not a readable YAML/JSON profile (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise ProfileError(f"{path} is not a readable YAML/JSON profile ({_problem(error)})") from None


class RepeatedKey(ValueError):
    """A JSON object names one key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict, refusing a repeated key (json keeps the last one silently).

    ``json.loads(..., object_pairs_hook=unique_keys)``: for profile files here, and for the
    service's request bodies (:mod:`hwsearch.api.bodies`).
    """
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise RepeatedKey(f"key {_SHORT.repr(key)} appears twice")
        data[key] = value
    return data


@functools.cache
def _plain_loader() -> type:
    """PyYAML's SafeLoader without aliases and with unique keys, made on first use (yaml loads lazily).

    Profiles need neither anchors nor aliases; aliases let a few hundred
    bytes stand for billions of nodes, and a repeated key would let its
    last value win unseen.
    """
    import yaml

    class PlainLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a profile",
                                                  event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader's own construct_mapping refuses it below
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {_SHORT.repr(key)} appears twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return PlainLoader


def _problem(error: Exception) -> str:
    """A YAML error's problem and position on one line (its ``str`` spans several), else ``str``."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(error)


_Section = TypeVar("_Section")
_SECTIONS = {"warmup": Warmup, "protocol": Protocol, "where": Where}


def _build(cls: type[_Section], data: dict[str, Any], prefix: str) -> _Section:
    if not isinstance(data, dict):
        raise ProfileError(f"field '{prefix.rstrip('.')}' must be a mapping, got {_SHORT.repr(data)}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known), key=str)  # YAML keys may be numbers beside text
    if unknown:
        raise ProfileError(
            f"unknown field '{prefix}{str(unknown[0])[:100]}' (known fields: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _SECTIONS:
            values[name] = _build(_SECTIONS[name], value, prefix=f"{prefix}{name}.")
        elif name == "providers":
            values[name] = _as_providers(value)
        elif name == "precisions":
            values[name] = _as_precisions(value)
        elif cls is Where and name == "cert_sha256":
            values[name] = certificate_digest(value)
        else:
            values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ProfileError(f"{prefix or 'profile'}: {error}") from None


def _as_providers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"field 'providers' must be a list of provider names, got {_SHORT.repr(value)}")
    return tuple(value)


def _as_precisions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"field 'precisions' must be a list of precisions {list(PRECISIONS)}, "
                           f"got {_SHORT.repr(value)}")
    return tuple(value)


def _require(condition: bool, field_name: str, message: str, value: Any) -> None:
    if not condition:
        raise ProfileError(f"field '{field_name}' {message}, got {_SHORT.repr(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float: NaN and infinity would defeat every bound below.

    An int is finite and compares exactly with the bounds; ``math.isfinite``
    of a 400-digit one raised OverflowError (a traceback, an agent that hung
    up, a service's 500) instead of a refusal naming the field.
    """
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or isinstance(value, float) and math.isfinite(value)


def _int_in(value: Any, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


def _number_in(value: Any, low: float, high: float) -> bool:
    return _is_number(value) and low <= value <= high


# Upper bounds on every setting: a profile is also what a service client sends, and an
# unbounded warm-up or round cap pins a core for as long as the client likes.
MAX_NAME_CHARS = 100
MAX_THREADS = 256
MAX_REFERENCE_SLOWDOWN = 100.0
MAX_BATCH = 1024
MAX_WARMUP_RUNS = 10_000
MAX_WARMUP_SECONDS = 60.0
MAX_ROUNDS = 100_000
MAX_SESSION_SECONDS = 3600.0
MAX_AGENT_TIMEOUT_S = 86_400.0
MAX_RETRIES = 10
MAX_LOGICAL_PROCESSOR = 4096

# One thread's logical processors, as onnxruntime reads them: '3', '1,3' or '1-4'.  Checked here,
# because onnxruntime refuses other forms only when a session starts (a job's first measurement,
# with a C++ source path for a message), and some ('0-0') at all.
_AFFINITY_ENTRY = re.compile(r"[1-9][0-9]{0,3}(?:,[1-9][0-9]{0,3})*|[1-9][0-9]{0,3}-[1-9][0-9]{0,3}")


def _processors_in_bounds(entry: str) -> bool:
    """Every processor of the entry at most MAX_LOGICAL_PROCESSOR, and a range's ends in order."""
    numbers = [int(n) for n in re.split(r"[,-]", entry)]
    return max(numbers) <= MAX_LOGICAL_PROCESSOR and ("-" not in entry or numbers[0] <= numbers[1])


def affinity_processors(thread_affinity: str) -> set[int]:
    """The logical processors a (validated) ``thread_affinity`` names, numbered from 1 as onnxruntime does."""
    named: set[int] = set()
    for entry in thread_affinity.split(";"):
        if "-" in entry:
            first, last = (int(n) for n in entry.split("-"))
            named.update(range(first, last + 1))
        else:
            named.update(int(n) for n in entry.split(","))
    return named


def _validate(p: DeviceProfile) -> None:
    # A name is printed (tables, pages, logs), so no control, bidi or surrogate characters; it may
    # hold spaces, brackets or slashes ("Pixel 7 (CPU)"): it is part of the profile's hash, under
    # which its measurements are stored, so narrowing it would orphan them.  Whoever makes a file
    # name or markup of it makes it safe there (a profile named "../../x" once wrote its front
    # outside --out, and "[/]" crashed a table's markup).  The service's names are narrower still.
    _require(
        isinstance(p.name, str) and p.name.strip() != "" and len(p.name) <= MAX_NAME_CHARS
        and is_printable(p.name), "name",
        f"must be a non-empty string of at most {MAX_NAME_CHARS} characters, none of them control, "
        "bidi or surrogate characters (it is printed)", p.name,
    )
    _require(p.runtime in RUNTIMES, "runtime", f"must be one of {RUNTIMES}", p.runtime)
    _require(len(p.providers) > 0, "providers", "must name at least one execution provider", p.providers)
    for provider in p.providers:
        _require(
            provider in KNOWN_ORT_PROVIDERS, "providers",
            f"contains unknown execution provider '{provider}' (known: {', '.join(KNOWN_ORT_PROVIDERS)})",
            list(p.providers),
        )
    for name, high in (("intra_op_threads", MAX_THREADS), ("inter_op_threads", MAX_THREADS), ("batch", MAX_BATCH)):
        value = getattr(p, name)
        _require(_int_in(value, 1, high), name, f"must be an integer in [1, {high}]", value)
    _require(
        p.thread_affinity is None
        or (isinstance(p.thread_affinity, str) and len(p.thread_affinity) <= 16 * MAX_THREADS
            and len(p.thread_affinity.split(";")) == p.intra_op_threads - 1
            and all(_AFFINITY_ENTRY.fullmatch(entry) and _processors_in_bounds(entry)
                    for entry in p.thread_affinity.split(";"))),
        "thread_affinity",
        "must be null or an onnxruntime affinity string with one entry per intra-op thread after the first, "
        f"each logical processors numbered from 1 to {MAX_LOGICAL_PROCESSOR}, listed ('1,3') or as a range "
        "('1-4') (e.g. '2' for 2 threads, '1;2' for 3; onnxruntime does not pin the calling thread)",
        p.thread_affinity,
    )
    _require(isinstance(p.allow_spinning, bool), "allow_spinning", "must be true or false", p.allow_spinning)
    _require(
        p.graph_optimization in GRAPH_OPTIMIZATION_LEVELS, "graph_optimization",
        f"must be one of {GRAPH_OPTIMIZATION_LEVELS}", p.graph_optimization,
    )
    _require(p.clock in CLOCKS, "clock", f"must be one of {CLOCKS}", p.clock)
    _require(p.timing in TIMINGS, "timing", f"must be one of {TIMINGS}", p.timing)
    if p.clock == "thread_cpu":
        _require(
            p.runtime == "onnxruntime" and p.intra_op_threads == 1 and p.inter_op_threads == 1, "clock",
            "'thread_cpu' needs runtime onnxruntime with intra_op_threads and inter_op_threads 1 "
            "(only then does the inference run on the timed thread)", p.clock,
        )
    _require(p.input_dtype in INPUT_DTYPES, "input_dtype", f"must be one of {INPUT_DTYPES}", p.input_dtype)
    _validate_precisions(p)
    _require(
        p.reference_model is None or isinstance(p.reference_model, str), "reference_model",
        "must be null (built-in reference) or a path to an ONNX file", p.reference_model,
    )
    _require(
        p.reference_ms is None or (_number_in(p.reference_ms, 1e-6, 1e6)), "reference_ms",
        "must be null (calibrate on first use) or the reference's latency in ms, in (0, 1e6]", p.reference_ms,
    )
    _require(
        p.host_fingerprint is None
        or (isinstance(p.host_fingerprint, str) and re.fullmatch(r"[0-9a-f]{16}", p.host_fingerprint)),
        "host_fingerprint", "must be null (this host's) or 16 lowercase hex digits", p.host_fingerprint,
    )
    _validate_warmup(p.warmup)
    _validate_protocol(p.protocol)
    _validate_where(p.where)


def _validate_precisions(p: DeviceProfile) -> None:
    precisions = p.precisions
    _require(
        isinstance(precisions, tuple) and 0 < len(precisions) <= len(PRECISIONS)
        and all(isinstance(v, str) and v in PRECISIONS for v in precisions)
        and len(set(precisions)) == len(precisions),
        "precisions", f"must list each of {list(PRECISIONS)} at most once, and at least one",
        list(precisions) if isinstance(precisions, tuple) else precisions,
    )
    _require(
        "int8" not in precisions or p.input_dtype == "float32", "precisions",
        "may include 'int8' only with input_dtype float32 (INT8 models are quantized from FP32)",
        list(precisions),
    )


def _validate_warmup(w: Warmup) -> None:
    _require(_int_in(w.runs, 0, MAX_WARMUP_RUNS), "warmup.runs", f"must be an integer in [0, {MAX_WARMUP_RUNS}]",
             w.runs)
    _require(
        _number_in(w.seconds, 0, MAX_WARMUP_SECONDS), "warmup.seconds",
        f"must be a number in [0, {MAX_WARMUP_SECONDS:g}]", w.seconds,
    )


def _validate_protocol(r: Protocol) -> None:
    _require(
        _int_in(r.min_rounds, 5, MAX_ROUNDS), "protocol.min_rounds", f"must be an integer in [5, {MAX_ROUNDS}]",
        r.min_rounds,
    )
    _require(
        _is_int(r.min_rounds) and _int_in(r.max_rounds, r.min_rounds, MAX_ROUNDS),
        "protocol.max_rounds", f"must be an integer in [protocol.min_rounds, {MAX_ROUNDS}]", r.max_rounds,
    )
    _require(
        _number_in(r.max_foreign_cores, 0.0, MAX_THREADS), "protocol.max_foreign_cores",
        f"must be a number of cores in [0, {MAX_THREADS}]", r.max_foreign_cores,
    )
    _require(
        r.max_reference_slowdown is None or _number_in(r.max_reference_slowdown, 0.0, MAX_REFERENCE_SLOWDOWN),
        "protocol.max_reference_slowdown",
        f"must be a relative slowdown in [0, {MAX_REFERENCE_SLOWDOWN:g}] (e.g. 0.04 for 4%), or null for the "
        f"clock's default",
        r.max_reference_slowdown,
    )
    _require(
        _number_in(r.max_seconds, 1e-3, MAX_SESSION_SECONDS), "protocol.max_seconds",
        f"must be a number in (0, {MAX_SESSION_SECONDS:g}]", r.max_seconds,
    )
    _require(
        _is_number(r.ci_target) and 0 < r.ci_target < 1, "protocol.ci_target",
        "must be a relative half-width between 0 and 1 (e.g. 0.01 for 1%)", r.ci_target,
    )
    _require(
        _number_in(r.reference_jump_mads, 1e-3, 1e3), "protocol.reference_jump_mads",
        "must be a number in (0, 1000]", r.reference_jump_mads,
    )
    _require(
        _is_number(r.reference_ceiling_percentile) and 10 <= r.reference_ceiling_percentile <= 100,
        "protocol.reference_ceiling_percentile", "must be a percentile in [10, 100]", r.reference_ceiling_percentile,
    )
    _require(
        _is_number(r.low_percentile) and 0 < r.low_percentile <= 50, "protocol.low_percentile",
        "must be a percentile in (0, 50]", r.low_percentile,
    )
    _require(isinstance(r.peer_normalisation, bool), "protocol.peer_normalisation", "must be true or false",
             r.peer_normalisation)
    _require(isinstance(r.load_twice, bool), "protocol.load_twice", "must be true or false", r.load_twice)


def is_certificate_digest(value: Any) -> bool:
    """Whether ``value`` is a certificate's SHA-256 as :attr:`Where.cert_sha256` holds it: 64 lowercase hex."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def certificate_digest(value: Any) -> Any:
    """A SHA-256 as the agent prints it (64 hex) or as ``openssl x509 -fingerprint -sha256`` does
    (``AB:CD:...``), in the form :attr:`Where.cert_sha256` holds; anything else as it came, to be refused."""
    if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}", value):
        return value.replace(":", "").lower()
    return value


def has_query_or_fragment(url: str) -> bool:
    """Whether an agent URL has a query or fragment: requests append their path to it, which then went astray
    (a mistyped ``#sha256:`` pin left the agent unpinned and sent ``GET /``)."""
    return "#" in url or "?" in url


def _validate_where(w: Where) -> None:
    _require(w.kind in ("local", "agent"), "where.kind", "must be 'local' or 'agent'", w.kind)
    if w.kind == "agent":
        _require(
            isinstance(w.url, str) and w.url.startswith(("http://", "https://")), "where.url",
            "must be an http(s) URL when where.kind is 'agent'", w.url,
        )
        _require(not has_query_or_fragment(w.url), "where.url", "must have no query or fragment (a pin goes in "
                 "where.cert_sha256)", w.url)
        _require(
            w.token_env is None or (isinstance(w.token_env, str) and w.token_env != ""), "where.token_env",
            "must name the environment variable holding the agent token", w.token_env,
        )
        _require(
            w.cert_sha256 is None or (is_certificate_digest(w.cert_sha256) and w.url.startswith("https://")),
            "where.cert_sha256", "must be a certificate's SHA-256 (64 hex digits, or openssl's AB:CD:... form), "
            "for an https:// url",
            w.cert_sha256,
        )
    else:
        _require(w.url is None, "where.url", "must be empty when where.kind is 'local'", w.url)
        _require(w.token_env is None, "where.token_env", "must be empty when where.kind is 'local'", w.token_env)
        _require(w.cert_sha256 is None, "where.cert_sha256", "must be empty when where.kind is 'local'",
                 w.cert_sha256)
    _require(
        _number_in(w.timeout_s, 1e-3, MAX_AGENT_TIMEOUT_S), "where.timeout_s",
        f"must be a number in (0, {MAX_AGENT_TIMEOUT_S:g}]", w.timeout_s,
    )
    _require(_int_in(w.retries, 0, MAX_RETRIES), "where.retries", f"must be an integer in [0, {MAX_RETRIES}]",
             w.retries)
