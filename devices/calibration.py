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

import errno
import fcntl
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.profile import DeviceProfile

CALIBRATION_DIR_ENV = "DEVICES_CALIBRATION_DIR"
MAX_FILE_BYTES = 16 * 2**20
"""A calibration or kept file is read up to this size: a device's holds a few dozen numbers per host."""
MAX_REFERENCE_MS = 600_000.0
"""Ten minutes: no reference run takes longer; a kept 1e300 made a 300-digit latency, reported stable."""
RULER_KEYS = ("reference_ms", "created", "device", "origin", "provisional")

log = logging.getLogger(__name__)


class UnreadableFile(ValueError):
    """A calibration or kept file that is not a JSON object of at most :data:`MAX_FILE_BYTES`."""


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
    profile: DeviceProfile, device_hash: str, host_fingerprint: str, session_reference_ms: float,
    *, quiet: bool = True, replace: bool = False,
) -> Ruler:
    """Record the session and return the ruler to scale it by (see :class:`Ruler`).

    The first session of a device on a host sets the ruler; one whose host
    was not ``quiet`` (other programs kept a wall-clock session's cores
    busy) sets it only ``provisional``, and the first quiet session after it
    replaces it: a ruler taken beside four busy loops sat 27.5% above the
    quiet reference and scaled every later session.  Rows of the busy
    sessions are unstable anyway (``foreign_load``), so the quiet sessions'
    rows all share the quiet ruler.  ``replace`` (``hwsearch devices
    calibrate``) replaces a stored ruler with a quiet session's reference
    in the same locked write that records the session, so no other
    session's reference can slip in as it could between a reset and the
    calibration.  An implausible reference time sets nothing
    (:func:`plausible_ms`).
    """
    path = calibration_dir() / f"{device_hash}.json"
    usable = plausible_ms(session_reference_ms)
    ruler = None if profile.reference_ms is not None or not usable else {
        "reference_ms": session_reference_ms, "device": profile.name, "created": time.time(),
        "origin": ("calibration" if replace else "first quiet session") if quiet else "busy session",
        "provisional": not quiet}
    entry = _record_session(path, host_fingerprint, session_reference_ms if usable else None, ruler,
                            replace and quiet)
    fastest = min([float(r["session_ms"]) for r in entry["recent"]] or [session_reference_ms])
    if profile.reference_ms is not None:
        return Ruler(float(profile.reference_ms), "profile", fastest)
    if "reference_ms" not in entry:  # no ruler, and this session's reference is no number
        return Ruler(session_reference_ms, "this-session", fastest)
    stored = float(entry["reference_ms"])
    return Ruler(stored, "this-session" if ruler is not None and stored == session_reference_ms else "stored",
                 fastest)

RECENT_SESSIONS = 20


def calibration(device_hash: str, host_fingerprint: str) -> dict[str, Any]:
    """What is kept for the device on this host: the ruler (if any) and recent sessions.

    ``{"reference_ms", "created", "device"}`` when a ruler is stored, plus
    ``"recent": [{"at", "session_ms"}, ...]`` (newest last, at most
    :data:`RECENT_SESSIONS`) whenever sessions ran; empty when nothing is kept.
    """
    return _host_entry(_read_or_empty(calibration_dir() / f"{device_hash}.json"), host_fingerprint)


def reset_calibration(device_hash: str, host_fingerprint: str) -> bool:
    """Forget the device's ruler on this host; the next quiet session sets a new one.  True if one existed.

    The recent sessions stay: they are the host's record of its fast state,
    which the next sessions' slowdown is judged against.  An unreadable
    file is set aside (:func:`_read_for_update`).
    """
    path = calibration_dir() / f"{device_hash}.json"
    if not path.exists():
        return False
    with _locked(path):
        data = _read_for_update(path)
        entry = _host_entry(data, host_fingerprint)
        existed = "reference_ms" in entry
        for key in RULER_KEYS:
            entry.pop(key, None)
        if host_fingerprint in _hosts(data):  # a host never seen gets no empty entry
            _hosts(data)[host_fingerprint] = entry
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
        data = _read_for_update(path)
        change(data)
        _replace(path, data)
        return data


def read_kept_file(name: str) -> dict[str, Any]:
    """The content of a file kept by :func:`update_kept_file`; empty when there is none or it is unreadable."""
    return _read_or_empty(_kept_path(name))


def kept_file_names(prefix: str) -> list[str]:
    """The names of the files kept by :func:`update_kept_file` that start with ``prefix``, sorted."""
    folder = calibration_dir() / "kept"
    return sorted(p.name for p in folder.glob(f"{prefix}*.json")) if folder.is_dir() else []


def _kept_path(name: str) -> Path:
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"a kept file's name must be a plain file name, got {name!r}")
    return calibration_dir() / "kept" / name


def _record_session(path: Path, host: str, session_ms: float | None,
                    ruler: dict[str, Any] | None, replace: bool) -> dict[str, Any]:
    """One locked read-modify-write of the host's entry; returns the entry as stored.

    The session (``None``: its reference time is no number) joins the host's
    recent ones, so drift of the machine against the ruler shows, and
    ``ruler`` is stored when the host has none yet, over a provisional one
    when it is not, or over any with ``replace``.  When two first sessions
    race, the first one to take the flock wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = _read_for_update(path)
        entry = _host_entry(data, host)
        if session_ms is not None:
            entry["recent"] = (entry["recent"] + [{"at": time.time(), "session_ms": session_ms}])[-RECENT_SESSIONS:]
        if ruler is not None and (replace or "reference_ms" not in entry
                                  or (entry.get("provisional") and not ruler["provisional"])):
            entry.update(ruler)
        _hosts(data)[host] = entry
        _replace(path, data)
        return entry


def _host_entry(data: dict[str, Any], host: str) -> dict[str, Any]:
    """The host's entry with only what can be trusted: a plausible ruler and plausible sessions (:func:`plausible_ms`).

    Anything else in a hand-edited or damaged file (a ruler of 0, -5, NaN,
    1e300 or "fast"; a session of 0 ms) is dropped with a warning, as if never kept:
    a ruler of 0 divided by zero, a negative one made negative latencies
    that were reported stable, and a negative session turned the slowdown
    check off.
    """
    hosts = data.get("hosts")
    entry = hosts.get(host) if isinstance(hosts, dict) else None
    entry = dict(entry) if isinstance(entry, dict) else {}
    if "reference_ms" in entry and not (plausible_ms(entry["reference_ms"])
                                        and isinstance(entry.get("created"), (int, float))):
        log.warning("ignoring the ruler kept for host %s: %r is not a plausible reference time",
                    host, entry["reference_ms"])
        for key in RULER_KEYS:
            entry.pop(key, None)
    recent = entry.get("recent")
    kept = [r for r in recent if isinstance(r, dict) and plausible_ms(r.get("session_ms"))] \
        if isinstance(recent, list) else []
    if recent is not None and (not isinstance(recent, list) or len(kept) != len(recent)):
        log.warning("ignoring %d unusable recent sessions kept for host %s",
                    len(recent) - len(kept) if isinstance(recent, list) else 1, host)
    entry["recent"] = kept
    return entry


def _hosts(data: dict[str, Any]) -> dict[str, Any]:
    """The file's per-host entries, made a fresh mapping where a damaged file holds anything else."""
    if not isinstance(data.get("hosts"), dict):
        data["hosts"] = {}
    return data["hosts"]


def plausible_ms(value: Any) -> bool:
    """A time a run can take (a reference run, a ruler, a row's latency): above 0, at most :data:`MAX_REFERENCE_MS`."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_REFERENCE_MS


def _read_or_empty(path: Path) -> dict[str, Any]:
    """:func:`_read`, or empty with a warning where the file cannot be read (for readers, who change nothing)."""
    try:
        return _read(path)
    except UnreadableFile as unreadable:
        log.warning("%s; treated as empty", unreadable)
        return {}


def _read_for_update(path: Path) -> dict[str, Any]:
    """:func:`_read` for a writer holding the file's lock: an unreadable file is set aside and starts empty.

    It moves to ``<name>.unreadable`` (its content kept for a look), so a
    damaged file costs the device its ruler once, not every session: before,
    a truncated file failed every session after measuring it, and the
    commands that would repair it (``devices reset``, ``calibrate``) too.
    """
    try:
        return _read(path)
    except UnreadableFile as unreadable:
        _set_aside(path, str(unreadable))
        return {}


def _set_aside(path: Path, why: str) -> None:
    """Move whatever is at ``path`` to ``<name>.unreadable``, so the next write starts afresh; say so."""
    aside = path.with_name(path.name + ".unreadable")
    try:
        os.replace(path, aside)
    except OSError as error:
        raise UnreadableFile(f"{why}, and it cannot be moved to {aside}: {error.strerror}") from None
    log.warning("%s; moved to %s and started afresh", why, aside)


def _read(path: Path) -> dict[str, Any]:
    """The file's JSON object; empty when it is missing or was just created empty.

    :class:`UnreadableFile` for anything else: not a regular file, over
    :data:`MAX_FILE_BYTES`, not UTF-8 JSON, JSON that Python's reader
    refuses (nested deeper than its stack, an integer of over 4,300 digits:
    a traceback in every later session, Y18), or JSON that is not an object.
    A file from before per-host calibrations (a bare ``reference_ms``) keeps
    its content but lends it to no host: nothing records where it was taken.
    """
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    if fd is None:
        raise UnreadableFile(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise UnreadableFile(f"{path} is over {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested past the stack, a 5,000-digit number
        raise UnreadableFile(f"{path} is not JSON that can be read ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


def _open_regular(path: Path, flags: int) -> int | None:
    """A descriptor of the regular file at ``path``; None where a FIFO, folder or link stands in its place.

    Never blocks on a FIFO nor follows a link.  :class:`UnreadableFile` for
    any other failure but a missing file, which stays ``FileNotFoundError``.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EISDIR):
            return None
        raise UnreadableFile(f"{path} cannot be opened ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an flock on ``path`` itself (no extra file beside the calibrations).

    Writers replace the file, so after waiting for the lock the holder checks
    it still locks the file the path names, and tries again otherwise.  A
    FIFO, folder or link in the file's place is set aside
    (:func:`_set_aside`): refused, it failed every session after measuring.
    """
    while True:
        fd = _open_regular(path, os.O_RDONLY | os.O_CREAT)
        if fd is None:
            _set_aside(path, f"{path} is not a regular file")  # then take the new file
            continue
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
