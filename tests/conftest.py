"""Settings and clean-up every test process shares.

Ray must not write tokens into the home directory, OpenMP threads must not
spin on this 2-core machine while other tests (or latency measurements) run,
device calibrations go to a per-run folder, never the user's ~/.cache, and the
host's measurement lock is the run's own.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DEVICES_CALIBRATION_DIR", tempfile.mkdtemp(prefix="hwsearch-calib-"))
# The run's own host lock: its measurements still never overlap one another, and they do not
# queue behind a benchmark or a service someone runs on the same machine.
os.environ.setdefault("DEVICES_LOCK_DIR", tempfile.mkdtemp(prefix="hwsearch-locks-"))


@pytest.fixture(autouse=True, scope="module")
def _ray_session_ends_with_its_module() -> Iterator[None]:
    """Each test module starts without a Ray session.

    A session left by a job run in-process would clash with a later module's
    own ``ray.init`` (other custom resources, or a simulated cluster).
    """
    yield
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture()
def calibration_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A calibration folder of the test's own: each test starts on uncalibrated devices, with no history."""
    folder = tmp_path / "calibration"
    monkeypatch.setenv("DEVICES_CALIBRATION_DIR", str(folder))
    return folder


@pytest.fixture()
def client(server: Any) -> Iterator[Any]:
    """An authenticated HTTP client of the test module's own ``server`` fixture (a real service)."""
    with server.client() as c:
        yield c
