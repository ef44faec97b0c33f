"""The stages of a search job, each resuming from what the store already holds.

1. :func:`profile_devices`: the initial space-filling subnets on every
   device at once (local devices take turns at the host's measurement lock).
2. :func:`evaluate_accuracy`: their accuracy, once for all devices.
3. :func:`fit_predictors`: an accuracy predictor and one latency predictor
   per device, with their held-out quality.
4. :func:`refine_fronts`: every device's front refined on Ray with real
   measurements (:class:`DeviceMeasurer`), up to the job's budget.

Each stage reads and writes through one :class:`~hwsearch.jobs.context.JobContext`
and reports through the job's :class:`~hwsearch.jobs.control.Control`.
Heavy libraries (torch, Ray, XGBoost) are imported inside the stages, so
importing :mod:`hwsearch.jobs` (the service does at start-up) stays cheap.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from hwsearch.jobs.context import JobContext, JobDevice, with_conditions
from hwsearch.jobs.control import Control
from hwsearch.jobs.spec import JobSpec
from hwsearch.store import Store

__all__ = ["DeviceMeasurer", "evaluate_accuracy", "fit_predictors", "profile_devices",
           "refine_fronts", "summarize"]


def profile_devices(control: Control, job: JobContext) -> dict[str, dict[str, Any]]:
    """Profile ``archs`` on every device at once, one thread per device; reports by device.

    Devices that are separate hardware (agents) measure concurrently; local
    devices of this host queue for its measurement lock inside their
    profilers, so running them side by side never overlaps two sessions.
    A cancellation raised in any thread stops the step.
    """
    from concurrent.futures import ThreadPoolExecutor

    from hwsearch.pipeline import profile_subnets

    shares = dict.fromkeys((d.name for d in job.devices), 0.0)
    lock = threading.Lock()

    def report(name: str, info: Mapping[str, Any]) -> None:
        with lock:
            if "total" in info:
                shares[name] = info["done"] / max(info["total"], 1)
            fraction = 0.4 * sum(shares.values()) / len(shares)
        message = info.get("message") or f"{info['done']}/{info['total']} subnets measured"
        control.step("profile", fraction, f"{name}: {message}")

    def profile_one(device: JobDevice) -> dict[str, Any]:
        return profile_subnets(job.net, job.archs, device.profiler(), device.key, job.store,
                               progress=lambda info: report(device.name, info)).to_dict()

    with ThreadPoolExecutor(max_workers=len(job.devices),
                            thread_name_prefix="hwsearch-profile") as pool:
        futures = {d.name: pool.submit(profile_one, d) for d in job.devices}
        return {name: future.result() for name, future in futures.items()}


def evaluate_accuracy(control: Control, job: JobContext) -> dict[str, float]:
    """Stage 2: the initial subnets' accuracy (BN recalibrated), on Ray; stored ones are reused."""
    from hwsearch.accuracy_eval import evaluate_subnets

    control.step("accuracy", 0.4, f"{len(job.archs)} subnets")
    return evaluate_subnets(
        job.net, job.archs, job.data, store=job.store, dataset_id=job.dataset_id,
        progress=lambda done, total: control.step("accuracy", 0.4 + 0.15 * done / total,
                                                  f"{done}/{total} subnets evaluated"))


def fit_predictors(control: Control, job: JobContext, spec: JobSpec,
                   accuracies: Mapping[str, float]) -> tuple[Any, list[Any], dict[str, Any]]:
    """Stage 3: the accuracy predictor, and per device a latency predictor and its search.

    Returns ``(accuracy predictor, [DeviceSearch], quality)``, where quality
    holds every predictor's cross-validated metrics.
    """
    import ray

    from devices.hostlock import compute_unit
    from hwsearch.parallel import DeviceSearch
    from hwsearch.problem import Limit
    from predictors.accuracy import AccuracyPredictor
    from predictors.latency import LatencyPredictor

    control.step("train", 0.55, "fitting predictors")
    space = job.space
    accuracy = AccuracyPredictor(space, seed=spec.seed).fit(*_xy(space, job.archs, accuracies))
    quality = {"accuracy": _flat_metrics(accuracy)}
    shared = ray.put({"net": job.net, "data": job.data})  # once per job, not once per device task
    searches = []
    for device in job.devices:
        rows = job.latencies(device)
        latency = LatencyPredictor(space, device_hash=device.key, seed=spec.seed).fit(
            *_xy(space, job.archs, {a.key(): rows[a.key()]["latency_ms"] for a in job.archs}))
        quality[f"latency@{device.name}"] = _flat_metrics(latency)
        searches.append(DeviceSearch(
            name=device.name, device_hash=device.key, latency=latency,
            measurer=DeviceMeasurer(shared=shared, device=device, store=job.store,
                                    runner=control.runner, dataset_id=job.dataset_id,
                                    job_id=job.job_id),
            limits=tuple(Limit(**dict(lim)) for lim in spec.limits), compute=compute_unit))
    return accuracy, searches, quality


def refine_fronts(control: Control, job: JobContext, spec: JobSpec, accuracy: Any,
                  searches: Sequence[Any], ray_address: str | None) -> dict[str, Any]:
    """Stage 4: every device's front refined in its own Ray task; runs by device name."""
    from hwsearch.parallel import search_devices
    from hwsearch.refine import RefineSettings

    control.step("search", 0.6, f"refining {len(searches)} fronts on Ray")
    settings = RefineSettings(max_measurements=spec.budget, per_round=max(1, min(8, spec.budget)),
                              initial=2, seed=spec.seed)
    try:
        return search_devices(job.space, accuracy, searches, store=job.store,
                              supernet_id=job.net.name, dataset_id=job.dataset_id,
                              settings=settings, address=ray_address)
    except Exception:
        control.check()  # a cancellation inside a device task surfaces as that task's error
        raise


def summarize(job: JobContext, reports: Mapping[str, Any], runs: Mapping[str, Any],
              quality: Mapping[str, Any]) -> dict[str, Any]:
    """The job's result: names its rows are filed under, per-device summaries, predictor quality, fronts."""
    space = job.space
    return {
        "space_name": space.name, "network_id": space.network_id, "supernet_id": job.net.name,
        "dataset_id": job.dataset_id,
        "devices": {d.name: {"hash": d.key, "settings_hash": d.profile.hash(),
                             "profiling": reports[d.name], "rounds": runs[d.name].result.rounds,
                             "reused": runs[d.name].reused} for d in job.devices},
        "predictors": dict(quality),
        "fronts": {d.name: with_conditions(runs[d.name].result.front.to_dict(), job.latencies(d))
                   for d in job.devices},
    }


class DeviceMeasurer:
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
        Control(self.store, self.job_id, self.runner).step("search", 0.6,
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


def _flat_metrics(predictor: Any) -> dict[str, Any]:
    """A fitted predictor's held-out quality (cross-validated) as one flat dict."""
    meta = predictor.meta
    return {"n_train": meta.n_train, **meta.metrics.get("cv", {})}


def _xy(space: Any, archs: Sequence[Any], targets: Mapping[str, float]) -> tuple[Any, Any]:
    """Encoded genes and targets of ``archs``, in order."""
    import numpy as np

    return space.encode_many(list(archs)), np.array([float(targets[a.key()]) for a in archs])
