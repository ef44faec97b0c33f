"""One measurement at a time per host: a cross-process lock on ``fcntl.flock``.

Latencies on a small shared machine are only trustworthy when one
measurement has the cores to itself: three jobs measuring at once on one
1-thread device turned a 2.45 ms reference into 5.69 ms and left no row
stable.  Every process that measures or computes on this host therefore
goes through this lock:

* ``exclusive`` – a local measurement session.  Every local device of the
  machine, whatever its threads, shares the one host lock, because they
  share the cores.
* ``shared`` – a unit of compute (one ONNX export, one subnet's accuracy
  evaluation).  Compute units run alongside each other but never during a
  session, so a session starts on a quiet host and compute pauses while it
  runs.

Sessions take turns in arrival order, and a waiting session keeps *new*
compute units out (it is not starved by a stream of compute); it still
waits for the units already running, which are short.

The kernel releases an ``flock`` when its holder dies, even by SIGKILL, so a
killed process never blocks the host.  Order and observability come from a
queue of ticket files, each kept flocked by its owner for as long as it
waits or holds: a ticket whose flock can be taken belongs to a dead process
and is removed by whoever notices.  Waiters poll (every ``poll_s``) and
report what they wait for about once a second.

A thread that already holds the host may run compute inside its hold (it
is covered) but may not open a session there: it would wait for itself, so
that raises :class:`HostLockError` instead of hanging.  A helper process
whose every task runs while the process that started it holds a compute
unit for it (:func:`covered_by_caller`, the export pool's workers) is
covered the same way in all its threads.

The directory is ``$DEVICES_LOCK_DIR`` or ``/tmp/hwsearch-devices-locks``,
created owner-only.  The default is fixed, not ``$TMPDIR``: a process that
moves its temp files (``hwsearch serve`` does, and its Ray workers inherit
it) must still queue with every other process on the host.  By default it
orders one user's processes, and refuses a folder another user owns (it
could hold the host forever, and its owner's measurements would not take
turns with ours); on a host shared by several users, point all of them at
one directory (with its ``queue`` folder; setgid) that their group can write (files
are made 0660 whatever the umask, and a ticket another user's process cannot
open is counted alive).

Anything in the folder that is not what the lock expects (a directory, FIFO
or link in place of a file, a file in place of ``queue``) raises
:class:`HostLockError` naming it, and a queue entry that is not a regular
file is skipped (logged once), never opened blocking nor removed.  A folder
deleted while a session holds the host cannot keep the next session out;
the session's :class:`Hold` then says ``lock_lost``.  A process waiting
when the folder goes queues again in the folder made anew, and its hold
says ``lock_lost`` too (nothing tells it whether the old holder is done).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

LOCK_DIR_ENV = "DEVICES_LOCK_DIR"
Mode = Literal["exclusive", "shared"]
WaitFn = Callable[[dict[str, Any]], None]

# The host's temp folder, not this process's $TMPDIR: every process on the host must find the same lock.
DEFAULT_LOCK_DIR = Path("/tmp/hwsearch-devices-locks")
_HOST_FILE = "host.lock"
_COUNTER_FILE = "tickets.counter"
_QUEUE_DIR = "queue"
_FILE_MODE = 0o660
_STALE_TEMP_S = 30.0
_HELD = threading.local()
_SKIPPED: set[str] = set()  # queue entries already logged as not tickets
log = logging.getLogger(__name__)


class HostLockError(RuntimeError):
    """The lock directory is unsafe or unusable, or a lock was nested in a way that would deadlock."""


class _QueueLost(Exception):
    """The queue folder vanished while a ticket waited in it."""


def lock_dir() -> Path:
    """Where the host's lock files live: ``$DEVICES_LOCK_DIR``, else :data:`DEFAULT_LOCK_DIR`."""
    configured = os.environ.get(LOCK_DIR_ENV)
    return Path(configured) if configured else DEFAULT_LOCK_DIR


@dataclass
class Hold:
    """One pass through the lock: what was held, how long it was waited for, and when it was held.

    ``started_at`` and ``ended_at`` are wall-clock epoch seconds, taken right
    after the lock was obtained and right before it is released, so holds of
    the same host never overlap; measurements record them to prove it.
    ``lock_lost``: at the end of the hold the flocked file was no longer the
    one at its path (the folder was deleted or the file replaced), so a
    session that started meanwhile flocked another file and may have run
    alongside; this hold cannot vouch for a quiet host.  It is also set when the
    queue was deleted while this hold waited (it queued again, behind nobody
    who held the old folder).
    """

    mode: Mode
    waited_s: float
    started_at: float
    ended_at: float | None = None
    nested: bool = False
    lock_lost: bool = False


_PROCESS_COVER: Hold | None = None  # a helper process's cover (covered_by_caller)


@dataclass(frozen=True)
class _Ticket:
    """A queue entry, parsed from its file name ``<seq>-<mode>-<state>-<pid>.ticket``."""

    seq: int
    mode: str
    state: str
    pid: int
    path: Path

    @classmethod
    def parse(cls, path: Path) -> _Ticket | None:
        parts = path.name.removesuffix(".ticket").split("-")
        if not path.name.endswith(".ticket") or len(parts) != 4 or not (parts[0].isdigit() and parts[3].isdigit()):
            return None
        return cls(int(parts[0]), parts[1], parts[2], int(parts[3]), path)


def _ticket_name(seq: int, mode: str, state: str) -> str:
    return f"{seq:012d}-{mode}-{state}-{os.getpid()}.ticket"


class HostLock:
    """The host's measurement lock in ``directory`` (default: :func:`lock_dir`)."""

    def __init__(self, directory: Path | None = None, *, poll_s: float = 0.1, report_every_s: float = 1.0) -> None:
        """``poll_s``: how often a waiter looks again; each look wakes a process that would otherwise
        sleep beside a running session, so it is kept well below the sessions' own noise."""
        self.directory = Path(directory) if directory is not None else lock_dir()
        self.poll_s = poll_s
        self.report_every_s = report_every_s

    def exclusive(self, *, on_wait: WaitFn | None = None) -> AbstractContextManager[Hold]:
        """Hold the host for one measurement session."""
        return self._hold("exclusive", on_wait)

    def shared(self, *, on_wait: WaitFn | None = None) -> AbstractContextManager[Hold]:
        """Hold the host for one unit of compute, alongside other compute but no session."""
        return self._hold("shared", on_wait)

    @contextmanager
    def _hold(self, mode: Mode, on_wait: WaitFn | None) -> Iterator[Hold]:
        outer = self._held_by_this_thread()
        if outer is not None:
            nested = self._nested(mode, outer)
            try:
                yield nested
            finally:
                nested.ended_at = time.time()
            return
        host_fd, ticket_fd, ticket_path, waited, requeued = self._take_turn(mode, on_wait)
        owner = os.getpid()
        try:
            hold = Hold(mode=mode, waited_s=waited, started_at=time.time(), lock_lost=requeued)
            with self._registered(hold):
                try:
                    yield hold
                finally:
                    if os.getpid() == owner:
                        hold.lock_lost = hold.lock_lost or _replaced(host_fd, self.directory / _HOST_FILE)
        finally:
            # A child forked inside the hold that leaves it (sys.exit, an exception) owns none of it: its
            # copies of the descriptors were closed at the fork, their numbers may name its own files now,
            # and the ticket is its parent's (Y19: it unlinked the parent's ticket, and closed a pipe).
            if os.getpid() == owner:
                _unlink_quietly(ticket_path)
                _close(ticket_fd)
                _close(host_fd)  # releases the host flock, after the hold's end time was taken

    def _take_turn(self, mode: Mode, on_wait: WaitFn | None) -> tuple[int, int, Path, float, bool]:
        """Queue and wait until it is our turn; return the host and ticket fds, the ticket, seconds waited, and
        whether the queue was lost on the way.

        A folder deleted while we wait (a cleaner of ``/tmp``, an operator)
        takes our ticket with it: we queue again in the folder made anew
        rather than fail.  The turn we then get cannot vouch that the
        session which held the old folder has ended, so the hold says
        ``lock_lost``.
        """
        started, requeued = time.monotonic(), False
        while True:
            queue = self._prepare()
            host_fd = _open_member(self.directory / _HOST_FILE, os.O_RDONLY)  # flock needs no write access
            try:
                ticket_fd, ticket_path, seq = self._enqueue(queue, mode)
                try:
                    self._wait_for_turn(queue, host_fd, mode, seq, on_wait, started)
                    try:
                        holding = _rename(ticket_path, queue / _ticket_name(seq, mode, "holding"))
                    except FileNotFoundError:
                        raise _QueueLost from None
                    return host_fd, ticket_fd, holding, time.monotonic() - started, requeued
                except BaseException:
                    _unlink_quietly(ticket_path)
                    _close(ticket_fd)
                    raise
            except _QueueLost:
                _close(host_fd)
                requeued = True
                log.warning("host lock: %s was deleted while waiting; queueing again", self.directory)
            except BaseException:
                _close(host_fd)
                raise

    @contextmanager
    def _registered(self, hold: Hold) -> Iterator[Hold]:
        """Mark ``hold`` as this thread's for the duration (nesting checks) and stamp its end."""
        key = str(self.directory)
        _held_map()[key] = hold
        try:
            yield hold
        finally:
            del _held_map()[key]
            hold.ended_at = time.time()

    def status(self) -> dict[str, int]:
        """How many sessions and compute units hold the host or wait for it (live processes only)."""
        tickets = _live_tickets(self._prepare())
        return {
            f"{kind}_{state}": sum(t.mode == mode and t.state == state for t in tickets)
            for kind, mode in (("sessions", "exclusive"), ("compute", "shared"))
            for state in ("holding", "waiting")
        }

    def _held_by_this_thread(self) -> Hold | None:
        return _held_map().get(str(self.directory)) or _PROCESS_COVER

    @staticmethod
    def _nested(mode: Mode, outer: Hold) -> Hold:
        """Compute inside a hold this thread already has is covered by it; a nested session would deadlock."""
        if mode == "exclusive":
            raise HostLockError(
                f"this thread already holds the host lock ({outer.mode}); a measurement session inside it "
                "would wait for itself"
            )
        return Hold(mode=mode, waited_s=0.0, started_at=time.time(), nested=True)

    def _prepare(self) -> Path:
        """Create the lock directory and its queue owner-only; return the queue.

        The default folder sits in the host's shared ``/tmp``, where anyone
        could have made it first, so it must be ours; a folder the operator
        named may be a group's.
        """
        must_own = self.directory == DEFAULT_LOCK_DIR
        _safe_directory(self.directory, must_own=must_own)
        return _safe_directory(self.directory / _QUEUE_DIR, must_own=must_own)

    def _enqueue(self, queue: Path, mode: Mode) -> tuple[int, Path, int]:
        """Take the next ticket and publish it, both under the counter's flock.

        A joiner that took its number later therefore always sees this ticket,
        so its first report counts everyone ahead (taking the number and
        publishing the file apart once let two joiners both report "1 session
        ahead" on a loaded host).  The file appears already flocked, so it is
        never taken for stale.
        """
        counter = _open_member(self.directory / _COUNTER_FILE, os.O_RDWR)
        try:
            fcntl.flock(counter, fcntl.LOCK_EX)
            seq = _next_seq(counter, queue)
            temp = queue / f".{uuid.uuid4().hex}.tmp"
            try:
                fd = _open_tracked(temp, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
            except OSError as error:
                raise HostLockError(f"cannot write to {queue}: {error.strerror} (set {LOCK_DIR_ENV})") from None
            try:
                os.fchmod(fd, _FILE_MODE)  # readable by the folder's group whatever our umask
                fcntl.flock(fd, fcntl.LOCK_EX)
                return fd, _rename(temp, queue / _ticket_name(seq, mode, "waiting")), seq
            except BaseException:
                _close(fd)
                _unlink_quietly(temp)
                raise
        finally:
            _close(counter)  # releases the counter's flock

    def _wait_for_turn(self, queue: Path, host_fd: int, mode: Mode, seq: int, on_wait: WaitFn | None,
                       started: float) -> None:
        """Poll until no ticket has precedence and the host flock is ours (:class:`_QueueLost` if the queue goes).

        A session also waits while a compute unit's ticket says it holds the host, whatever the flock says:
        ``host.lock`` is never written, so a cleaner of ``/tmp`` that removes old files can unlink it under a
        compute unit's flock, and the session then flocked a new file and ran beside the compute, its rows
        stable (Y18).
        """
        flag = fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH
        next_report = time.monotonic()
        reported = False
        while True:
            try:
                ahead = _precedence(mode, seq, _live_tickets(queue))
            except FileNotFoundError:
                raise _QueueLost from None
            clear = ahead["sessions"] == 0 and (mode == "shared" or ahead["compute"] == 0)
            if clear and _try_flock(host_fd, flag):
                if reported and on_wait is not None:
                    on_wait({"event": "lock-acquired", "mode": mode, "waited_s": round(time.monotonic() - started, 3)})
                return
            now = time.monotonic()
            if on_wait is not None and now >= next_report:
                on_wait(_waiting_event(mode, ahead, now - started))
                reported, next_report = True, now + self.report_every_s
            time.sleep(self.poll_s)


def _safe_directory(path: Path, *, must_own: bool) -> Path:
    """Create ``path`` owner-only if missing, and refuse one an attacker could have planted or can rewrite."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a link is there: refused just below
    except OSError as error:
        raise HostLockError(f"cannot create {path}: {error.strerror} (set {LOCK_DIR_ENV})") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise HostLockError(f"{path} must be a directory, not a link or a file (set {LOCK_DIR_ENV})")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise HostLockError(f"{path} is world-writable without the sticky bit (set {LOCK_DIR_ENV})")
    if must_own and info.st_uid != os.geteuid():
        raise HostLockError(
            f"{path} belongs to another user (uid {info.st_uid}), who may measure on this host too: set "
            f"{LOCK_DIR_ENV} to a folder you both can write, so that your measurements take turns")
    return path


def _precedence(mode: Mode, seq: int, tickets: list[_Ticket]) -> dict[str, int]:
    """Who goes before a ticket: earlier sessions for a session, every session for compute.

    Compute waiting behind *any* session (even a later one) is what keeps a
    stream of compute from starving measurement.
    """
    sessions = [t for t in tickets if t.mode == "exclusive" and (mode == "shared" or t.seq < seq)]
    compute = [t for t in tickets if t.mode == "shared" and t.state == "holding"]
    return {"sessions": len(sessions), "compute": len(compute)}


def _waiting_event(mode: Mode, ahead: dict[str, int], waited_s: float) -> dict[str, Any]:
    sessions = f"{ahead['sessions']} session{'s' if ahead['sessions'] != 1 else ''}"
    if mode == "exclusive":
        message = f"waiting for local host: {sessions} ahead, {ahead['compute']} compute unit(s) running"
    else:
        message = f"compute waiting for local host: {sessions} running or queued"
    return {"event": "waiting", "mode": mode, "sessions_ahead": ahead["sessions"],
            "compute_running": ahead["compute"], "waited_s": round(waited_s, 3), "message": message}


def _next_seq(counter: int, queue: Path) -> int:
    """The next ticket number, from the counter file whose flock the caller holds."""
    raw = os.pread(counter, 32, 0).strip()
    last = int(raw) if raw.isdigit() else max((t.seq for t in _live_tickets(queue)), default=0)
    encoded = str(last + 1).encode()
    os.pwrite(counter, encoded, 0)
    os.ftruncate(counter, len(encoded))
    return last + 1


def _live_tickets(queue: Path) -> list[_Ticket]:
    """Tickets whose owners are alive; removes those of dead processes on the way."""
    live = []
    for path in queue.iterdir():
        if path.name.endswith(".tmp"):
            _remove_stale_temp(path)
            continue
        ticket = _Ticket.parse(path)
        if ticket is not None and _owner_alive(path):
            live.append(ticket)
    return live


def _owner_alive(path: Path) -> bool:
    """Whether the ticket's flock is held (its owner lives); a ticket nobody holds is deleted.

    Only a regular file is a ticket, opened without blocking: a FIFO named
    like one hung every session in ``open``, a directory made the unlink
    raise.  Such an entry is skipped, never removed.  A ticket we may not
    open is another user's (made under a strict umask by an older version)
    and counts as alive while the process its name ends with lives: counted
    dead, it let compute run into that user's session; counted alive for
    good, one left by a killed process would hold the host for ever.
    """
    try:
        fd = _open_tracked(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except PermissionError:
        return _named_process_lives(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            _skip(path, "a link")
        return False  # released or renamed just now
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _skip(path, "not a regular file")
            return False
        if not _try_flock(fd, fcntl.LOCK_SH):
            return True
        _unlink_quietly(path)
        return False
    finally:
        _close(fd)


def _named_process_lives(path: Path) -> bool:
    """Whether the process whose pid ends the ticket's name (:func:`_ticket_name`) still runs.

    ``kill(pid, 0)`` sends nothing: it fails with "no such process" for a
    dead one and "not permitted" for another user's live one.
    """
    try:
        os.kill(int(path.name.removesuffix(".ticket").rpartition("-")[2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except ValueError:
        return False  # not a ticket's name
    return True


def _skip(path: Path, why: str) -> None:
    """Log once that a queue entry named like a ticket is ignored (it takes no turn and is left in place)."""
    if str(path) not in _SKIPPED:
        _SKIPPED.add(str(path))
        log.warning("host lock: ignoring %s in the queue: %s", path, why)


def _remove_stale_temp(path: Path) -> None:
    """A ticket half-made by a process killed before it took the ticket's flock."""
    try:
        if time.time() - path.stat().st_mtime > _STALE_TEMP_S:
            _owner_alive(path)  # deletes it when nobody holds it
    except FileNotFoundError:
        pass


def _try_flock(fd: int, flag: int) -> bool:
    try:
        fcntl.flock(fd, flag | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


#: This process's descriptors of the lock folder's files: a forked child closes its copies (:func:`_forget_in_child`).
_LOCK_FDS: set[int] = set()
#: Held from before a descriptor is opened until it is in :data:`_LOCK_FDS` (and from its removal until it is
#: closed), and across every fork: a fork from another thread in between left the child an untracked copy (Y19).
_FDS_LOCK = threading.Lock()


def _open_tracked(path: Path | str, flags: int, mode: int = 0o777) -> int:
    """``os.open``, the descriptor tracked in :data:`_LOCK_FDS` before any fork can copy it."""
    with _FDS_LOCK:
        fd = os.open(path, flags, mode)
        _LOCK_FDS.add(fd)
        return fd


def _close(fd: int) -> None:
    with _FDS_LOCK:
        _LOCK_FDS.discard(fd)
        os.close(fd)


def _forget_in_child() -> None:
    """In a child made by ``fork()``, close the copies of the parent's lock descriptors.

    A flock belongs to the open file, which a child's copy of the descriptor
    keeps open: a child forked during a hold (a data loader's workers, a
    fork-based pool) kept the host locked after the parent's hold ended,
    with no ticket to say so, and every waiter waited for it, told "0
    sessions running or queued" (Y18).  The child's thread still counts as
    inside the parent's hold (:func:`_held_map`): its compute is the work
    that hold covers, as an export pool's worker's is.
    """
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()
    _FDS_LOCK.release()


os.register_at_fork(before=_FDS_LOCK.acquire, after_in_parent=_FDS_LOCK.release, after_in_child=_forget_in_child)


def _open_member(path: Path, flags: int) -> int:
    """Open (creating it if missing) a regular file of the lock folder, or raise :class:`HostLockError` naming it.

    Never follows a link nor blocks on a FIFO.  A file of ours gains group
    read and write whatever our umask: in a group-shared folder a 0600 file
    kept the other users out.
    """
    try:
        fd = _open_tracked(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, _FILE_MODE)
    except OSError as error:
        reason = "it is a link" if error.errno == errno.ELOOP else error.strerror
        raise HostLockError(f"cannot open {path}: {reason} (set {LOCK_DIR_ENV})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HostLockError(f"{path} must be a regular file (set {LOCK_DIR_ENV})")
        if info.st_uid == os.geteuid() and info.st_mode & _FILE_MODE != _FILE_MODE:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) | _FILE_MODE)
    except BaseException:
        _close(fd)
        raise
    return fd


def _replaced(fd: int, path: Path) -> bool:
    """Whether the flocked file ``fd`` is no longer the one at ``path`` (deleted, or the folder made anew).

    A session arriving then flocks the new file and runs beside us; the lock
    cannot prevent that, so the hold reports it.
    """
    held = os.fstat(fd)
    try:
        current = os.stat(path, follow_symlinks=False)
    except OSError:
        return True
    return held.st_nlink == 0 or (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino)


def _rename(source: Path, target: Path) -> Path:
    os.rename(source, target)
    return target


def _unlink_quietly(path: Path) -> None:
    """Remove a ticket; gone already, or another user's in a sticky folder (it stays, counted dead), is fine."""
    try:
        os.unlink(path)
    except (FileNotFoundError, PermissionError):
        pass


def _held_map() -> dict[str, Hold]:
    """This thread's current holds, by lock directory (to detect nesting)."""
    if not hasattr(_HELD, "holds"):
        _HELD.holds = {}
    return _HELD.holds


def covered_by_caller() -> None:
    """Declare this process a helper whose work runs only inside its caller's compute units.

    A helper (an export worker) that took compute units of its own could
    deadlock the host: its caller holds a unit while it waits for the helper,
    a session queues behind that unit, and the helper's new unit queues
    behind the session.  So from now on every compute unit of this process
    is nested in the caller's hold, and a measurement session here raises
    :class:`HostLockError`.  Whoever starts such a process must hold a
    compute unit whenever it works, its start-up included.
    """
    global _PROCESS_COVER
    _PROCESS_COVER = Hold(mode="shared", waited_s=0.0, started_at=time.time(), nested=True)


def measurement_session(*, on_wait: WaitFn | None = None) -> AbstractContextManager[Hold]:
    """The exclusive host hold for one local measurement session."""
    return HostLock().exclusive(on_wait=on_wait)


def compute_unit(*, on_wait: WaitFn | None = None) -> AbstractContextManager[Hold]:
    """The shared host hold for one unit of compute (an export, one subnet's evaluation)."""
    return HostLock().shared(on_wait=on_wait)
