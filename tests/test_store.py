"""The store contract, run against every backend."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

from hwsearch.store import JOB_STATES, MemoryStore, SQLiteStore, Store, open_store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")


MEAS = {"latency_ms": 12.5, "ratio": 1.1, "stable": True, "env": {"cpu": "x"}}


def test_latencies_are_keyed_by_device_space_and_arch(store: Store) -> None:
    store.put_latency("dev1", "space", "a", MEAS)
    store.put_latency("dev1", "space", "b", MEAS | {"latency_ms": 3.0})
    store.put_latency("dev2", "space", "a", MEAS | {"latency_ms": 99.0})
    store.put_latency("dev1", "other", "a", MEAS | {"latency_ms": 7.0})
    got = store.get_latencies("dev1", "space")
    assert set(got) == {"a", "b"} and got["a"] == MEAS and got["b"]["latency_ms"] == 3.0
    assert store.get_latencies("dev2", "space")["a"]["latency_ms"] == 99.0
    assert store.get_latencies("nope", "space") == {}
    assert set(store.get_latencies("dev1", "other")) == {"a"}


def test_put_replaces_and_results_are_snapshots(store: Store) -> None:
    store.put_latency("d", "s", "a", MEAS)
    snap = store.get_latencies("d", "s")
    snap["a"]["latency_ms"] = -1.0
    store.put_latency("d", "s", "a", MEAS | {"latency_ms": 1.0})
    assert store.get_latencies("d", "s")["a"]["latency_ms"] == 1.0
    assert snap["a"]["latency_ms"] == -1.0


def test_accuracies(store: Store) -> None:
    store.put_accuracy("net", "data", "a", 0.75)
    store.put_accuracy("net", "data", "a", 0.8)
    store.put_accuracy("net", "other", "a", 0.1)
    assert store.get_accuracies("net", "data") == {"a": 0.8}
    assert store.get_accuracies("x", "data") == {}


def test_job_lifecycle(store: Store) -> None:
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
    with pytest.raises(ValueError, match="unknown job state"):
        store.update_job(job, state="exploded")
    with pytest.raises(KeyError):
        store.get_job("missing")
    with pytest.raises(KeyError):
        store.update_job("missing", state="failed")


def test_progress_events_are_kept_in_order_and_runner_tokens_stored(store: Store) -> None:
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


def test_events_from_many_threads_get_distinct_sequence_numbers(store: Store) -> None:
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


def test_a_store_from_before_runner_tokens_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT "
                     "NOT NULL, progress TEXT NOT NULL, result TEXT, error TEXT, created REAL "
                     "NOT NULL, updated REAL NOT NULL)")
        conn.execute("INSERT INTO jobs VALUES ('j', '{}', 'succeeded', '{}', 'null', NULL, 1, 1)")
    store = SQLiteStore(path)
    assert store.get_job("j").runner is None and store.get_job("j").state == "succeeded"
    store.update_job("j", runner="t", progress={"step": "done"})
    assert store.get_job("j").runner == "t" and store.job_events("j")[0]["seq"] == 1


def test_list_jobs_in_creation_order_and_restart_recovery(store: Store) -> None:
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


def test_recent_jobs_are_pages_newest_first_and_events_come_in_pages(store: Store) -> None:
    ids = [store.create_job({"i": i}) for i in range(7)]
    newest_first = ids[::-1]
    first = [r.job_id for r in store.recent_jobs(3)]
    second = [r.job_id for r in store.recent_jobs(3, before=first[-1])]
    third = [r.job_id for r in store.recent_jobs(3, before=second[-1])]
    assert (first, second, third) == (newest_first[:3], newest_first[3:6], newest_first[6:])
    assert store.recent_jobs(3, before=ids[0]) == []
    assert [r.job_id for r in store.recent_jobs(100)] == newest_first
    with pytest.raises(KeyError):
        store.recent_jobs(3, before="no-such-job")

    for step in range(5):
        store.update_job(ids[0], progress={"step": f"s{step}"})
    pages = [store.job_events(ids[0], after=0, limit=2)]
    while pages[-1]:
        pages.append(store.job_events(ids[0], after=pages[-1][-1]["seq"], limit=2))
    assert [[e["step"] for e in page] for page in pages] == [["s0", "s1"], ["s2", "s3"], ["s4"], []]
    assert len(store.job_events(ids[0])) == 5


def test_concurrent_writes_from_threads(store: Store) -> None:
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


def test_pickling_keeps_contents(store: Store) -> None:
    store.put_latency("d", "s", "a", MEAS)
    job = store.create_job({"kind": "x"})
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_latencies("d", "s") == {"a": MEAS}
    assert clone.get_job(job).spec == {"kind": "x"}
    clone.put_accuracy("n", "d", "a", 0.5)
    clone.get_accuracies("n", "d")


def test_sqlite_clone_shares_the_file_and_survives_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.get_latencies("d", "s")  # open a connection before pickling
    clone = pickle.loads(pickle.dumps(store))
    clone.put_latency("d", "s", "from-clone", MEAS)
    assert "from-clone" in store.get_latencies("d", "s")
    reopened = open_store(tmp_path / "s.db")
    assert isinstance(reopened, SQLiteStore) and "from-clone" in reopened.get_latencies("d", "s")
    con = reopened._conn()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_whose_file_is_gone_where_it_travelled_is_not_made_anew(tmp_path: Path) -> None:
    """A cluster node that did not see the store's path made an empty store there (probe Z10): the job then
    failed with "no such table: accuracies", and the node kept a stray store."""
    from hwsearch.store import StoreError

    store = SQLiteStore(tmp_path / "jobs" / "s.db")
    travelled = pickle.dumps(store)
    for leftover in (tmp_path / "jobs").iterdir():
        leftover.unlink()
    elsewhere = pickle.loads(travelled)
    with pytest.raises(StoreError, match=r"s\.db does not exist on .*every node of the cluster sees it"):
        elsewhere.get_job("x")
    assert list((tmp_path / "jobs").iterdir()) == []


def test_open_store_normalises_its_argument(tmp_path: Path) -> None:
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(str(tmp_path / "x.db")), SQLiteStore)
    same = MemoryStore()
    assert open_store(same) is same
    with pytest.raises(TypeError):
        open_store(3)  # type: ignore[arg-type]


def test_a_transition_writes_only_from_the_expected_states_and_runner(store: Store) -> None:
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
    with pytest.raises(ValueError, match="unknown job state"):
        store.transition_job(job, ("finished",), "running")
    with pytest.raises(ValueError, match="unknown job state"):
        store.transition_job(job, ("succeeded",), "exploded")


def test_of_racing_transitions_exactly_one_wins(store: Store) -> None:
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


def spec_naming(checkpoint: object) -> dict[str, object]:
    return {"kind": "search", "supernet": {"name": "net", "checkpoint": checkpoint}, "pad": "x" * 100}


def test_jobs_in_states_checkpoints_and_count_answer_without_listing(store: Store) -> None:
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
    with pytest.raises(ValueError, match="unknown job state"):
        store.jobs_in_states(("done",))
    assert store.job_checkpoints() == {"/ckpt/0.pt", "/ckpt/1.pt"}
    assert store.count_jobs() == 10


def test_a_spec_sqlite_cannot_parse_still_names_its_checkpoint(store: Store) -> None:
    """Python's json writes NaN and Infinity, which SQLite's JSON functions refuse: neither an error nor a miss."""
    store.create_job(spec_naming("/ckpt/plain.pt"))
    store.create_job({**spec_naming("/ckpt/odd.pt"), "options": {"scale": float("nan"), "cap": float("inf")}})
    assert store.job_checkpoints() == {"/ckpt/plain.pt", "/ckpt/odd.pt"}


def test_a_stopped_job_is_deleted_with_its_events_and_an_active_one_is_refused(store: Store) -> None:
    kept, gone, running = (store.create_job(spec_naming(f"/ckpt/{i}.pt")) for i in range(3))
    for job in (kept, gone):
        store.update_job(job, progress={"step": "profile"})
        store.update_job(job, state="cancelled", progress={"step": "stopped"})
    store.update_job(running, state="running")
    with pytest.raises(ValueError, match="is queued; cancel it before deleting it"):
        store.delete_job(store.create_job({"kind": "search"}))
    with pytest.raises(ValueError, match="is running; cancel it before deleting it"):
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


def test_deleting_a_job_leaves_no_rows_behind_in_the_file(tmp_path: Path) -> None:
    """The point of deleting is room: the job's event rows go too, and a reopened store agrees."""
    store = SQLiteStore(tmp_path / "s.db")
    job = store.create_job(spec_naming("/ckpt/a.pt"))
    for step in range(5):
        store.update_job(job, progress={"step": step})
    store.update_job(job, state="failed")
    store.delete_job(job)
    reopened = SQLiteStore(tmp_path / "s.db")
    conn = reopened._conn()
    assert conn.execute("SELECT COUNT(*) FROM job_events").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
    assert reopened.count_jobs() == 0 and reopened.job_checkpoints() == set()


@pytest.mark.parametrize("accuracy", [float("nan"), float("inf"), -0.01, 1.5, 57, "0.9", True])
def test_an_accuracy_that_is_no_fraction_is_refused_by_every_backend(store: Store, accuracy: object) -> None:
    """SQLite raised IntegrityError (NOT NULL) for NaN where the memory store kept it; 57 and inf were kept by both."""
    with pytest.raises(ValueError, match="'subnet-7'"):
        store.put_accuracy("net", "data", "subnet-7", accuracy)  # type: ignore[arg-type]
    assert store.get_accuracies("net", "data") == {}
    store.put_accuracy("net", "data", "subnet-7", 1)
    assert store.get_accuracies("net", "data") == {"subnet-7": 1.0}


@pytest.mark.parametrize("latency", [float("inf"), float("-inf"), -1.0, "fast", None])
def test_a_latency_that_is_no_time_is_refused_by_every_backend(store: Store, latency: object) -> None:
    with pytest.raises(ValueError, match="'subnet-7'"):
        store.put_latency("d", "s", "subnet-7", MEAS | {"latency_ms": latency})
    assert store.get_latencies("d", "s") == {}


def test_numpy_numbers_are_stored_as_the_numbers_they_hold(store: Store) -> None:
    """np.float32(1.5) passed the latency check and then failed in json: 'float32 is not JSON serializable'."""
    import numpy as np

    store.put_latency("d", "s", "a", MEAS | {"latency_ms": np.float32(1.5), "rounds": np.int64(7),
                                             "ratios": np.array([1.0, 1.25])})
    row = store.get_latencies("d", "s")["a"]
    assert row["latency_ms"] == 1.5 and row["rounds"] == 7 and row["ratios"] == [1.0, 1.25]
    assert type(row["rounds"]) is int
    with pytest.raises(TypeError, match="store values must be JSON .* got a object"):
        store.put_latency("d", "s", "b", MEAS | {"env": object()})
    assert set(store.get_latencies("d", "s")) == {"a"}


def test_a_nan_latency_stays_the_mark_of_a_subnet_not_measured(store: Store) -> None:
    """Sessions store NaN for a subnet with too few clean rounds; readers fall back to its raw median."""
    store.put_latency("d", "s", "a", MEAS | {"latency_ms": float("nan"), "ratio": float("nan")})
    assert set(store.get_latencies("d", "s")) == {"a"}


def test_a_full_database_reports_that_it_is_full_and_the_store_writes_again_after(tmp_path: Path) -> None:
    """SQLite rolls back itself when full; the ROLLBACK after it failed and hid 'database or disk is full'."""
    import sqlite3

    store = SQLiteStore(tmp_path / "s.db")
    conn = store._conn()  # this thread's connection: max_page_count holds per connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        store.put_latency("d", "s", "big", MEAS | {"pad": "x" * 50_000})
    conn.execute("PRAGMA max_page_count = 1000000")
    store.put_latency("d", "s", "big", MEAS | {"pad": "x" * 50_000})
    assert set(store.get_latencies("d", "s")) == {"big"}


def _damage(path: Path, statement: str, *arguments: object) -> None:
    """Change the file behind the store with a plain connection, as a hand edit or a bad disk would."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(statement, arguments)


def test_damaged_rows_are_read_as_damaged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One row of text that is not JSON failed every listing, the service's start and training that read it."""
    store = SQLiteStore(tmp_path / "s.db")
    good, bad = store.create_job(spec_naming("good.pt")), store.create_job(spec_naming("bad.pt"))
    store.update_job(bad, state="failed", progress={"step": "profile"}, result={"fronts": {}})
    store.put_latency("d", "s", "fine", MEAS)
    store.put_latency("d", "s", "broken", MEAS)
    for column in ("spec", "progress", "result"):
        _damage(store.path, f"UPDATE jobs SET {column} = '{{not json' WHERE job_id = ?", bad)
    _damage(store.path, "UPDATE job_events SET data = '[1' WHERE job_id = ?", bad)
    _damage(store.path, "UPDATE latencies SET data = '{bad json' WHERE arch_key = 'broken'")

    record = store.get_job(bad)
    assert record.unreadable == ("spec", "progress", "result")
    assert (record.spec, record.progress, record.result, record.state) == ({}, {}, None, "failed")
    assert store.get_job(good).unreadable == ()
    assert [r.job_id for r in store.recent_jobs(5)] == [bad, good]
    assert [r.job_id for r in store.list_jobs()] == [good, bad]
    assert store.job_events(bad) == [{"unreadable": True, "seq": 1}]
    with caplog.at_level("WARNING", logger="hwsearch.store"):
        assert store.job_checkpoints() == {"good.pt"}
        assert set(store.get_latencies("d", "s")) == {"fine"}
    assert bad in caplog.text and "'broken'" in caplog.text


def test_another_programs_database_is_refused_untouched(tmp_path: Path) -> None:
    """--store naming a browser's or a tool's SQLite file gained hwsearch's tables, WAL mode and a user_version."""
    import sqlite3
    from contextlib import closing

    from hwsearch.store import StoreError

    path = tmp_path / "places.sqlite"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE bookmarks (url TEXT, title TEXT)")
        conn.execute("INSERT INTO bookmarks VALUES ('https://example.org', 'example')")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another program's SQLite database .*'bookmarks'"):
        SQLiteStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["places.sqlite"]
