"""Temp folders that any later hwsearch process can clear once their owner is dead.

A job exports its subnets into a temp folder (about 14 MB per MobileNetV3
subnet) and removes it when done.  A process killed mid-export (``kill -9``,
an out-of-memory kill, a Ray worker ended with its task) never does, and
``/tmp`` fills with folders nobody can attribute: at least six such folders of
69 MB each had piled up on our CI machine in one day.

Each folder made here holds an owner file that its creator keeps flocked for
the folder's life.  The kernel drops a flock when its holder dies, however it
dies, so a later process can tell a dead owner's folder (the flock can be
taken) from a live one's (it cannot), without trusting pids that the system
reuses.  :func:`remove_dead_owners_folders` is called by every ``hwsearch``
command as it starts.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "hwsearch-"
OWNER_FILE = ".hwsearch-owner"


@contextmanager
def owned_temp_dir(purpose: str, parent: str | Path | None = None, *, swept: bool = True) -> Iterator[Path]:
    """A fresh folder ``hwsearch-<purpose>-XXXXXXXX`` in ``parent`` (default: the temp dir), removed on exit.

    If this process dies first, a later run removes it (when it is in the temp dir).  If the process
    exits while the ``with`` is still open (a daemon thread's), the exit removes it, unless ``swept``
    is False: a folder whose owner removes it at exit in its own order (Ray's, after Ray stops).

    The owner file is flocked under a private name first and only then renamed
    to :data:`OWNER_FILE` (a flock follows the file), so no other process ever
    sees an owner file that is not yet locked and mistakes it for a dead one's.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{purpose}-", dir=parent))
    staged = folder / f"{OWNER_FILE}.{os.getpid()}"
    owner = os.open(staged, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if swept:
        _live(folder, True)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX)
        os.rename(staged, folder / OWNER_FILE)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _live(folder, False)
        os.close(owner)


_LIVE_FOLDERS: set[Path] = set()
_LIVE_LOCK = threading.Lock()
_sweep_armed = False


def _live(folder: Path, made: bool) -> None:
    """Keep the set of this process's folders whose ``with`` has not ended; the first one arms the exit's sweep.

    Armed at first use, not at import, so that it runs before the CLI's
    last exit handler (registered as the command starts), which may end
    the process.
    """
    global _sweep_armed
    with _LIVE_LOCK:
        if made and not _sweep_armed:
            atexit.register(_remove_live_folders)
            _sweep_armed = True
        (_LIVE_FOLDERS.add if made else _LIVE_FOLDERS.discard)(folder)


def _remove_live_folders() -> None:
    """At exit: remove the folders of work the exit cut off (a job's daemon thread never reaches its ``finally``).

    A ``search`` stopped by SIGTERM left its exports folder (7.4 MB) in 6 of
    10 stops, for the next command to find.
    """
    with _LIVE_LOCK:
        folders = list(_LIVE_FOLDERS)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def remove_dead_owners_folders(parent: Path | None = None) -> int:
    """Remove this user's folders of :func:`owned_temp_dir` whose owner has died; return the bytes freed.

    Only real folders (not links) named ``hwsearch-*`` that this user owns and
    that hold an :data:`OWNER_FILE` are candidates, so other users' files and
    hwsearch's other temp folders (the service's, Ray's) are never touched.
    """
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    freed = 0
    for folder in _named_ours(root):
        if _owned_by_the_dead(folder):
            freed += folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
    return freed


def remove_folders_of_ended_workers(since: float, wait_s: float = 3.0) -> int:
    """After a stopped command's exit handlers: remove the folders its Ray workers made, once their owners die.

    ``ray.shutdown`` ends a local Ray's workers a moment after it returns,
    and a worker stopped mid-export leaves its folder: a ``demo`` stopped by
    SIGTERM left two ``hwsearch-exports-*`` folders for the next command.
    Folders made since ``since`` (a time of :func:`time.time`) whose owner is
    still alive are waited for, up to ``wait_s`` (they may be another live
    command's); dead owners' folders are removed as at every start.
    Returns the bytes freed.
    """
    import time

    root = Path(tempfile.gettempdir())
    deadline = time.monotonic() + wait_s
    freed = remove_dead_owners_folders(root)
    while time.monotonic() < deadline and _recent_owned_folders(root, since):
        time.sleep(0.1)
        freed += remove_dead_owners_folders(root)
    return freed


def _recent_owned_folders(root: Path, since: float) -> list[Path]:
    """This process's kind of folder under ``root``, made at or after ``since``, not this process's own."""
    with _LIVE_LOCK:
        own = set(_LIVE_FOLDERS)
    recent = []
    for entry in _named_ours(root):
        try:
            if entry not in own and (entry / OWNER_FILE).is_file() and entry.stat().st_mtime >= since:
                recent.append(entry)
        except OSError:
            continue
    return recent


def _named_ours(root: Path) -> list[Path]:
    """The entries of ``root`` named as this module names its folders; none from an unreadable temp dir."""
    try:
        return [entry for entry in root.iterdir() if entry.name.startswith(PREFIX)]
    except OSError:  # an unreadable temp dir holds nothing we could clear
        return []


def _owned_by_the_dead(folder: Path) -> bool:
    """Whether ``folder`` is this user's owned temp folder and its owner file's flock is free."""
    try:
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        owner = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone, not a folder of ours, or no owner file (not ours, or its creator died before it)
        return False
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: the owner is alive
        return False
    finally:
        os.close(owner)
    return True


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, counted without following links (0 if it is a link or missing)."""
    return folder_usage(folder)[1]


def folder_usage(folder: Path) -> tuple[int, int]:
    """Files under ``folder`` and their bytes, counted without following links ((0, 0) if a link or missing).

    Files, not only bytes: a killed export leaves its file empty, and "nothing
    left" then hid that something was.
    """
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return 0, 0
    except OSError:
        return 0, 0
    count = total = 0
    for directory, _, files in os.walk(folder):  # os.walk never descends into a linked folder
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
            count += 1
    return count, total
