"""Things a process opened and has not closed yet, ended at its exit: the work that a stop cut off.

A job's daemon thread never reaches its ``finally`` when the process exits
under it, so what it opened (a temp folder, a pool of worker processes) is
ended here instead.  The exit handler is registered at the first opening,
not at import, so it runs before handlers registered earlier: the CLI's
last one (which may end the process) and multiprocessing's (which joins
every worker process, and waits for ever on a pool's idle workers).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["OpenUntilExit"]

T = TypeVar("T")


class OpenUntilExit(Generic[T]):
    """A thread-safe set of open things; at exit, ``end`` is called on each one still open."""

    def __init__(self, end: Callable[[T], None]) -> None:
        self._end = end
        self._open: set[T] = set()
        self._lock = threading.Lock()
        self._armed = False

    def opened(self, thing: T) -> None:
        """Record ``thing`` as open; the first one arms the exit handler."""
        with self._lock:
            if not self._armed:
                atexit.register(self.end_all)
                self._armed = True
            self._open.add(thing)

    def closed(self, thing: T) -> None:
        """Record that ``thing`` was closed by its owner (nothing is left for the exit to do)."""
        with self._lock:
            self._open.discard(thing)

    def snapshot(self) -> set[T]:
        """What is open now."""
        with self._lock:
            return set(self._open)

    def end_all(self) -> None:
        """End everything still open (the exit handler)."""
        for thing in self.snapshot():
            self._end(thing)
