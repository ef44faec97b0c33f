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
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from devices.profile import DeviceProfile

CALIBRATION_DIR_ENV = "DEVICES_CALIBRATION_DIR"


def calibration_dir() -> Path:
    """Where calibrations live: ``$DEVICES_CALIBRATION_DIR`` or ``~/.cache/hwsearch-devices``."""
    configured = os.environ.get(CALIBRATION_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "hwsearch-devices"


def device_reference_ms(profile: DeviceProfile, device_hash: str, session_reference_ms: float) -> tuple[float, str]:
    """The reference latency to scale this session by, and where it came from.

    Returns ``(ms, source)`` with source ``"profile"`` (pinned), ``"stored"``
    (an earlier session's calibration) or ``"this-session"`` (first session
    on this device, now stored for the next ones).
    """
    if profile.reference_ms is not None:
        return float(profile.reference_ms), "profile"
    path = calibration_dir() / f"{device_hash}.json"
    if not path.exists():
        _store_once(path, {"reference_ms": session_reference_ms, "device": profile.name, "created": time.time()})
    stored = float(json.loads(path.read_text())["reference_ms"])
    return stored, ("this-session" if stored == session_reference_ms else "stored")


def _store_once(path: Path, record: dict[str, object]) -> None:
    """Create ``path`` atomically unless it exists; when two sessions race, the first one wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(handle, "w") as f:
        json.dump(record, f)
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
