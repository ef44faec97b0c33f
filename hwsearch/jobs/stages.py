"""The stages of a search job, each resuming from what the store already holds.

1. :func:`profile_devices`: the initial space-filling subnets on every
   device at every precision it runs, at once (local devices take turns at
   the host's measurement lock; a subnet's precisions share a session).
2. :func:`evaluate_accuracy`: their accuracy at each precision, once for all devices.
3. :func:`fit_predictors`: an accuracy predictor per precision and one
   latency predictor per (device, precision), with their held-out quality.
4. :func:`refine_fronts`: every (device, precision) front refined on Ray with
   real measurements (:class:`DeviceMeasurer`, which measures a candidate at
   all its device's precisions in one session), up to the job's budget, and
   each device's precisions merged into one front of labelled points.

Precision is a job axis (:mod:`hwsearch.jobs.precision`): a device whose
profile lists only ``fp32`` is measured, stored and reported exactly as
before precisions existed.

Each stage reads and writes through one :class:`~hwsearch.jobs.context.JobContext`
and reports through the job's :class:`~hwsearch.jobs.control.Control`.
Heavy libraries (torch, Ray, XGBoost) are imported inside the stages, so
importing :mod:`hwsearch.jobs` (the service does at start-up) stays cheap.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from hwsearch.jobs.context import JobContext, JobDevice, SharedJob
from hwsearch.jobs.control import Control, WaitRelay, host_waits
from hwsearch.jobs.precision import (
    Target,
    job_precisions,
    merge_fronts,
    profile_device,
    targets,
)
from hwsearch.jobs.spec import JobSpec
from hwsearch.quantize import DEFAULT_PRECISION, precision_key
from hwsearch.store import Store

__all__ = ["DeviceMeasurer", "evaluate_accuracy", "fit_predictors", "profile_devices",
           "refine_fronts", "summarize"]


def profile_devices(control: Control, job: JobContext) -> dict[str, dict[str, Any]]:
    """Profile ``archs`` on every device at every precision it runs, one thread per device.

    A device's precisions are measured together: each subnet's FP32 and
    INT8 files in the same session (:func:`~hwsearch.jobs.precision.profile_device`),
    so their rows compare within one reference scale.  Devices that are
    separate hardware (agents) measure concurrently; local devices of this
    host queue for its measurement lock inside their profilers, so running
    them side by side never overlaps two sessions.  Reports are by target
    label (``device``, ``device@int8``).  A cancellation raised in any
    thread stops the step.
    """
    from concurrent.futures import ThreadPoolExecutor

    shares = dict.fromkeys((d.name for d in job.devices), 0.0)
    lock = threading.Lock()

    def report(name: str, info: Mapping[str, Any]) -> None:
        with lock:
            if "total" in info:
                shares[name] = info["done"] / max(info["total"], 1)
            fraction = 0.4 * sum(shares.values()) / len(shares)
        message = info.get("message") or f"{info['done']}/{info['total']} subnets measured"
        control.step("profile", fraction, f"{name}: {message}")

    def profile_one(device: JobDevice) -> dict[str, dict[str, Any]]:
        waits = WaitRelay(lambda message: report(device.name, {"message": message}))

        def progress(info: Mapping[str, Any]) -> None:
            if info.get("stage") == "waiting":
                waits(str(info["message"]))
            else:
                report(device.name, info)

        found = profile_device(job.net, job.archs, device, job.data, job.store, progress=progress)
        return {Target(device, p).label: r.to_dict() for p, r in found.items()}

    with ThreadPoolExecutor(max_workers=len(job.devices),
                            thread_name_prefix="hwsearch-profile") as pool:
        futures = [pool.submit(profile_one, d) for d in job.devices]
        return {label: r for future in futures for label, r in future.result().items()}


def evaluate_accuracy(control: Control, job: JobContext) -> dict[str, dict[str, float]]:
    """Stage 2: the initial subnets' accuracy at every precision of the job; by precision, then key.

    FP32 is evaluated in torch, INT8 on the quantized ONNX model in
    onnxruntime (:mod:`hwsearch.onnx_accuracy`), both after BN recalibration;
    stored accuracies are reused.  Every precision reads the supernet and the
    data the job put into Ray's object store once (:attr:`JobContext.shared`).
    """
    from hwsearch.onnx_accuracy import evaluate_precision

    precisions = job_precisions(job.devices)
    share = 0.15 / len(precisions)
    out = {}
    for i, precision in enumerate(precisions):
        control.step("accuracy", 0.4 + i * share, f"{len(job.archs)} subnets at {precision}")
        out[precision] = evaluate_precision(
            job.net, job.archs, job.data, store=job.store, dataset_id=job.dataset_id,
            precision=precision, refs=job.shared.refs,
            progress=lambda done, total, i=i, p=precision: control.step(
                "accuracy", 0.4 + (i + done / total) * share,
                f"{done}/{total} subnets evaluated at {p}"))
    return out


def fit_predictors(control: Control, job: JobContext, spec: JobSpec,
                   accuracies: Mapping[str, Mapping[str, float]]
                   ) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, Any]]:
    """Stage 3: per precision an accuracy predictor, per (device, precision) a latency predictor.

    Returns ``({precision: accuracy predictor}, {precision: [DeviceSearch]},
    quality)``, where quality holds every predictor's cross-validated
    metrics under ``accuracy`` / ``latency@<device>`` (FP32) and
    ``accuracy@int8`` / ``latency@<device>@int8``.
    """
    from devices.hostlock import compute_unit
    from hwsearch.acquisition import LatencyTargets
    from hwsearch.parallel import DeviceSearch
    from hwsearch.problem import Limit
    from predictors.accuracy import AccuracyPredictor
    from predictors.latency import LatencyPredictor

    control.step("train", 0.55, "fitting predictors")
    space = job.space
    predictors, quality = {}, {}
    # Each fit (XGBoost, cross-validated) is a unit of compute: it waits while a local session measures, as
    # every refinement round's fit does; fitted outside the lock, it shared the cores with sessions (Y18).
    fitting = functools.partial(compute_unit, on_wait=host_waits(control, "train", 0.55, "fitting predictors"))
    for precision, found in accuracies.items():
        with fitting():
            predictors[precision] = AccuracyPredictor(space, seed=spec.seed).fit(*_xy(space, job.archs, found))
        quality[precision_key("accuracy", precision)] = _flat_metrics(predictors[precision])
    shared = job.shared  # put once per job, not once per device task or refinement round
    searches: dict[str, list[Any]] = {p: [] for p in accuracies}
    for target in targets(job.devices):
        rows = _rows(job, target)
        with fitting():
            latency = LatencyPredictor(space, device_hash=target.key, seed=spec.seed).fit(
                *_xy(space, job.archs, {a.key(): rows[a.key()]["latency_ms"] for a in job.archs}))
        quality[f"latency@{target.label}"] = _flat_metrics(latency)
        searches[target.precision].append(DeviceSearch(
            name=target.device.name, device_hash=target.key, latency=latency,
            measurer=DeviceMeasurer(shared=shared, device=target.device, store=job.store,
                                    runner=control.runner, dataset_id=job.dataset_id,
                                    job_id=job.job_id, precision=target.precision),
            limits=tuple(Limit(**dict(lim)) for lim in spec.limits), compute=compute_unit,
            targets=LatencyTargets.from_dict(spec.targets.get(target.device.name))))
    return predictors, searches, quality


def _rows(job: JobContext, target: Target) -> dict[str, dict[str, Any]]:
    """The target's latency rows for this network, each with a finite ``latency_ms``."""
    from hwsearch.pipeline import finite_latencies

    return finite_latencies(job.store, target.key, job.space.network_id)


def refine_fronts(control: Control, job: JobContext, spec: JobSpec, accuracy: Mapping[str, Any],
                  searches: Mapping[str, Sequence[Any]], ray_address: str | None
                  ) -> dict[str, dict[str, Any]]:
    """Stage 4: every (device, precision) front refined in its own Ray task; runs by precision, device.

    Each precision's devices go out as one :func:`~hwsearch.parallel.search_devices`
    call (with that precision's accuracy predictor and accuracy key), the
    precisions side by side in threads, so an INT8 run never waits for the
    FP32 runs to finish.  ``budget`` applies to each (device, precision).
    """
    from concurrent.futures import ThreadPoolExecutor

    from hwsearch.parallel import search_devices
    from hwsearch.refine import RefineSettings

    n_runs = sum(len(s) for s in searches.values())
    control.step("search", 0.6, f"refining {n_runs} fronts on Ray")
    settings = RefineSettings(max_measurements=spec.budget, per_round=max(1, min(8, spec.budget)),
                              initial=2, seed=spec.seed)

    def run(precision: str) -> dict[str, Any]:
        return search_devices(job.space, accuracy[precision], searches[precision], store=job.store,
                              supernet_id=job.net.name,
                              dataset_id=precision_key(job.dataset_id, precision),
                              settings=settings, address=ray_address)

    try:
        with ThreadPoolExecutor(max_workers=len(searches),
                                thread_name_prefix="hwsearch-refine") as pool:
            futures = {p: pool.submit(run, p) for p, s in searches.items() if s}
            return {p: future.result() for p, future in futures.items()}
    except Exception:
        control.check()  # a cancellation inside a device task surfaces as that task's error
        raise


def summarize(job: JobContext, reports: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]],
              quality: Mapping[str, Any]) -> dict[str, Any]:
    """The job's result: names its rows are filed under, per-device summaries, predictor quality, fronts.

    A device's summary keeps its FP32 (or only) precision's profiling,
    rounds and reuse at the top, as before precision existed, and every
    precision's under ``precisions``; its front mixes the precisions' points,
    each labelled (:func:`~hwsearch.jobs.precision.merge_fronts`).
    """
    space = job.space
    by_device: dict[str, dict[str, Any]] = {d.name: {} for d in job.devices}
    for target in targets(job.devices):
        run = runs[target.precision][target.device.name]
        by_device[target.device.name][target.precision] = {
            "hash": target.key, "profiling": reports[target.label],
            "rounds": run.result.rounds, "reused": run.reused}
    devices = {}
    for d in job.devices:
        first = next(iter(by_device[d.name].values()))
        devices[d.name] = {"hash": d.key, "settings_hash": d.profile.hash(),
                           "profiling": first["profiling"], "rounds": first["rounds"],
                           "reused": first["reused"], "precisions": by_device[d.name]}
    return {
        "space_name": space.name, "network_id": space.network_id, "supernet_id": job.net.name,
        "dataset_id": job.dataset_id, "precisions": job_precisions(job.devices),
        "accuracy_data": _accuracy_data(job.data),
        "devices": devices,
        "predictors": dict(quality),
        "fronts": {d.name: _device_front(job, d, runs) for d in job.devices},
    }


def _accuracy_data(data: Any) -> dict[str, Any]:
    """What accuracies were measured on: image counts, identity, and the 95% interval's width.

    The half-width is at 50% accuracy (the widest a Wilson interval gets for
    this many validation images), so a reader knows how far apart two
    accuracies must be before the difference means something.
    """
    low, high = data.interval(0.5)
    return {"n_calibration": len(data.calibration), "n_validation": len(data.validation),
            "ci95_halfwidth_max": (high - low) / 2, **dict(data.identity)}


def _device_front(job: JobContext, device: JobDevice, runs: Mapping[str, Mapping[str, Any]]
                  ) -> dict[str, Any]:
    """One device's front over its precisions, in JSON form, each point with its conditions.

    Its settings say what one latency is the time of (``timed_input``): one
    inference of the profile's batch, so a batch-4 device's 0.075 ms is four
    images' time, and its inputs' type (a ``float16`` device times FP16 files,
    at the ``fp32`` precision's accuracy).
    """
    pairs = targets([device])
    fronts = {t.precision: runs[t.precision][device.name].result.front for t in pairs}
    rows = {t.precision: _rows(job, t) for t in pairs}
    front = merge_fronts(device.name, fronts, rows)
    timed_input = {"batch": device.profile.batch, "input_dtype": device.profile.input_dtype}
    return replace(front, settings={**front.settings, "timed_input": timed_input}).to_dict()


class DeviceMeasurer:
    """Real measurements on one device at one precision during refinement, into the store.

    Latency: export and profile with the device's profiler, at every
    precision the device runs in one session (the pipeline quantizes the
    export for INT8 and stores each precision's full measurement row);
    accuracy: BN-recalibrated evaluation on the job's data (INT8: of the
    quantized model in onnxruntime).  It travels to the device's Ray task,
    where it also checks for cancellation and reports progress before each
    batch.  The supernet and the data are large and the same for every
    device and every round, so it carries only references to them
    (:class:`~hwsearch.jobs.context.SharedJob`, put once per job): it fetches
    them in the worker on first use, and every round's accuracy evaluation
    gets the references, not a fresh copy put into the object store.
    """

    def __init__(self, *, shared: SharedJob, device: JobDevice, store: Store, dataset_id: str,
                 job_id: str, runner: str, precision: str = DEFAULT_PRECISION) -> None:
        self.shared, self.device = shared, device
        self.store, self.dataset_id, self.job_id = store, dataset_id, job_id
        self.runner, self.precision = runner, precision

    @functools.cached_property
    def _net_and_data(self) -> tuple[Any, Any]:
        return self.shared.resolve()

    @property
    def _target(self) -> Target:
        return Target(self.device, self.precision)

    def _before(self, what: str, n: int) -> None:
        self._say(f"{what} {n} new subnet(s)")

    def _say(self, message: str) -> None:
        Control(self.store, self.job_id, self.runner).step("search", 0.6,
                                                            f"{self._target.label}: {message}")

    @functools.cached_property
    def _waits(self) -> WaitRelay:
        return WaitRelay(self._say)

    def _waiting(self, info: Mapping[str, Any]) -> None:
        """Relay the pipeline's waits for the host ("waiting for local host: 2 sessions ahead")."""
        if info.get("stage") == "waiting":
            self._waits(str(info["message"]))

    def measure_latency(self, archs: Sequence[Any]) -> list[float]:
        """``archs``' latencies at this precision, measured with their other precisions' files.

        Every precision of the device is measured in the same session and
        stored under its own key, so a subnet refinement picks at FP32 has
        its INT8 row too (and the reverse): the other precision's refinement
        reuses it instead of measuring the subnet in a session of its own,
        and the two rows compare within one reference scale.
        """
        from hwsearch.pipeline import finite_latencies

        net, data = self._net_and_data
        target = self._target
        self._before("profiling", len(archs))
        profile_device(net, archs, self.device, data, self.store, progress=self._waiting)
        rows = finite_latencies(self.store, target.key, net.space.network_id)
        return [float(rows[a.key()]["latency_ms"]) for a in archs]

    def measure_accuracy(self, archs: Sequence[Any]) -> list[float]:
        from hwsearch.onnx_accuracy import evaluate_precision

        net, data = self._net_and_data
        self._before("evaluating", len(archs))
        found = evaluate_precision(net, archs, data, store=self.store, dataset_id=self.dataset_id,
                                   precision=self.precision, refs=self.shared.refs)
        return [found[a.key()] for a in archs]


def _flat_metrics(predictor: Any) -> dict[str, Any]:
    """A fitted predictor's held-out quality (cross-validated) as one flat dict."""
    meta = predictor.meta
    return {"n_train": meta.n_train, **meta.metrics.get("cv", {})}


def _xy(space: Any, archs: Sequence[Any], targets: Mapping[str, float]) -> tuple[Any, Any]:
    """Encoded genes and targets of ``archs``, in order."""
    import numpy as np

    return space.encode_many(list(archs)), np.array([float(targets[a.key()]) for a in archs])
