"""How much CPU other processes used while a session measured.

The host lock keeps hwsearch's own work off the cores during a session, but
not other programs.  A wall-clock device with several threads is the one
that suffers: with a busy loop on the other core of this 2-core machine, the
demo's 2-thread device read its subnets at 2.3-2.4x their ratios of a quiet
session, while its reference's robust time moved by only 2-5% (the reference
itself could not reveal it).  A ``thread_cpu`` device was unaffected (within
±1.4%), since it counts only its own thread's CPU time.  So a session
records the cores' worth of CPU that *other* processes took during it, from
``/proc/stat`` (all CPUs' busy time) less this process's own CPU time, and a
wall-clock session above ``protocol.max_foreign_cores`` is not stable.

Work this process does beside its sessions, outside the host lock (an edge
agent checking an upload: a 230,000-node graph took 9.9 s of CPU), is no
session's own either: it runs inside :func:`beside_sessions`, and its CPU
counts as other programs' (:func:`foreign_cores`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_IDLE, _IOWAIT, _STEAL = 3, 4, 7


@dataclass(frozen=True)
class CpuSnapshot:
    """All CPUs' busy seconds since boot, this process's CPU seconds, and a monotonic time."""

    busy_s: float
    own_s: float
    at: float


def cpu_snapshot() -> CpuSnapshot | None:
    """The current snapshot; ``None`` where ``/proc/stat`` is unreadable (not Linux)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 8:
        return None
    # Busy is what ran here: not idle, not waiting for I/O, not stolen by the hypervisor.
    busy = sum(ticks) - ticks[_IDLE] - ticks[_IOWAIT] - ticks[_STEAL]
    own = os.times()
    return CpuSnapshot(busy / os.sysconf("SC_CLK_TCK"), own.user + own.system - _beside_sessions_s(),
                       time.monotonic())


#: CPU seconds this process's threads spent in :func:`beside_sessions` (ended work, and the ongoing
#: work's counted so far is read from each thread's own clock).
_BESIDE = {"ended_s": 0.0}
_ONGOING: dict[int, float] = {}  # thread id -> its CPU clock at the work's start
_BESIDE_LOCK = threading.Lock()


@contextmanager
def beside_sessions() -> Iterator[None]:
    """Count this thread's CPU until the block ends as another program's, for every session it overlaps."""
    ident = threading.get_ident()
    with _BESIDE_LOCK:
        _ONGOING[ident] = time.thread_time()
    try:
        yield
    finally:
        with _BESIDE_LOCK:
            _BESIDE["ended_s"] += time.thread_time() - _ONGOING.pop(ident)


def _beside_sessions_s() -> float:
    """CPU seconds spent beside sessions so far, the running blocks' included (read from their threads' clocks)."""
    with _BESIDE_LOCK:
        running = sum(_thread_cpu_s(ident) - start for ident, start in _ONGOING.items())
        return _BESIDE["ended_s"] + max(0.0, running)


def _thread_cpu_s(ident: int) -> float:
    """Another thread's CPU seconds so far (its start value where the clock cannot be read)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError):
        return _ONGOING[ident]


def foreign_cores(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """Cores' worth of CPU other processes used between two snapshots (``None`` if unknown)."""
    if before is None or after is None or after.at <= before.at:
        return None
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others) / (after.at - before.at)


def usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS has one)."""
    return len(allowed_processors())


def allowed_processors() -> set[int]:
    """The logical processors this process may run on, numbered from 1 as onnxruntime's affinities are."""
    if hasattr(os, "sched_getaffinity"):
        return {cpu + 1 for cpu in os.sched_getaffinity(0)}
    return set(range(1, (os.cpu_count() or 1) + 1))
