"""Things a process opened and has not closed yet, ended at its exit: the work that a stop cut off.

A job's daemon thread never reaches its ``finally`` when the process exits
under it, so what it opened (a temp folder, a pool of worker processes) is
ended here instead, worker processes before the folders they write into.

**A stopped command** (:func:`stop_work`) also refuses new work: the job's
daemon thread goes on working while the exit handlers run (``ray.shutdown``
alone takes seconds), and a ``demo`` stopped just before it exported
started its export pool then, after the pools had been ended, and its exit
waited on the new workers for ever; folders it made then were left behind.
So from then on, nothing new is opened (:class:`ExitBegun`), and no exported
file is written (:func:`unless_stopping`).

**A forked child** inherits none of it: what the parent opened is the
parent's to end (a child's exit had removed a folder the parent still
worked in; :meth:`_State.forked`).

**Any other exit** only ends what is still open: the exit handler, registered
at the first opening rather than at import, so it runs before handlers
registered earlier (multiprocessing's, which joins every worker process and
waits for ever on a pool's idle workers).  It refuses nothing, so a library
user's own exit handler may still export (Y6: refusing there lost such a
file without a word).

**What the exit ends, and what a thread closes once it has begun,** is
kept until the process ends (:meth:`OpenUntilExit.closed`).  An export pool
dropped then was collected by whichever thread dropped it or ran the next
garbage collection, and its multiprocessing semaphores were finalized
there: a daemon thread stopped by the interpreter's shutdown between taking
a semaphore's finalizer and telling the resource tracker left the tracker
to warn of a "leaked semaphore" after the process had ended (a clean
clone's CI twice, and 3 of 402 exits here under load).  Kept, they are
finalized by multiprocessing's own exit handler, in the main thread.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

__all__ = ["ENDS_FOLDERS", "ENDS_PROCESSES", "ExitBegun", "OpenUntilExit", "command_stopped", "end_open_work",
           "kept_if_exiting", "stop_work", "unless_stopping"]

T = TypeVar("T")

#: The order in which each kind of open thing is ended: a process still writing into a folder put files back
#: while the folder was being removed, and the folder stayed, without its owner file.
ENDS_PROCESSES = 0
ENDS_FOLDERS = 1
#: How long a stop waits for exported files being written to finish (a hung file system must not hold it).
WRITES_WAIT_S = 10.0


class ExitBegun(RuntimeError):
    """The command was stopped: what a thread asks to open or write now would outlive the exit's clean-up."""


class _State:
    """The process's open registries, whether a stop has begun, and the exported files being written."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writes_done = threading.Condition(self.lock)
        self.stopping = False
        self.exiting = False
        self.kept: list[object] = []  # what the exit ended, and what threads closed once it had begun
        self.armed = False
        self.writes = 0
        self.registries: list[OpenUntilExit[object]] = []

    def forked(self) -> None:
        """In a forked child: fresh locks, no writes of the parent's threads, which do not run here, and nothing
        open: what the parent opened is the parent's to end.  A child forked while another thread started an
        export pool ended the pool's copy at its exit, and waited 120 s on the copy's lock, held by a thread
        that does not run here (Y12)."""
        self.lock = threading.Lock()
        self.writes_done = threading.Condition(self.lock)
        self.writes = 0
        self.exiting, self.kept = False, []  # the parent's exit, not this child's (Y16)
        for registry in self.registries:
            registry.forget_inherited()


_state = _State()
os.register_at_fork(after_in_child=_state.forked)  # a lock held by another thread at the fork stays held


class OpenUntilExit(Generic[T]):
    """A thread-safe set of open things; at exit, ``end`` is called on each one still open.

    ``order``: :data:`ENDS_PROCESSES` or :data:`ENDS_FOLDERS`, when :func:`end_open_work` ends these.
    """

    def __init__(self, end: Callable[[T], None], *, order: int) -> None:
        self._end = end
        self.order = order
        self._open: set[T] = set()
        with _state.lock:
            _state.registries.append(self)  # type: ignore[arg-type]  (each registry ends its own kind)

    def opened(self, thing: T) -> None:
        """Record ``thing`` as open; :class:`ExitBegun` once a stop has begun (``thing`` is then the caller's to
        close, and nothing will end it)."""
        with _state.lock:
            if _state.stopping:
                _state.kept.append(thing)  # its owner drops it as the exit runs
                raise ExitBegun("the command was stopped")
            if not _state.armed:
                atexit.register(end_open_work)
                _state.armed = True
            self._open.add(thing)

    def closed(self, thing: T) -> None:
        """Record that ``thing`` was closed by its owner (nothing is left for the exit to do); once the exit has
        begun, keep ``thing`` until the process ends (the module's docstring says why)."""
        with _state.lock:
            self._open.discard(thing)
        kept_if_exiting(thing)

    def forget_inherited(self) -> None:
        """Drop every record (in a forked child, whose records are its parent's; :meth:`_State.forked`)."""
        self._open = set()

    def _end_all(self) -> None:
        with _state.lock:
            left, self._open = self._open, set()
            _state.kept.extend(left)
        _each_ended(self._end, left)


def kept_if_exiting(*things: object) -> None:
    """Keep ``things`` until the process ends if its exit has begun (the module's docstring says why)."""
    with _state.lock:
        if _state.exiting:
            _state.kept.extend(things)


def end_open_work() -> None:
    """End everything still open, processes first, then folders; each thing only once.

    The exit handler, and a stopped command's first step: from then on, what
    is closed is kept until the process ends, so nothing else may call it.
    """
    with _state.lock:
        _state.exiting = True
        registries = sorted(_state.registries, key=lambda registry: registry.order)
    _each_ended(OpenUntilExit._end_all, registries)


def _each_ended(end: Callable[[T], None], things: Iterable[T]) -> None:
    """``end(thing)`` for each of ``things``, even after one raised (a Ctrl-C during one, say); then the first
    error is raised again."""
    first: BaseException | None = None
    for thing in things:
        try:
            end(thing)
        except BaseException as error:  # noqa: BLE001  (raised again below, once the rest are ended)
            first = first or error
    if first is not None:
        raise first


def stop_work() -> None:
    """A stopped command's first step: refuse every later opening and export write, let the writes under way
    finish (at most :data:`WRITES_WAIT_S`), then end everything still open."""
    deadline = time.monotonic() + WRITES_WAIT_S
    with _state.lock:
        _state.stopping = True
        while _state.writes and time.monotonic() < deadline:
            _state.writes_done.wait(timeout=max(deadline - time.monotonic(), 0.0))
    end_open_work()


def command_stopped() -> bool:
    """Whether :func:`stop_work` has run: the command was stopped.

    A stopped command kills what carries its tag once its exit handlers
    have run (:func:`hwsearch.tempdirs.remove_folders_of_ended_workers`),
    and its export pools give up sooner on a worker still starting
    (:meth:`hwsearch.export_pool.ExportPool.end_now`): nothing of the
    command is to outlive it, so neither waits for work to end by itself.
    """
    return _state.stopping


@contextmanager
def unless_stopping(what: str) -> Iterator[None]:
    """Run the body unless the command was stopped (:class:`ExitBegun` naming ``what``); a stop waits for it.

    For a file written into a folder that the exit clears: an export
    written as its folder was removed made the folder again (``mkdir``),
    without its owner file, for no later run to remove.  No lock is held
    while the body runs: writes go on side by side, and a child forked
    meanwhile does not inherit a held lock (Y6: one hung for ever).
    """
    with _state.lock:
        if _state.stopping:
            raise ExitBegun(f"the command was stopped: {what} is not done")
        _state.writes += 1
    try:
        yield
    finally:
        with _state.lock:
            _state.writes -= 1
            _state.writes_done.notify_all()
