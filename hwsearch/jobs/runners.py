"""Whether a job's runner is alive: each runner process holds a lock file beside the store while it lives.

A job's ``runner`` column holds the token of the one runner allowed on it
(:mod:`hwsearch.jobs.control`).  A starting service used to mark every active
job ``interrupted``, as if their runners had died with the previous service:
a ``hwsearch search`` running on the same store lost its job within seconds.
So every token a process writes for a job of a local store names that
process's *lease*, ``<token> = <lease id>.<random>``, and the process holds an
exclusive ``flock`` on ``<store>.runners/<lease id>.lock`` for as long as it
lives.  The kernel drops the lock when the process dies, however it dies
(SIGKILL, out of memory), so a lock that can be taken belongs to a dead
runner, and only its jobs are orphans.  A Ray task started for a job carries
its dispatcher's token, so the job lives as long as the process that
dispatched it (a service's local Ray does not outlive it: the next start ends
what a killed one left).

Liveness stays here, beside the runners, and out of the store's interface: a
store that is not a local SQLite file (a :class:`~hwsearch.store.MemoryStore`,
another backend) gives no lease, its tokens name none, and recovery treats its
active jobs as orphaned, as it always did.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hwsearch.store import SQLiteStore, Store

__all__ = ["claim", "claim_store", "has_leases", "new_runner_token", "remove_dead_leases", "runner_alive",
           "runners_folder"]

log = logging.getLogger(__name__)

_LEASE_ID = re.compile(r"[0-9a-f]{32}")
#: This process's lease per store file: its id, or None where no lock file could be made.
_LEASES: dict[Path, str | None] = {}
_LEASES_LOCK = threading.Lock()


def runners_folder(store_path: str | os.PathLike[str]) -> Path:
    """The folder of a store file's runner lock files: ``<store>.runners`` (the ``hwsearch serve`` lock too).

    Beside the store's real file, links resolved: a store named through a
    symlink gave a second folder, so a second ``hwsearch serve`` started on
    the same store and a runner's lease was not where the service looked.
    """
    return Path(f"{os.path.realpath(store_path)}.runners")


def claim_store(store_path: str | os.PathLike[str]) -> IO[str] | None:
    """The store's service lock (``serve.lock`` among its runner locks), or None if a live service holds it.

    Two services on one store each run a queue of its jobs and each recover
    the other's: only one may serve it, however it was started (``hwsearch
    serve`` or ``uvicorn --factory``).  Held until the handle is closed or the
    process ends.
    """
    folder = runners_folder(store_path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return claim(folder / "serve.lock")


def claim(lock_file: Path) -> IO[str] | None:
    """An exclusive ``flock`` on ``lock_file`` (made if missing) held by the returned handle; None if taken."""
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def new_runner_token(store: Store) -> str:
    """A fresh runner token for a job of ``store``, naming this process's lease when the store is a local file."""
    token = uuid.uuid4().hex
    lease = _lease(store)
    return token if lease is None else f"{lease}.{token}"


def runner_alive(store: Store, runner: str | None) -> bool:
    """Whether the process whose lease ``runner`` names still lives; False for a token that names none."""
    lock_file = _lock_file(store, runner)
    return lock_file is not None and _held(lock_file)


def remove_dead_leases(store: Store) -> int:
    """Remove the lock files of this store's dead runners (killed ones cannot remove their own); how many."""
    path = _local_file(store)
    folder = runners_folder(path) if path is not None else None
    if folder is None or not folder.is_dir():
        return 0
    return sum(_remove_if_dead(lock_file) for lock_file in folder.glob("*.lock") if _LEASE_ID.fullmatch(lock_file.stem))


def has_leases(store: Store) -> bool:
    """Whether ``store`` keeps runner leases (a local SQLite file): without them no runner can be told alive."""
    return _local_file(store) is not None


def _local_file(store: Store) -> Path | None:
    return store.path if isinstance(store, SQLiteStore) else None


def _lock_file(store: Store, runner: str | None) -> Path | None:
    """The lock file ``runner``'s lease names, or None (no local store, or a token from before leases)."""
    path = _local_file(store)
    lease, dot, _ = (runner or "").partition(".")
    if path is None or not dot or not _LEASE_ID.fullmatch(lease):
        return None
    return runners_folder(path) / f"{lease}.lock"


def _lease(store: Store) -> str | None:
    """This process's lease on ``store``, taken at its first job there and held until the process ends."""
    path = _local_file(store)
    if path is None:
        return None
    with _LEASES_LOCK:
        if path not in _LEASES:
            _LEASES[path] = _take_lease(runners_folder(path))
        return _LEASES[path]


def _take_lease(folder: Path) -> str | None:
    """Make and lock a new lock file in ``folder``; its id, or None (logged) if the folder is not writable."""
    lease = uuid.uuid4().hex
    lock_file = folder / f"{lease}.lock"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        making = folder / f"{lease}.making"  # locked before it takes its name: a sweep never finds it free
        handle = open(making, "x")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        making.rename(lock_file)
    except OSError as error:
        log.warning("no runner lock in %s (%s): a service starting on this store will take this "
                    "process's jobs for orphans", folder, error)
        return None
    atexit.register(_release, lock_file, handle)
    return lease


def _release(lock_file: Path, handle: IO[str]) -> None:
    """Remove this process's lock file as it exits (removed while still locked, so no one sees it free)."""
    with contextlib.suppress(OSError):
        lock_file.unlink()
    handle.close()


def _held(lock_file: Path) -> bool:
    """Whether a live process holds ``lock_file``'s lock (a missing file is held by no one)."""
    with _lock_if_free(lock_file, fcntl.LOCK_SH) as taken:
        return taken is False


def _remove_if_dead(lock_file: Path) -> bool:
    """Remove ``lock_file`` if no live process holds it; whether it was removed."""
    with _lock_if_free(lock_file, fcntl.LOCK_EX) as taken:
        if not taken:
            return False
        try:
            lock_file.unlink()
        except FileNotFoundError:
            return False
        return True


@contextlib.contextmanager
def _lock_if_free(lock_file: Path, operation: int) -> Iterator[bool | None]:
    """Try ``flock(operation)`` on ``lock_file`` without waiting: True while taken here, False if another process
    holds it, None if there is no such file; the lock is let go on leaving."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)
