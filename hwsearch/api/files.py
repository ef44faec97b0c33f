"""Which server files a client may name: paths inside the operator's data roots, bounded.

A client that could name any path would make the server load ``/etc``,
``/proc/self/environ`` or ``/dev/zero`` as a checkpoint or a dataset, and
learn from the answers which files exist.  So a request may name a file only
by a path inside one of the directories the operator declared
(``hwsearch serve --data-root DIR``), resolved with symlinks followed; every
refusal before that point reads the same whether or not the path exists, and
only regular files (or, for datasets, directories) of bounded size pass.

A file's size is its size once unpacked: ``.npz`` files and torch's ``.pt``
files are zip archives, and both numpy and torch inflate deflated members.
A 256 KiB ``.pt`` whose records were deflated loaded here as a 256 MiB
tensor, so the on-disk size alone would let a 512 MiB file become 500 GB.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from hwsearch import archives
from hwsearch.imagefolder import class_folders, folder_labels, images_in

__all__ = ["DataRoots", "PathRefused", "check_unpacked_size"]

MAX_PATH_CHARS = 1024
DATASET_SUFFIXES = (".npz", ".pt")


class PathRefused(ValueError):
    """A client-named path is outside the data roots, missing, or not the right kind of file."""


class DataRoots:
    """The directories clients may name files in; relative paths start at the first one."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]], *, max_file_bytes: int,
                 max_dataset_files: int = 200_000) -> None:
        if not roots:
            raise ValueError("at least one data root is needed")
        self.roots = tuple(Path(r).resolve() for r in roots)
        for root in self.roots:
            root.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.max_dataset_files = max_dataset_files

    def checkpoint(self, value: object) -> Path:
        """A regular file inside a root, at most ``max_file_bytes`` long."""
        path = self._inside(value)
        self._check_file(path)
        return path

    def dataset(self, value: object) -> Path:
        """An ``.npz``/``.pt`` file or an image folder inside a root, both bounded."""
        path = self._inside(value)
        if path.is_dir():
            self._check_folder(path)
        else:
            self._check_file(path)
            if path.suffix.lower() not in DATASET_SUFFIXES:
                raise PathRefused(f"a dataset file must be one of {list(DATASET_SUFFIXES)} "
                                  "(or a folder of class sub-folders of images)")
        return path

    def _inside(self, value: object) -> Path:
        """The resolved path if it lies inside a root and exists; one message for every other case."""
        refused = PathRefused("must name an existing file inside a data root the operator "
                              "allowed (see GET /data-roots), as a path relative to the first "
                              "root or an absolute path inside one")
        if not isinstance(value, str) or not value or len(value) > MAX_PATH_CHARS or "\0" in value:
            raise refused
        candidate = Path(value)
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        try:
            resolved = candidate.resolve()
            exists = resolved.exists()
        except (OSError, RuntimeError):  # too long, a symlink loop: refused like a missing file
            raise refused from None
        if not exists or not any(resolved.is_relative_to(root) for root in self.roots):
            raise refused
        return resolved

    def _check_file(self, path: Path) -> None:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused("must be a regular file (not a device, pipe or folder)")
        if info.st_size > self.max_file_bytes:
            raise PathRefused(f"is {info.st_size} bytes; the limit is {self.max_file_bytes}")
        check_unpacked_size(path, self.max_file_bytes)

    def _check_folder(self, path: Path) -> None:
        """The images a scan of the folder would read: each inside a root, and at most ``max_dataset_files``.

        Listed as :meth:`hwsearch.imagefolder.ImageFolder.scan` lists them,
        links followed, and counted as they are listed, so the count stops
        at the bound rather than listing a huge folder.  Counting with
        ``os.walk`` (which does not follow links) while the scan followed
        them let a class folder linked to a folder outside the roots pass
        with its images uncounted, and be read.
        """
        count = 0
        try:
            folders = class_folders(path)
            _check_numbering(path, folders)
            entering = functools.partial(self._refuse_outside, dataset=path)  # a sub-folder outside is not listed
            for folder in folders:
                self._refuse_outside(folder, path)
                for image in images_in(folder, ordered=False, entering=entering):
                    self._refuse_outside(image, path)
                    count += 1
                    if count > self.max_dataset_files:
                        raise PathRefused(f"holds more than {self.max_dataset_files} images")
        except OSError as error:  # a folder the service may not list
            raise PathRefused(f"cannot be listed ({error.strerror or type(error).__name__})") from None
        except PathRefused:
            raise
        except ValueError as error:  # a link loop, or folders nested past the scan's bound
            raise PathRefused(str(error).removeprefix(f"{path}/")) from None
        if count == 0:
            raise PathRefused("holds no images in class sub-folders")

    def _refuse_outside(self, entry: Path, dataset: Path) -> None:
        """Refuse a dataset whose class folder or image leads (by a link) outside every root."""
        try:
            resolved = entry.resolve()
        except (OSError, RuntimeError):  # a link loop
            raise PathRefused(f"{entry.relative_to(dataset)} is a broken link") from None
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise PathRefused(f"{entry.relative_to(dataset)} leads outside the data roots")


def _check_numbering(dataset: Path, folders: list[Path]) -> None:
    """Refuse class folders the scan cannot number (a mix of indices and names, one index twice) now, not in the job."""
    try:
        folder_labels(dataset, [folder.name for folder in folders])
    except ValueError as error:
        raise PathRefused(str(error).removeprefix(f"{dataset}: ")) from None


def check_unpacked_size(path: Path, limit: int) -> None:
    """Refuse a zip archive (``.npz``, torch's ``.pt``) whose members unpack to more than ``limit`` bytes.

    The sizes come from the archive's directory (:mod:`hwsearch.archives`,
    which the readers also apply with their own default bound); a file that
    is not a zip archive is left to its reader.
    """
    try:
        archives.check_unpacked_size(path, limit)
    except archives.UnpackedTooLarge as error:
        raise PathRefused(str(error)) from None
