"""The service's registrations: supernets and device profiles, kept as JSON files.

The job store holds jobs and measurements; what a team registers with the
service (which supernets exist under which names, which devices to profile
on) lives here, in a data directory beside it, so it survives a restart and
can be read and edited by hand.  Uploaded checkpoints and exported ONNX files
live in the same directory.  Every write goes through a temporary file and an
atomic rename, so a crash never leaves half a registration behind.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hwsearch.api.exports import ExportCache
from hwsearch.jobs import SupernetRef

__all__ = ["MAX_CHECKPOINT_BYTES", "MAX_EXPORT_BYTES", "MAX_REGISTRATIONS", "MAX_SUPERNET_BYTES", "NAME_PATTERN",
           "Catalog", "CatalogFull", "absolute_path", "default_data_dir", "valid_name"]

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)


def default_data_dir(store: str | os.PathLike[str]) -> Path:
    """Where a service keeps its catalog, uploads and exports unless told otherwise: ``STORE.data``.

    Beside the store's real file, as its runner locks are (:func:`hwsearch.jobs.runners.runners_folder`):
    served through a symbolic link, the same store had a second, empty catalog beside the link.
    """
    return Path(f"{os.path.realpath(store)}.data")


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute as the catalog's own paths are (its root is made so).

    Registrations and jobs stored while the root was relative name uploads
    relative to the service's working folder; compared as given, an upload
    still in use looked unused and was removed, and one no longer named stayed.
    """
    return Path(os.path.abspath(path))


def valid_name(name: object) -> bool:
    """Registered names become file names, so they are restricted to a safe alphabet.

    ``fullmatch``: with ``match``, ``$`` would also accept a trailing newline.
    """
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


#: Default bound on the exported ONNX files kept (``hwsearch serve --max-export-mb``).
MAX_EXPORT_BYTES = 2048 * 1024 * 1024
#: Default bound on the uploaded checkpoints kept (``hwsearch serve --max-checkpoints-mb``).
MAX_CHECKPOINT_BYTES = 8192 * 1024 * 1024
#: Default bound on registered supernets, and on registered devices (``--max-registrations``).
MAX_REGISTRATIONS = 1000
#: Default bound on one registered supernet's weights and buffers (``--max-supernet-mb``).  The
#: largest built-in, AutoFormer-B, holds 325 MiB; ``n_classes: 100000`` made an OFA ResNet-50 of
#: 958 MiB, and the service keeps a few built supernets in memory, as does every job's worker.
MAX_SUPERNET_BYTES = 768 * 1024 * 1024


class CatalogFull(ValueError):
    """A new name would pass the bound on registrations of its kind (re-registering a name replaces it)."""


class Catalog:
    """Registered supernets and device profiles under one data directory, and its exports; thread-safe."""

    def __init__(self, root: str | os.PathLike[str], *, max_export_bytes: int = MAX_EXPORT_BYTES,
                 max_checkpoint_bytes: int = MAX_CHECKPOINT_BYTES,
                 max_registrations: int = MAX_REGISTRATIONS, max_supernet_bytes: int = MAX_SUPERNET_BYTES) -> None:
        self.root = absolute_path(root)  # uploads' paths go into job specs, read by Ray workers elsewhere
        self.max_checkpoint_bytes = max_checkpoint_bytes
        self.max_registrations = max_registrations
        self.max_supernet_bytes = max_supernet_bytes
        self._lock = threading.Lock()
        self._checkpoint_files = threading.Lock()
        self._uploads = threading.Lock()
        self._reading: collections.Counter[Path] = collections.Counter()  # checkpoints exports are reading
        self._remove_when_read: set[Path] = set()  # unnamed checkpoints to remove once no export reads them
        self._reading_lock = threading.Lock()
        for sub in ("supernets", "devices", "checkpoints", "exports"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.export_cache = ExportCache(self.exports, max_export_bytes)
        for stale in self.checkpoints.glob("*.part"):  # a killed upload's copy: it would hold room forever
            stale.unlink(missing_ok=True)

    # ------------------------------------------------------------------ paths

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @contextmanager
    def upload_turn(self) -> Iterator[None]:
        """One upload at a time, from its room check to its registration.

        Two uploads therefore cannot both see the same room and together pass
        the bound.  The turn is not :meth:`checkpoints_named`'s lock: an upload
        copies and builds under its turn alone, so job submissions, profile
        submissions and deletes do not wait for its bytes.
        """
        with self._uploads:
            yield

    @contextmanager
    def checkpoint_room(self) -> Iterator[int]:
        """Bytes the kept checkpoints may still take; meanwhile nothing names or removes one.

        While it is held, no registration or job record that names a
        checkpoint is written (:meth:`checkpoints_named`), so what an upload
        finds in use stays in use until it has registered.  ``.part`` files
        are left out: the only one is the copy of the upload holding
        :meth:`upload_turn`, which is checked against this room itself.
        """
        with self._checkpoint_files:
            used = sum(p.stat().st_size for p in self.checkpoints.iterdir() if p.is_file() and p.suffix != ".part")
            yield max(0, self.max_checkpoint_bytes - used)

    @contextmanager
    def checkpoints_named(self) -> Iterator[None]:
        """Hold off uploads from reading a registration to writing the record that names its checkpoint.

        An upload under a registered name removes the name's previous
        checkpoint when nothing names it; a job being submitted for that name
        names it only once its record exists.  Inside this block an upload
        either finished before the job read the registration (the job gets
        the new weights) or waits until the job's record keeps the old file.
        """
        with self._checkpoint_files:
            yield

    def reading_checkpoint(self, path: str | None) -> Path | None:
        """Count ``path`` as read by an export until :meth:`done_reading`; it is not removed meanwhile.

        An export reads its registration, waits for an export slot (up to a
        minute) and only then builds; an upload under the name meanwhile
        removed the old checkpoint, and the export answered 409 "no longer
        readable" for a name that was registered all along.  This takes its
        own small lock, not :meth:`checkpoints_named`'s, so an export never
        waits for an upload's registration.
        """
        if path is None:
            return None
        counted = absolute_path(path)  # a registration made before may name it relatively
        with self._reading_lock:
            self._reading[counted] += 1
        return counted

    def done_reading(self, path: Path | None) -> None:
        """The export that counted ``path`` is done; a removal put off for it (:meth:`remove_unread`) happens now."""
        if path is None:
            return
        with self._reading_lock:
            self._reading[path] -= 1
            if self._reading[path] > 0:
                return
            del self._reading[path]
            if path in self._remove_when_read:
                self._remove_when_read.discard(path)
                _remove_quietly(path)

    def kept_again(self, path: Path) -> None:
        """An upload keeps ``path`` (again): a removal put off until exports stop reading it is called off.

        The same bytes uploaded under another name are kept at the same path;
        the old name's removal, waiting for an export to finish, then deleted
        the file the new name had just registered (its exports answered 409).
        """
        with self._reading_lock:
            self._remove_when_read.discard(Path(path))

    def checkpoints_read(self) -> set[Path]:
        """The checkpoints exports are reading now (:meth:`reading_checkpoint`)."""
        with self._reading_lock:
            return set(self._reading)

    def remove_unread(self, path: Path) -> None:
        """Remove a checkpoint nothing names any more, now or once the exports reading it are done."""
        with self._reading_lock:
            if self._reading[path] > 0:
                self._remove_when_read.add(path)
            else:
                self._reading.pop(path, None)
                _remove_quietly(path)

    # ------------------------------------------------------------------ supernets

    def put_supernet(self, ref: SupernetRef, description: dict[str, Any]) -> None:
        """Store a built-and-checked supernet with its description (space name, size).

        Listing then reads only these JSON files; it never builds a supernet
        or opens a checkpoint again.
        """
        self._write(self.root / "supernets" / f"{ref.name}.json",
                    {**description, **ref.to_dict()})

    def get_supernet(self, name: str) -> SupernetRef | None:
        data = self._read(self.root / "supernets", name)
        return None if data is None else SupernetRef.from_dict(data)

    def list_supernets(self) -> list[dict[str, Any]]:
        """Every registered supernet's reference and description, as stored."""
        return list(self._read_all(self.root / "supernets"))

    # ------------------------------------------------------------------ devices

    def put_device(self, name: str, record: dict[str, Any]) -> None:
        """Store a validated device record (``name``, ``hash``, ``profile``) under its name."""
        self._write(self.root / "devices" / f"{name}.json", record)

    def get_device(self, name: str) -> dict[str, Any] | None:
        return self._read(self.root / "devices", name)

    def list_devices(self) -> list[dict[str, Any]]:
        return list(self._read_all(self.root / "devices"))

    def set_aside(self, kind: str, name: str) -> Path:
        """Move a registration out of the listing (``<kind>/<name>.json.rejected``), keeping it for the operator."""
        path = self.root / kind / f"{name}.json"
        target = path.with_name(path.name + ".rejected")
        with self._lock:
            os.replace(path, target)
        return target

    def check_room(self, kind: str, name: str) -> None:
        """CatalogFull unless ``name`` can be registered as a ``kind`` ("supernets" or "devices") now."""
        with self._lock:
            self._check_room(self.root / kind / f"{name}.json")

    # ------------------------------------------------------------------ files

    def _check_room(self, path: Path) -> None:
        if not path.exists() and sum(1 for _ in path.parent.glob("*.json")) >= self.max_registrations:
            raise CatalogFull(f"the service keeps at most {self.max_registrations} {path.parent.name}; "
                              "registering an existing name replaces it")

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        """Write atomically; a new name must fit under ``max_registrations`` of its kind (CatalogFull)."""
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        with self._lock:
            self._check_room(path)
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, path)

    @staticmethod
    def _read(folder: Path, name: str) -> dict[str, Any] | None:
        if not valid_name(name):
            return None
        path = folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @staticmethod
    def _read_all(folder: Path) -> Iterator[dict[str, Any]]:
        for path in sorted(folder.glob("*.json")):
            yield json.loads(path.read_text())


def _remove_quietly(path: Path) -> None:
    """Remove an unnamed checkpoint; failing to is logged, not raised into the request that ended its use."""
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        log.warning("could not remove the unused checkpoint %s: %s", path, error)
