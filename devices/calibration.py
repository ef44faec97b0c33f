"""The device's ruler: one reference latency that every session's ratios are scaled by.

Ratios to the reference reproduce to about 1% between sessions, but the
reference's own latency does not: on this machine a whole session can run
16% (p10) to 80% (median) slower than the one before, because the machine sat
in its slow state for minutes.  Scaling each session by its own reference
time would carry that drift into ``latency_ms``, and predictors trained on
data from several sessions would learn it as noise.  So a device keeps one
reference latency: pinned in the profile (``reference_ms``), or else the
first session's robust reference time, stored per device hash and reused by
every later session.  Each Measurement's env still records the session's own
reference time, so the machine's state stays visible.

A stored ruler belongs to the host it was taken on as well as to the
device: the same profile on another machine, or after an upgrade of its
runtime, runs the reference at another speed.  So the device's file holds
one calibration per measuring host (``DeviceProfile.measured_host``: the
host fingerprint with the profile's runtime and its version), and a new
host or runtime starts its own instead of borrowing the old one's.

The ruler assumes ratios do not depend on the host's state.  Within a
session they hardly do, but across sessions on this machine a whole session
sometimes shifted.  24 demo subnets on the 2-thread device, in 26 sessions
(whole and in the pipeline's chunks): in the 20 sessions whose robust
reference ran at most 3.5% above the fastest session's, every subnet lay
within 8% of its median over all sessions (the session's median offset
0.98-1.06); in the 6 whose reference ran 4.7-24% above it, the median offset
was 1.02-1.31 and the worst subnet 9.5-37% off.  The session's
reference is thus the witness of the host's state, and
:attr:`Ruler.host_fastest_ms` (the fastest of the device's recent sessions
on this host) is what a session's slowdown is taken against
(``protocol.max_reference_slowdown``).  Those 26 sessions were wall-clock
ones; in 40 sessions on the 1-thread ``thread_cpu`` device, sessions only
shifted once their reference ran 10% or more above the fastest one's, so its limit
is 0.08 where a wall-clock device's is 0.04
(:data:`devices.profile.DEFAULT_REFERENCE_SLOWDOWN`).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.profile import DeviceProfile

CALIBRATION_DIR_ENV = "DEVICES_CALIBRATION_DIR"


def calibration_dir() -> Path:
    """Where calibrations live: ``$DEVICES_CALIBRATION_DIR`` or ``~/.cache/hwsearch-devices``."""
    configured = os.environ.get(CALIBRATION_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "hwsearch-devices"


@dataclass(frozen=True)
class Ruler:
    """The reference latency a session is scaled by, where it came from, and the host's fast state.

    ``source`` is ``"profile"`` (pinned), ``"stored"`` (an earlier session's
    calibration of this device on this host) or ``"this-session"`` (the
    first session of this device on this host, now stored for the next
    ones).  ``host_fastest_ms`` is the lowest robust reference time among the
    device's recent sessions on this host, this one included.
    """

    reference_ms: float
    source: str
    host_fastest_ms: float

    def slowdown(self, session_reference_ms: float) -> float:
        """How much slower the session's reference ran than in the host's fastest recent session."""
        return session_reference_ms / self.host_fastest_ms - 1.0


def device_reference_ms(
    profile: DeviceProfile, device_hash: str, host_fingerprint: str, session_reference_ms: float
) -> Ruler:
    """Record the session and return the ruler to scale it by (see :class:`Ruler`)."""
    path = calibration_dir() / f"{device_hash}.json"
    ruler = None if profile.reference_ms is not None else {
        "reference_ms": session_reference_ms, "device": profile.name, "created": time.time()}
    entry = _record_session(path, host_fingerprint, session_reference_ms, ruler)
    fastest = min(float(r["session_ms"]) for r in entry["recent"])
    if profile.reference_ms is not None:
        return Ruler(float(profile.reference_ms), "profile", fastest)
    stored = float(entry["reference_ms"])
    return Ruler(stored, "this-session" if stored == session_reference_ms else "stored", fastest)

RECENT_SESSIONS = 20


def calibration(device_hash: str, host_fingerprint: str) -> dict[str, Any]:
    """What is kept for the device on this host: the ruler (if any) and recent sessions.

    ``{"reference_ms", "created", "device"}`` when a ruler is stored, plus
    ``"recent": [{"at", "session_ms"}, ...]`` (newest last, at most
    :data:`RECENT_SESSIONS`) whenever sessions ran; empty when nothing is kept.
    """
    return dict(_read(calibration_dir() / f"{device_hash}.json").get("hosts", {})
                .get(host_fingerprint, {}))


def reset_calibration(device_hash: str, host_fingerprint: str) -> bool:
    """Forget the device's ruler on this host; the next session sets a new one.  True if one existed."""
    path = calibration_dir() / f"{device_hash}.json"
    if not path.exists():
        return False
    with _locked(path):
        data = _read(path)
        existed = data.get("hosts", {}).pop(host_fingerprint, None) is not None
        if existed:
            _replace(path, data)
    return existed


def update_kept_file(name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to a JSON file kept beside the calibrations, under its lock; returns what was written.

    For records that, like the ruler, belong to this host rather than to
    one run's store (the anchor's sessions, :mod:`hwsearch.anchor`): runs of
    several processes read and extend them, so every update is one locked
    read-modify-write and a reader never sees half a file.  ``name`` is a
    plain file name chosen by the caller's code, never by a client.
    """
    path = _kept_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = _read(path)
        change(data)
        _replace(path, data)
        return data


def read_kept_file(name: str) -> dict[str, Any]:
    """The content of a file kept by :func:`update_kept_file`; empty when there is none."""
    return _read(_kept_path(name))


def kept_file_names(prefix: str) -> list[str]:
    """The names of the files kept by :func:`update_kept_file` that start with ``prefix``, sorted."""
    folder = calibration_dir() / "kept"
    return sorted(p.name for p in folder.glob(f"{prefix}*.json")) if folder.is_dir() else []


def _kept_path(name: str) -> Path:
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"a kept file's name must be a plain file name, got {name!r}")
    return calibration_dir() / "kept" / name


def _record_session(path: Path, host: str, session_ms: float,
                    ruler: dict[str, Any] | None) -> dict[str, Any]:
    """One locked read-modify-write of the host's entry; returns the entry as stored.

    The session joins the host's recent ones (so drift of the machine against
    the ruler shows), and ``ruler`` is stored when the host has none yet.
    When two first sessions race, the first one to take the flock wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = _read(path)
        entry = data.setdefault("hosts", {}).setdefault(host, {})
        recent = entry.get("recent", []) + [{"at": time.time(), "session_ms": session_ms}]
        entry["recent"] = recent[-RECENT_SESSIONS:]
        if ruler is not None and "reference_ms" not in entry:
            entry.update(ruler)
        _replace(path, data)
        return entry


def _read(path: Path) -> dict[str, Any]:
    """The file's calibrations; empty when it is missing or was just created empty.

    A file from before per-host calibrations (a bare ``reference_ms``) keeps
    its content but lends it to no host: nothing records where it was taken.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text) if text.strip() else {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an flock on ``path`` itself (no extra file beside the calibrations).

    Writers replace the file, so after waiting for the lock the holder checks
    it still locks the file the path names, and tries again otherwise.
    """
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        if _locks_current_file(fd, path):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _locks_current_file(fd: int, path: Path) -> bool:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False  # replaced and gone between our open and stat: take the new file


def _replace(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically: a crash leaves the old file or the new one, never half of one."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(data, f)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
