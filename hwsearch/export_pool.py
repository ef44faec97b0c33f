"""Subnet exports in worker processes, so a profiling run exports on every core it may use.

Exporting one OFA-MobileNetV3 subnet at 160 px takes about 0.45 s of one
core here (torch's TorchScript exporter, mostly Python), so profiling 100
subnets spends as long exporting as measuring.  The exporter keeps
process-wide state and runs one export per process at a time, so more cores
need more processes.  Measured on this shared 2-core machine: two spawned
workers export at 0.29 s per subnet against 0.45 s in one process, after
about 3.3 s of start-up (spawn, import torch, receive the supernet).

**The host lock.**  Exports are compute units (:mod:`devices.hostlock`):
they run alongside each other, never during a local measurement session.
A worker is :func:`~devices.hostlock.covered_by_caller`: the thread that
hands it an export holds the compute unit while it waits, and the pool's
start-up runs inside a unit held by whoever starts it.  So no worker
touches the cores while a session measures, not even while it imports torch.

**When a pool pays.**  Start-up is a fixed cost, so :class:`Exporters`
exports a run's first subnets in its own process and starts workers only
when the faster of those exports, times the exports left, saves more than
start-up costs.  A pool is shared by every run of the process that exports
from the same supernet object (a job's devices, profiled in threads), and
closes with the last of them.

**However the process ends.**  Pool workers are not daemons, and
multiprocessing's exit handler joins every such child: a ``demo`` stopped
by SIGTERM while its pool was up never ended (3 of 4 stops on a loaded
host).  A pool still open at exit is ended first (:class:`~hwsearch.at_exit.OpenUntilExit`),
and a worker whose parent has died ends itself (:func:`_leave_when_orphaned`)
rather than wait on its task queue for ever.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import multiprocessing.context
import os
import pickle
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import popen_spawn_posix, spawn
from pathlib import Path
from types import FunctionType
from typing import TYPE_CHECKING, Any, TypeVar

from hwsearch.at_exit import ENDS_PROCESSES, OpenUntilExit, command_stopped, kept_if_exiting

if TYPE_CHECKING:  # torch loads only when something is exported
    from hwsearch.export import ExportReport

__all__ = ["ExportPool", "Exporters", "WorkerDiedStarting", "WorkersCannotImport", "exporters"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

START_SECONDS = 3.3  # a pool's start-up on this machine (module docstring)
MAX_WORKERS = 8  # each worker holds torch and a copy of the supernet (~0.3 GB with OFA-MobileNetV3)
_SAMPLES_BEFORE_DECIDING = 2  # the first export of a process also pays torch's one-off costs
_START_TIMEOUT_S = 120.0
#: How long a stopped command's exit waits for a pool's worker being started to take its data (3.3 s here).
STARTING_WORKER_WAIT_S = 20.0
_ORPHAN_CHECK_S = 1.0  # how often a worker looks for its parent
_LAUNCH_WATCH_S = 0.05  # how often a launch's watcher looks at its child
_DEATH_WAIT_S = 1.0  # how long a broken start waits to see which of its workers died
_REAP_WAIT_S = 1.0  # how long a killed worker whose launch was cut off may take to end (one in "D" takes a while)
#: How long an ended pool waits for its manager thread to finish with the killed workers.
_MANAGER_END_WAIT_S = 5.0

_worker_supernet: Any = None  # the supernet, in a worker process
_worker_start_barrier: Any = None  # passed by every worker's start-up task, in a worker process


class ExportPool:
    """``workers`` spawned processes, each holding ``supernet``, exporting one subnet at a time.

    Start-up (spawning, importing torch, unpickling the supernet) happens
    inside a compute unit held here, and returns once every worker is ready.
    """

    def __init__(self, supernet: Any, workers: int, *, on_wait: Callable[[dict[str, Any]], None] | None = None
                 ) -> None:
        from devices.hostlock import compute_unit

        if workers < 1:
            raise ValueError(f"an export pool needs at least one worker, got {workers}")
        self.workers = workers
        self._context = _RecordingContext()  # spawn: fork would copy locks mid-use
        # Kept as long as the pool: collected, its semaphore went while a starting worker still unpickled it.
        self._started = self._context.Barrier(workers)
        with compute_unit(on_wait=on_wait):
            _refuse_what_workers_cannot_import(supernet)
            self._pool = ProcessPoolExecutor(workers, mp_context=self._context,  # type: ignore[arg-type]
                                             initializer=_start_worker, initargs=(supernet, self._started))
            # Open before any worker starts (ExitBegun if the process is exiting): a stop during the start-up
            # ends the workers started so far, rather than leave one half-started for the exit to wait on.
            _OPEN_POOLS.opened(self)
            try:
                # One start-up task per worker: with spawn, each submit finding no idle worker starts one,
                # and no task passes the barrier until each worker holds one, so each reports its own pid.
                self._pids = self._checked_in([self._pool.submit(_check_in) for _ in range(workers)])
            except BaseException as error:  # a stop in this thread too (Y6: the exit then waited on a worker for ever)
                died = None
                try:
                    if isinstance(error, Exception) and not isinstance(error, WorkerDiedStarting):
                        died = self._context.died_launching(_DEATH_WAIT_S)
                finally:  # a Ctrl-C during that wait too (Y12: it left the worker, and the exit waited 120 s)
                    self.end_now()
                    self._context.forget_launched()
                    _OPEN_POOLS.closed(self)
                if died:
                    raise WorkerDiedStarting(died) from error
                raise

    def _checked_in(self, checked_in: list[Future[int]]) -> set[int]:
        """The workers' pids once every one has started; a worker that dies meanwhile fails the start at once.

        The pool's own watch sees only the workers it knew when it last
        woke, and the last launch comes after that: its death went unseen
        until the other workers' barrier gave up, 120 s later (Y12).
        """
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            done, pending = wait(checked_in, timeout=_LAUNCH_WATCH_S, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # a failed one raises its error
            if not pending:
                return {future.result() for future in checked_in}
            died = self._context.died_launching(0.0)
            if died:
                raise WorkerDiedStarting(died)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the export pool's workers did not start within {_START_TIMEOUT_S:g} s")

    @property
    def worker_pids(self) -> frozenset[int]:
        """The workers' process ids."""
        return frozenset(self._pids)

    def export(self, arch: Any, path: Path, **options: Any) -> ExportReport:
        """``export_subnet(supernet, arch, path, **options)`` in a worker.

        The caller must hold a compute unit for the duration (the worker is
        covered by it); :class:`Exporters` callers in the pipeline do.
        """
        return self._pool.submit(_export_in_worker, arch, path, options).result()

    def close(self) -> None:
        """Stop the workers (they hold memory: a supernet each)."""
        queues = self._queues()
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
        finally:  # a Ctrl-C during the wait too (Y16)
            kept_if_exiting(queues)
        _OPEN_POOLS.closed(self)

    def end_now(self) -> None:
        """Kill the workers, mid-export, idle or starting: the process is leaving, and nothing will wait for them.

        The shutdown comes first: it waits for a worker being started (the
        pool hands it the supernet through a pipe, and a worker cut off
        there printed a traceback after the command's last line), and no
        worker starts after it.  A stopped command gives up on such a start
        after :data:`STARTING_WORKER_WAIT_S` (one that hung held the stop
        for ever); any other exit waits as long as a start may take.  Then
        every worker launched is killed, by the pid its launch recorded
        (:class:`_RecordedPopen`): a worker still starting has no pid its
        ``Process`` shows, and left, it outlived the process and printed
        "pickle data was truncated" after it had ended (Y7, Y8, and Y9 for a
        Ctrl-C that cut a start in the main thread short).  A worker already
        reaped is never signalled: its pid may be another program's by now.
        """
        queues = self._queues()
        # The shutdown waits for the pool's lock, which a start under way holds while the worker takes its data.
        shut = threading.Event()
        threading.Thread(target=self._shut_down, args=(shut,), name="hwsearch-export-pool-end", daemon=True).start()
        try:
            try:
                shut.wait(STARTING_WORKER_WAIT_S if command_stopped() else _START_TIMEOUT_S)
            finally:  # a Ctrl-C during the wait cut the kills off, and the worker outlived the process (Y8)
                self._context.kill_launched()
            _let_managers_finish(self._pool)
        finally:  # a Ctrl-C during either wait too (Y16)
            kept_if_exiting(queues)

    def _queues(self) -> tuple[Any, ...]:
        """The pool's queues, which its shutdown drops.

        Kept through an exit (:func:`hwsearch.at_exit.kept_if_exiting`):
        otherwise whichever thread dropped them last (the call queue's own
        feeder, say, which multiprocessing's exit handler closes) finalized
        their semaphores, racing the interpreter's shutdown.
        """
        return tuple(queue for queue in (getattr(self._pool, "_call_queue", None),
                                         getattr(self._pool, "_result_queue", None)) if queue is not None)

    def _shut_down(self, done: threading.Event) -> None:
        """Shut the pool down without waiting for its workers, then set ``done`` (an Event, not ``join``: a join
        that a Ctrl-C interrupts marks the thread ended while it still runs)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        done.set()


def _let_managers_finish(pool: ProcessPoolExecutor) -> None:
    """Wait (at most :data:`_MANAGER_END_WAIT_S`) for ``pool``'s manager thread to finish with its killed workers.

    It closes the pool's call queue as it ends, and so does multiprocessing's
    exit handler, from the queue's feeder thread: at a stopped command's exit
    the two raced, and the loser printed ``OSError: [Errno 9] Bad file
    descriptor`` with a traceback after "terminated" (a clean clone's CI;
    3 runs in 25 of that test's script with a second before its exit).
    Found by its reference to the pool, not the pool's own attribute: a
    start may begin the thread after a stop has begun ending the pool, and
    the pool's shutdown forgets it.
    """
    deadline = time.monotonic() + _MANAGER_END_WAIT_S
    for thread in threading.enumerate():
        owner = getattr(thread, "executor_reference", None)
        if thread is not threading.current_thread() and callable(owner) and owner() is pool:
            _join_once_started(thread, deadline)


def _join_once_started(thread: threading.Thread, deadline: float) -> None:
    """Join ``thread`` until ``deadline`` (monotonic), waiting first for a thread being started to have started.

    ``threading.enumerate`` lists a thread from the moment its ``start``
    begins, and joining it before the new thread runs raises "cannot join
    thread before it is started": a stopped command whose pool's manager
    thread was starting ended 1 instead of 143, its error unseen past its
    last line (the project's CI; 3 of 12 runs of that test's script beside
    two busy loops).
    """
    while True:
        try:
            thread.join(max(deadline - time.monotonic(), 0.0))
            return
        except RuntimeError:  # not started yet: its start is under way in another thread
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)


class WorkerDiedStarting(BrokenProcessPool):
    """A pool worker died while it started; says which and how."""


class WorkersCannotImport(RuntimeError):
    """The supernet names code in ``__main__`` that a spawned worker cannot import."""


class _MainFinder(pickle.Pickler):
    """Pickles, refusing each class or function that lives in ``__main__``.

    Not multiprocessing's own pickler: torch registers its tensors there to
    pass them as shared-memory file descriptors, which outside a launch
    are handed to a background sharer that keeps each descriptor open.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            raise WorkersCannotImport(f"{obj.__qualname__} is defined in __main__ of a session run without a file "
                                      "(a notebook, a REPL, python -c), which a spawned worker cannot import")
        return NotImplemented


def _refuse_what_workers_cannot_import(supernet: Any) -> None:
    """:class:`WorkersCannotImport` if ``supernet`` names ``__main__`` code and workers will not run ``__main__``.

    A spawned worker imports the parent's main module again only when it
    ran from a file or with ``-m``.  Otherwise a supernet class defined
    there is not found, and the worker dies while the pool still writes its
    data.  That start hung for ever (Y10) until the launch's watcher
    (:class:`_RecordedPopen`); it now fails with a dead worker, which says
    nothing of why.  This check names the class, before any worker starts.
    """
    prepared = spawn.get_preparation_data("hwsearch-export-worker")
    if "init_main_from_path" in prepared or "init_main_from_name" in prepared:
        return
    try:
        _MainFinder(_Discarded(), protocol=pickle.HIGHEST_PROTOCOL).dump(supernet)
    except WorkersCannotImport:
        raise
    except Exception:  # noqa: BLE001  (not picklable at all: the launch says so, as it does for any session)
        return


class _Discarded(io.RawIOBase):
    """A sink that keeps nothing: the check needs the pickling, not its bytes."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class _RecordingContext:
    """A spawn context that records every worker it launches, for :meth:`ExportPool.end_now`.

    ``ProcessPoolExecutor`` keeps its workers to itself; this is the
    public door through which each of them is made.
    """

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[_RecordedSpawnProcess] = []

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802  (the context's own name)
        process = _RecordedSpawnProcess(*args, **kwargs)
        self._processes.append(process)
        return process

    def kill_launched(self) -> None:
        """SIGKILL every worker this process launched and has not reaped, started or still taking its data.

        A child forked from this process inherits the records, and its exit
        killed its parent's workers (Y10): only the launching process kills.
        A launch cut off mid-way is in no one's list of children, so it is
        reaped here; left, it stayed a zombie for the life of the process.
        """
        for process, launch in self._own_launches():
            launch.kill()
            if process.pid is None:
                launch.reap(_REAP_WAIT_S)

    def _own_launches(self) -> list[tuple[Any, _RecordedPopen]]:
        """``(process, launch)`` for each launch that this process made and that spawned a child.

        A forked child's records are its parent's, and a launch whose spawn
        failed has no pid: neither is this process's to end or to blame.
        """
        own = []
        for process in list(self._processes):
            launch = _LAUNCHES.get(process)
            if launch is not None and launch.launcher == os.getpid() and getattr(launch, "pid", None) is not None:
                own.append((process, launch))
        return own

    def died_launching(self, wait_s: float) -> str | None:
        """What ended a worker launched by this process that has already exited, if one has; ``None`` otherwise.

        With two workers or more, a start whose first worker died went on
        to launch the next against a pool already shutting down, and failed
        with whatever that race raised (``OSError: handle is closed``,
        ``ValueError: bad value(s) in fds_to_keep``: Y11, 3 to 5 starts in 10).
        A broken pool sends its other workers SIGTERM, so a worker that
        ended otherwise is named first.  A dying worker's pipes close before
        it can be waited for, so the pool may be broken a moment before any
        worker shows an exit: this waits up to ``wait_s`` for one.
        """
        launches = [launch for _, launch in self._own_launches()]
        deadline = time.monotonic() + wait_s
        ended = [launch for launch in launches if launch.poll() is not None]
        while launches and not ended and time.monotonic() < deadline:  # no child: nothing to wait for
            time.sleep(0.01)
            ended = [launch for launch in launches if launch.poll() is not None]
        if not ended:
            return None
        first = min(ended, key=lambda launch: launch.returncode == -signal.SIGTERM)
        code = first.returncode
        how = (f"exit code {code}" if code >= 0 else "killed by SIGKILL; out of memory?" if code == -signal.SIGKILL
               else f"killed by signal {-code}")
        return f"export worker {first.pid} died while it started ({how})"

    def forget_launched(self) -> None:
        """Drop this context's hold on its launches, once they are killed: a failed start's error holds the pool
        through its traceback, and with it every launch's pipes until a full collection (Y12: 2 per failed start)."""
        self._processes.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _RecordedPopen(popen_spawn_posix.Popen):
    """A spawn launch that records itself before it begins, and whose data write ends if the child dies.

    Its pid is set as soon as the child exists, before the child's data
    (the supernet, megabytes) is written to its pipe, while ``Process.pid``
    stays ``None`` until that write has ended: a launch that a stop or a
    Ctrl-C cuts off mid-write is still found here, and only here.

    The launch keeps the pipe's read end open until its write has ended, so
    a child that died while taking its data (killed for memory, say) left
    the write blocked for ever once the pipe was full (64 KiB): the pool's
    start hung, and no timeout or fallback ever ran (Y10).  A watcher takes
    what is left, once the child has died, so the write ends and the pool
    sees a dead worker.
    """

    def __init__(self, process_obj: Any) -> None:
        self.launcher = os.getpid()
        self._launched = threading.Event()
        _LAUNCHES[process_obj] = self
        super().__init__(process_obj)

    def _launch(self, process_obj: Any) -> None:
        self._fds = _DataPipeCatcher(self._fds, self._watch_data_pipe)
        try:
            super()._launch(process_obj)
        finally:
            self._launched.set()
            # The catcher holds this launch: kept, the cycle left the pipes its finalizer closes open until a
            # full collection (Y11: 58 pipes after 40 pool starts).
            self._fds = list(self._fds)

    def _watch_data_pipe(self, reader: int) -> None:
        """Drain ``reader`` (a copy of the data pipe's read end) in a thread, if the child dies mid-launch."""
        threading.Thread(target=self._drain_if_the_child_dies, args=(reader,), daemon=True,
                         name="hwsearch-export-launch-watch").start()

    def _drain_if_the_child_dies(self, reader: int) -> None:
        try:
            pid = self._pid_once_spawned()
            if pid is None:
                return  # the launch ended before a child existed
            try:
                child = os.pidfd_open(pid)
            except OSError as error:  # no pidfd (Linux before 5.3, a sandbox, no descriptors left)
                log.debug("export worker %s is launched unwatched (%s): a death while it starts hangs the start",
                          pid, error)
                return
            try:
                while not self._launched.is_set():
                    if _ready(child, _LAUNCH_WATCH_S):
                        _discard_until(reader, self._launched)
                        return
            finally:
                os.close(child)
        finally:
            os.close(reader)

    def _pid_once_spawned(self) -> int | None:
        """The child's pid as soon as the launch has set it, or ``None`` if the launch ended first."""
        while getattr(self, "pid", None) is None:
            if self._launched.wait(_LAUNCH_WATCH_S):
                return None
        return self.pid

    def reap(self, wait_s: float) -> None:
        """Collect the ended child's exit status, waiting at most ``wait_s`` for a killed one to end."""
        deadline = time.monotonic() + wait_s
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)


class _DataPipeCatcher(list):
    """The fds a spawn launch passes its child; catches a copy of the data pipe's read end as the launch adds it.

    CPython's launch adds ``[child_r, child_w]`` in one ``extend`` just
    before it spawns (every version from 3.6 to 3.13).
    """

    def __init__(self, fds: list[int], on_data_pipe: Callable[[int], None]) -> None:
        super().__init__(fds)
        self._on_data_pipe = on_data_pipe

    def extend(self, fds: Iterable[int]) -> None:
        fds = list(fds)
        super().extend(fds)
        self._on_data_pipe(os.dup(fds[0]))


def _ready(fd: int, timeout_s: float) -> bool:
    """Whether ``fd`` is readable (or hung up) within ``timeout_s``; by ``poll``, since ``select`` refuses
    descriptors past 1023, which a service holding Ray's and its clients' sockets reaches."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def _discard_until(reader: int, done: threading.Event) -> None:
    """Read and drop what ``reader`` receives until ``done`` is set: the writer's reader has died."""
    while not done.is_set():
        if _ready(reader, _LAUNCH_WATCH_S) and not os.read(reader, 1 << 16):
            return  # every write end closed


class _RecordedSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawn process launched by :class:`_RecordedPopen`."""

    @staticmethod
    def _Popen(process_obj: Any) -> _RecordedPopen:  # noqa: N802  (multiprocessing's own name)
        return _RecordedPopen(process_obj)


#: Each worker's launch, by its process: a process's own ``_popen`` is set only once its launch has returned.
_LAUNCHES: weakref.WeakKeyDictionary[Any, _RecordedPopen] = weakref.WeakKeyDictionary()


#: Pools not yet closed; a stop that cut their runs off leaves them to the exit, which kills their workers.
_OPEN_POOLS: OpenUntilExit[ExportPool] = OpenUntilExit(ExportPool.end_now, order=ENDS_PROCESSES)


def _start_worker(supernet: Any, started: Any) -> None:
    """A worker's start: covered by its caller's holds, one torch thread, the supernet kept."""
    import torch

    from devices.hostlock import covered_by_caller

    global _worker_supernet, _worker_start_barrier
    covered_by_caller()
    threading.Thread(target=_leave_when_orphaned, args=(os.getppid(),), daemon=True,
                     name="hwsearch-export-orphan-watch").start()
    torch.set_num_threads(1)  # one export per worker; the pool is the parallelism
    _worker_supernet = supernet
    _worker_start_barrier = started  # a barrier reaches a spawned process only through its start


def _check_in() -> int:
    """A worker's start-up task: wait until every worker holds one, then say which process this is."""
    _worker_start_barrier.wait(timeout=_START_TIMEOUT_S)
    return os.getpid()


def _leave_when_orphaned(parent: int) -> None:
    """End this worker once ``parent`` has died (a SIGKILLed parent never tells its pool to stop).

    Workers of a killed ``demo`` waited on their task queue for ever,
    holding torch and a supernet each (ten workers of five killed runs were found).
    """
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_S)
    os._exit(1)


def _export_in_worker(arch: Any, path: Path, options: dict[str, Any]) -> ExportReport:
    from hwsearch.export import export_subnet

    return export_subnet(_worker_supernet, arch, path, **options)


class _SharedPools:
    """One pool per supernet object, shared by the runs using it at once, closed by the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[int, tuple[Any, ExportPool, int]] = {}

    def acquire(self, supernet: Any, workers: int, on_wait: Callable[[dict[str, Any]], None] | None
                ) -> ExportPool:
        with self._lock:  # held during start-up too: a second run waits rather than starting its own
            entry = self._pools.get(id(supernet))
            if entry is None:
                entry = (supernet, ExportPool(supernet, workers, on_wait=on_wait), 0)
            self._pools[id(supernet)] = (entry[0], entry[1], entry[2] + 1)
            return entry[1]

    def release(self, pool: ExportPool) -> None:
        with self._lock:
            key = next(k for k, (_, p, _) in self._pools.items() if p is pool)
            supernet, _, users = self._pools[key]
            if users > 1:
                self._pools[key] = (supernet, pool, users - 1)
                return
            del self._pools[key]
        pool.close()


_POOLS = _SharedPools()


class Exporters:
    """Where one profiling run's exports happen: this process, or a pool once it will pay.

    ``workers`` is ``None`` to decide from the run's own first exports (see
    the module docstring), 1 for this process only, or a count to start that
    many workers at the first export.  ``pending`` is how many exports the
    run expects.
    """

    def __init__(self, supernet: Any, pending: int, *, workers: int | None = None,
                 on_wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"export workers must be at least 1, got {workers}")
        self.supernet = supernet
        self.pending = pending
        self.on_wait = on_wait
        self._workers = workers
        self._samples: list[float] = []
        self._pool: ExportPool | None = None
        self._decided = workers == 1
        self._lock = threading.Lock()

    @property
    def parallelism(self) -> int:
        """How many exports may run at once now."""
        return self._pool.workers if self._pool is not None else 1

    def export(self, arch: Any, path: Path, **options: Any) -> ExportReport:
        """Export one subnet; the caller holds a compute unit (a worker runs inside it)."""
        self._decide_before()
        if self._pool is not None:
            return self._pool.export(arch, path, **options)
        from hwsearch.export import export_subnet

        report = export_subnet(self.supernet, arch, path, **options)
        self._learn(report.seconds)
        return report

    def map(self, export: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[export(item) for item in items]``, as many at once as the pool has workers."""
        items = list(items)
        done = []
        while items and not self._decided:
            done.append(export(items.pop(0)))
        if self.parallelism == 1 or len(items) < 2:
            return done + [export(item) for item in items]
        with ThreadPoolExecutor(self.parallelism, thread_name_prefix="hwsearch-export-wait") as threads:
            return done + list(threads.map(export, items))

    def close(self) -> None:
        """Let go of the pool (the last run using it stops its workers)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _POOLS.release(pool)

    def _decide_before(self) -> None:
        """With an explicit worker count, start the pool at the first export."""
        if not self._decided and self._workers is not None:
            self._start(self._workers)

    def _learn(self, seconds: float) -> None:
        """Record an in-process export; after enough of them, start a pool if it pays."""
        with self._lock:
            if self._decided:
                return
            self._samples.append(seconds)
            if len(self._samples) < _SAMPLES_BEFORE_DECIDING and len(self._samples) < self.pending:
                return
        from devices.cpuload import usable_cores

        workers = min(usable_cores(), MAX_WORKERS)
        left = self.pending - len(self._samples)
        saved = min(self._samples) * left * (1 - 1 / workers)
        if workers > 1 and saved > START_SECONDS:
            self._start(workers)
        else:
            self._decided = True

    def _start(self, workers: int) -> None:
        try:
            self._pool = _POOLS.acquire(self.supernet, workers, self.on_wait)
        except Exception as error:  # a supernet that does not pickle, a worker that died at start
            log.warning("export pool did not start (%s: %s); exporting in this process",
                        type(error).__name__, error)
        self._decided = True


@contextmanager
def exporters(supernet: Any, pending: int, *, workers: int | None = None,
              on_wait: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Exporters]:
    """An :class:`Exporters` for one run, whose pool share is given back however the run ends."""
    run = Exporters(supernet, pending, workers=workers, on_wait=on_wait)
    try:
        yield run
    finally:
        run.close()
