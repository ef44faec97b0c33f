"""The :class:`~hwsearch.store.Store` contract as tests, for any backend: ``class TestMyStore(StoreContract)``.

A store plug-in (a package's ``hwsearch.stores`` entry point) is trusted by
the service with every job and measurement: a store whose transitions are
not atomic lets a cancel be overwritten, one that hands out live objects
lets a reader change stored rows, and either shows only under load.  These
are the tests hwsearch's own backends pass, written once; a backend's
author subclasses :class:`StoreContract` in a pytest module and gives it a
``store`` fixture that returns a fresh, empty store::

    import pytest
    from hwsearch.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture()
        def store(self, tmp_path):
            return MyStore(tmp_path / "rows")

Each test names the rule of the contract (the :class:`~hwsearch.store.Store`
docstring) that it checks.  pytest collects only classes named ``Test*``,
so importing this class runs nothing by itself.
"""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any

import pytest

from hwsearch.store import JOB_STATES, JobPlace, Store

__all__ = ["MEAS", "StoreContract", "measurement", "spec_naming"]

#: A latency row as profiling stores it.
MEAS: dict[str, Any] = {"latency_ms": 12.5, "ratio": 1.1, "stable": True, "env": {"cpu": "x"}}


def measurement() -> dict[str, Any]:
    """A fresh copy of :data:`MEAS`: a store that kept the caller's dict would otherwise change later tests' rows."""
    return copy.deepcopy(MEAS)


def spec_naming(checkpoint: object) -> dict[str, object]:
    """A job spec whose supernet names ``checkpoint`` (anything: the store must cope with what a spec holds)."""
    return {"kind": "search", "supernet": {"name": "net", "checkpoint": checkpoint}, "pad": "x" * 100}


class StoreContract:
    """Every rule of the store contract; a subclass provides the ``store`` fixture (a fresh, empty store)."""

    @pytest.fixture()
    def store(self) -> Store:
        raise NotImplementedError("a StoreContract subclass defines a `store` fixture returning a fresh store")

    def test_latencies_are_keyed_by_device_space_and_arch(self, store: Store) -> None:
        store.put_latency("dev1", "space", "a", measurement())
        store.put_latency("dev1", "space", "b", measurement() | {"latency_ms": 3.0})
        store.put_latency("dev2", "space", "a", measurement() | {"latency_ms": 99.0})
        store.put_latency("dev1", "other", "a", measurement() | {"latency_ms": 7.0})
        got = store.get_latencies("dev1", "space")
        assert set(got) == {"a", "b"} and got["a"] == measurement() and got["b"]["latency_ms"] == 3.0
        assert store.get_latencies("dev2", "space")["a"]["latency_ms"] == 99.0
        assert store.get_latencies("nope", "space") == {}
        assert set(store.get_latencies("dev1", "other")) == {"a"}

    def test_put_replaces_and_results_are_snapshots(self, store: Store) -> None:
        store.put_latency("d", "s", "a", measurement())
        snap = store.get_latencies("d", "s")
        snap["a"]["latency_ms"] = -1.0
        store.put_latency("d", "s", "a", measurement() | {"latency_ms": 1.0})
        assert store.get_latencies("d", "s")["a"]["latency_ms"] == 1.0
        assert snap["a"]["latency_ms"] == -1.0

    def test_accuracies(self, store: Store) -> None:
        store.put_accuracy("net", "data", "a", 0.75)
        store.put_accuracy("net", "data", "a", 0.8)
        store.put_accuracy("net", "other", "a", 0.1)
        assert store.get_accuracies("net", "data") == {"a": 0.8}
        assert store.get_accuracies("x", "data") == {}

    def test_job_lifecycle(self, store: Store) -> None:
        job = store.create_job({"kind": "search", "n": 3})
        first = store.get_job(job)
        assert first.state == "queued" and first.spec == {"kind": "search", "n": 3}
        assert first.progress == {} and first.result is None and first.error is None
        store.update_job(job, state="running", progress={"step": 1, "of": 3})
        store.update_job(job, error="transient")
        store.update_job(job, state="succeeded", result={"fronts": [1, 2]}, error=None)
        last = store.get_job(job)
        assert last.state == "succeeded" and last.progress == {"step": 1, "of": 3}
        assert last.result == {"fronts": [1, 2]} and last.error is None
        assert last.updated >= first.updated
        assert first.state == "queued"  # the earlier snapshot did not change
        with pytest.raises(ValueError):
            store.update_job(job, state="exploded")
        with pytest.raises(KeyError):
            store.get_job("missing")
        with pytest.raises(KeyError):
            store.update_job("missing", state="failed")

    def test_progress_events_are_kept_in_order_and_runner_tokens_stored(self, store: Store) -> None:
        job = store.create_job({"kind": "search"})
        assert store.job_events(job) == []
        for step in ("prepare", "train", "profile", "train"):
            store.update_job(job, progress={"step": step})
        store.update_job(job, state="running", runner="token-1")
        events = store.job_events(job)
        assert [e["step"] for e in events] == ["prepare", "train", "profile", "train"]
        assert [e["seq"] for e in events] == [1, 2, 3, 4]
        assert [e["step"] for e in store.job_events(job, after=2)] == ["profile", "train"]
        assert store.get_job(job).runner == "token-1"
        store.update_job(job, runner=None)
        assert store.get_job(job).runner is None and store.get_job(job).progress == {"step": "train"}
        other = store.create_job({"kind": "search"})
        store.update_job(other, progress={"step": "x"})
        assert [e["seq"] for e in store.job_events(other)] == [1], "each job counts its own events"
        with pytest.raises(KeyError):
            store.job_events("missing")

    def test_events_from_many_threads_get_distinct_sequence_numbers(self, store: Store) -> None:
        job = store.create_job({"kind": "search"})

        def report(worker: int) -> None:
            for i in range(20):
                store.update_job(job, progress={"worker": worker, "i": i})

        threads = [threading.Thread(target=report, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        events = store.job_events(job)
        assert [e["seq"] for e in events] == list(range(1, 81))
        for worker in range(4):
            assert [e["i"] for e in events if e["worker"] == worker] == list(range(20))

    def test_list_jobs_in_creation_order_and_restart_recovery(self, store: Store) -> None:
        ids = [store.create_job({"i": i}) for i in range(4)]
        store.update_job(ids[1], state="running")
        store.update_job(ids[2], state="succeeded")
        assert [r.job_id for r in store.list_jobs()] == ids
        assert store.mark_interrupted_running() == [ids[1]]
        states = {r.job_id: r.state for r in store.list_jobs()}
        assert states == {ids[0]: "queued", ids[1]: "interrupted", ids[2]: "succeeded",
                          ids[3]: "queued"}
        assert store.get_job(ids[1]).error
        assert set(JOB_STATES) >= set(states.values())

    def test_recent_jobs_are_pages_newest_first_and_events_come_in_pages(self, store: Store) -> None:
        ids = [store.create_job({"i": i}) for i in range(7)]
        # Newest first by place: creation order, but for jobs a coarse clock gives one instant (Y16).
        newest_first = [r.job_id for r in sorted(store.list_jobs(), key=JobPlace.of, reverse=True)]
        assert set(newest_first) == set(ids)
        first = store.recent_jobs(3)
        second = store.recent_jobs(3, before=JobPlace.of(first[-1]))
        store.update_job(second[-1].job_id, state="succeeded")
        store.delete_job(second[-1].job_id)  # a place outlives its job
        third = store.recent_jobs(3, before=JobPlace.of(second[-1]))
        assert [[r.job_id for r in page] for page in (first, second, third)] == [
            newest_first[:3], newest_first[3:6], newest_first[6:]]
        assert store.recent_jobs(3, before=JobPlace.of(third[-1])) == []
        assert [r.job_id for r in store.recent_jobs(100)] == newest_first[:5] + newest_first[6:]
        twins = [store.create_job({"twin": i}) for i in range(2)]  # placed apart by id however close in time
        newest = store.recent_jobs(2)
        assert {r.job_id for r in newest} == set(twins)
        assert store.recent_jobs(1, before=JobPlace.of(newest[0])) == newest[1:]

        for step in range(5):
            store.update_job(ids[0], progress={"step": f"s{step}"})
        pages = [store.job_events(ids[0], after=0, limit=2)]
        while pages[-1]:
            pages.append(store.job_events(ids[0], after=pages[-1][-1]["seq"], limit=2))
        assert [[e["step"] for e in page] for page in pages] == [["s0", "s1"], ["s2", "s3"], ["s4"], []]
        assert len(store.job_events(ids[0])) == 5

    def test_concurrent_writes_from_threads(self, store: Store) -> None:
        n_threads, per_thread = 8, 40
        job = store.create_job({"kind": "x"})
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    store.put_latency("d", "s", f"t{t}-{i}", {"latency_ms": float(i)})
                    store.put_accuracy("n", "ds", f"t{t}-{i}", i / per_thread)
                    store.update_job(job, progress={"thread": t, "i": i})
                    store.get_latencies("d", "s")
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len(store.get_latencies("d", "s")) == n_threads * per_thread
        assert len(store.get_accuracies("n", "ds")) == n_threads * per_thread
        assert store.get_job(job).progress["i"] == per_thread - 1

    def test_pickling_keeps_contents_and_a_shared_store_shares_writes(self, store: Store) -> None:
        """Ray's workers write through unpickled copies: a store that says it is shared and is not loses them."""
        store.put_latency("d", "s", "a", measurement())
        job = store.create_job({"kind": "x"})
        clone = pickle.loads(pickle.dumps(store))
        assert clone.get_latencies("d", "s") == {"a": measurement()}
        assert clone.get_job(job).spec == {"kind": "x"}
        clone.put_accuracy("n", "d", "a", 0.5)
        assert clone.get_accuracies("n", "d") == {"a": 0.5}
        if store.shared_across_processes:
            assert store.get_accuracies("n", "d") == {"a": 0.5}, "a write through a copy is not in the store"

    def test_jobs_events_and_accuracies_are_snapshots(self, store: Store) -> None:
        job = store.create_job({"kind": "search", "options": {"n": 1}})
        store.update_job(job, progress={"step": "a", "detail": {"k": 1}}, result={"fronts": {"cpu": [1]}})
        store.put_accuracy("net", "data", "x", 0.5)
        record, events, accuracies = store.get_job(job), store.job_events(job), store.get_accuracies("net", "data")
        record.spec["options"]["n"] = 99
        record.progress["detail"]["k"] = 99
        record.result["fronts"]["cpu"].append(99)
        events[0]["detail"]["k"] = 99
        accuracies["x"] = 0.0
        again = store.get_job(job)
        assert again.spec == {"kind": "search", "options": {"n": 1}}
        assert again.progress == {"step": "a", "detail": {"k": 1}} and again.result == {"fronts": {"cpu": [1]}}
        assert store.job_events(job)[0]["detail"] == {"k": 1}
        assert store.get_accuracies("net", "data") == {"x": 0.5}

    def test_progress_replaces_the_whole_progress(self, store: Store) -> None:
        job = store.create_job({"kind": "search"})
        store.update_job(job, progress={"a": 1})
        store.update_job(job, progress={"b": 2})
        assert store.get_job(job).progress == {"b": 2}

    def test_a_transition_writes_only_from_the_expected_states_and_runner(self, store: Store) -> None:
        job = store.create_job({"kind": "search"})
        assert not store.transition_job(job, ("running",), "succeeded", result={"x": 1}, progress={"step": "done"})
        assert store.get_job(job).state == "queued" and store.get_job(job).result is None
        assert store.job_events(job) == [], "a lost transition writes no event either"
        assert store.transition_job(job, ("queued", "running"), "running", runner="a", progress={"step": "go"})
        assert not store.transition_job(job, ("running",), "succeeded", expect_runner="b")
        assert not store.transition_job(job, ("running",), "succeeded", expect_runner=None)
        assert store.transition_job(job, ("running",), "succeeded", expect_runner="a", result={"x": 1}, error=None)
        record = store.get_job(job)
        assert (record.state, record.runner, record.result) == ("succeeded", "a", {"x": 1})
        assert [e["step"] for e in store.job_events(job)] == ["go"]
        assert not store.transition_job(job, (), "cancelled")
        with pytest.raises(KeyError):
            store.transition_job("missing", ("queued",), "running")
        with pytest.raises(ValueError):
            store.transition_job(job, ("finished",), "running")
        with pytest.raises(ValueError):
            store.transition_job(job, ("succeeded",), "exploded")

    def test_of_racing_transitions_exactly_one_wins(self, store: Store) -> None:
        """Eight threads see a queued job and try to start it at once: one starts it, the others see they lost."""
        job = store.create_job({"kind": "search"})
        start = threading.Barrier(8)
        won: list[str] = []

        def race(token: str) -> None:
            start.wait()
            if store.transition_job(job, ("queued",), "running", runner=token):
                won.append(token)

        threads = [threading.Thread(target=race, args=(f"t{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and store.get_job(job).runner == won[0]

    def test_jobs_in_states_checkpoints_and_count_answer_without_listing(self, store: Store) -> None:
        ids = [store.create_job(spec_naming(f"/ckpt/{i % 2}.pt")) for i in range(4)]
        others = [store.create_job(spec) for spec in (
            spec_naming(None), spec_naming({"path": "/not/a/name"}), spec_naming(3), {"kind": "search"},
            {"supernet": "/a/string/not/a/ref"}, {"supernet": {"name": "net"}})]
        store.update_job(ids[1], state="running")
        store.update_job(ids[2], state="cancelled")
        store.update_job(others[0], state="running")
        assert [r.job_id for r in store.jobs_in_states(("running",))] == [ids[1], others[0]]
        assert [r.job_id for r in store.jobs_in_states(("queued", "cancelled"))] == [ids[0], ids[2], ids[3],
                                                                                   *others[1:]]
        assert store.jobs_in_states(("running",))[0].spec == spec_naming("/ckpt/1.pt")
        assert store.jobs_in_states(()) == [] and store.jobs_in_states(("interrupted",)) == []
        with pytest.raises(ValueError):
            store.jobs_in_states(("done",))
        assert store.job_checkpoints() == {"/ckpt/0.pt", "/ckpt/1.pt"}
        assert store.count_jobs() == 10

    def test_a_spec_sqlite_cannot_parse_still_names_its_checkpoint(self, store: Store) -> None:
        """Python's json writes NaN and Infinity, which SQLite's JSON functions refuse: neither an error nor a miss."""
        store.create_job(spec_naming("/ckpt/plain.pt"))
        store.create_job({**spec_naming("/ckpt/odd.pt"), "options": {"scale": float("nan"), "cap": float("inf")}})
        assert store.job_checkpoints() == {"/ckpt/plain.pt", "/ckpt/odd.pt"}

    def test_a_stopped_job_is_deleted_with_its_events_and_an_active_one_is_refused(self, store: Store) -> None:
        kept, gone, running = (store.create_job(spec_naming(f"/ckpt/{i}.pt")) for i in range(3))
        for job in (kept, gone):
            store.update_job(job, progress={"step": "profile"})
            store.update_job(job, state="cancelled", progress={"step": "stopped"})
        store.update_job(running, state="running")
        with pytest.raises(ValueError):
            store.delete_job(store.create_job({"kind": "search"}))
        with pytest.raises(ValueError):
            store.delete_job(running)
        assert store.get_job(running).state == "running"
        store.delete_job(gone)
        with pytest.raises(KeyError):
            store.get_job(gone)
        with pytest.raises(KeyError):
            store.job_events(gone)
        with pytest.raises(KeyError):
            store.delete_job(gone)
        with pytest.raises(KeyError):
            store.update_job(gone, progress={"step": "late"})
        assert [r.job_id for r in store.list_jobs()] == [kept, running, store.recent_jobs(1)[0].job_id]
        assert store.count_jobs() == 3 and "/ckpt/1.pt" not in store.job_checkpoints()
        assert [e["seq"] for e in store.job_events(kept)] == [1, 2], "other jobs keep their events"

    @pytest.mark.parametrize("accuracy", [float("nan"), float("inf"), -0.01, 1.5, 57, "0.9", True])
    def test_an_accuracy_that_is_no_fraction_is_refused_by_every_backend(self, store: Store, accuracy: object) -> None:
        """SQLite raised IntegrityError (NOT NULL) for NaN where the memory store kept it; 57 and inf were kept by
        both."""
        with pytest.raises(ValueError, match="subnet-7"):
            store.put_accuracy("net", "data", "subnet-7", accuracy)  # type: ignore[arg-type]
        assert store.get_accuracies("net", "data") == {}
        store.put_accuracy("net", "data", "subnet-7", 1)
        assert store.get_accuracies("net", "data") == {"subnet-7": 1.0}

    @pytest.mark.parametrize("latency", [float("inf"), float("-inf"), -1.0, "fast", None])
    def test_a_latency_that_is_no_time_is_refused_by_every_backend(self, store: Store, latency: object) -> None:
        with pytest.raises(ValueError, match="subnet-7"):
            store.put_latency("d", "s", "subnet-7", measurement() | {"latency_ms": latency})
        assert store.get_latencies("d", "s") == {}

    def test_numpy_numbers_are_stored_as_the_numbers_they_hold(self, store: Store) -> None:
        """np.float32(1.5) passed the latency check and then failed in json: 'float32 is not JSON serializable'."""
        import numpy as np

        store.put_latency("d", "s", "a", measurement() | {"latency_ms": np.float32(1.5), "rounds": np.int64(7),
                                                 "ratios": np.array([1.0, 1.25])})
        row = store.get_latencies("d", "s")["a"]
        assert row["latency_ms"] == 1.5 and row["rounds"] == 7 and row["ratios"] == [1.0, 1.25]
        assert type(row["rounds"]) is int
        with pytest.raises(TypeError):
            store.put_latency("d", "s", "b", measurement() | {"env": object()})
        assert set(store.get_latencies("d", "s")) == {"a"}

    def test_a_nan_latency_stays_the_mark_of_a_subnet_not_measured(self, store: Store) -> None:
        """Sessions store NaN for a subnet with too few clean rounds; readers fall back to its raw median."""
        store.put_latency("d", "s", "a", measurement() | {"latency_ms": float("nan"), "ratio": float("nan")})
        assert set(store.get_latencies("d", "s")) == {"a"}
