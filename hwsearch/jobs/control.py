"""A job's life in the store: states, one runner at a time, progress events, failures, stops.

Cancellation is cooperative here: a runner reads the job's state (and its
runner token) from the store between steps and stops when the job is no
longer ``running`` by it.  The service adds a hard stop on top
(:mod:`hwsearch.dispatch` cancels the job's Ray task).  A job's ``error`` is
one line without paths or traceback (:func:`describe_error`); the full trace
goes to the log of the process that saw it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from hwsearch.store import Store

__all__ = ["ACTIVE_STATES", "Control", "JobCancelled", "ProgressFn", "TERMINAL_STATES",
           "cancel_job", "describe_error", "finish_job", "record_failure", "recover_jobs",
           "start_job"]

# How a watched job reports progress: ``progress(step, fraction, message)``.
ProgressFn = Callable[[str, float, str], None]

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


class JobCancelled(Exception):
    """The job's state changed under the runner (cancelled, or marked interrupted)."""


class Control:
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


def start_job(store: Store, job_id: str) -> Control:
    record = store.get_job(job_id)
    if record.state not in ACTIVE_STATES:
        raise JobCancelled(f"job {job_id} is {record.state}")
    runner = uuid.uuid4().hex
    store.update_job(job_id, state="running", error=None, runner=runner)
    return Control(store, job_id, runner)


def finish_job(control: Control, result: dict[str, Any]) -> dict[str, Any]:
    control.check()
    control.store.update_job(control.job_id, state="succeeded", result=result,
                             progress={"step": "done", "fraction": 1.0, "message": "",
                                       "at": time.time()})
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s'\":,()\[\]]+){2,}/?|/[^/\s'\":,()\[\]]+/")
MAX_ERROR_CHARS = 300


def describe_error(error: BaseException) -> str:
    """A failure as one line a client may see: type and first line, no paths, URLs or traceback.

    A job's error is shown to every client of the service, so it must not
    leak the server's file layout, its agents' addresses (which stay with the
    operator: an unreachable agent's error named its URL) or a stack; Ray's
    wrapper errors are unwrapped to the exception the job raised.
    """
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = _ANSI.sub("", str(error)).strip().splitlines()
    first = _PATH.sub("<path>", _URL.sub("<url>", text[0] if text else ""))
    line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 3] + "..."


def record_failure(store: Store, job_id: str, error: BaseException) -> None:
    """Mark an active job failed with :func:`describe_error`'s line (a stopped job stays stopped)."""
    if store.get_job(job_id).state in ACTIVE_STATES:
        store.update_job(job_id, state="failed", error=describe_error(error))


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
