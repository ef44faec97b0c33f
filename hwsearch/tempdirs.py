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

import fcntl
import os
import secrets
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwsearch.at_exit import ENDS_FOLDERS, OpenUntilExit

PREFIX = "hwsearch-"
OWNER_FILE = ".hwsearch-owner"
#: Names the command that started a process (its Ray workers and their subprocesses included).
COMMAND_TAG_ENV = "HWSEARCH_COMMAND_TAG"


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
    owner = os.open(staged, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.write(owner, f"{os.getpid()} {os.environ.get(COMMAND_TAG_ENV, '-')}\n".encode())  # for people to read
    try:
        if swept:
            _LIVE_FOLDERS.opened(folder)  # ExitBegun once a stop began: the folder goes at once
        fcntl.flock(owner, fcntl.LOCK_EX)
        os.rename(staged, folder / OWNER_FILE)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE_FOLDERS.closed(folder)
        os.close(owner)


def _remove_folder(folder: Path) -> None:
    """At exit: remove a folder of work the exit cut off, again while a file written into it as it went kept it.

    A ``search`` stopped by SIGTERM left its exports folder (7.4 MB) in 6 of
    10 stops, for the next command to find.  The exit waits for a write
    already under way (:func:`~hwsearch.at_exit.unless_stopping`), but not
    for one outside it.
    """
    for _ in range(_REMOVE_TRIES):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            return
        time.sleep(0.05)


_REMOVE_TRIES = 20

#: Folders whose ``with`` has not ended, removed at exit (a job's daemon thread never reaches its ``finally``),
#: once the processes writing into them are ended.
_LIVE_FOLDERS: OpenUntilExit[Path] = OpenUntilExit(_remove_folder, order=ENDS_FOLDERS)


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


def tag_this_command() -> str:
    """Give this command a fresh tag that every process it starts carries in its environment.

    Ray's local workers inherit the command's environment, so after a stop the
    command can tell its own workers from another live command's.
    """
    tag = secrets.token_hex(8)
    os.environ[COMMAND_TAG_ENV] = tag
    return tag


def remove_folders_of_ended_workers(wait_s: float = 20.0) -> int:
    """After a stopped command's exit handlers: end its processes still running, and remove their folders.

    ``ray.shutdown`` ends a local Ray's workers a moment after it returns,
    and a worker stopped mid-export leaves its folder: a ``demo`` stopped by
    SIGTERM left two ``hwsearch-exports-*`` folders for the next command.
    Waiting a fixed 3 s for them was too short on a busy host (one CI run
    in the last two), and killing only the owners of the folders seen at
    first missed a worker that made its folder a moment later.  So every
    process that carries this command's tag (:func:`tag_this_command`: its
    Ray workers and what they started) is killed, and once they are gone
    (within ``wait_s``) the folders of dead owners are removed, as at every
    start.  Other commands' processes and folders are left alone.  Returns
    the bytes freed.
    """
    tag = os.environ.get(COMMAND_TAG_ENV, "")
    killed = [pid for pid in _processes_tagged(tag) if _kill(pid)]
    deadline = time.monotonic() + wait_s
    while any(_running(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return remove_dead_owners_folders(Path(tempfile.gettempdir()))


def _processes_tagged(tag: str) -> list[int]:
    """This user's processes, other than this one, whose environment carries ``tag``; not resource trackers.

    A resource tracker (multiprocessing's) removes its process's semaphores
    once that process is gone; killed, it leaves them in ``/dev/shm``.
    """
    if not tag:
        return []
    marker = f"{COMMAND_TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone already, or not ours to read
            continue
        if b"multiprocessing.resource_tracker" not in command:
            found.append(int(entry.name))
    return found


def _kill(pid: int) -> bool:
    """SIGKILL ``pid``; whether the signal was sent."""
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:  # ended since
        return False
    return True


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie (killed, not yet reaped by its parent) has dropped its flocks."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[:1] != ["Z"]


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
