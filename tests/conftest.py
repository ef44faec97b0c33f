"""Settings and clean-up every test process shares.

Ray must not write tokens into the home directory, OpenMP threads must not
spin on this 2-core machine while other tests (or latency measurements) run,
device calibrations go to a per-run folder, never the user's ~/.cache, and the
host's measurement lock is the run's own.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests._jobs import FinishedJob

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_RUN_FOLDERS: list[str] = []  # made for this run, removed when it ends


def _run_folder(variable: str, prefix: str) -> None:
    """Point ``variable`` at a fresh folder of this run's own, unless the caller chose one."""
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        _RUN_FOLDERS.append(os.environ[variable])


_run_folder("DEVICES_CALIBRATION_DIR", "hwsearch-calib-")
# The run's own host lock: its measurements still never overlap one another, and they do not
# queue behind a benchmark or a service someone runs on the same machine.
_run_folder("DEVICES_LOCK_DIR", "hwsearch-locks-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave nothing of the run in the temp folder."""
    for folder in _RUN_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


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


@pytest.fixture(scope="session")
def finished_tiny_job(tmp_path_factory: pytest.TempPathFactory) -> FinishedJob:
    """One real tiny job, run once per test run for every module that reads a finished job.

    Modules take :func:`tests._jobs.own_copy` of its store, so what one adds never reaches another.
    """
    from tests._jobs import run_tiny_job

    return run_tiny_job(tmp_path_factory.mktemp("finished-job"))
