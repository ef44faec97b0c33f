"""The service's job queue: bounded admission, at most N jobs at once, hard cancellation.

A shared service must not start every submitted job at once (each one
exports, evaluates and measures on the same cores) nor queue without limit.
:class:`JobDispatcher` admits a job into a bounded queue (or refuses it with
:class:`QueueFull`, which the API answers with 429 and ``Retry-After``),
starts queued jobs as Ray tasks while fewer than ``max_running`` run, and
stops a cancelled job's task *and its child tasks* at once, so a cancelled
job stops measuring and computing within seconds rather than at its next
cooperative check.

There is at most one runner per job: a job is started only from the queue,
a job whose previous task is still being torn down cannot be resumed
(:class:`StillStopping`), and the task is not retried after a cancel.  Each
task is started under a runner token claimed in the store
(:func:`~hwsearch.jobs.claim_job`), so a task superseded by another
process's resume neither starts nor records its crash on the new run.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hwsearch.agents import AgentEndpoint
from hwsearch.jobs import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    JobSpec,
    ProfileSpec,
    cancel_job,
    claim_job,
    execute,
    new_job,
    record_failure,
    recover_jobs,
)
from hwsearch.jobs.runners import new_runner_token
from hwsearch.store import Store

__all__ = ["Admission", "JobDispatcher", "QueueFull", "StillStopping", "StoreFull", "first_measured"]

log = logging.getLogger(__name__)

_POLL_S = 0.5


@dataclass(frozen=True)
class _Task:
    """A job's running Ray task, the runner token the job was claimed with for it, when it started, and
    what it measures first (:func:`first_measured`)."""

    ref: Any
    runner: str
    started: float = field(default_factory=time.monotonic)
    measures: str = ""


#: The fields of a job's spec that decide the subnets it measures first: a search's initial subnets come
#: from its supernet, devices, ``n_profile`` and ``seed``; a profile measures its one ``arch`` on its ``device``.
_FIRST_MEASURED = ("kind", "supernet", "devices", "device", "arch", "n_profile", "seed")


def first_measured(spec: Mapping[str, Any]) -> str:
    """What a job (its stored spec) measures first, as a key: two jobs of one key measure the same subnets.

    Run together, two such jobs measured each subnet twice, one after the
    other at the host's lock: each skips only what was stored when its
    profiling began.  A job waits for its running twin instead, and then
    reuses every row the twin stored.
    """
    return json.dumps({name: spec.get(name) for name in _FIRST_MEASURED}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Admission:
    """How much work the service accepts: running jobs, queued jobs, and per-job sizes."""

    max_running: int = 2
    max_queued: int = 16
    max_n_profile: int = 500
    max_budget: int = 200
    #: Pixels one export's input may hold (batch x resolution^2): a largest OFA MobileNetV3 took
    #: about 240 MiB per million (351 MiB and 4 s at 1024 px, 3.9 GiB and 91 s at 1024 px batch 16).
    max_input_pixels: int = 4 * 1024 * 1024
    #: Job records the store may hold, finished ones included: a client that submitted and cancelled
    #: in a loop added 8,400 records (54 MB) a minute.  DELETE /jobs/{id} removes stopped ones.
    max_jobs: int = 10_000
    #: Seconds one job may run (queued time not counted): a profile may hold the host for an hour per
    #: session, so a few jobs of many sessions held both running places, and every local
    #: measurement behind the host lock, for days.  Past it the job fails and its task is stopped.
    max_job_seconds: float = 24 * 3600.0
    retry_after_s: int = 30

    def __post_init__(self) -> None:
        for name in ("max_running", "max_queued", "max_n_profile", "max_budget", "max_input_pixels",
                     "max_jobs", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.max_job_seconds < float("inf"):
            raise ValueError("max_job_seconds must be a finite number above 0")


class QueueFull(Exception):
    """The queue holds ``max_queued`` jobs already; try again after ``retry_after_s``."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"the job queue is full ({queued} jobs waiting); "
                         f"try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class StoreFull(Exception):
    """The store holds ``max_jobs`` job records; finished ones must be deleted before another is made."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the service keeps at most {held} jobs and holds that many; delete finished ones "
                         "(DELETE /jobs/{id}) or ask the operator to raise --max-jobs")


class StillStopping(Exception):
    """The job's previous runner is still being stopped; resuming now would make two."""


class JobDispatcher:
    """Runs the service's jobs on Ray, ``max_running`` at a time, from a bounded queue.

    Thread-safe.  ``agents`` (the operator's declared agents, tokens included)
    travel to each job's task as an argument and are never stored.  They are
    what :func:`~hwsearch.agents.resolve_profile` takes, and have no default,
    since the choice decides whom a job may contact with a token: None runs
    the jobs' profiles as written (``where.url`` included), for a caller
    whose profiles are all its own; a table (the service's, maybe empty)
    lets a profile reach only those agents, for profiles from anyone else.
    """

    def __init__(self, store: Store, *, agents: Mapping[str, AgentEndpoint] | None,
                 admission: Admission = Admission(), ray_address: str | None = None) -> None:
        self.store = store
        self.admission = admission
        self.agents = None if agents is None else dict(agents)
        self.ray_address = ray_address
        self._queue: collections.deque[str] = collections.deque()
        self._running: dict[str, _Task] = {}  # job id -> its Ray task
        self._told: dict[str, str] = {}  # queued job id -> the running twin it was told it waits for
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="hwsearch-dispatcher", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> list[str]:
        """Mark jobs a dead process left active ``interrupted``, start the queue, and return their ids.

        Queuing them again is the service's decision, job by job
        (:func:`hwsearch.api.service.resume_at_start`): each must pass what a
        client's resume must pass, so a job stored by an older version or under
        looser settings is not run unchecked.
        """
        touched = recover_jobs(store=self.store)
        self._thread.start()
        return touched

    def stop(self) -> None:
        """Stop starting jobs and end the running ones' tasks, leaving the jobs as they were.

        The service is stopping, nobody cancelled them: their records stay
        ``running`` or ``queued``, so the next start treats them as it treats
        a crash's (``interrupted``, or queued again with ``resume``), and they
        continue from their stored measurements.
        """
        with self._cond:
            self._stopped = True
            running = [task.ref for task in self._running.values()]
            self._cond.notify_all()
        if running:
            import ray

            for ref in running:
                ray.cancel(ref, force=True, recursive=True)

    # ------------------------------------------------------------------ requests

    def submit(self, spec: JobSpec | ProfileSpec) -> str:
        """Queue a new job; :class:`QueueFull` when the queue is at its bound."""
        with self._cond:
            self._check_room()
            if self.store.count_jobs() >= self.admission.max_jobs:
                raise StoreFull(self.admission.max_jobs)
            # this process's from the first write: a service starting on the store must not take it for an orphan
            job_id, _ = new_job(self.store, spec.to_dict())
            self._queue.append(job_id)
            self._cond.notify_all()
        return job_id

    def resume(self, job_id: str) -> None:
        """Queue a stopped job again; it continues from its stored measurements.

        The job is queued only if it is still stopped when it is written, so a job that another
        process resumed or started meanwhile is not queued twice (two runners).
        """
        with self._cond:
            if self.store.get_job(job_id).state in ACTIVE_STATES:
                return  # queued or running already: nothing to resume
            if job_id in self._running:
                raise StillStopping(f"job {job_id} is still stopping; resume it in a few seconds")
            self._check_room()
            # the old runner's token goes (a task of its that starts late must find no claim of its own) for
            # one of this process's, so the queued job is not taken for an orphan meanwhile
            if self.store.transition_job(job_id, TERMINAL_STATES, "queued", error=None,
                                         runner=new_runner_token(self.store)):
                self._queue.append(job_id)
                self._cond.notify_all()

    def delete(self, job_id: str) -> None:
        """Remove a stopped job's record and events (the store keeps its measurements for other jobs).

        :class:`StillStopping` while its runner is still ending, ValueError for
        a queued or running job, KeyError for none.
        """
        with self._cond:
            # a running job is refused by the store itself (cancel it first); a cancelled one may still be ending
            if job_id in self._running and self.store.get_job(job_id).state in TERMINAL_STATES:
                raise StillStopping(f"job {job_id} is still stopping; delete it in a few seconds")
            self.store.delete_job(job_id)

    def cancel(self, job_id: str) -> None:
        """Mark the job cancelled and stop its task and every task it started, now."""
        with self._cond:
            cancel_job(store=self.store, job_id=job_id)
            if job_id in self._queue:
                self._queue.remove(job_id)
            task = self._running.get(job_id)
        if task is not None:
            import ray

            ray.cancel(task.ref, force=True, recursive=True)

    def counts(self) -> dict[str, int]:
        """Jobs running and waiting now, with the bounds (for /health and tests)."""
        with self._cond:
            return {"running": len(self._running), "queued": len(self._queue),
                    "max_running": self.admission.max_running,
                    "max_queued": self.admission.max_queued,
                    "jobs": self.store.count_jobs(), "max_jobs": self.admission.max_jobs}

    def _check_room(self) -> None:
        if len(self._queue) >= self.admission.max_queued:
            raise QueueFull(len(self._queue), self.admission.retry_after_s)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                starting = bool(self._queue) and len(self._running) < self.admission.max_running
            if starting and not self._connect():
                continue
            with self._cond:
                if self._stopped:
                    return
                if JobDispatcher._remote is not None:  # else the next turn joins Ray first, outside the lock
                    self._start_queued()
                tasks = dict(self._running)
                if not tasks:
                    if not self._queue:
                        self._cond.wait(timeout=_POLL_S * 4)
                    continue
            self._reap(tasks)

    def _connect(self) -> bool:
        """Join (or start) Ray before a job starts, *outside* the lock; on failure fail the queued jobs.

        Joining takes seconds, and up to :data:`~hwsearch.ray_session.RAY_CONNECT_TIMEOUT_S`
        for an address where nothing answers, after which it raises
        :class:`~hwsearch.ray_session.RayUnreachable`.  Under the lock,
        submissions, cancels, ``/limits`` and the service's stop waited for it:
        with ``ray.init`` unbounded, for ever.  Every job waiting then fails
        with the same one line, since none of them could run; the next
        submission tries again, so a cluster that comes back is used.
        """
        try:
            self._task()
            return True
        except Exception as error:  # Ray would not start or cannot be reached: no waiting job can run
            log.error("cannot start jobs: %s", error)
            with self._cond:
                waiting = list(self._queue)
                self._queue.clear()
            for job_id in waiting:
                runner = claim_job(self.store, job_id)
                if runner is not None:
                    record_failure(self.store, job_id, error, runner=runner)
            return False

    def _start_queued(self) -> None:
        """Start queued jobs while there is room; called with the lock held, once Ray is up (:meth:`_connect`).

        A job that would first measure what a running job measures (:func:`first_measured`) stays queued,
        in its place, until that job ends; the jobs behind it may start meanwhile.
        """
        measuring = {task.measures: job_id for job_id, task in self._running.items()}
        waiting: list[str] = []
        while self._queue and len(self._running) < self.admission.max_running:
            job_id = self._queue.popleft()
            spec = self.store.get_job(job_id).spec
            measures = first_measured(spec)
            if (twin := measuring.get(measures)) is not None:
                waiting.append(job_id)
                self._say_it_waits(job_id, twin)
                continue
            self._told.pop(job_id, None)
            runner = claim_job(self.store, job_id)
            if runner is None:
                continue  # cancelled while it waited
            try:
                ref = self._task().remote(spec, self.store, job_id, self.agents, runner)
                self._running[job_id] = _Task(ref, runner, measures=measures)
                measuring[measures] = job_id
            except Exception as error:  # Ray itself would not start: the job cannot run
                log.exception("could not start job %s", job_id)
                record_failure(self.store, job_id, error, runner=runner)
        self._queue.extendleft(reversed(waiting))

    def _say_it_waits(self, job_id: str, twin: str) -> None:
        """Tell a queued job's readers, once per twin, why it waits though there is room to run it."""
        message = f"waiting for job {twin}, which measures the same subnets first; then reusing its measurements"
        if self._told.get(job_id) != twin and self.store.transition_job(
                job_id, ("queued",), "queued", progress={"step": "queued", "fraction": 0.0, "message": message}):
            self._told[job_id] = twin

    def _reap(self, tasks: Mapping[str, _Task]) -> None:
        """Wait briefly for running tasks; record how each finished one ended.

        A crash is recorded only while the job is still this task's claim:
        another process may have cancelled and resumed it meanwhile, and its
        new runner must not be marked failed for our task's end.
        """
        import ray

        self._stop_overdue(tasks)
        by_ref = {task.ref: job_id for job_id, task in tasks.items()}
        done, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=_POLL_S)
        for ref in done:
            job_id = by_ref[ref]
            try:
                ray.get(ref)
            except ray.exceptions.TaskCancelledError:  # cancel() or stop() ended it, as asked
                log.info("job %s: its task was cancelled", job_id)
            except Exception as error:  # the task logged its own failure; this catches crashes
                if not self._stopped:  # stop() ended it: the job is left for the next start
                    log.warning("job %s ended with %s", job_id, type(error).__name__, exc_info=error)
                    record_failure(self.store, job_id, error, runner=tasks[job_id].runner)
            with self._cond:
                self._running.pop(job_id, None)
        if done:
            self._sweep_temp_files()

    def _stop_overdue(self, tasks: Mapping[str, _Task]) -> None:
        """Fail every job running past ``admission.max_job_seconds`` and stop its task and what it started.

        The job is marked first, in one step with its runner's claim, so a
        job that ended (or was cancelled and resumed) meanwhile is left alone;
        its measurements stay in the store, and a resume continues from them.
        """
        import ray

        limit = self.admission.max_job_seconds
        for job_id, task in tasks.items():
            if time.monotonic() - task.started <= limit:
                continue
            overdue = self.store.transition_job(
                job_id, ("running",), "failed", expect_runner=task.runner,
                error=f"it ran past this service's limit of {limit / 3600:g} h per job (--max-job-hours); its "
                      "measurements are kept and a resume continues from them")
            if overdue:
                log.warning("job %s ran past %.0f s: stopped", job_id, limit)
                ray.cancel(task.ref, force=True, recursive=True)

    @staticmethod
    def _sweep_temp_files() -> None:
        """Remove the temp folders of this host's dead hwsearch processes (:mod:`hwsearch.tempdirs`), as a job ends.

        A Ray worker killed mid-export (out of memory, a crash, a force-cancel)
        leaves its export folder, 50-110 MB, and Ray retries the task in a new
        worker.  ``hwsearch`` commands sweep such folders as they start, but a
        service runs for weeks, and emptied its temp folder only at start-up:
        each crash cost disk until the next restart.  Workers started here share
        the service's temp folder (``TMPDIR``), which is what is swept; a
        listing and a non-blocking ``flock`` per folder, cheap beside a job.
        """
        from hwsearch.tempdirs import remove_dead_owners_folders

        freed = remove_dead_owners_folders()
        if freed:
            log.info("removed %.1f MB of temp files that dead workers left behind", freed / 1e6)

    _remote: Any = None

    def _task(self) -> Any:
        """The Ray task wrapping :func:`~hwsearch.jobs.execute`, made once per process.

        It asks for no CPU: it orchestrates, and the profiling, accuracy and
        search tasks it starts need the CPUs; admission bounds how many run.
        A crashed worker is retried once (the retry resumes from the store);
        a cancelled task is never retried.
        """
        if JobDispatcher._remote is None:
            import ray

            from hwsearch.ray_session import init_ray

            init_ray(self.ray_address)
            JobDispatcher._remote = ray.remote(num_cpus=0, max_retries=1)(execute)
        return JobDispatcher._remote
