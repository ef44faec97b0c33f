"""Where measurements, accuracies and jobs live: one contract, two backends.

:class:`Store` states the contract; :class:`MemoryStore` (tests, one-off CLI
runs) and :class:`SQLiteStore` (the service, Ray workers, resumable
profiling) implement it, and one test suite covers both.  Use
:func:`open_store` to turn ``None``, a path, a plug-in's URL
(:mod:`hwsearch.store_urls`) or a store into a store.
"""

from __future__ import annotations

import abc
import copy
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Union

import numpy as np

from hwsearch.checks import is_real

__all__ = [
    "ACTIVE_STATES",
    "JOB_STATES",
    "JobPlace",
    "JobRecord",
    "MemoryStore",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreFailed",
    "TERMINAL_STATES",
    "UNREADABLE_STATE",
    "open_store",
    "spec_checkpoint",
]

#: A job that waits for or has a runner; it may not be deleted (its runner would write to nothing).
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
JOB_STATES = ACTIVE_STATES + TERMINAL_STATES
#: How a job whose stored state is none of :data:`JOB_STATES` reads (a hand edit, a damaged disk): ``bogus`` made
#: every listing that reached it a 500.  A terminal state, so nothing waits for it, recovers it or counts it as
#: running; and it never runs by accident: every transition tests the *stored* text, which is in none of the
#: states a runner, a claim, a resume or recovery moves a job from, so only deleting it changes it.
UNREADABLE_STATE = "failed"
_UNSET: Any = object()  # "argument not given", so that ``error=None`` can clear an error
log = logging.getLogger(__name__)


class StoreError(Exception):
    """A store that cannot be used as it is: not a store, a newer schema, read-only, locked.

    Raised when the store is opened, so a command fails before it measures
    anything rather than when it writes the first row.
    """


class StoreFailed(StoreError):
    """A store that opened failed in a call later: a plug-in's lost connection, say
    (:class:`~hwsearch.store_urls.ScreenedStore`, whose line never quotes the URL's credentials).

    The work failed, not the user's input: the CLI ends 1, the service answers 503.
    """


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job; later updates never change it.

    ``unreadable`` names the fields whose stored value could not be read (a
    damaged row: text that is not JSON, a spec or progress that is not an
    object, an error that is not text, a state none of :data:`JOB_STATES`);
    each reads as empty (``{}`` or None; the state as :data:`UNREADABLE_STATE`),
    so one damaged job does not fail every listing and start-up it is in.
    """

    job_id: str
    spec: dict[str, Any]
    state: str
    progress: dict[str, Any]
    result: Any
    error: str | None
    created: float
    updated: float
    runner: str | None = None
    unreadable: tuple[str, ...] = ()


class JobPlace(NamedTuple):
    """Where a job comes in the listing of :meth:`Store.recent_jobs`: its creation time, then its id (for jobs
    created at the same instant)."""

    created: float
    job_id: str

    @classmethod
    def of(cls, record: JobRecord) -> JobPlace:
        """The place of the job ``record`` holds."""
        return cls(record.created, record.job_id)


def _check_state(state: str) -> None:
    if state not in JOB_STATES:
        raise ValueError(f"unknown job state {state!r}; expected one of {list(JOB_STATES)}")


def _check_states(states: Collection[str]) -> tuple[str, ...]:
    for state in states:
        _check_state(state)
    return tuple(states)


def _job_changes(state: str | None, progress: Mapping[str, Any] | None, result: Any, error: Any,
                 runner: Any) -> dict[str, Any]:
    """The columns an update writes, by name: both backends build a change the same way, and check its state."""
    changes: dict[str, Any] = {}
    if state is not None:
        _check_state(state)
        changes["state"] = state
    if progress is not None:
        changes["progress"] = dict(progress)
    optional = {"result": result, "error": error, "runner": runner}
    return changes | {column: value for column, value in optional.items() if value is not _UNSET}


def _refuse_active(job_id: str, state: str) -> None:
    if state in ACTIVE_STATES:
        raise ValueError(f"job {job_id} is {state}; cancel it before deleting it")


def spec_checkpoint(spec: Mapping[str, Any]) -> str | None:
    """The checkpoint a job's spec names (``spec["supernet"]["checkpoint"]``), if it names one as a string."""
    supernet = spec.get("supernet")
    checkpoint = supernet.get("checkpoint") if isinstance(supernet, Mapping) else None
    return checkpoint if isinstance(checkpoint, str) else None


def _checked_accuracy(arch_key: str, accuracy: Any) -> float:
    """``accuracy`` as a float if it is a fraction in ``[0, 1]``; else a ValueError naming the subnet.

    Both backends check alike: SQLite refused NaN as NULL (an IntegrityError)
    where the memory store kept it, and an accuracy of 57 (a percentage) or
    infinity, once stored, failed every predictor later trained on the rows.
    """
    value = float(accuracy) if is_real(accuracy) else math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"accuracy of subnet {arch_key!r} is {accuracy!r}, not a fraction in [0, 1]")
    return value


def _check_latency(arch_key: str, measurement: Mapping[str, Any]) -> None:
    """A ValueError naming the subnet unless its ``latency_ms`` (where given) is a time or NaN.

    NaN is what a session stores for a subnet it could not measure (too few
    clean rounds; readers fall back to the raw median), so it stays; an
    infinite, negative or non-numeric latency is no measurement at all.
    """
    latency = measurement.get("latency_ms", 0.0)
    if not is_real(latency) or math.isinf(latency) or latency < 0:
        raise ValueError(f"latency_ms of subnet {arch_key!r} is {latency!r}, not a time in milliseconds "
                         "(or NaN for a subnet its session could not measure)")


def _json_copy(value: Any) -> Any:
    """A deep, JSON-only copy: what a SQLite round trip would give, so backends agree."""
    return json.loads(_dumps(value))


def _dumps(value: Any) -> str:
    """A store value as JSON text, numpy's numbers and arrays as the numbers they hold.

    A measurement holding ``np.float32(1.5)`` was refused with json's
    "Object of type float32 is not JSON serializable".
    """
    return json.dumps(value, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"store values must be JSON (numbers, strings, lists, dicts), got a {type(value).__name__}")


class Store(abc.ABC):
    """Persistent state of hwsearch.

    Contract, for every backend:

    * **Thread-safe.** Any method may be called from any thread at any time.
    * **Snapshots.** Returned dicts and :class:`JobRecord` objects are copies;
      later writes never change them, and changing them never changes the store.
    * **Upserts.** ``put_*`` replaces the row with the same key (a re-measurement
      wins).  Latencies are keyed by ``(device_hash, space_name, arch_key)``, where
      hwsearch passes a device's identity (``DeviceProfile.identity``: settings on
      one host) and the space's ``network_id`` (its name and fixed layout, head included);
      accuracies by ``(supernet_id, dataset_id, arch_key)``.
    * **JSON values.** Measurements, specs, progress and results must be
      JSON-serialisable; they come back as plain JSON types.
    * **Jobs.** ``update_job`` changes only the fields it is given (``error=None``
      clears the error; ``progress`` replaces the whole progress dict); an
      unknown id raises :class:`KeyError`; states are :data:`JOB_STATES`.
      ``runner`` is the token of the one runner allowed to work on the job.
    * **Transitions.** ``transition_job`` is ``update_job`` under a condition on
      the job's state (and runner), checked and written as one step: of two
      writers that both saw ``queued``, one starts the job and the other sees
      that it lost, so a cancel is never overwritten by a writer that read the
      state before it.
    * **Deletion.** ``delete_job`` removes a stopped job with its events, at once.
    * **Progress events.** Every ``progress`` given to ``update_job`` is also
      appended to the job's event log with the next sequence number (1, 2, ...),
      in the same write; ``job_events(job_id, after=n)`` returns the events
      after ``n`` in order, so a listener that polls misses none.
    * **Picklable.** A pickled store reopens its backing storage in the new
      process, so it can be handed to Ray workers.  A backend whose copies do
      not share it (:class:`MemoryStore`) says so with
      ``shared_across_processes = False``, and work that writes from workers
      refuses it.
    """

    #: Whether a copy unpickled in another process writes to the same storage.
    shared_across_processes: ClassVar[bool] = True

    @abc.abstractmethod
    def put_latency(self, device_hash: str, space_name: str, arch_key: str,
                    measurement: Mapping[str, Any]) -> None:
        """Store one subnet's measurement (a ``Measurement.to_dict()`` plus context).

        :class:`ValueError` naming the subnet for a ``latency_ms`` that is no time (infinite, negative, not a
        number); NaN stays, as the mark of a subnet its session could not measure.
        """

    @abc.abstractmethod
    def get_latencies(self, device_hash: str, space_name: str) -> dict[str, dict[str, Any]]:
        """All measurements of one space on one device, by arch key.

        A stored row that is not a JSON object (a damaged file) is left out with a warning naming it, so a
        run measures it again and a reader is not failed by it.
        """

    @abc.abstractmethod
    def put_accuracy(self, supernet_id: str, dataset_id: str, arch_key: str,
                     accuracy: float) -> None:
        """Store one subnet's accuracy: a fraction in ``[0, 1]``, else :class:`ValueError` naming the subnet."""

    @abc.abstractmethod
    def get_accuracies(self, supernet_id: str, dataset_id: str) -> dict[str, float]:
        """All accuracies of one supernet on one dataset, by arch key."""

    @abc.abstractmethod
    def create_job(self, spec: Mapping[str, Any], *, runner: str | None = None) -> str:
        """Record a new ``queued`` job; return its id.

        ``runner``: the token of the process that will run it here (a job made to be run in-process,
        :func:`hwsearch.jobs.new_job`), written with it, so that it is never without a live runner.
        """

    @abc.abstractmethod
    def update_job(self, job_id: str, *, state: str | None = None,
                   progress: Mapping[str, Any] | None = None, result: Any = _UNSET,
                   error: str | None = _UNSET, runner: str | None = _UNSET) -> None:
        """Change the given fields of a job (see the class docstring)."""

    @abc.abstractmethod
    def transition_job(self, job_id: str, from_states: Collection[str], to_state: str, *,
                       expect_runner: str | None = _UNSET, progress: Mapping[str, Any] | None = None,
                       result: Any = _UNSET, error: str | None = _UNSET, runner: str | None = _UNSET) -> bool:
        """Atomically: if the job is in ``from_states`` (and has runner ``expect_runner``, when given), set its state
        to ``to_state`` and the given fields as :meth:`update_job` does, and return True; else change nothing and
        return False.

        Job states are read and then written by different processes (a runner starting or finishing, a client
        cancelling); only a compare-and-set keeps the later writer from undoing the earlier one.
        :class:`KeyError` for an unknown job.
        """

    @abc.abstractmethod
    def job_events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's progress events with ``seq > after``, oldest first, each with its ``seq``; at most ``limit``."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord:
        """A snapshot of one job; :class:`KeyError` if there is none."""

    @abc.abstractmethod
    def list_jobs(self) -> list[JobRecord]:
        """Snapshots of all jobs, oldest first: in :class:`JobPlace` order, as :meth:`recent_jobs` lists them newest
        first (jobs created in the same instant do not swap places between the two)."""

    @abc.abstractmethod
    def jobs_in_states(self, states: Collection[str]) -> list[JobRecord]:
        """Snapshots of the jobs in ``states``, oldest first, without decoding the other jobs; jobs created in the
        same instant in the order they were stored (recovery requeues them in the order they were submitted, Y18).

        Recovery after a restart looks for the few active jobs among many finished ones.
        """

    @abc.abstractmethod
    def job_checkpoints(self) -> set[str]:
        """Every string some job's spec names as ``spec["supernet"]["checkpoint"]``.

        Whether an uploaded checkpoint file is still needed depends on every job, so this is asked of all jobs
        without reading their specs one by one.
        """

    @abc.abstractmethod
    def count_jobs(self) -> int:
        """How many jobs the store holds (to bound them without listing them)."""

    @abc.abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Remove a stopped job and all its progress events, in one write.

        :class:`ValueError` for a job in :data:`ACTIVE_STATES` (it is queued or has a runner that would write
        to it: cancel it first); :class:`KeyError` for an unknown job.
        """

    @abc.abstractmethod
    def recent_jobs(self, limit: int, before: JobPlace | None = None) -> list[JobRecord]:
        """The ``limit`` newest jobs that come before place ``before`` (or of all), newest first.

        Pages of a listing that never reads every job.  Jobs are ordered by
        :class:`JobPlace`: by ``created``, then by ``job_id``.  A place
        outlives its job: paging on from a job deleted meanwhile neither
        fails nor skips a job (Y15: paging by the job's id answered 422).
        """

    # ------------------------------------------------------------------ derived helpers

    def mark_interrupted_running(self, reason: str = "the service stopped while it ran") -> list[str]:
        """After a restart: mark jobs left ``running`` as ``interrupted``; return their ids."""
        return [record.job_id for record in self.jobs_in_states(("running",))
                if self.transition_job(record.job_id, ("running",), "interrupted", error=reason)]


# --------------------------------------------------------------------------- memory


class MemoryStore(Store):
    """Dicts behind one lock.  Pickling copies the contents (there is no shared file)."""

    shared_across_processes: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._latencies: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._accuracies: dict[tuple[str, str], dict[str, float]] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = self.__dict__.copy()
            del state["_lock"]
            return copy.deepcopy(state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def put_latency(self, device_hash: str, space_name: str, arch_key: str,
                    measurement: Mapping[str, Any]) -> None:
        _check_latency(arch_key, measurement)
        value = _json_copy(dict(measurement))
        with self._lock:
            self._latencies.setdefault((device_hash, space_name), {})[arch_key] = value

    def get_latencies(self, device_hash: str, space_name: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._latencies.get((device_hash, space_name), {}))

    def put_accuracy(self, supernet_id: str, dataset_id: str, arch_key: str,
                     accuracy: float) -> None:
        value = _checked_accuracy(arch_key, accuracy)
        with self._lock:
            self._accuracies.setdefault((supernet_id, dataset_id), {})[arch_key] = value

    def get_accuracies(self, supernet_id: str, dataset_id: str) -> dict[str, float]:
        with self._lock:
            return dict(self._accuracies.get((supernet_id, dataset_id), {}))

    def create_job(self, spec: Mapping[str, Any], *, runner: str | None = None) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        record = JobRecord(job_id, _json_copy(dict(spec)), "queued", {}, None, None, now, now, runner)
        with self._lock:
            self._jobs[job_id] = record
            self._events[job_id] = []
        return job_id

    def update_job(self, job_id: str, *, state: str | None = None,
                   progress: Mapping[str, Any] | None = None, result: Any = _UNSET,
                   error: str | None = _UNSET, runner: str | None = _UNSET) -> None:
        self._change_job(job_id, _job_changes(state, progress, result, error, runner), lambda _: True)

    def transition_job(self, job_id: str, from_states: Collection[str], to_state: str, *,
                       expect_runner: str | None = _UNSET, progress: Mapping[str, Any] | None = None,
                       result: Any = _UNSET, error: str | None = _UNSET, runner: str | None = _UNSET) -> bool:
        states = _check_states(from_states)
        changes = _job_changes(to_state, progress, result, error, runner)
        return self._change_job(job_id, changes, lambda old: old.state in states and (
            expect_runner is _UNSET or old.runner == expect_runner))

    def _change_job(self, job_id: str, changes: dict[str, Any], allowed: Callable[[JobRecord], bool]) -> bool:
        """Apply ``changes`` if ``allowed(record)``, under the lock, so the check and the write are one step."""
        changes = {**_json_copy(changes), "updated": time.time()}
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(job_id)
            old = self._jobs[job_id]
            if not allowed(old):
                return False
            self._jobs[job_id] = JobRecord(**{**old.__dict__, **changes})
            if "progress" in changes:
                events = self._events[job_id]
                events.append({**changes["progress"], "seq": len(events) + 1})
            return True

    def job_events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(job_id)
            events = self._events[job_id][max(after, 0):]
            return copy.deepcopy(events if limit is None else events[:limit])

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(job_id)
            return copy.deepcopy(self._jobs[job_id])

    def list_jobs(self) -> list[JobRecord]:
        with self._lock:
            records = copy.deepcopy(list(self._jobs.values()))
        return sorted(records, key=JobPlace.of)

    def jobs_in_states(self, states: Collection[str]) -> list[JobRecord]:
        wanted = _check_states(states)
        with self._lock:
            records = copy.deepcopy([record for record in self._jobs.values() if record.state in wanted])
        return sorted(records, key=lambda r: r.created)  # stable: ties keep the order they were stored in

    def job_checkpoints(self) -> set[str]:
        with self._lock:
            return {checkpoint for record in self._jobs.values()
                    if (checkpoint := spec_checkpoint(record.spec)) is not None}

    def count_jobs(self) -> int:
        with self._lock:
            return len(self._jobs)

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(job_id)
            _refuse_active(job_id, self._jobs[job_id].state)
            del self._jobs[job_id], self._events[job_id]

    def recent_jobs(self, limit: int, before: JobPlace | None = None) -> list[JobRecord]:
        with self._lock:
            records = [record for record in self._jobs.values() if before is None or JobPlace.of(record) < before]
            return copy.deepcopy(sorted(records, key=JobPlace.of, reverse=True)[:limit])


# --------------------------------------------------------------------------- sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latencies (
    device_hash TEXT NOT NULL, space_name TEXT NOT NULL, arch_key TEXT NOT NULL,
    data TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (device_hash, space_name, arch_key));
CREATE TABLE IF NOT EXISTS accuracies (
    supernet_id TEXT NOT NULL, dataset_id TEXT NOT NULL, arch_key TEXT NOT NULL,
    accuracy REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (supernet_id, dataset_id, arch_key));
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, progress TEXT NOT NULL,
    result TEXT, error TEXT, created REAL NOT NULL, updated REAL NOT NULL, runner TEXT);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq));
"""

_JOB_COLUMNS = "job_id, spec, state, progress, result, error, created, updated, runner"
_TABLE_COLUMNS = {
    "latencies": ("device_hash", "space_name", "arch_key", "data", "updated"),
    "accuracies": ("supernet_id", "dataset_id", "arch_key", "accuracy", "updated"),
    "jobs": tuple(_JOB_COLUMNS.split(", ")),
    "job_events": ("job_id", "seq", "data"),
}

_CHECKPOINT = "'$.supernet.checkpoint'"
#: Each job's checkpoint name, read by SQLite, or its whole spec where SQLite's JSON functions cannot read it: Python's
#: json writes NaN and Infinity for such floats, which SQLite refuses (before 3.42), and a query that failed on one
#: such spec, or skipped it, would fail the caller or hide a name still in use.
#: The job's id comes only with such a spec, so the readable ones stay one row per name.
_CHECKPOINTS = (f"SELECT DISTINCT json_valid(spec), CASE WHEN NOT json_valid(spec) THEN spec "
                f"WHEN json_type(spec, {_CHECKPOINT}) = 'text' THEN json_extract(spec, {_CHECKPOINT}) END, "
                f"CASE WHEN NOT json_valid(spec) THEN job_id END FROM jobs")

#: The schema this code writes, kept in the file as ``PRAGMA user_version``.  Stores written before
#: it was set read 0 and are brought up to it; a higher number is a newer hwsearch's store, whose
#: rows this one might misread or fail to write, so it is refused when opened.
SCHEMA_VERSION = 1

# sqlite3's messages for the usual ways a store file is unusable, and what to tell the user.
_OPEN_PROBLEMS = (
    ("file is not a database", "is not a SQLite database (not an hwsearch store)"),
    ("readonly database", "is read-only; hwsearch writes to its store"),
    ("database is locked", "is locked by another process (another hwsearch writing to it?)"),
    ("unable to open database file", "cannot be opened (is its folder writable?)"),
)


class SQLiteStore(Store):
    """A SQLite file in WAL mode with one connection per thread.

    WAL lets readers proceed while one writer commits, so a Ray worker can
    write measurements while the service reads job progress.  Connections are
    thread-local and dropped on pickling; each process and thread reconnects
    on first use.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        # Absolute: the store travels (pickled) to Ray workers, whose working folder on a cluster
        # is not this process's; `--out s3` there failed every job with "unable to open database file".
        self.path = Path(os.path.abspath(path))
        self.timeout = timeout
        self._local = threading.local()
        if self.path.is_dir():
            raise StoreError(f"store {self.path} is a folder; give the path of a store file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare()
        except sqlite3.Error as error:
            raise StoreError(f"store {self.path} {_open_problem(error)}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.timeout = state["path"], state["timeout"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; writes go through :meth:`_write`)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_to_the_file()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _connect_to_the_file(self) -> sqlite3.Connection:
        """A connection to the store's file, which :meth:`__init__` made: never a new, empty one.

        A store travels to Ray workers by its path.  On a cluster node that
        did not see the path, sqlite made an empty file there (or failed
        with "unable to open database file" where the folder was missing),
        and the job failed with "no such table: accuracies" (probe Z10).
        """
        try:
            return sqlite3.connect(self.path.as_uri() + "?mode=rw", uri=True, timeout=self.timeout,
                                   isolation_level=None)
        except sqlite3.OperationalError:
            if self.path.exists():
                raise
            raise StoreError(f"store {self.path} does not exist on {socket.gethostname()}: it was removed, or "
                             "this is a Ray worker on a node that does not see it (keep the store where every "
                             "node of the cluster sees it at the same path)") from None

    def _prepare(self) -> None:
        """Check the schema, then take the write lock once, so an unusable store fails now, before any work.

        Without this a locked store, or one with another schema, failed at its
        first write, after the measurements it was to hold had been taken.
        """
        self._check_schema()
        with self._write() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if "runner" not in columns:  # stores from before runner tokens (NULL: no runner)
                conn.execute("ALTER TABLE jobs ADD COLUMN runner TEXT")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_schema(self) -> None:
        """Refuse a newer schema version, another program's database or tables whose columns are not ours, reading only.

        Read on a plain connection, before :meth:`_conn` switches the file to
        WAL, so a store this hwsearch refuses is left byte for byte as it was.
        """
        with closing(sqlite3.connect(self.path, timeout=self.timeout)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            _refuse_foreign(self.path, conn)
            if version > SCHEMA_VERSION:
                raise StoreError(f"store {self.path} has schema version {version}, written by a newer "
                                 f"hwsearch; this one reads versions up to {SCHEMA_VERSION}")
            for table, expected in _TABLE_COLUMNS.items():
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if columns and columns not in (set(expected), set(expected) - {"runner"}):  # runner: added by _prepare
                    raise StoreError(f"store {self.path}: table {table} has columns {sorted(columns)}, not "
                                     f"this hwsearch's {sorted(expected)} (a newer or foreign schema)")

    def _write(self) -> "_Transaction":
        return _Transaction(self._conn())

    def put_latency(self, device_hash: str, space_name: str, arch_key: str,
                    measurement: Mapping[str, Any]) -> None:
        _check_latency(arch_key, measurement)
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO latencies (device_hash, space_name, arch_key, data, updated) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (device_hash, space_name, arch_key, _dumps(dict(measurement)),
                          time.time()))

    def get_latencies(self, device_hash: str, space_name: str) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute("SELECT arch_key, data FROM latencies WHERE device_hash = ? "
                                    "AND space_name = ?", (device_hash, space_name)).fetchall()
        decoded = {key: _json_object(data) for key, data in rows}
        unreadable = sorted(key for key, row in decoded.items() if row is None)
        if unreadable:
            log.warning("store %s: %d latency rows of device %s are not JSON objects and are left out (a run "
                        "measures them again): %s", self.path, len(unreadable), device_hash,
                        ", ".join(map(repr, unreadable[:3])) + (", ..." if len(unreadable) > 3 else ""))
        return {key: row for key, row in decoded.items() if row is not None}

    def put_accuracy(self, supernet_id: str, dataset_id: str, arch_key: str,
                     accuracy: float) -> None:
        value = _checked_accuracy(arch_key, accuracy)
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO accuracies (supernet_id, dataset_id, arch_key, accuracy, updated) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (supernet_id, dataset_id, arch_key, value, time.time()))

    def get_accuracies(self, supernet_id: str, dataset_id: str) -> dict[str, float]:
        rows = self._conn().execute("SELECT arch_key, accuracy FROM accuracies WHERE "
                                    "supernet_id = ? AND dataset_id = ?",
                                    (supernet_id, dataset_id)).fetchall()
        return dict(rows)

    def create_job(self, spec: Mapping[str, Any], *, runner: str | None = None) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._write() as conn:
            conn.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (job_id, _dumps(dict(spec)), "queued", "{}", "null", None, now, now,
                          runner))
        return job_id

    def update_job(self, job_id: str, *, state: str | None = None,
                   progress: Mapping[str, Any] | None = None, result: Any = _UNSET,
                   error: str | None = _UNSET, runner: str | None = _UNSET) -> None:
        self._change_job(job_id, _job_changes(state, progress, result, error, runner), "", ())

    def transition_job(self, job_id: str, from_states: Collection[str], to_state: str, *,
                       expect_runner: str | None = _UNSET, progress: Mapping[str, Any] | None = None,
                       result: Any = _UNSET, error: str | None = _UNSET, runner: str | None = _UNSET) -> bool:
        states = _check_states(from_states)
        changes = _job_changes(to_state, progress, result, error, runner)
        condition = f" AND state IN ({', '.join('?' * len(states))})"
        if expect_runner is not _UNSET:
            condition += " AND runner IS ?"
            states += (expect_runner,)
        return self._change_job(job_id, changes, condition, states)

    def _change_job(self, job_id: str, changes: dict[str, Any], condition: str, arguments: tuple[Any, ...]) -> bool:
        """One ``UPDATE ... WHERE job_id = ? <condition>``: the check and the write are one statement.

        ``rowcount`` 0 means the condition failed, or there is no such job (:class:`KeyError`).
        """
        encoded = {column: _dumps(value) if column in ("progress", "result") else value
                   for column, value in changes.items()}
        sets = ", ".join(f"{column} = ?" for column in ("updated", *encoded))
        with self._write() as conn:
            cursor = conn.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?{condition}",
                                  (time.time(), *encoded.values(), job_id, *arguments))
            if cursor.rowcount == 0:
                if conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is None:
                    raise KeyError(job_id)
                return False
            if "progress" in encoded:
                conn.execute("INSERT INTO job_events (job_id, seq, data) SELECT ?, COALESCE(MAX(seq), 0) + 1, ? "
                             "FROM job_events WHERE job_id = ?", (job_id, encoded["progress"], job_id))
        return True

    def job_events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        self.get_job(job_id)  # KeyError for an unknown job, as the contract says
        rows = self._conn().execute("SELECT seq, data FROM job_events WHERE job_id = ? "
                                    "AND seq > ? ORDER BY seq LIMIT ?",
                                    (job_id, after, -1 if limit is None else limit)).fetchall()
        return [{**(_json_object(data) or {"unreadable": True}), "seq": seq} for seq, data in rows]

    def get_job(self, job_id: str) -> JobRecord:
        row = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?",
                                   (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job_from_row(row)

    def list_jobs(self) -> list[JobRecord]:
        rows = self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created, job_id").fetchall()
        return [_job_from_row(row) for row in rows]

    def jobs_in_states(self, states: Collection[str]) -> list[JobRecord]:
        wanted = _check_states(states)
        rows = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({', '.join('?' * len(wanted))}) "
                                    "ORDER BY created, rowid", wanted).fetchall()
        return [_job_from_row(row) for row in rows]

    def job_checkpoints(self) -> set[str]:
        rows = self._conn().execute(_CHECKPOINTS).fetchall()
        names = (value if valid else _checkpoint_in_text(job_id, value) for valid, value, job_id in rows)
        return {name for name in names if isinstance(name, str)}

    def count_jobs(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def delete_job(self, job_id: str) -> None:
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            _refuse_active(job_id, row[0])
            conn.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def recent_jobs(self, limit: int, before: JobPlace | None = None) -> list[JobRecord]:
        conn = self._conn()
        if before is None:
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created DESC, job_id DESC "
                                "LIMIT ?", (limit,)).fetchall()
        else:
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE (created, job_id) < (?, ?) "
                                "ORDER BY created DESC, job_id DESC LIMIT ?",
                                (before.created, before.job_id, limit)).fetchall()
        return [_job_from_row(row) for row in rows]


def _refuse_foreign(path: Path, conn: sqlite3.Connection) -> None:
    """:class:`StoreError` for a database with tables but none of hwsearch's: another program's file.

    ``--store`` pointed at a browser's or another tool's SQLite file added
    hwsearch's tables to it, switched it to WAL and set its user_version.
    """
    tables = sorted(name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    if not name.startswith("sqlite_"))
    if tables and not set(tables) & set(_TABLE_COLUMNS):
        shown = ", ".join(map(repr, tables[:5])) + (", ..." if len(tables) > 5 else "")
        raise StoreError(f"store {path} is another program's SQLite database (tables {shown}), not an hwsearch "
                         "store; give an hwsearch store or a new file")


def _open_problem(error: sqlite3.Error) -> str:
    """What made a store unusable, in the user's terms where sqlite3's message is a known one."""
    text = str(error)
    return next((problem for marker, problem in _OPEN_PROBLEMS if marker in text), f"cannot be used: {text}")


class _Transaction:
    """``with`` wrapper: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection.

    Taking the write lock up front avoids the deadlock-prone upgrade from a
    read to a write transaction when several threads write at once.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        """Commit, or roll back what SQLite has not rolled back itself.

        On some errors (the disk or ``max_page_count`` full) SQLite ends the
        transaction on its own; a ROLLBACK then failed with "cannot rollback -
        no transaction is active", which hid the error that mattered.  A
        COMMIT that fails leaves the transaction open, and the thread's
        connection with it, so it is rolled back before the error goes on.
        """
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                self._end()
                raise
        else:
            self._end()

    def _end(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


_UNREADABLE = object()  # a stored field that is not the JSON its column holds


def _decoded(text: Any) -> Any:
    """A stored JSON field's value, or :data:`_UNREADABLE` (not JSON, not text, or nested past the parser)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return _UNREADABLE


def _json_object(text: Any) -> dict[str, Any] | None:
    """A stored JSON object, or None for anything else (damaged text, or JSON that is no object)."""
    value = _decoded(text)
    return value if isinstance(value, dict) else None


def _checkpoint_in_text(job_id: str, spec: Any) -> str | None:
    """:func:`spec_checkpoint` of a spec SQLite's JSON functions cannot read; None, with a warning, for damaged text.

    A job whose spec cannot be read at all names nothing anyone can use (it
    can be neither resumed nor shown), so it keeps no checkpoint; before, its
    JSONDecodeError stopped the service from starting.
    """
    value = _decoded(spec)
    if value is _UNREADABLE:
        log.warning("job %s: its stored spec is not JSON; it is taken to name no checkpoint", job_id)
        return None
    return spec_checkpoint(value) if isinstance(value, Mapping) else None


def _job_from_row(row: tuple[Any, ...]) -> JobRecord:
    """A stored job, with any field that cannot be read empty and named in ``unreadable``.

    One damaged row (hand-edited, or a disk error) turned every listing that
    reached it into a 500 and stopped the service from starting.
    """
    job_id, spec_text, state, progress_text, result_text, error, created, updated, runner = row
    spec, progress = _json_object(spec_text), _json_object(progress_text)
    result = None if result_text is None else _decoded(result_text)
    broken = {"spec": spec is None, "state": state not in JOB_STATES, "progress": progress is None,
              "result": result is _UNREADABLE, "error": not (error is None or isinstance(error, str))}
    return JobRecord(job_id, spec or {}, UNREADABLE_STATE if broken["state"] else state, progress or {},
                     None if broken["result"] else result, None if broken["error"] else error, created, updated,
                     runner, tuple(name for name, is_broken in broken.items() if is_broken))


StoreLike = Union[Store, str, Path, None]


def open_store(store: StoreLike = None) -> Store:
    """``None`` -> a new :class:`MemoryStore`; a path -> :class:`SQLiteStore`; a store -> itself.

    A ``scheme://...`` string is opened by the installed package that
    registered the scheme (:mod:`hwsearch.store_urls`).
    """
    if store is None:
        return MemoryStore()
    if isinstance(store, Store):
        return store
    if isinstance(store, str):
        from hwsearch.store_urls import is_store_url, open_store_url

        if is_store_url(store):
            return open_store_url(store)
    if isinstance(store, (str, Path)):
        return SQLiteStore(store)
    raise TypeError(f"expected None, a path or a Store, got {type(store).__name__}")
