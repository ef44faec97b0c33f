"""The service's exported ONNX files: a cache bounded in bytes, least recently used pruned first.

``POST /exports`` keeps each file (and a JSON report beside it) so that asking
again, or downloading, costs nothing.  Unbounded, that cache is a way to fill
the disk: a tiny-mbv3 subnet exports to 8-25 MB in about half a second, two
at a time, so a token holder posting random archs writes tens of MB a second.
Past ``max_bytes`` the exports used least recently (made, asked for again, or
downloaded) are removed; a pruned export answers 404 and is made again by
``POST /exports``.  The export just made is never the one removed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["ExportCache"]

#: How a file being made ends: it is not in the cache yet.
_MAKING_SUFFIX = ".part.onnx"


class ExportCache:
    """``<id>.onnx`` files with their ``<id>.json`` reports in one folder, at most ``max_bytes`` in all.

    Made once per service start (one service owns its data directory), when
    files left half-made by a killed predecessor are removed.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._builds: dict[str, threading.Event] = {}  # export ids being built now, set when the build ends
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"*{_MAKING_SUFFIX}"):  # made when the service was killed: never finished
            stale.unlink(missing_ok=True)

    def onnx_path(self, export_id: str) -> Path:
        return self.folder / f"{export_id}.onnx"

    def making_path(self, export_id: str) -> Path:
        """Where this thread builds ``export_id`` before :meth:`put` (unique per process and thread)."""
        return self.folder / f"{export_id}.{os.getpid()}.{threading.get_ident()}{_MAKING_SUFFIX}"

    def report(self, export_id: str) -> dict[str, Any] | None:
        """The stored report, marking the export used; None if it was never made or was pruned."""
        if not self._use(export_id):
            return None
        try:
            return json.loads(self._report_path(export_id).read_text())
        except FileNotFoundError:  # pruned since: counts as never made
            return None

    def open_file(self, export_id: str) -> IO[bytes] | None:
        """The ONNX file opened for sending, marking the export used; None if absent.

        Opened under the lock that pruning holds: a path handed on would be
        opened later, and an export pruned in between answered 500, or a 200
        whose body never came (3 and 2 of 16,000 downloads while another
        client's exports pruned it).  The open handle keeps the bytes readable
        whatever is pruned after it.
        """
        with self._lock:
            if not self._use(export_id):
                return None
            try:
                return open(self.onnx_path(export_id), "rb")
            except FileNotFoundError:
                return None

    def claim_build(self, export_id: str) -> threading.Event | None:
        """None: the caller builds ``export_id`` now, and calls :meth:`build_done` after whatever happens.

        Otherwise another request is building it: the event is set when that
        build ends, and the caller reads :meth:`report` again.  Identical
        exports asked at once each built the same file, and each took one of
        the few export places (6 of 12 refused as busy).
        """
        with self._lock:
            running = self._builds.get(export_id)
            if running is None:
                self._builds[export_id] = threading.Event()
            return running

    def build_done(self, export_id: str) -> None:
        """The build :meth:`claim_build` gave is over (made or failed): the requests waiting for it go on."""
        with self._lock:
            self._builds.pop(export_id).set()

    def _use(self, export_id: str) -> bool:
        """Mark the export used now (its report's mtime orders pruning); whether it is complete."""
        try:
            _touch(self._report_path(export_id))  # atime is not kept on most mounts
        except FileNotFoundError:
            return False
        return self.onnx_path(export_id).is_file()

    def _report_path(self, export_id: str) -> Path:
        return self.folder / f"{export_id}.json"

    def put(self, export_id: str, made: Path, info: dict[str, Any]) -> dict[str, Any]:
        """Move ``made`` in under ``export_id`` with its report, then prune to the bound."""
        sidecar = self._report_path(export_id)
        tmp = sidecar.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with self._lock:
            os.replace(made, self.onnx_path(export_id))
            tmp.write_text(json.dumps(info))
            os.replace(tmp, sidecar)  # the report last: a report always has its file
            _touch(sidecar)
            self._prune(keep=export_id)
        return info

    def _prune(self, keep: str) -> None:
        entries = sorted(self._entries(), key=lambda entry: entry[1])  # least recently used first
        total = sum(size for _, _, size in entries)
        for export_id, _, size in entries:
            if total <= self.max_bytes:
                break
            if export_id == keep:
                continue
            self._report_path(export_id).unlink(missing_ok=True)  # the report first: no longer cached
            self.onnx_path(export_id).unlink(missing_ok=True)
            total -= size

    def _entries(self) -> list[tuple[str, float, int]]:
        """``(id, last used, bytes of file and report)`` of every export, a report's or not.

        A file without its report (a crash between the two writes) is counted
        and pruned like the rest, by its own time; files being made are not.
        """
        entries = []
        for onnx in self.folder.glob("*.onnx"):
            if onnx.name.endswith(_MAKING_SUFFIX):
                continue
            try:
                file = onnx.stat()
            except FileNotFoundError:  # pruned meanwhile
                continue
            try:
                report = onnx.with_suffix(".json").stat()
                entries.append((onnx.stem, report.st_mtime, file.st_size + report.st_size))
            except FileNotFoundError:
                entries.append((onnx.stem, file.st_mtime, file.st_size))
        return entries



def _touch(path: Path) -> None:
    """Set ``path``'s times from ``time.time_ns``, not the kernel's file clock.

    With multigrain timestamps (Linux 6.13 on; this host runs 6.18) a file
    written and another touched a moment later get the same coarse time
    unless someone read the first's in between: measured, a touch right after
    another file's write was not newer in 300 of 300 tries.  The cache then
    pruned the export just downloaded instead of the older one.
    """
    now = time.time_ns()
    os.utime(path, ns=(now, now))
