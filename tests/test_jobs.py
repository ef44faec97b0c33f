"""Whole jobs with real supernet exports, real onnxruntime profiling, real predictors and Ray.

A job is run in this process (``run_job``) on a SQLite store; then run again
to show that nothing measured is measured twice, stopped mid-way to show that
cancellation is cooperative, and recovered after a simulated crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwsearch.jobs import (
    JobSpec,
    ProfileSpec,
    SupernetRef,
    cancel_job,
    execute,
    recover_jobs,
    run_job,
    run_profile,
    submit_job,
)
from hwsearch.store import MemoryStore, SQLiteStore
from tests._jobs import SUPERNET, FinishedJob, fast_device, own_copy, random_dataset, tiny_spec

pytestmark = pytest.mark.slow

Finished = tuple[SQLiteStore, str, JobSpec]


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_dataset(tmp_path_factory.mktemp("data") / "val.npz")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, finished_tiny_job: FinishedJob) -> Finished:
    job = finished_tiny_job
    return own_copy(job, tmp_path_factory.mktemp("store")), job.job_id, job.spec


def test_a_job_ends_with_measured_fronts_in_the_store(finished: Finished) -> None:
    store, job_id, spec = finished
    record = store.get_job(job_id)
    assert record.state == "succeeded" and record.progress["fraction"] == 1.0
    result = record.result
    front = result["fronts"]["cpu-1t"]
    assert front["points"], "a front has at least one subnet"
    latencies = store.get_latencies(result["devices"]["cpu-1t"]["hash"], result["network_id"])
    accuracies = store.get_accuracies(result["supernet_id"], result["dataset_id"])
    assert len(latencies) == spec.n_profile + spec.budget
    for point in front["points"]:  # every point was really measured, and is in the store
        row, shown = latencies[point["arch_key"]], point["latency_conditions"]
        stored_ratio = _measured_ratio(row["latency_ms"], row["env"]["reference_ms"],
                                       row.get("row_offset", row.get("session_offset")))
        shown_ratio = _measured_ratio(point["measured"]["latency_ms"], shown["reference_ms"], shown["row_offset"])
        assert shown_ratio == pytest.approx(stored_ratio, rel=1e-9)
        assert point["measured"]["accuracy"] == accuracies[point["arch_key"]]
    assert result["predictors"]["accuracy"]["n_train"] == spec.n_profile
    assert result["devices"]["cpu-1t"]["rounds"] >= 1


def _measured_ratio(latency_ms: float, reference_ms: float, row_offset: float | None) -> float:
    """What a session measured: a latency is that ratio on the device's ruler, divided by its ``row_offset``.

    A front reads its rows on the device's latest ruler and in the anchor's
    norm of when the front is made; another test's sessions on the same
    device (the run's shared calibration folder) can move either after a row
    was stored (a point showed 0.612 ms, its row 0.615 ms, once), so the two
    agree as measured, not as read.
    """
    return float(latency_ms) / float(reference_ms) * (row_offset or 1.0)


def test_a_second_run_measures_nothing_twice(finished: Finished) -> None:
    store, job_id, spec = finished
    result = store.get_job(job_id).result
    device_hash = result["devices"]["cpu-1t"]["hash"]
    before = store.get_latencies(device_hash, result["network_id"])
    again = store.create_job(JobSpec.from_dict({**spec.to_dict(), "budget": 0}).to_dict())
    rerun = run_job(JobSpec.from_dict(store.get_job(again).spec), store=store, job_id=again)
    assert rerun["devices"]["cpu-1t"]["profiling"]["measured"] == 0
    assert rerun["devices"]["cpu-1t"]["profiling"]["skipped"] == spec.n_profile
    assert store.get_latencies(device_hash, result["network_id"]) == before
    n_known = sum(1 for _ in rerun["fronts"]["cpu-1t"]["points"])
    assert 1 <= n_known <= len(before)


def test_profiling_one_subnet_stores_its_measurement(finished: Finished) -> None:
    """The smallest subnet, which every search measures: its row is filed as unstable first, since a profile
    keeps a stable row (whether the search's came out stable depends on the host's noise: 2 runs in 7 on a
    quiet host)."""
    store, search_id, _ = finished
    arch = {"resolution": 32, "depths": [2] * 5, "kernel": [3] * 10, "expand": [3] * 10}
    searched = store.get_job(search_id).result
    hash_, network = searched["devices"]["cpu-1t"]["hash"], searched["network_id"]
    [(key, row)] = [(key, row) for key, row in store.get_latencies(hash_, network).items() if row["arch"] == arch]
    store.put_latency(hash_, network, key, row | {"stable": False})
    spec = ProfileSpec(supernet=SupernetRef(**SUPERNET), device=fast_device("cpu-1t"), arch=arch)
    job_id = store.create_job(spec.to_dict())
    result = run_profile(spec, store=store, job_id=job_id)
    assert result["measurement"]["latency_ms"] > 0 and result["params"] > 0
    stored = store.get_latencies(result["device_hash"], result["network_id"])[result["arch_key"]]
    assert stored == result["measurement"] | {"arch": arch, "macs": result["macs"],
                                              "params": result["params"], "precision": "fp32"}
    assert store.get_job(job_id).state == "succeeded" and result["stored"]


def test_profiling_a_front_point_keeps_the_row_the_front_shows(finished: Finished) -> None:
    """A profile replaced the search's stable, anchor-judged row: no stored row matched the front any more.

    Whether a tiny device's row came out stable depends on the host's noise, so the test files the
    search's first front point's row as stable, and its second's as unstable, itself (a noisy host can
    leave a front of one point: then another measured subnet's).
    """
    store, search_id, _ = finished
    searched = store.get_job(search_id).result
    hash_, network = searched["devices"]["cpu-1t"]["hash"], searched["network_id"]
    rows = store.get_latencies(hash_, network)
    front = [point["arch"] for point in searched["fronts"]["cpu-1t"]["points"]]
    others = [row["arch"] for row in rows.values() if row["arch"] not in front]
    points = (front + others)[:2]
    for arch, stable in zip(points, (True, False)):
        key = next(key for key, row in rows.items() if row["arch"] == arch)
        filed = rows[key] | {"stable": stable}
        store.put_latency(hash_, network, key, filed)
        spec = ProfileSpec(supernet=SupernetRef(**SUPERNET), device=fast_device("cpu-1t"), arch=arch)
        result = run_profile(spec, store=store, job_id=store.create_job(spec.to_dict()))
        assert result["arch_key"] == key and result["stored"] is not stable
        now = store.get_latencies(hash_, network)[key]
        assert now == (filed if stable else result["measurement"] | {
            "arch": arch, "macs": result["macs"], "params": result["params"], "precision": "fp32"})


def test_a_front_says_its_latencies_time_the_profiles_batch_and_input_type(tmp_path: Path, dataset: Path) -> None:
    """A batch-4 front's smallest subnet read 0.075 ms beside 0.050 at batch 1, and a float16 device's points
    read ``fp32``, with nothing saying what one latency was the time of."""
    from io import StringIO

    from rich.console import Console

    from hwsearch import report
    from hwsearch.cli._fronts import front_table, target_table
    from hwsearch.results import ParetoFront

    store = SQLiteStore(tmp_path / "jobs.sqlite")
    spec = tiny_spec(dataset, [{**fast_device("b2"), "batch": 2, "input_dtype": "float16"}])
    job_id = store.create_job(spec.to_dict())
    result = execute(spec.to_dict(), store, job_id)
    front = ParetoFront.from_dict(result["fronts"]["b2"])
    assert front.settings["timed_input"] == {"batch": 2, "input_dtype": "float16"} and front.points
    console = Console(file=StringIO(), width=400)
    console.print(front_table("b2", front))
    assert "latency ms per batch of 2, on float16 inputs (measured)" in console.file.getvalue()
    written = report.build_report(report.from_store(store, job_id), tmp_path / "report")
    assert "latency_ms measured (per batch of 2, on float16 inputs)" in written["html"].read_text()
    assert front_table("b2", ParetoFront.from_dict({**result["fronts"]["b2"], "settings": {}})).columns[0].header \
        == "latency ms (measured)", "a front saved before timed_input says nothing it does not know"
    assert target_table("b2", front) is None


def test_an_in_memory_store_runs_its_jobs_in_this_process() -> None:
    store = MemoryStore()
    arch = {"resolution": 32, "depths": [3] * 5, "kernel": [5] * 15, "expand": [4] * 15}
    spec = ProfileSpec(supernet=SupernetRef(**SUPERNET), device=fast_device("cpu-1t"), arch=arch)
    job_id = submit_job(spec, store=store)
    deadline = time.monotonic() + 300
    while store.get_job(job_id).state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
    record = store.get_job(job_id)
    assert record.state == "succeeded", record.error
    assert record.result["arch"] == arch and record.result["measurement"]["n_runs"] > 0


def test_a_search_job_on_an_in_memory_store_with_a_budget_fails_before_measuring(dataset: Path) -> None:
    """Refinement refused the store once every device had been profiled (33 s, four rows measured for nothing)."""
    store = MemoryStore()
    spec = tiny_spec(dataset, [fast_device("cpu-1t")], budget=2)
    job_id = store.create_job(spec.to_dict())
    with pytest.raises(ValueError, match="MemoryStore is copied into each Ray worker"):
        execute(spec.to_dict(), store, job_id)
    record = store.get_job(job_id)
    assert record.state == "failed" and "budget 2" in record.error
    assert [event.get("step") for event in store.job_events(job_id)] == [], "it failed before its first step"


def test_a_store_that_cannot_reach_rays_workers_is_refused_before_measuring(tmp_path: Path, dataset: Path) -> None:
    """A store holding an open file profiled and evaluated every subnet, then failed at the search with an error
    naming a ``DeviceSearch`` that could not be serialised, not the store."""

    class AuditedStore(MemoryStore):  # a user's backend that keeps a log open
        def __init__(self, log: Path) -> None:
            super().__init__()
            self.audit = open(log, "a")  # noqa: SIM115 - held for the store's life

    store = AuditedStore(tmp_path / "audit.log")
    try:
        spec = tiny_spec(dataset, [fast_device("cpu-1t")])
        job_id = store.create_job(spec.to_dict())
        with pytest.raises(ValueError, match=r"store: a AuditedStore cannot be sent to Ray's workers, which search "
                                             r"and measure with it \(TypeError: cannot pickle"):
            execute(spec.to_dict(), store, job_id)
        assert store.get_job(job_id).state == "failed"
        assert [event.get("step") for event in store.job_events(job_id)] == [], "it failed before its first step"
    finally:
        store.audit.close()


def test_cancel_stops_a_running_job_between_steps(tmp_path: Path, dataset: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    spec = tiny_spec(dataset, [fast_device("cpu-a"), fast_device("cpu-b", 2)], n_profile=3, seed=7)
    job_id = store.create_job(spec.to_dict())
    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(execute(spec.to_dict(), store, job_id)))
    runner.start()
    deadline = time.monotonic() + 300
    while store.get_job(job_id).progress.get("step") != "profile" and time.monotonic() < deadline:
        time.sleep(0.2)
    cancel_job(store=store, job_id=job_id)
    runner.join(timeout=600)
    assert outcome == [None], "a cancelled job returns no result"
    record = store.get_job(job_id)
    assert record.state == "cancelled" and record.result is None
    assert record.progress["step"] == "profile", "it stopped before measuring accuracies"


def test_jobs_left_active_by_a_dead_process_are_marked_interrupted(tmp_path: Path,
                                                                   dataset: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    spec = tiny_spec(dataset, [fast_device("cpu-1t")])
    running, queued, done = (store.create_job(spec.to_dict()) for _ in range(3))
    store.update_job(running, state="running", progress={"step": "profile", "fraction": 0.2})
    store.update_job(done, state="succeeded", result={"fronts": {}})
    assert sorted(recover_jobs(store=SQLiteStore(store.path))) == sorted([running, queued])
    for job_id in (running, queued):
        record = store.get_job(job_id)
        assert record.state == "interrupted" and "measurements are kept" in record.error
        assert record.spec == spec.to_dict(), "the spec survives, so the job can be resumed"
    assert store.get_job(done).state == "succeeded"


def test_a_quick_cancel_then_resume_leaves_one_runner(tmp_path: Path, dataset: Path) -> None:
    """The first runner sees a newer runner token and stops, though the job is ``running`` again."""
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    spec = tiny_spec(dataset, [fast_device("cpu-a"), fast_device("cpu-b", 2)], n_profile=3, seed=9)
    job_id = store.create_job(spec.to_dict())
    outcomes: dict[str, object] = {}

    def run(name: str) -> None:
        outcomes[name] = execute(spec.to_dict(), store, job_id)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    deadline = time.monotonic() + 300
    while store.get_job(job_id).progress.get("step") != "profile" and time.monotonic() < deadline:
        time.sleep(0.05)
    first_runner = store.get_job(job_id).runner
    cancel_job(store=store, job_id=job_id)
    store.update_job(job_id, state="queued")  # resumed before the first runner noticed
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(timeout=600)
    second.join(timeout=600)
    assert outcomes["first"] is None, "the first runner stopped"
    assert isinstance(outcomes["second"], dict), "the second runner finished the job"
    record = store.get_job(job_id)
    assert record.state == "succeeded" and record.runner not in (None, first_runner)
