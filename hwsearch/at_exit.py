"""Things a process opened and has not closed yet, ended at its exit: the work that a stop cut off.

A job's daemon thread never reaches its ``finally`` when the process exits
under it, so what it opened (a temp folder, a pool of worker processes) is
ended here instead.  The daemon thread also goes on working while the exit
handlers run (``ray.shutdown`` alone takes seconds): a ``demo`` stopped
just before it exported started its export pool then, after the pools had
been ended, and its exit waited on the new workers for ever; folders it made
then were left behind.  So once the exit has begun, nothing new is opened
(:class:`ExitBegun`), and no exported file is written (:func:`unless_exiting`).

:func:`begin_exit` ends what is open, worker processes before the folders
they write into.  A stopped CLI command calls it first; for any other exit
it is the exit handler, registered at the first opening rather than at
import, so it runs before handlers registered earlier: the CLI's last one
(which may end the process) and multiprocessing's (which joins every worker
process, and waits for ever on a pool's idle workers).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

__all__ = ["ENDS_FOLDERS", "ENDS_PROCESSES", "ExitBegun", "OpenUntilExit", "begin_exit", "exit_begun",
           "unless_exiting"]

T = TypeVar("T")

#: The order in which :func:`begin_exit` ends each kind of open thing: a process still writing into a folder
#: put files back while the folder was being removed, and the folder stayed, without its owner file.
ENDS_PROCESSES = 0
ENDS_FOLDERS = 1


class ExitBegun(RuntimeError):
    """The process is exiting: what a thread asks to open or start now would outlive the exit's clean-up."""


_state_lock = threading.Lock()
#: Held by a write that must not overlap the exit's clean-up (:func:`unless_exiting`), and by the exit as it begins.
_writing = threading.Lock()
_begun = False
_armed = False
_registries: list[OpenUntilExit[object]] = []


class OpenUntilExit(Generic[T]):
    """A thread-safe set of open things; at exit, ``end`` is called on each one still open.

    ``order``: :data:`ENDS_PROCESSES` or :data:`ENDS_FOLDERS`, when :func:`begin_exit` ends these.
    """

    def __init__(self, end: Callable[[T], None], *, order: int) -> None:
        self._end = end
        self.order = order
        self._open: set[T] = set()
        with _state_lock:
            _registries.append(self)  # type: ignore[arg-type]  (each registry ends its own kind)

    def opened(self, thing: T) -> None:
        """Record ``thing`` as open; :class:`ExitBegun` once the exit has begun (``thing`` is then the caller's
        to close, and nothing will end it)."""
        global _armed
        with _state_lock:
            if _begun:
                raise ExitBegun("the process is exiting")
            if not _armed:
                atexit.register(begin_exit)
                _armed = True
            self._open.add(thing)

    def closed(self, thing: T) -> None:
        """Record that ``thing`` was closed by its owner (nothing is left for the exit to do)."""
        with _state_lock:
            self._open.discard(thing)

    def _end_all(self) -> None:
        with _state_lock:
            left, self._open = self._open, set()
        for thing in left:
            self._end(thing)


def begin_exit() -> None:
    """Refuse every later opening, then end everything still open: processes first, then folders.

    Called again (the exit handler after a stopped command's own call), it
    ends nothing twice.
    """
    global _begun
    with _writing, _state_lock:
        _begun = True
        registries = sorted(_registries, key=lambda registry: registry.order)
    for registry in registries:
        registry._end_all()


def exit_begun() -> bool:
    """Whether :func:`begin_exit` has run in this process."""
    with _state_lock:
        return _begun


@contextmanager
def unless_exiting(what: str) -> Iterator[None]:
    """Run the body unless the exit has begun (:class:`ExitBegun` naming ``what``); the exit waits for a body running.

    For a file written into a folder that the exit clears: an export
    written as its folder was removed made the folder again (``mkdir``),
    without its owner file, for no later run to remove.
    """
    with _writing:
        if exit_begun():
            raise ExitBegun(f"the process is exiting: {what} is not done")
        yield
