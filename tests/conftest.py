"""Settings and clean-up every test process shares.

Ray must not write tokens into the home directory, OpenMP threads must not
spin on this 2-core machine while other tests (or latency measurements) run,
device calibrations go to a per-run folder, never the user's ~/.cache, and the
host's measurement lock is the run's own.

The suite runs on two pytest-xdist workers, a module at a time each
(``-n 2 --dist loadfile --no-loadscope-reorder``; ``-n 0`` runs in this
process).  The run's folders are made once, by the controller, before the
workers start, and the workers inherit them: the
workers' measurement sessions take turns at one host lock like any two
processes of a host.  A module marked ``quiet_host`` (its assertions read the
host's load, or depend on sessions no other program disturbs) runs while the
other worker runs nothing: :func:`_quiet_host_gate`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests._jobs import FinishedJob

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# typer's error boxes wrap at 80 columns; tests look for whole paths in them, and the workers'
# temp paths (``.../popen-gw0/...``) run past that.
os.environ.setdefault("TERMINAL_WIDTH", "240")
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
_run_folder("HWSEARCH_TEST_GATE_DIR", "hwsearch-gate-")


@contextmanager
def _gate(exclusive: bool) -> Iterator[None]:
    """Pass the run's gate: shared by ordinary modules, alone by a ``quiet_host`` one.

    A quiet module takes the turnstile and keeps it until every ordinary
    module already running has ended, so a stream of ordinary modules on the
    other worker cannot starve it (flock itself promises no order).
    """
    folder = Path(os.environ["HWSEARCH_TEST_GATE_DIR"])
    turnstile = os.open(folder / "turnstile", os.O_RDONLY | os.O_CREAT, 0o600)
    room = os.open(folder / "room", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(room, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
    finally:
        os.close(room)
        os.close(turnstile)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order modules: ``quiet_host`` ones, then those with ``slow`` tests, then the rest.

    The workers take whole modules in this order.  Quiet modules first wait
    only for each other, not for a long module on the other worker; the long
    end-to-end modules next leave no single long module running alone at the
    end.  Within a rank, and within a module, the order is kept.
    """
    with_slow = {item.module for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("quiet_host"):
            return 0
        return 1 if item.module in with_slow else 2

    items.sort(key=rank)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave nothing of the run in the temp folder."""
    for folder in _RUN_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _quiet_host_gate(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold the gate for the whole module: its own servers, Ray and subprocesses included.

    Defined before the other module fixtures, so it is entered before them and
    left after them (after Ray has shut down).
    """
    with _gate(exclusive=request.node.get_closest_marker("quiet_host") is not None):
        yield


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
def short_temp_dir() -> Iterator[Path]:
    """A private ``TMPDIR`` for a test's subprocesses, short because Ray's socket paths live below it.

    Unix socket paths are limited to 107 bytes; pytest's ``tmp_path`` (deeper
    still on an xdist worker) leaves too little room for Ray's session folders.
    It lies in the shorter of the temp folder and ``/tmp``, with a one-letter
    prefix: Ray's socket paths then stay within the limit below it wherever a
    run's ``TMPDIR`` points (under ``/tmp``, 4 bytes spare).
    """
    parent = min(tempfile.gettempdir(), "/tmp", key=len)
    folder = Path(tempfile.mkdtemp(prefix="h", dir=parent))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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

    with _gate(exclusive=False):  # set up before the first module that asks for it enters the gate
        return run_tiny_job(tmp_path_factory.mktemp("finished-job"))
