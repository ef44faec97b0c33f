"""Whole jobs: from a supernet and device profiles to Pareto fronts in the store.

The CLI and the HTTP service run the same job: :func:`run_job` is a plain
function over a framework-free :class:`JobSpec` and a :class:`~hwsearch.store.Store`.
Every step leaves its measurements in the store before the next begins, so
a job that is stopped (cancelled, or its process killed) and run again picks
up where it was: nothing measured is measured twice.

Cancellation is cooperative here: the runner reads the job's state from the
store between steps (and between measurements) and stops when it is no
longer ``running``.  The service adds a hard stop on top
(:mod:`hwsearch.dispatch` cancels the job's Ray task).  :func:`submit_job`
runs a job in a thread of this process; the service queues its jobs on Ray
through :class:`hwsearch.dispatch.JobDispatcher` instead.

A job's ``error`` is one line without paths or traceback (:func:`describe_error`);
the full trace goes to the log of the process that saw it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hwsearch.agents import AgentEndpoint, resolve_profile
from hwsearch.store import Store

__all__ = [
    "ACTIVE_STATES",
    "JobCancelled",
    "JobDevice",
    "JobSpec",
    "ProgressFn",
    "ProfileSpec",
    "SupernetRef",
    "TERMINAL_STATES",
    "build_supernet",
    "cancel_job",
    "content_id",
    "describe_error",
    "execute",
    "job_device",
    "record_failure",
    "recover_jobs",
    "run_job",
    "run_job_watched",
    "run_profile",
    "spec_from_dict",
    "submit_job",
    "supernet_builders",
]

log = logging.getLogger(__name__)

# How a watched job reports progress: ``progress(step, fraction, message)``.
ProgressFn = Callable[[str, float, str], None]

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


class JobCancelled(Exception):
    """The job's state changed under the runner (cancelled, or marked interrupted)."""


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SupernetRef:
    """Which supernet a job uses: a registry builder, its weights and its options.

    ``name`` is what users call it (several names may share one builder with
    different checkpoints or reduced spaces); ``options`` are builder keyword
    arguments beyond the checkpoint, e.g. ``n_classes`` or ``resolutions``.
    """

    name: str
    registry: str
    checkpoint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "registry": self.registry, "checkpoint": self.checkpoint,
                "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetRef:
        return cls(name=data["name"], registry=data["registry"], checkpoint=data.get("checkpoint"),
                   options=dict(data.get("options") or {}))


@dataclass(frozen=True)
class JobSpec:
    """A search job, complete in itself so that it can be re-run after a crash.

    Device profiles are stored whole (not by name) so that re-registering a
    device under the same name never changes what an existing job measured.
    The objectives are accuracy (maximised) and latency on each device
    (minimised); ``limits`` bound metrics (``accuracy``, ``latency_ms``,
    ``params``, ``macs``), each ``{"metric", "upper", "lower"}``.
    ``budget`` is the number of extra real measurements per device that
    refinement may spend on top of the ``n_profile`` initial ones.
    """

    supernet: SupernetRef
    devices: tuple[Mapping[str, Any], ...]
    dataset: str | None = None
    limits: tuple[Mapping[str, Any], ...] = ()
    budget: int = 0
    seed: int = 0
    n_profile: int = 40
    kind: Literal["search"] = "search"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["supernet"] = self.supernet.to_dict()
        out["devices"] = [dict(d) for d in self.devices]
        out["limits"] = [dict(lim) for lim in self.limits]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        return cls(
            supernet=SupernetRef.from_dict(data["supernet"]),
            devices=tuple(dict(d) for d in data["devices"]),
            dataset=data.get("dataset"),
            limits=tuple(dict(lim) for lim in data.get("limits", ())),
            budget=int(data.get("budget", 0)),
            seed=int(data.get("seed", 0)),
            n_profile=int(data.get("n_profile", 40)),
        )


@dataclass(frozen=True)
class ProfileSpec:
    """Profile one subnet on one device (local or through its agent)."""

    supernet: SupernetRef
    device: Mapping[str, Any]
    arch: Mapping[str, Any]
    kind: Literal["profile"] = "profile"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "supernet": self.supernet.to_dict(),
                "device": dict(self.device), "arch": dict(self.arch)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileSpec:
        return cls(supernet=SupernetRef.from_dict(data["supernet"]), device=dict(data["device"]),
                   arch=dict(data["arch"]))


def spec_from_dict(data: Mapping[str, Any]) -> JobSpec | ProfileSpec:
    """The spec a stored job record holds, by its ``kind``."""
    return ProfileSpec.from_dict(data) if data.get("kind") == "profile" else JobSpec.from_dict(data)


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class JobDevice:
    """One device as a job measures on it: the profile, how to reach it, what its rows are filed under.

    ``key`` is the device's identity (:meth:`DeviceProfile.identity`: these
    settings on the host that measures, whose fingerprint the profiler
    reports), so a profile pointed at other hardware never reuses rows.
    ``token`` is a declared agent's token; it travels with the job's tasks,
    never into the store.
    """

    profile: Any  # devices.profile.DeviceProfile
    token: str | None = field(repr=False)
    key: str

    @property
    def name(self) -> str:
        return self.profile.name

    def profiler(self) -> Any:
        """A profiler for this device (local, or a client of its agent)."""
        from devices import open_profiler

        return open_profiler(self.profile, token=self.token)


def job_device(data: Mapping[str, Any], agents: Mapping[str, AgentEndpoint]) -> JobDevice:
    """Resolve stored profile data (maybe naming a declared agent) into a :class:`JobDevice`."""
    from devices import open_profiler

    profile, token = resolve_profile(data, agents)
    return JobDevice(profile=profile, token=token,
                     key=open_profiler(profile, token=token).device_key())


# --------------------------------------------------------------------------- control


class _Control:
    """Progress reports and cancellation checks for one runner of one job.

    ``runner`` is the token this runner wrote when it started.  A job has one
    runner at a time: when another one starts (a resume right after a
    cancel, a retried task), the store holds the newer token and this runner
    stops at its next check instead of working beside it.
    """

    def __init__(self, store: Store, job_id: str, runner: str) -> None:
        self.store = store
        self.job_id = job_id
        self.runner = runner

    def check(self) -> None:
        """Stop (raise :class:`JobCancelled`) if the job is no longer ``running`` by this runner."""
        record = self.store.get_job(self.job_id)
        if record.state != "running":
            raise JobCancelled(f"job {self.job_id} is {record.state}")
        if record.runner != self.runner:
            raise JobCancelled(f"job {self.job_id} was taken over by another runner")

    def step(self, step: str, fraction: float, message: str = "") -> None:
        """Record progress, after making sure the job should go on."""
        self.check()
        self.store.update_job(self.job_id, progress={
            "step": step, "fraction": round(min(max(fraction, 0.0), 1.0), 4),
            "message": message, "at": time.time(),
        })


def _start(store: Store, job_id: str) -> _Control:
    record = store.get_job(job_id)
    if record.state not in ACTIVE_STATES:
        raise JobCancelled(f"job {job_id} is {record.state}")
    runner = uuid.uuid4().hex
    store.update_job(job_id, state="running", error=None, runner=runner)
    return _Control(store, job_id, runner)


def _finish(control: _Control, result: dict[str, Any]) -> dict[str, Any]:
    control.check()
    control.store.update_job(control.job_id, state="succeeded", result=result,
                             progress={"step": "done", "fraction": 1.0, "message": "",
                                       "at": time.time()})
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s'\":,()\[\]]+){2,}/?|/[^/\s'\":,()\[\]]+/")
MAX_ERROR_CHARS = 300


def describe_error(error: BaseException) -> str:
    """A failure as one line a client may see: type and first line, no paths, no traceback.

    A job's error is shown to every client of the service, so it must not
    leak the server's file layout or a stack; Ray's wrapper errors are
    unwrapped to the exception the job raised.
    """
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = _ANSI.sub("", str(error)).strip().splitlines()
    first = _PATH.sub("<path>", text[0] if text else "")
    line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 3] + "..."


def record_failure(store: Store, job_id: str, error: BaseException) -> None:
    """Mark an active job failed with :func:`describe_error`'s line (a stopped job stays stopped)."""
    if store.get_job(job_id).state in ACTIVE_STATES:
        store.update_job(job_id, state="failed", error=describe_error(error))


# --------------------------------------------------------------------------- building blocks


def supernet_builders() -> list[str]:
    """Every registered supernet builder, the built-in demo's included.

    The demo supernet registers itself when :mod:`hwsearch.demo.supernet` is
    imported; the service process and fresh Ray workers import nothing else
    that would load it, so this is the one place that does.
    """
    import hwsearch.demo.supernet  # noqa: F401  (registers the demo supernet)
    from hwsearch.supernets import list_supernets

    return list_supernets()


def build_supernet(ref: SupernetRef) -> Any:
    """The :class:`~hwsearch.supernets.Supernet` a reference names, weights loaded.

    ``options["resolutions"]`` narrows the input sizes of the registered
    space; the weights do not depend on the input size, so the family's
    checkpoints still load.  It makes small, fast variants for trials and tests.
    """
    from hwsearch.supernets import build_supernet as build, create_supernet

    supernet_builders()
    options = dict(ref.options)
    resolutions = options.pop("resolutions", None)
    n_classes = options.pop("n_classes", None)
    if options:
        raise ValueError(f"unknown supernet option(s) {sorted(options)}; "
                         "allowed: n_classes, resolutions")
    net = create_supernet(ref.registry, n_classes=n_classes)
    if resolutions is not None:
        net = build(dataclasses.replace(net.space, resolutions=tuple(int(r) for r in resolutions)),
                    name=net.name)
    if ref.checkpoint is not None:
        net.load_checkpoint(ref.checkpoint)
    return net


# --------------------------------------------------------------------------- one subnet, one device


def run_profile(spec: ProfileSpec, *, store: Store, job_id: str,
                agents: Mapping[str, AgentEndpoint] | None = None) -> dict[str, Any]:
    """Export one subnet and measure it on one device; the measurement goes into the store.

    ``agents`` are the operator's declared agents, for a device that names one.
    """
    from hwsearch.export import export_subnet

    control = _start(store, job_id)
    net = build_supernet(spec.supernet)
    arch = net.space.from_dict(spec.arch)
    device = job_device(spec.device, agents or {})
    control.step("export", 0.1, arch.key())
    with tempfile.TemporaryDirectory(prefix="hwsearch-profile-") as tmp:
        report = export_subnet(net, arch, Path(tmp) / f"{arch.digest()}.onnx",
                               batch=device.profile.batch)
        control.step("measure", 0.3, device.name)
        [measurement] = device.profiler().measure_many([report.path])
    row = measurement.to_dict() | {"arch": arch.to_dict(), "macs": report.macs,
                                   "params": report.params}
    store.put_latency(device.key, net.space.network_id, arch.key(), row)
    return _finish(control, {
        "device": device.name, "device_hash": device.key, "space_name": net.space.name,
        "network_id": net.space.network_id,
        "arch": arch.to_dict(), "arch_key": arch.key(), "measurement": measurement.to_dict(),
        "macs": report.macs, "params": report.params,
    })


# --------------------------------------------------------------------------- a whole search job


def content_id(*paths: str | None, extra: Mapping[str, Any] | None = None) -> str:
    """A short digest of files' contents (folders: names, sizes, times) plus settings.

    Accuracies depend on the weights and the data, so they are stored under
    an id of both: re-registering other weights under the same supernet name
    never reuses accuracies measured with the old ones.  An image folder is
    identified by its listing rather than its bytes, which keeps this fast
    on large validation sets.
    """
    digest = hashlib.sha256(json.dumps(dict(extra or {}), sort_keys=True).encode())
    for path in paths:
        digest.update(b"\0")
        if path is None:
            continue
        root = Path(path)
        if root.is_dir():
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                stat = file.stat()
                digest.update(f"{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            continue
        with open(root, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _flat_metrics(predictor: Any) -> dict[str, Any]:
    """A fitted predictor's held-out quality (cross-validated) as one flat dict."""
    meta = predictor.meta
    return {"n_train": meta.n_train, **meta.metrics.get("cv", {})}


class _DeviceMeasurer:
    """Real measurements on one device during refinement, through the pipeline into the store.

    Latency: export and profile with the device's profiler (the pipeline
    stores the full measurement row); accuracy: BN-recalibrated evaluation on
    the job's data.  It travels to the device's Ray task, where it also
    checks for cancellation and reports progress before each batch.  The
    supernet and the data are large and the same for every device, so it
    carries only a reference to them (``ray.put`` once per job) and fetches
    them in the worker on first use.
    """

    def __init__(self, *, shared: Any, device: JobDevice, store: Store, dataset_id: str,
                 job_id: str, runner: str) -> None:
        self.shared, self.device = shared, device
        self.store, self.dataset_id, self.job_id = store, dataset_id, job_id
        self.runner = runner

    @functools.cached_property
    def _net_and_data(self) -> tuple[Any, Any]:
        import ray

        resolved = ray.get(self.shared)
        return resolved["net"], resolved["data"]

    def _before(self, what: str, n: int) -> None:
        self._say(f"{what} {n} new subnet(s)")

    def _say(self, message: str) -> None:
        _Control(self.store, self.job_id, self.runner).step("search", 0.6,
                                                            f"{self.device.name}: {message}")

    def _waiting(self, info: Mapping[str, Any]) -> None:
        """Relay the pipeline's waits for the host ("waiting for local host: 2 sessions ahead")."""
        if info.get("stage") == "waiting":
            self._say(str(info["message"]))

    def measure_latency(self, archs: Sequence[Any]) -> list[float]:
        from hwsearch.pipeline import finite_latencies, profile_subnets

        net, _ = self._net_and_data
        self._before("profiling", len(archs))
        profile_subnets(net, archs, self.device.profiler(), self.device.key, self.store,
                        progress=self._waiting)
        rows = finite_latencies(self.store, self.device.key, net.space.network_id)
        return [float(rows[a.key()]["latency_ms"]) for a in archs]

    def measure_accuracy(self, archs: Sequence[Any]) -> list[float]:
        from hwsearch.accuracy_eval import evaluate_subnets

        net, data = self._net_and_data
        self._before("evaluating", len(archs))
        found = evaluate_subnets(net, archs, data, store=self.store, dataset_id=self.dataset_id)
        return [found[a.key()] for a in archs]


def run_job(spec: JobSpec, *, store: Store, job_id: str, ray_address: str | None = None,
            agents: Mapping[str, AgentEndpoint] | None = None) -> dict[str, Any]:
    """Run a whole search job; its result (fronts per device) goes into the store.

    Steps: profile ``n_profile`` subnets on each device (the pipeline's
    space-filling selection), measure their accuracy once for all devices,
    fit the predictors and record their held-out quality, then refine every
    device's front in parallel Ray tasks with up to ``budget`` more real
    measurements each.  Each step skips what the store already holds, so a
    re-run resumes.  ``agents`` are the operator's declared agents, for
    devices that name one.
    """
    import ray

    from hwsearch.accuracy_eval import evaluate_subnets
    from hwsearch.data import load_images
    from hwsearch.parallel import DeviceSearch, search_devices
    from hwsearch.pipeline import finite_latencies, select_subnets
    from hwsearch.problem import Limit
    from hwsearch.ray_session import init_ray
    from hwsearch.refine import RefineSettings
    from predictors.accuracy import AccuracyPredictor
    from predictors.latency import LatencyPredictor

    control = _start(store, job_id)
    init_ray(ray_address)  # before any step that uses Ray, so all of them join ``ray_address``
    control.step("prepare", 0.0, f"building {spec.supernet.name}")
    if spec.dataset is None:
        raise ValueError("a search job needs validation data (dataset) to measure accuracy")
    net = build_supernet(spec.supernet)
    space = net.space
    devices = [job_device(d, agents or {}) for d in spec.devices]
    data = load_images(spec.dataset, size=max(space.resolutions))
    dataset_id = content_id(spec.dataset, spec.supernet.checkpoint,
                            extra={"options": dict(spec.supernet.options)})
    archs = select_subnets(space, spec.n_profile, seed=spec.seed)

    reports = _profile_devices(control, net, archs, devices, store)

    control.step("accuracy", 0.4, f"{len(archs)} subnets")
    accuracies = evaluate_subnets(
        net, archs, data, store=store, dataset_id=dataset_id,
        progress=lambda done, total: control.step("accuracy", 0.4 + 0.15 * done / total,
                                                  f"{done}/{total} subnets evaluated"))

    control.step("train", 0.55, "fitting predictors")
    accuracy = AccuracyPredictor(space, seed=spec.seed).fit(*_xy(space, archs, accuracies))
    quality = {"accuracy": _flat_metrics(accuracy)}
    shared = ray.put({"net": net, "data": data})  # once per job, not once per device task
    searches = []
    for device in devices:
        rows = finite_latencies(store, device.key, space.network_id)
        latency = LatencyPredictor(space, device_hash=device.key, seed=spec.seed).fit(
            *_xy(space, archs, {a.key(): rows[a.key()]["latency_ms"] for a in archs}))
        quality[f"latency@{device.name}"] = _flat_metrics(latency)
        searches.append(DeviceSearch(
            name=device.name, device_hash=device.key, latency=latency,
            measurer=_DeviceMeasurer(shared=shared, device=device, store=store,
                                     runner=control.runner, dataset_id=dataset_id, job_id=job_id),
            limits=tuple(Limit(**dict(lim)) for lim in spec.limits)))

    control.step("search", 0.6, f"refining {len(devices)} fronts on Ray")
    settings = RefineSettings(max_measurements=spec.budget, per_round=max(1, min(8, spec.budget)),
                              initial=2, seed=spec.seed)
    try:
        runs = search_devices(space, accuracy, searches, store=store, supernet_id=net.name,
                              dataset_id=dataset_id, settings=settings, address=ray_address)
    except Exception:
        control.check()  # a cancellation inside a device task surfaces as that task's error
        raise
    return _finish(control, {
        "space_name": space.name, "network_id": space.network_id, "supernet_id": net.name,
        "dataset_id": dataset_id,
        "devices": {d.name: {"hash": d.key, "settings_hash": d.profile.hash(),
                             "profiling": reports[d.name], "rounds": runs[d.name].result.rounds,
                             "reused": runs[d.name].reused} for d in devices},
        "predictors": quality,
        "fronts": {d.name: _with_conditions(runs[d.name].result.front.to_dict(),
                                            finite_latencies(store, d.key, space.network_id))
                   for d in devices},
    })


def _profile_devices(control: _Control, net: Any, archs: Sequence[Any],
                     devices: Sequence[JobDevice], store: Store) -> dict[str, dict[str, Any]]:
    """Profile ``archs`` on every device at once, one thread per device; reports by device.

    Devices that are separate hardware (agents) measure concurrently; local
    devices of this host queue for its measurement lock inside their
    profilers, so running them side by side never overlaps two sessions.
    A cancellation raised in any thread stops the step.
    """
    from concurrent.futures import ThreadPoolExecutor

    from hwsearch.pipeline import profile_subnets

    shares = dict.fromkeys((d.name for d in devices), 0.0)
    lock = threading.Lock()

    def report(name: str, info: Mapping[str, Any]) -> None:
        with lock:
            if "total" in info:
                shares[name] = info["done"] / max(info["total"], 1)
            fraction = 0.4 * sum(shares.values()) / len(shares)
        message = info.get("message") or f"{info['done']}/{info['total']} subnets measured"
        control.step("profile", fraction, f"{name}: {message}")

    def profile_one(device: JobDevice) -> dict[str, Any]:
        return profile_subnets(net, archs, device.profiler(), device.key, store,
                               progress=lambda info: report(device.name, info)).to_dict()

    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="hwsearch-profile") as pool:
        futures = {d.name: pool.submit(profile_one, d) for d in devices}
        return {name: future.result() for name, future in futures.items()}


def latency_conditions(row: Mapping[str, Any]) -> dict[str, Any]:
    """How a stored latency was measured, as a front point shows it.

    ``latency_source`` is ``calibrated`` for a reference-normalised latency
    and ``median_ms`` where the raw median had to stand in (see
    :func:`~hwsearch.pipeline.finite_latencies`); ``clock`` ``thread_cpu``
    means CPU time of the inference thread, not wall time.  A point whose
    latency is not ``stable`` and ``calibrated`` is shown as such rather than
    passed off as precise.
    """
    env = row.get("env", {})
    return {"stable": bool(row.get("stable", False)), "clock": env.get("clock", "wall"),
            "latency_source": row.get("latency_source", "calibrated"),
            "ratio_ci": row.get("ratio_ci"), "reference_ms": env.get("reference_ms"),
            "reference_source": env.get("reference_source")}


def _with_conditions(front: dict[str, Any], rows: Mapping[str, Mapping[str, Any]]
                     ) -> dict[str, Any]:
    """A front's JSON with each point's measurement conditions (from its stored row)."""
    for point in front["points"]:
        row = rows.get(point["arch_key"])
        point["latency_conditions"] = latency_conditions(row) if row is not None else None
    return front


def _xy(space: Any, archs: Sequence[Any], targets: Mapping[str, float]) -> tuple[Any, Any]:
    """Encoded genes and targets of ``archs``, in order."""
    import numpy as np

    return space.encode_many(list(archs)), np.array([float(targets[a.key()]) for a in archs])


# --------------------------------------------------------------------------- running jobs


def run_job_watched(spec: JobSpec, *, store: Store, job_id: str, ray_address: str | None = None,
                    progress: ProgressFn | None = None, poll_seconds: float = 0.2
                    ) -> dict[str, Any]:
    """:func:`run_job` in a worker thread, relaying every progress event to ``progress``.

    What the CLI's ``search`` and ``demo`` use: the calling thread stays free
    to draw progress while the job runs.  Events come from the store's event
    log (:meth:`~hwsearch.store.Store.job_events`), so every step reaches
    ``progress(step, fraction, message)`` once and in order, however short it
    was.  Ray is started here first, on the caller's (main) thread, where it
    can install its signal handlers.  The job's exception, if any, is
    re-raised in the caller's thread.
    """
    from hwsearch.ray_session import init_ray

    init_ray(ray_address)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run_job(spec, store=store, job_id=job_id, ray_address=ray_address)
        except BaseException as error:  # re-raised in the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=target, name=f"hwsearch-job-{job_id}", daemon=True)
    worker.start()
    seen = 0
    while True:
        worker.join(timeout=poll_seconds)
        finished = not worker.is_alive()
        for event in store.job_events(job_id, after=seen):
            seen = event["seq"]
            if progress is not None:
                progress(event.get("step", "start"), float(event.get("fraction", 0.0)),
                         event.get("message", ""))
        if finished:
            break
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def execute(spec: Mapping[str, Any], store: Store, job_id: str,
            agents: Mapping[str, AgentEndpoint] | None = None) -> dict[str, Any] | None:
    """Run a stored job by its spec's kind; record failures in the store.

    Returns the result, or None when the job was cancelled or interrupted
    (its state then already says so).  The failure's trace is logged here,
    in the process that saw it; the store gets :func:`describe_error`'s line.
    """
    parsed = spec_from_dict(spec)
    try:
        if isinstance(parsed, ProfileSpec):
            return run_profile(parsed, store=store, job_id=job_id, agents=agents)
        return run_job(parsed, store=store, job_id=job_id, agents=agents)
    except JobCancelled as stop:
        log.info("%s", stop)
        return None
    except Exception as error:
        log.exception("job %s failed", job_id)
        record_failure(store, job_id, error)
        raise


def submit_job(spec: JobSpec | ProfileSpec, *, store: Store, job_id: str | None = None) -> str:
    """Queue a job and run it in a thread of this process; returns its id at once.

    For one-off runs and scripts (a job's searches still use Ray).  The
    service queues jobs through :class:`hwsearch.dispatch.JobDispatcher`,
    which bounds how many run and can stop one at once.
    """
    job_id = job_id or store.create_job(spec.to_dict())
    threading.Thread(target=_run_in_thread, args=(spec.to_dict(), store, job_id),
                     name=f"hwsearch-job-{job_id}", daemon=True).start()
    return job_id


def _run_in_thread(spec: Mapping[str, Any], store: Store, job_id: str) -> None:
    try:
        execute(spec, store, job_id)
    except Exception:
        pass  # execute logged it and recorded it in the store


def cancel_job(*, store: Store, job_id: str) -> Any:
    """Mark an active job cancelled; its runner stops at its next check."""
    record = store.get_job(job_id)
    if record.state in ACTIVE_STATES:
        store.update_job(job_id, state="cancelled")
    return store.get_job(job_id)


def recover_jobs(*, store: Store) -> list[str]:
    """After a restart: jobs a dead process left active are marked ``interrupted``.

    Their measurements are in the store, so a resume continues from them.
    Returns the ids that were touched.
    """
    touched = []
    for record in store.list_jobs():
        if record.state not in ACTIVE_STATES:
            continue
        store.update_job(record.job_id, state="interrupted",
                         error="the service stopped while this job was active; "
                               "its measurements are kept and a resume continues from them")
        touched.append(record.job_id)
    return touched
