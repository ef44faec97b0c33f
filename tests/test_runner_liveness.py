"""A service starting on a store takes over only the jobs whose runner is really gone.

Before, ``hwsearch serve`` marked every active job of its store
``interrupted`` at start-up: a ``hwsearch search`` running on that store lost
its job within 3 s, with a false "the service stopped" and an 87-line
traceback, and a second service on the store did the same to the first one's
jobs.  Each runner process now holds a lock file beside the store while it
lives (:mod:`hwsearch.jobs.runners`).  Real processes, real SQLite files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from hwsearch.api.catalog import default_data_dir
from hwsearch.store import SQLiteStore
from tests._jobs import fast_device, random_dataset
from tests._server import Server, free_port

REPO = Path(__file__).resolve().parents[1]

RUNNER = """
import sys, time
from hwsearch.jobs.control import start_job
from hwsearch.store import SQLiteStore
start_job(SQLiteStore(sys.argv[1]), sys.argv[2])
print("running", flush=True)
time.sleep(600)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
            **extra}


def _runner(store: SQLiteStore, job_id: str) -> subprocess.Popen[str]:
    """Another process that runs ``job_id`` (started as any runner starts) until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(store.path), job_id], env=_env(),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "running"
    return process


def test_recovery_interrupts_the_job_of_a_killed_runner_and_leaves_a_live_ones(tmp_path: Path) -> None:
    from hwsearch.jobs import recover_jobs
    from hwsearch.jobs.runners import runners_folder

    store = SQLiteStore(tmp_path / "store.sqlite")
    alive_job, dead_job = store.create_job({"kind": "search"}), store.create_job({"kind": "search"})
    alive, dead = _runner(store, alive_job), _runner(store, dead_job)
    try:
        dead.kill()  # SIGKILL: it removes nothing, its lock goes with it
        dead.wait(timeout=30)
        assert recover_jobs(store=store) == [dead_job]
        assert store.get_job(alive_job).state == "running" and store.get_job(alive_job).error is None
        assert store.get_job(dead_job).state == "interrupted"
        assert store.get_job(dead_job).error.startswith("its process was gone when a service started on the store")
        assert len(list(runners_folder(store.path).glob("*.lock"))) == 1, "the dead runner's lock file was kept"
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert recover_jobs(store=store) == [alive_job], "once its runner is gone, its job is an orphan too"


def test_recovery_on_a_store_without_leases_says_it_could_not_tell() -> None:
    """A store that is no local SQLite file keeps no leases, so every active job is taken for orphaned; its
    error said "the service stopped while this job was active" when a service had just started."""
    from hwsearch.jobs import claim_job, recover_jobs
    from hwsearch.store import MemoryStore

    store = MemoryStore()
    job = store.create_job({"kind": "search"})
    assert claim_job(store, job) is not None
    assert recover_jobs(store=store) == [job]
    assert store.get_job(job).state == "interrupted"
    assert store.get_job(job).error.startswith("a service started on the store, which keeps no runner leases")


def _second_serve(store: Path, data_dir: Path) -> tuple[int, str]:
    """Start another ``hwsearch serve`` on ``store`` with a data directory of its own; its exit code and stderr."""
    second = subprocess.Popen([sys.executable, "-m", "hwsearch.cli.main", "serve", "--store", str(store),
                               "--data-dir", str(data_dir), "--port", str(free_port())],
                              env=_env(HWSEARCH_TOKEN="another-token-of-16-chars"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = second.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        second.communicate(timeout=30)
        pytest.fail(f"a second hwsearch serve started on a store another one serves, named {store}")
    return second.returncode, stderr


def test_a_second_serve_on_a_store_in_use_refuses_in_one_line_naming_store(tmp_path: Path) -> None:
    """Even with a data directory of its own, or naming the store through a symlink (its runner locks then sat
    in another folder): before, it started and interrupted the first one's jobs."""
    from hwsearch.jobs.runners import runners_folder

    store, link = tmp_path / "store.sqlite", tmp_path / "link" / "store.sqlite"
    link.parent.mkdir()
    link.symlink_to(store)
    first = Server(store).start()
    try:
        refusals = [(path, *_second_serve(path, tmp_path / f"other{i}.data")) for i, path in enumerate((store, link))]
    finally:
        first.stop()
    for path, code, stderr in refusals:
        assert code == 2, stderr[-3000:]
        assert stderr.strip().splitlines() == [f"error: another hwsearch serve is using {path}; stop it first, "
                                               "or serve another store (--store)"], stderr[-3000:]
    assert runners_folder(link) == runners_folder(store), "a runner's leases would not be where the service looks"
    assert default_data_dir(link) == default_data_dir(store), "served through the link, the store had another catalog"



def _factory(store: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``uvicorn --factory`` on ``store`` with a data directory of its own, expected to refuse at once."""
    env = _env(HWSEARCH_STORE=str(store), HWSEARCH_DATA=str(data_dir), HWSEARCH_TOKEN="another-token-of-16-chars")
    try:
        return subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "hwsearch.api.app:create_app_from_env",
                               "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a uvicorn --factory service started on a store another one serves, {store}")


@pytest.mark.parametrize("first_factory", [True, False], ids=["factory-first", "serve-first"])
def test_a_factory_service_and_a_serve_never_share_a_store(tmp_path: Path, first_factory: bool) -> None:
    """The app ``uvicorn --factory`` builds takes the store's lock too; before, two served one store at once."""
    store = tmp_path / "store.sqlite"
    first = Server(store, factory=first_factory).start()
    try:
        factory = _factory(store, tmp_path / "factory.data")
        its_folder = _factory(tmp_path / "other.sqlite", first.data_dir)
        code, stderr = _second_serve(store, tmp_path / "serve.data")
        with first.client() as c:
            assert c.get("/health").status_code == 200, "the first service was disturbed"
    finally:
        first.stop()
    for refused, named in ((factory, f"HWSEARCH_STORE: another hwsearch service is using {store}"),
                           (its_folder, f"HWSEARCH_DATA: another hwsearch service is using {first.data_dir}")):
        assert refused.returncode == 3, refused.stderr[-3000:]
        assert f"hwsearch: {named}; stop it first" in refused.stderr.splitlines(), refused.stderr[-3000:]
        assert "Traceback" not in refused.stderr
    assert code == 2 and "another hwsearch serve is using" in stderr, stderr[-3000:]
    assert not Path(f"{tmp_path / 'other.sqlite'}.runners").exists(), "a refused start left its runners folder"
    Server(store, factory=True).start().stop()  # the stopped service's locks went with it


OWNER = """
import sys
from hwsearch.jobs import new_job
from hwsearch.jobs.control import JobCancelled, start_job
from hwsearch.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
job_id, runner = new_job(store, {"kind": "search"})
print(job_id, flush=True)
sys.stdin.readline()  # stands in for init_ray, the seconds before the job starts
try:
    start_job(store, job_id, runner)
    print("started", flush=True)
except JobCancelled as stop:
    print(f"JobCancelled: {stop}", flush=True)
"""


@contextmanager
def _job_owner(script: str, store: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A process running ``script``, which makes a job in ``store``, prints its id and waits; killed on leaving."""
    owner = subprocess.Popen([sys.executable, "-c", script, str(store)], env=_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert owner.stdout is not None and owner.stdin is not None
        yield owner, owner.stdout.readline().strip()
    finally:
        owner.kill()
        owner.wait(timeout=30)


@contextmanager
def _serving(store: Path) -> Iterator[httpx.Client]:
    """A ``hwsearch serve`` started on ``store`` (it recovers the store's orphaned jobs as it starts)."""
    server = Server(store).start()
    try:
        with server.client() as client:
            yield client
    finally:
        server.stop()


def test_a_job_is_its_makers_from_its_first_write_so_a_service_starting_before_it_runs_leaves_it(
        tmp_path: Path) -> None:
    """``hwsearch demo`` (and ``submit_job``, and library callers) created the job and claimed it only as it
    started, after ``init_ray``: a service starting on the store meanwhile marked it ``interrupted`` and the
    runner died with JobCancelled.  :func:`hwsearch.jobs.new_job`, which they use now, writes the claim with
    the job."""
    store = tmp_path / "store.sqlite"
    with _job_owner(OWNER, store) as (owner, job_id), _serving(store) as client:
        assert owner.stdout is not None and owner.stdin is not None
        before = client.get(f"/jobs/{job_id}").json()
        owner.stdin.write("go\n")
        owner.stdin.flush()
        said = owner.stdout.readline().strip()
        after = client.get(f"/jobs/{job_id}").json()
    assert (before["state"], before["error"]) == ("queued", None), before
    assert said == "started", said
    assert after["state"] == "running", after


DISPATCHER = """
import sys
from hwsearch.dispatch import JobDispatcher
from hwsearch.jobs import ProfileSpec, SupernetRef
from hwsearch.store import SQLiteStore
from tests._jobs import SUPERNET, fast_device
store = SQLiteStore(sys.argv[1])
dispatcher = JobDispatcher(store, agents=None)  # not started: its jobs wait in its queue
arch = {"ks": [3] * 20, "e": [4] * 20, "d": [2] * 5, "r": [32]}
print(dispatcher.submit(ProfileSpec(supernet=SupernetRef(**SUPERNET), device=fast_device("cpu-1t"), arch=arch)),
      flush=True)
sys.stdin.readline()
"""


def test_a_library_dispatchers_queued_job_is_its_own_so_a_service_starting_on_the_store_leaves_it(
        tmp_path: Path) -> None:
    """A ``JobDispatcher``'s queued jobs had no runner until claimed: a service starting on the store marked
    them ``interrupted`` while their dispatcher lived, and they were dropped from its queue."""
    store = tmp_path / "store.sqlite"
    with _job_owner(DISPATCHER, store) as (_, job_id), _serving(store) as client:
        job = client.get(f"/jobs/{job_id}").json()
    assert (job["state"], job["error"]) == ("queued", None), job


def _job(store: Path) -> tuple[str, str] | None:
    """The one job's (id, state) in a search's store, once it has one."""
    if not store.exists():
        return None
    jobs = SQLiteStore(store).list_jobs()
    return (jobs[0].job_id, jobs[0].state) if jobs else None


def test_a_service_started_on_a_searchs_store_leaves_its_job_and_a_cancel_ends_it_in_one_line(
        tmp_path: Path, short_temp_dir: Path) -> None:
    """The reported case: ``hwsearch serve`` on a running ``hwsearch search``'s store, then a cancel from it."""
    device = tmp_path / "fast.json"
    device.write_text(json.dumps(fast_device("cpu-1t")))
    out = tmp_path / "out"
    search = subprocess.Popen(
        [sys.executable, "-m", "hwsearch.cli.main", "search", "--supernet", "demo_mbv3_mnist", "--device",
         str(device), "--data", str(random_dataset(tmp_path / "val.npz")), "--n-profile", "24", "--budget", "6",
         "--out", str(out)], env=_env(TMPDIR=str(short_temp_dir)), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + 240
        while (job := _job(out / "store.db")) is None or job[1] != "running":
            assert search.poll() is None, search.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the search's job never started"
            time.sleep(0.5)
        job_id = job[0]
        runner = SQLiteStore(out / "store.db").get_job(job_id).runner
        server = Server(out / "store.db").start()
        with server.client() as client:
            time.sleep(5)  # the old start had marked it interrupted within 3 s
            record = client.get(f"/jobs/{job_id}").json()
            assert (record["state"], record["error"]) == ("running", None), record
            assert SQLiteStore(out / "store.db").get_job(job_id).runner == runner, "the search's claim was taken"
            assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
        _, stderr = search.communicate(timeout=180)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait(timeout=30)
        if server is not None:
            server.stop()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert search.returncode == 1, (search.returncode, stderr[-3000:])
    assert stderr.strip().splitlines()[-1] == f"error: job {job_id} is cancelled", stderr[-3000:]
