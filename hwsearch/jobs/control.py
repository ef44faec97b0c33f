"""A job's life in the store: states, one runner at a time, progress events, failures, stops.

Cancellation is cooperative here: a runner writes its progress only while
the job is ``running`` by its runner token, checked in the same write
(:meth:`~hwsearch.store.Store.transition_job`), and stops when a write is
refused.  Every state change is such a compare-and-set, so of a cancel and a
runner's start or finish, whichever lands second sees that it lost instead
of undoing the first.  The service adds a hard stop on top
(:mod:`hwsearch.dispatch` cancels the job's Ray task).  A job's ``error`` is
one line without paths or traceback (:func:`describe_error`); the full trace
goes to the log of the process that saw it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from devices.plain import printable
from hwsearch.jobs.runners import has_leases, new_runner_token, remove_dead_leases, runner_alive
from hwsearch.store import ACTIVE_STATES, TERMINAL_STATES, Store

__all__ = ["ACTIVE_STATES", "Control", "JobCancelled", "ProgressFn", "TERMINAL_STATES", "WaitRelay",
           "cancel_job", "claim_job", "describe_error", "finish_job", "host_waits", "interrupt_job", "new_job",
           "record_failure", "recover_jobs", "start_job"]

# How a watched job reports progress: ``progress(step, fraction, message)``.
ProgressFn = Callable[[str, float, str], None]


class JobCancelled(Exception):
    """The job's state changed under the runner (cancelled, marked interrupted, taken over or deleted)."""


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
        reason = self.reason_to_stop()
        if reason is not None:
            raise JobCancelled(reason)

    def reason_to_stop(self) -> str | None:
        """Why this runner must stop now (the job was stopped, taken over or deleted), or None."""
        try:
            record = self.store.get_job(self.job_id)
        except KeyError:  # deleted after a cancel, before this runner noticed the cancel
            return f"job {self.job_id} was deleted"
        if record.state != "running":  # the stored error says who stopped it and why, where someone said
            return f"job {self.job_id} is {record.state}" + (f": {record.error}" if record.error else "")
        if record.runner != self.runner:
            return f"job {self.job_id} was taken over by another runner"
        return None

    def step(self, step: str, fraction: float, message: str = "") -> None:
        """Record progress if the job should go on, else stop (:class:`JobCancelled`)."""
        self.write_while_running("running", progress={
            "step": step, "fraction": round(min(max(fraction, 0.0), 1.0), 4),
            "message": message, "at": time.time(),
        })

    @contextlib.contextmanager
    def failing(self) -> Iterator[None]:
        """Run a job's body: a failure in it is recorded as this runner's (:meth:`fail`), then raised."""
        try:
            yield
        except JobCancelled:
            raise
        except Exception as error:
            self.fail(error)
            raise

    def fail(self, error: BaseException) -> None:
        """Mark the job failed if it is still running by this runner; a stopped or taken-over job is left as it is.

        A runner replaced by another (a resume after a cancel, before the old task ended) that fails
        afterwards must not mark its successor's job failed.
        """
        with contextlib.suppress(JobCancelled):
            self.write_while_running("failed", error=describe_error(error))

    def write_while_running(self, state: str, **fields: Any) -> None:
        """Write ``state`` and ``fields`` only if the job is running by this runner, in one step; else stop.

        Checking and then writing would let a cancel or a takeover land in between and be overwritten
        (a finished job's ``succeeded`` over its cancel) or followed by a stale runner's progress.
        """
        try:
            written = self.store.transition_job(self.job_id, ("running",), state, expect_runner=self.runner,
                                                **fields)
        except KeyError:  # deleted after a cancel, before this runner noticed the cancel
            written = False
        if not written:
            raise JobCancelled(self.reason_to_stop() or f"job {self.job_id} changed under its runner")


class WaitRelay:
    """Passes a wait for the host on as job progress: when its message changes, else every ``every_s`` seconds.

    The host lock reports a wait about once a second (the CLI prints it as
    it comes); stored as a job's events, every second of a long wait was a
    row of the job's event log.  A message says who is ahead, so one that
    repeats adds nothing but the proof that the job is alive.
    """

    def __init__(self, say: Callable[[str], None], every_s: float = 30.0) -> None:
        self.say = say
        self.every_s = every_s
        self._last: tuple[str, float] | None = None

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if self._last is None or message != self._last[0] or now - self._last[1] >= self.every_s:
            self._last = (message, now)
            self.say(message)


def host_waits(control: Control, step: str, fraction: float, who: str) -> Callable[[dict[str, Any]], None]:
    """A host lock's ``on_wait`` (or a profiler's ``progress``) that relays its waits as ``step`` progress.

    ``who`` begins each message: the device whose export or session waits, or the work that does
    (``building <supernet>``).
    """
    relay = WaitRelay(lambda message: control.step(step, fraction, f"{who}: {message}"))

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "waiting":
            relay(str(event["message"]))

    return on_event


def start_job(store: Store, job_id: str, runner: str | None = None) -> Control:
    """Make this runner the job's one runner; :class:`JobCancelled` if the job was stopped first.

    A ``running`` job may be started again (a retried task takes over from a dead one); the state is
    checked and written in one step, so a cancel that comes while the runner starts is never undone.
    ``runner``: the token the dispatcher claimed the job with for this task (:func:`claim_job`; a
    retry of the task carries the same one), so the task starts only while the claim is still its
    own; a stale task never takes over from a newer one.  Without it a fresh token takes over, naming
    this process's lease (:mod:`hwsearch.jobs.runners`), so recovery knows the job lives while this process does.
    """
    token = runner or new_runner_token(store)
    expected = {} if runner is None else {"expect_runner": runner}
    if not store.transition_job(job_id, ACTIVE_STATES, "running", error=None, runner=token, **expected):
        raise JobCancelled(Control(store, job_id, token).reason_to_stop() or f"job {job_id} changed")
    return Control(store, job_id, token)


def new_job(store: Store, spec: Mapping[str, Any]) -> tuple[str, str]:
    """Record a job this process runs itself, claimed in the same write; its id and this runner's token.

    A job created first and claimed or started later had no runner between
    the two (``init_ray`` alone takes seconds), and a ``hwsearch serve``
    starting on the store then took it for a dead process's job: it was
    marked ``interrupted`` and its runner stopped with :class:`JobCancelled`.
    Pass the token on as ``runner`` (:func:`~hwsearch.jobs.run_job_watched`).
    """
    token = new_runner_token(store)
    return store.create_job(spec, runner=token), token


def claim_job(store: Store, job_id: str) -> str | None:
    """Claim a queued job for one task: write a new runner token; None if the job is no longer queued.

    The token names this process's lease (:mod:`hwsearch.jobs.runners`): the task runs this process's claim.
    """
    token = new_runner_token(store)
    try:
        return token if store.transition_job(job_id, ("queued",), "queued", runner=token) else None
    except KeyError:
        return None


def finish_job(control: Control, result: dict[str, Any]) -> dict[str, Any]:
    """Record the result if the job is still running by this runner, else stop (:class:`JobCancelled`).

    A cancel (or a takeover) that lands while the job finishes wins: the job stays cancelled, so the
    service's record never says ``succeeded`` for a job its client saw cancelled.
    """
    control.write_while_running("succeeded", result=result,
                                progress={"step": "done", "fraction": 1.0, "message": "", "at": time.time()})
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*[^\s'\".,:;)]")  # not the sentence's own colon
#: An address outside a URL: OpenSSL's "certificate is not valid for '10.0.0.5'" named an unpinned agent's.
_ADDRESS = re.compile(r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|\[?[0-9A-Fa-f:]*::[0-9A-Fa-f:]*\]?"
                      r"|\[?(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\]?)(?::\d+)?(?![\w.]|:\d)"
                      r"|not valid for '[^']*'")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s'\":,()\[\]]+){2,}/?|/[^/\s'\":,()\[\]]+/")
MAX_ERROR_CHARS = 300


def describe_error(error: BaseException) -> str:
    """A failure as one line a client may see: type and first line, no paths, URLs or traceback.

    A job's error is shown to every client of the service, so it must not
    leak the server's file layout, its agents' addresses (which stay with the
    operator: an unreachable agent's error named its URL, and OpenSSL's its
    host) or a stack; Ray's
    wrapper errors are unwrapped to the exception the job raised.  Terminal
    codes (``ESC [``) are dropped and other control and bidi characters shown
    escaped (:func:`devices.plain.printable`): clients print the line.
    """
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = _ANSI.sub("", str(error)).strip().splitlines()
    first = _ADDRESS.sub(_address, _PATH.sub("<path>", _URL.sub("<url>", text[0] if text else "")))
    line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return printable(line, MAX_ERROR_CHARS)


def _address(match: re.Match[str]) -> str:
    return "not valid for <host>" if match.group().startswith("not valid") else "<address>"


def record_failure(store: Store, job_id: str, error: BaseException,
                   only_from: Collection[str] = ACTIVE_STATES, runner: str | None = None) -> None:
    """Mark a job failed with :func:`describe_error`'s line if its state is in ``only_from``
    (and its runner token is ``runner``, when given).

    A stopped or deleted job stays so, and a deleted one is no error: this runs where a job's task
    ended (the dispatcher's loop, a runner's last handler), and raising there would hide the failure
    or stop the loop.  A runner records its own failures (:meth:`Control.failing`); its caller
    passes ``("queued",)`` for what failed before the runner started.  The dispatcher passes the
    token it claimed the job with, so a task that crashed after another process resumed the job
    does not fail its successor.
    """
    expected = {} if runner is None else {"expect_runner": runner}
    with contextlib.suppress(KeyError):
        store.transition_job(job_id, only_from, "failed", error=describe_error(error), **expected)


def cancel_job(*, store: Store, job_id: str) -> Any:
    """Mark an active job cancelled; its runner stops at its next check.  A finished job stays finished."""
    store.transition_job(job_id, ACTIVE_STATES, "cancelled")
    return store.get_job(job_id)


def interrupt_job(store: Store, job_id: str, reason: str) -> bool:
    """Mark an active job ``interrupted`` (its process is stopping); a stopped or deleted job stays so.

    A runner still going meets the new state at its next write and stops.
    """
    try:
        return store.transition_job(job_id, ACTIVE_STATES, "interrupted", error=reason)
    except KeyError:
        return False


def recover_jobs(*, store: Store) -> list[str]:
    """After a restart: jobs a dead process left active are marked ``interrupted``.

    Only jobs whose runner is gone (:func:`~hwsearch.jobs.runners.runner_alive`):
    a ``hwsearch search`` running on the store meanwhile keeps its job.  Each
    job is marked only if its runner is still the one found dead, in the same
    write, so a job a live process claimed meanwhile is left to it.  Their
    measurements are in the store, so a resume continues from them.  Returns
    the ids that were touched.
    """
    kept = "its measurements are kept and a resume continues from them"
    reason = (f"its process was gone when a service started on the store; {kept}" if has_leases(store) else
              f"a service started on the store, which keeps no runner leases (it is no local SQLite file), so "
              f"it could not tell whether this job's process lived; {kept}")
    orphans = [record for record in store.jobs_in_states(ACTIVE_STATES) if not runner_alive(store, record.runner)]
    touched = [record.job_id for record in orphans
               if store.transition_job(record.job_id, ACTIVE_STATES, "interrupted", expect_runner=record.runner,
                                       error=reason)]
    remove_dead_leases(store)
    return touched
