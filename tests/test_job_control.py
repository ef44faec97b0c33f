"""A job's state changes when writers interleave: a cancel is never undone, a lost race is seen as lost.

Each test runs one real call of :mod:`hwsearch.jobs.control` (or the dispatcher) in a thread
and holds it just before its first job write, runs a competing real call on the same store,
then lets the held write go: the order a slow disk or a descheduled thread gives, made
deterministic.  Both backends; the SQLite one on a real file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hwsearch.dispatch import JobDispatcher
from hwsearch.jobs.control import (
    JobCancelled,
    cancel_job,
    claim_job,
    finish_job,
    record_failure,
    recover_jobs,
    start_job,
)
from hwsearch.store import MemoryStore, SQLiteStore, Store


class HoldsAWrite:
    """Test seam: the first job write made in the held thread waits, before it starts, until released.

    Only the start of the write is delayed; the write, and any condition it checks, are the
    store's own, so what a test sees is what the store does when another call lands first.
    """

    held: tuple[threading.Thread, threading.Event, threading.Event] | None = None
    skip = 0  # writes of the held thread to let through before the one held

    def _wait_if_held(self) -> None:
        if self.held is not None and threading.current_thread() is self.held[0]:
            if self.skip:
                self.skip -= 1
                return
            _, reached, release = self.held
            self.held = None  # only the first write waits
            reached.set()
            assert release.wait(10), "the held write was never released"

    def update_job(self, *args: Any, **kwargs: Any) -> Any:
        self._wait_if_held()
        return super().update_job(*args, **kwargs)  # type: ignore[misc]

    def transition_job(self, *args: Any, **kwargs: Any) -> Any:
        self._wait_if_held()
        return super().transition_job(*args, **kwargs)  # type: ignore[misc]


class HeldMemoryStore(HoldsAWrite, MemoryStore):
    pass


class HeldSQLiteStore(HoldsAWrite, SQLiteStore):
    pass


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> HoldsAWrite:
    return HeldMemoryStore() if request.param == "memory" else HeldSQLiteStore(tmp_path / "s.db")


def interleave(store: HoldsAWrite, held: Callable[[], Any], meanwhile: Callable[[], Any], *, skip: int = 0) -> Any:
    """Run ``held`` until its first job write (after ``skip`` of them), run ``meanwhile``, let the write go.

    Returns what ``held`` returned or raised.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(held())
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcome.append(error)

    thread = threading.Thread(target=run)
    reached, release = threading.Event(), threading.Event()
    store.held, store.skip = (thread, reached, release), skip
    thread.start()
    assert reached.wait(10), "the held call wrote nothing"
    meanwhile()
    release.set()
    thread.join(10)
    return outcome[0]


def running_job(store: Store) -> tuple[str, Any]:
    job = store.create_job({"kind": "search"})
    return job, start_job(store, job)


def test_a_cancel_while_a_runner_starts_stops_the_runner(store: HoldsAWrite) -> None:
    job = store.create_job({"kind": "search"})
    outcome = interleave(store, lambda: start_job(store, job), lambda: cancel_job(store=store, job_id=job))
    assert isinstance(outcome, JobCancelled) and "cancelled" in str(outcome)
    assert store.get_job(job).state == "cancelled" and store.get_job(job).runner is None


def test_a_cancel_while_a_runner_finishes_is_kept(store: HoldsAWrite) -> None:
    job, control = running_job(store)
    outcome = interleave(store, lambda: finish_job(control, {"fronts": {}}),
                         lambda: cancel_job(store=store, job_id=job))
    assert isinstance(outcome, JobCancelled)
    record = store.get_job(job)
    assert record.state == "cancelled" and record.result is None


def test_a_cancel_that_comes_after_the_finish_keeps_the_result(store: HoldsAWrite) -> None:
    job, control = running_job(store)
    outcome = interleave(store, lambda: cancel_job(store=store, job_id=job),
                         lambda: finish_job(control, {"fronts": {}}))
    assert outcome.state == "succeeded", "cancel answers with the job as it is"
    assert store.get_job(job).state == "succeeded" and store.get_job(job).result == {"fronts": {}}


def test_a_failure_recorded_after_a_cancel_keeps_the_cancel(store: HoldsAWrite) -> None:
    job, _ = running_job(store)
    interleave(store, lambda: record_failure(store, job, RuntimeError("worker died")),
               lambda: cancel_job(store=store, job_id=job))
    assert store.get_job(job).state == "cancelled" and store.get_job(job).error is None


def test_recovery_leaves_a_job_cancelled_meanwhile_alone(store: HoldsAWrite) -> None:
    job = store.create_job({"kind": "search"})
    touched = interleave(store, lambda: recover_jobs(store=store), lambda: cancel_job(store=store, job_id=job))
    assert touched == [] and store.get_job(job).state == "cancelled"


def test_marking_running_jobs_interrupted_leaves_one_finished_meanwhile(store: HoldsAWrite) -> None:
    job, control = running_job(store)
    touched = interleave(store, store.mark_interrupted_running, lambda: finish_job(control, {"fronts": {}}))
    assert touched == [] and store.get_job(job).state == "succeeded"


def test_a_runner_taken_over_between_its_check_and_its_progress_writes_nothing(store: HoldsAWrite) -> None:
    job, first = running_job(store)
    outcome = interleave(store, lambda: first.step("profile", 0.5), lambda: start_job(store, job))
    assert isinstance(outcome, JobCancelled) and "taken over" in str(outcome)
    assert [e["step"] for e in store.job_events(job)] == [], "no progress from the runner that was replaced"


def test_two_dispatchers_resuming_one_job_queue_it_once(store: HoldsAWrite) -> None:
    """Two services on one store: the resume that loses sees the job queued and does not queue it again."""
    job = store.create_job({"kind": "search"})
    cancel_job(store=store, job_id=job)
    first, second = JobDispatcher(store, agents={}), JobDispatcher(store, agents={})
    interleave(store, lambda: first.resume(job), lambda: second.resume(job))
    assert store.get_job(job).state == "queued"
    assert (first.counts()["queued"], second.counts()["queued"]) == (0, 1)


def test_a_runner_whose_job_was_deleted_stops_and_its_failure_is_dropped(store: HoldsAWrite) -> None:
    """Cancel, then delete before the runner noticed: the runner stops as if cancelled, nothing raises KeyError."""
    job, control = running_job(store)
    cancel_job(store=store, job_id=job)
    store.delete_job(job)
    for late_write in (lambda: control.step("profile", 0.5), lambda: finish_job(control, {"fronts": {}}),
                       control.check):
        with pytest.raises(JobCancelled, match="was deleted"):
            late_write()
    record_failure(store, job, RuntimeError("the task failed as it was stopped"))
    with pytest.raises(KeyError):
        store.get_job(job)


def test_a_replaced_runner_that_fails_late_leaves_its_successors_job_running(store: HoldsAWrite) -> None:
    """A resume took the job over while the old task was failing: the old failure must not fail the new run.

    Before, ``execute`` recorded any failure on any active job, so the successor's job ended ``failed``
    while it ran.  Now the runner records its failure as the job's runner or not at all.
    """
    from hwsearch.jobs import ProfileSpec, SupernetRef
    from hwsearch.jobs.executor import execute

    spec = ProfileSpec(supernet=SupernetRef(name="demo", registry="demo_mbv3_mnist"), device={"name": "cpu"},
                       arch={"resolution": 28}).to_dict()  # fails after the runner started: no depths
    job = store.create_job(spec)
    successor: list[Any] = []
    outcome = interleave(store, lambda: execute(spec, store, job), lambda: successor.append(start_job(store, job)),
                         skip=1)  # the start goes through; the failure's write waits for the takeover
    assert isinstance(outcome, ValueError) and "depths" in str(outcome)  # the caller still hears of it
    record = store.get_job(job)
    assert (record.state, record.runner, record.error) == ("running", successor[0].runner, None)

    with pytest.raises(RuntimeError), successor[0].failing():  # the successor's own failure is recorded
        raise RuntimeError("the new run failed")
    assert store.get_job(job).state == "failed" and "the new run failed" in str(store.get_job(job).error)


def claimed_and_superseded(store: Store) -> tuple[str, str, Any]:
    """A job a dispatcher claimed for a task, then cancelled and resumed by another process, which started it."""
    job = store.create_job({"kind": "search"})
    stale = claim_job(store, job)
    cancel_job(store=store, job_id=job)
    assert store.transition_job(job, ("cancelled",), "queued")  # another process's resume
    successor = start_job(store, job, claim_job(store, job))
    assert stale is not None and successor.runner != stale
    return job, stale, successor


def test_a_stale_task_cannot_take_over_a_job_claimed_again_by_another_dispatcher(store: HoldsAWrite) -> None:
    """A task starts only under the claim it was started with: before, any start took over any active job."""
    job, stale, successor = claimed_and_superseded(store)
    with pytest.raises(JobCancelled, match="taken over"):
        start_job(store, job, stale)
    assert (store.get_job(job).state, store.get_job(job).runner) == ("running", successor.runner)


def test_a_dispatchers_crashed_task_leaves_the_job_another_process_resumed_running(store: HoldsAWrite) -> None:
    """The dispatcher records a crash under its claim: the successor's job is not marked failed for it."""
    job, stale, successor = claimed_and_superseded(store)
    record_failure(store, job, RuntimeError("the worker died"), runner=stale)
    assert (store.get_job(job).state, store.get_job(job).error) == ("running", None)
    record_failure(store, job, RuntimeError("the worker died"), runner=successor.runner)
    assert store.get_job(job).state == "failed" and "the worker died" in str(store.get_job(job).error)


def test_a_claim_is_refused_for_a_job_cancelled_while_it_waited(store: HoldsAWrite) -> None:
    job = store.create_job({"kind": "search"})
    cancel_job(store=store, job_id=job)
    assert claim_job(store, job) is None and store.get_job(job).state == "cancelled"
    store.delete_job(job)
    assert claim_job(store, job) is None


def test_a_resume_clears_the_old_runner_so_its_late_task_cannot_start(store: HoldsAWrite) -> None:
    """A task of the old claim that started after another dispatcher's resume, before its claim, took the job."""
    job = store.create_job({"kind": "search"})
    stale = claim_job(store, job)
    cancel_job(store=store, job_id=job)
    JobDispatcher(store, agents={}).resume(job)  # another process's service
    assert store.get_job(job).runner not in (None, stale)  # the resuming dispatcher's own, from the first write
    with pytest.raises(JobCancelled):
        start_job(store, job, stale)
    assert store.get_job(job).state == "queued" and claim_job(store, job) is not None
