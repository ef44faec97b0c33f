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
device: the same profile on another machine, or after an onnxruntime
upgrade, runs the reference at another speed.  So the device's file holds
one calibration per host fingerprint (``devices.local.host_fingerprint``),
and a new host starts its own instead of borrowing the old one's.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devices.profile import DeviceProfile

CALIBRATION_DIR_ENV = "DEVICES_CALIBRATION_DIR"


def calibration_dir() -> Path:
    """Where calibrations live: ``$DEVICES_CALIBRATION_DIR`` or ``~/.cache/hwsearch-devices``."""
    configured = os.environ.get(CALIBRATION_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "hwsearch-devices"


def device_reference_ms(
    profile: DeviceProfile, device_hash: str, host_fingerprint: str, session_reference_ms: float
) -> tuple[float, str]:
    """The reference latency to scale this session by, and where it came from.

    Returns ``(ms, source)`` with source ``"profile"`` (pinned), ``"stored"``
    (an earlier session's calibration of this device on this host) or
    ``"this-session"`` (first session of this device on this host, now
    stored for the next ones).
    """
    path = calibration_dir() / f"{device_hash}.json"
    ruler = None if profile.reference_ms is not None else {
        "reference_ms": session_reference_ms, "device": profile.name, "created": time.time()}
    entry = _record_session(path, host_fingerprint, session_reference_ms, ruler)
    if profile.reference_ms is not None:
        return float(profile.reference_ms), "profile"
    stored = float(entry["reference_ms"])
    return stored, ("this-session" if stored == session_reference_ms else "stored")

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
