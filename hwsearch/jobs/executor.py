"""Running jobs: a whole search (:func:`run_job`), one subnet on one device (:func:`run_profile`).

The CLI and the HTTP service run the same job: :func:`run_job` is a plain
function over a framework-free :class:`~hwsearch.jobs.spec.JobSpec` and a
:class:`~hwsearch.store.Store`, composed of the stages in
:mod:`hwsearch.jobs.stages`.  Every stage leaves its measurements in the
store before the next begins, so a job that is stopped (cancelled, or its
process killed) and run again picks up where it was: nothing measured is
measured twice.  :func:`submit_job` runs a job in a thread of this process;
the service queues its jobs on Ray through
:class:`hwsearch.dispatch.JobDispatcher` instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hwsearch.agents import AgentEndpoint
from hwsearch.jobs.context import JobContext, job_device
from hwsearch.jobs.control import (
    Control,
    JobCancelled,
    ProgressFn,
    claim_job,
    finish_job,
    host_waits,
    interrupt_job,
    new_job,
    record_failure,
    start_job,
)
from hwsearch.jobs.spec import JobSpec, ProfileSpec, build_supernet, spec_from_dict
from hwsearch.jobs.stages import (
    evaluate_accuracy,
    fit_predictors,
    profile_devices,
    refine_fronts,
    summarize,
)
from hwsearch.store import Store
from hwsearch.tempdirs import owned_temp_dir

__all__ = ["execute", "run_job", "run_job_watched", "run_profile", "submit_job"]

log = logging.getLogger(__name__)


def run_profile(spec: ProfileSpec, *, store: Store, job_id: str,
                agents: Mapping[str, AgentEndpoint] | None = None, runner: str | None = None) -> dict[str, Any]:
    """Export one subnet and measure it on one device; the measurement goes into the store.

    ``agents`` are the service's declared agents, for a device that names one (None: the profile is the
    operator's own file, used as written; :func:`~hwsearch.agents.resolve_profile`); ``runner`` the
    token a dispatcher claimed the job with (:func:`~hwsearch.jobs.control.start_job`).  Waits
    for the host (the export's compute behind other sessions, then the session's turn) show in
    the job's progress.
    """
    from devices.hostlock import compute_unit
    from hwsearch.export import export_subnet

    control = start_job(store, job_id, runner)
    with control.failing():
        net = build_supernet(spec.supernet, on_wait=host_waits(control, "prepare", 0.0,
                                                                f"building {spec.supernet.name}"))
        arch = net.space.from_dict(spec.arch)
        device = job_device(spec.device, agents)
        profiler, key = _profiler_at(device, spec, net)
        control.step("export", 0.1, arch.key())
        with owned_temp_dir("profile") as tmp:
            with compute_unit(on_wait=host_waits(control, "export", 0.1, device.name)):
                report = export_subnet(net, arch, Path(tmp) / f"{arch.digest()}.onnx",
                                       batch=device.profile.batch, input_dtype=device.profile.input_dtype)
            control.step("measure", 0.3, f"{device.name} at {spec.precision}")
            [measurement] = profiler.measure_many([report.path],
                                                  progress=host_waits(control, "measure", 0.3, device.name))
        row = measurement.to_dict() | {"arch": arch.to_dict(), "macs": report.macs,
                                       "params": report.params, "precision": spec.precision}
        stored = _replaces(store.get_latencies(key, net.space.network_id).get(arch.key()))
        if stored:
            store.put_latency(key, net.space.network_id, arch.key(), row)
        return finish_job(control, {
            "stored": stored,
            "device": device.name, "device_hash": key, "precision": spec.precision,
            "space_name": net.space.name,
            "network_id": net.space.network_id,
            "arch": arch.to_dict(), "arch_key": arch.key(), "measurement": measurement.to_dict(),
            "macs": report.macs, "params": report.params,
        })


def _replaces(row: Mapping[str, Any] | None) -> bool:
    """Whether a single-subnet profile's row should take the place of ``row``, the one stored for its subnet.

    Only a missing or unstable row is replaced.  A stable one came from a
    search's interleaved, anchor-judged sessions and is what a finished
    job's front shows: a profile of a front point replaced it, and no
    stored row matched the front any more.  The profile's measurement is
    in its job's result either way.
    """
    if row is None or row.get("stable") is not True:
        return True
    latency = row.get("latency_ms")
    return not (isinstance(latency, (int, float)) and 0 < latency < float("inf"))


def _profiler_at(device: Any, spec: ProfileSpec, net: Any) -> tuple[Any, str]:
    """The profiler for ``spec.precision`` and the key its rows are filed under.

    INT8 wraps the device's profiler so each export is quantized (calibrated
    on the dataset's calibration part) before it is measured; its rows go
    under the device key's ``@int8`` suffix, as a search job files them.
    """
    from hwsearch.evaldata import DataPlan
    from hwsearch.jobs.precision import QuantizingProfiler
    from hwsearch.quantize import check_precision, precision_key

    precision = check_precision(spec.precision)
    if precision == "fp32":
        return device.profiler(), device.key
    if spec.dataset is None:
        raise ValueError("an int8 profile calibrates on images: it needs a dataset")
    split = DataPlan(spec.dataset).open(size=max(net.space.resolutions))
    return (QuantizingProfiler(device.profiler(), split.calibration),
            precision_key(device.key, precision))


def run_job(spec: JobSpec, *, store: Store, job_id: str, ray_address: str | None = None,
            agents: Mapping[str, AgentEndpoint] | None = None, runner: str | None = None) -> dict[str, Any]:
    """Run a whole search job; its result (fronts per device) goes into the store.

    Stages: profile ``n_profile`` space-filling subnets on every device,
    measure their accuracy once for all devices, fit the predictors and
    record their held-out quality, then refine every device's front in
    parallel Ray tasks with up to ``budget`` more real measurements each.
    ``agents`` are the service's declared agents, for devices that name one (None: the profiles are the
    operator's own files, used as written; :func:`~hwsearch.agents.resolve_profile`); ``runner`` the
    token a dispatcher claimed the job with (:func:`~hwsearch.jobs.control.start_job`).
    """
    from hwsearch.parallel import check_store_for_refinement
    from hwsearch.ray_session import init_ray

    control = start_job(store, job_id, runner)
    with control.failing():
        check_store_for_refinement(store, spec.budget)  # refinement refused it after every device was measured
        init_ray(ray_address)  # before any stage that uses Ray, so all of them join ``ray_address``
        control.step("prepare", 0.0, f"building {spec.supernet.name}")
        job = _prepare(spec, control, store=store, job_id=job_id, agents=agents)
        reports = profile_devices(control, job)
        accuracies = evaluate_accuracy(control, job)
        accuracy, searches, quality = fit_predictors(control, job, spec, accuracies)
        runs = refine_fronts(control, job, spec, accuracy, searches, ray_address)
        return finish_job(control, summarize(job, reports, runs, quality))


def _prepare(spec: JobSpec, control: Control, *, store: Store, job_id: str,
             agents: Mapping[str, AgentEndpoint] | None) -> JobContext:
    """Build the supernet, resolve the devices, open the data and pick the initial subnets.

    A folder is streamed, not loaded; the accuracy store key covers the
    files, the weights, the preprocessing and the calibration/subset choice.
    Building and opening wait while a local session measures, and the job's
    progress says so.
    """
    from hwsearch.accuracy_eval import check_eval_data
    from hwsearch.pipeline import select_subnets

    plan = spec.data_plan()
    net = build_supernet(spec.supernet, on_wait=host_waits(control, "prepare", 0.0,
                                                            f"building {spec.supernet.name}"))
    data = plan.open(size=max(net.space.resolutions),
                     on_wait=host_waits(control, "prepare", 0.0, "opening the data"))
    check_eval_data(net, data)  # before any device is measured: found at the accuracy stage, after them all
    return JobContext(
        store=store, job_id=job_id, net=net,
        devices=[job_device(d, agents) for d in spec.devices],
        data=data,
        dataset_id=plan.dataset_id(data, checkpoint=spec.supernet.checkpoint,
                                   extra={"options": dict(spec.supernet.options)}),
        archs=select_subnets(net.space, spec.n_profile, seed=spec.seed))


#: Why a job whose process was stopped is ``interrupted``.
STOPPED_WHILE_RUNNING = ("its process was stopped (SIGTERM or Ctrl-C) while it ran; its measurements are kept and "
                         "a resume continues from them")


def run_job_watched(spec: JobSpec, *, store: Store, job_id: str, ray_address: str | None = None,
                    progress: ProgressFn | None = None, poll_seconds: float = 0.2, runner: str | None = None
                    ) -> dict[str, Any]:
    """:func:`run_job` in a worker thread, relaying every progress event to ``progress``.

    What the CLI's ``search`` and ``demo`` use: the calling thread stays free
    to draw progress while the job runs.  Events come from the store's event
    log (:meth:`~hwsearch.store.Store.job_events`), so every step reaches
    ``progress(step, fraction, message)`` once and in order, however short it
    was.  Ray is started here first, on the caller's (main) thread, where it
    can install its signal handlers.  The job's exception, if any, is
    re-raised in the caller's thread.

    The job never stays ``queued`` or ``running`` in the store after this
    returns: one whose Ray cannot be reached (:func:`~hwsearch.ray_session.init_ray`
    gives up within seconds) is ``failed``, and one stopped by SIGTERM (Ray's
    handler raises ``SystemExit`` in this thread) or Ctrl-C is ``interrupted``,
    as the service marks a job it stopped, so a later run resumes it from the
    store.  Before, a ``hwsearch search`` killed so left its job ``running`` for ever.
    ``runner``: the token the caller made or claimed the job with (:func:`~hwsearch.jobs.control.new_job`,
    :func:`~hwsearch.jobs.control.claim_job`); without one the job is claimed here, before Ray
    starts, so that meanwhile it is this live process's job, not an orphan a starting service interrupts.
    """
    from hwsearch.ray_session import init_ray

    runner = runner or claim_job(store, job_id)
    try:
        try:
            init_ray(ray_address)
        except Exception as error:
            record_failure(store, job_id, error, only_from=("queued",))
            raise
        return _watch(spec, store=store, job_id=job_id, ray_address=ray_address, progress=progress,
                      poll_seconds=poll_seconds, runner=runner)
    except (KeyboardInterrupt, SystemExit):
        interrupt_job(store, job_id, STOPPED_WHILE_RUNNING)
        raise


def _watch(spec: JobSpec, *, store: Store, job_id: str, ray_address: str | None,
           progress: ProgressFn | None, poll_seconds: float, runner: str | None) -> dict[str, Any]:
    """:func:`run_job_watched`'s thread and relay, once Ray is up."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run_job(spec, store=store, job_id=job_id, ray_address=ray_address, runner=runner)
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
            agents: Mapping[str, AgentEndpoint] | None = None, runner: str | None = None) -> dict[str, Any] | None:
    """Run a stored job by its spec's kind; record failures in the store.

    Returns the result, or None when the job was cancelled or interrupted
    (its state then already says so).  The failure's trace is logged here,
    in the process that saw it; the store gets :func:`describe_error`'s line.
    ``runner``: the token the dispatcher claimed the job with for this task.
    """
    from hwsearch.ray_session import refuse_foreign_code

    refuse_foreign_code()  # the service's job task, on whichever node Ray placed it
    parsed = spec_from_dict(spec)
    try:
        if isinstance(parsed, ProfileSpec):
            return run_profile(parsed, store=store, job_id=job_id, agents=agents, runner=runner)
        return run_job(parsed, store=store, job_id=job_id, agents=agents, runner=runner)
    except JobCancelled as stop:
        log.info("%s", stop)
        return None
    except Exception as error:
        log.exception("job %s failed", job_id)
        # after its start the runner recorded it; before, the job is still queued under our claim
        record_failure(store, job_id, error, only_from=("queued",), runner=runner)
        raise


def submit_job(spec: JobSpec | ProfileSpec, *, store: Store, job_id: str | None = None) -> str:
    """Queue a job and run it in a thread of this process; returns its id at once.

    For one-off runs and scripts (a job's searches still use Ray).  The
    service queues jobs through :class:`hwsearch.dispatch.JobDispatcher`,
    which bounds how many run and can stop one at once.
    """
    job_id, runner = new_job(store, spec.to_dict()) if job_id is None else (job_id, claim_job(store, job_id))
    threading.Thread(target=_run_in_thread, args=(spec.to_dict(), store, job_id, runner),
                     name=f"hwsearch-job-{job_id}", daemon=True).start()
    return job_id


def _run_in_thread(spec: Mapping[str, Any], store: Store, job_id: str, runner: str | None) -> None:
    try:
        execute(spec, store, job_id, runner=runner)
    except Exception:
        pass  # execute logged it and recorded it in the store
