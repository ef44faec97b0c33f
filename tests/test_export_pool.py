"""Exports in worker processes: same files, in parallel, never during a measurement session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices import open_profiler
from devices.hostlock import compute_unit
from devices.profile import DeviceProfile, Protocol, Warmup
from hwsearch.export import export_subnet
from hwsearch.export_pool import ExportPool
from hwsearch.pipeline import profile_subnets, select_subnets
from hwsearch.store import MemoryStore
from hwsearch.supernets import create_supernet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net():
    return create_supernet("ofa_mbv3_d234_e346_k357_w1.0")


def test_a_worker_writes_the_same_file_as_this_process(net, tmp_path: Path) -> None:
    arch = select_subnets(net.space, 1, seed=2, resolution=128)[0]
    pool = ExportPool(net, 1)
    try:
        with compute_unit():
            pooled = pool.export(arch, tmp_path / "pool.onnx", check=True)
    finally:
        pool.close()
    here = export_subnet(net, arch, tmp_path / "here.onnx", check=True)
    assert pooled.max_abs_diff is not None and pooled.max_abs_diff <= 1e-4
    assert (pooled.macs, pooled.params) == (here.macs, here.params)
    assert (tmp_path / "pool.onnx").read_bytes() == (tmp_path / "here.onnx").read_bytes()


def test_pooled_exports_overlap_each_other_and_no_session(net) -> None:
    profile = DeviceProfile(
        name="test-pool-1thread", intra_op_threads=1, warmup=Warmup(runs=2, seconds=0.05),
        protocol=Protocol(min_rounds=5, max_rounds=20, max_seconds=10.0, ci_target=0.05))
    profiler = open_profiler(profile)
    archs = select_subnets(net.space, 8, seed=4, resolution=128)
    store = MemoryStore()
    report = profile_subnets(net, archs, profiler, profiler.device_key(), store, chunk=4,
                             export_workers=2)
    rows = list(store.get_latencies(profiler.device_key(), net.space.network_id).values())
    assert report.measured == 8 and len(rows) == 8
    exports = sorted((r["export_start"], r["export_end"]) for r in rows)
    sessions = {(r["env"]["session_start"], r["env"]["session_end"]) for r in rows}
    assert any(b[0] < a[1] for a, b in zip(exports, exports[1:])), "no two exports ran at once"
    for start, end in exports:
        assert all(end <= s_start or start >= s_end for s_start, s_end in sessions)


def test_a_covered_process_refuses_a_measurement_session() -> None:
    code = ("from devices.hostlock import HostLockError, covered_by_caller, compute_unit, measurement_session\n"
            "covered_by_caller()\n"
            "with compute_unit() as hold: assert hold.nested\n"
            "try:\n"
            "    with measurement_session(): pass\n"
            "except HostLockError as error: print('refused:', error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "wait for itself" in done.stdout


# Opens a pool of two workers on the demo supernet, says their pids, then leaves as argv[1] says: through the
# exit handlers and os._exit, as the CLI leaves when stopped, or by waiting to be killed.
_OPEN_A_POOL = ("import atexit, os, sys, time\n"
                "from hwsearch.export_pool import ExportPool\n"
                "from hwsearch.supernets import create_supernet\n"
                "pool = ExportPool(create_supernet('demo_mbv3_mnist'), 2)\n"
                "print(*pool.worker_pids, flush=True)\n"
                "if sys.argv[1] == 'exit':\n"
                "    atexit._run_exitfuncs()\n"
                "    os._exit(0)\n"
                "time.sleep(600)\n")


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("leaving", ["exit", "killed"])
def test_a_pool_left_open_never_outlives_its_process(leaving: str) -> None:
    """A demo stopped by SIGTERM with its pool up never ended: multiprocessing's exit joins non-daemon workers,
    which wait for tasks for ever.  A SIGKILLed parent's workers stayed too, holding torch and a supernet each."""
    run = subprocess.Popen([sys.executable, "-c", _OPEN_A_POOL, leaving], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[1])
    try:
        assert run.stdout is not None
        pids = [int(word) for word in run.stdout.readline().split()]
        assert len(pids) == 2 and all(not _gone(pid, 0.0) for pid in pids)
        if leaving == "killed":
            run.kill()
        assert run.wait(timeout=60) == (0 if leaving == "exit" else -signal.SIGKILL)
        assert all(_gone(pid, 30) for pid in pids), "a pool worker outlived its process"
    finally:
        run.kill()
        run.wait(timeout=30)
