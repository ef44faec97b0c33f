"""A service's folders in the host's shared temp folder: what a killed predecessor left there is cleared.

``hwsearch serve`` and the app ``uvicorn --factory`` builds both call
:func:`prepare_host_folders`, after taking the data directory's lock, so
that no live service can be using what it clears.  Under the factory a
killed service's Ray agents (210 MB) and exports were left for ever: only
``hwsearch serve`` cleared them.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hwsearch.ray_session import kill_leftovers, private_temp_dir
from hwsearch.tempdirs import folder_usage

__all__ = ["FolderNotOurs", "HostFolders", "prepare_host_folders"]


class FolderNotOurs(ValueError):
    """A name the service must own in the shared temp folder is a link, a file or another user's."""


@dataclass(frozen=True)
class HostFolders:
    """What :func:`prepare_host_folders` found and made; ``notices`` are for the operator's stderr."""

    temp_files: Path
    notices: tuple[str, ...]


def prepare_host_folders(data_dir: Path, *, local_ray: bool) -> HostFolders:
    """End a killed predecessor's Ray processes and empty its temp files; give this service both folders.

    Call it holding ``data_dir``'s service lock.  ``local_ray``: the
    service starts its own Ray (no ``--ray-address``), under a temp dir of
    its own (``RAY_TMPDIR``).  Temp files, the service's and its local Ray
    workers', go to a folder of its own (``TMPDIR``), which the caller
    removes when the service stops (``temp_files``).  Jobs remove their
    exports when done; a killed service, or a Ray worker ended mid-export,
    cannot (five MobileNetV3 subnets are about 70 MB), and under the lock
    nothing alive writes there, so what the folder holds was a predecessor's.
    """
    notices = []
    if local_ray:
        temp_dir = private_temp_dir(str(data_dir))
        killed = kill_leftovers(temp_dir)
        if killed:
            notices.append(f"ended {len(killed)} process(es) a previous run on {data_dir} left behind: "
                           f"{'; '.join(killed)}")
        _own_folder(temp_dir)
        if os.environ.get("RAY_TMPDIR", str(temp_dir)) != str(temp_dir):
            notices.append(f"Ray runs under {temp_dir}, not RAY_TMPDIR={os.environ['RAY_TMPDIR']}: there a "
                           "later start finds what a killed service left")
        os.environ["RAY_TMPDIR"] = str(temp_dir)
    folder = private_temp_dir(str(data_dir), "tmp")  # after the leftovers, which might still be writing there
    files, left = folder_usage(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:  # a link or a file another user put there: never write through it
        raise FolderNotOurs(f"{folder} exists and is not this service's to clear") from None
    if files:
        notices.append(f"removed {files} temp file(s) ({left / 1e6:.1f} MB) a previous run on {data_dir} "
                       "left behind")
    os.environ["TMPDIR"] = str(folder)  # inherited by the Ray workers this service starts
    tempfile.tempdir = None  # gettempdir() caches its first answer; make it read TMPDIR again
    return HostFolders(folder, tuple(notices))


def _own_folder(folder: Path) -> None:
    """Make ``folder`` this user's and no one else's, creating it if missing; refuse one that is not ours.

    Ray keeps its sockets and session files under ``RAY_TMPDIR``, a name in
    the host's shared temp folder that anyone can compute from the data
    directory's path.  A folder another user made there first, or a link,
    would let them swap the sockets this service's Ray connects to (and so
    read its token); Ray itself creates a missing one world-readable (0755).
    """
    try:
        folder.mkdir(mode=0o700)
        return
    except FileExistsError:
        info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise FolderNotOurs(f"{folder} exists and is not this service's (a link, a file or another user's "
                            "folder): remove it, or serve another data directory")
    os.chmod(folder, 0o700)  # ours, from a run before this check, possibly made by Ray itself
