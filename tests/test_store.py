"""The store contract (:class:`hwsearch.testing.StoreContract`) run against both built-in backends, and what only
the SQLite file can show."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from hwsearch.store import MemoryStore, SQLiteStore, Store, open_store
from hwsearch.testing import StoreContract
from hwsearch.testing.store_contract import MEAS, spec_naming

REPO = Path(__file__).resolve().parents[1]


class TestMemoryStore(StoreContract):
    @pytest.fixture()
    def store(self) -> Store:
        return MemoryStore()


class TestSQLiteStore(StoreContract):
    @pytest.fixture()
    def store(self, tmp_path: Path) -> Store:
        return SQLiteStore(tmp_path / "s.db")



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


# Backends a plug-in's author could write: each but the last breaks one rule of the contract; the last keeps every
# rule in words of its own (the kit must not ask for hwsearch's wording).
_BACKENDS = '''
import copy
import json
import pytest

from hwsearch.store import MemoryStore
from hwsearch.testing import StoreContract


class LiveRows(MemoryStore):
    def get_latencies(self, device_hash, space_name):
        return self._latencies.get((device_hash, space_name), {})


class UncheckedTransitions(MemoryStore):
    def transition_job(self, job_id, from_states, to_state, **fields):
        allowed = self.get_job(job_id).state in from_states
        fields.pop("expect_runner", None)
        self.update_job(job_id, state=to_state, **fields)
        return allowed


class ClaimsShared(MemoryStore):
    shared_across_processes = True


class MergesProgress(MemoryStore):
    def update_job(self, job_id, *, progress=None, **fields):
        if progress is not None:
            progress = {**self.get_job(job_id).progress, **progress}
        super().update_job(job_id, progress=progress, **fields)


class LiveJobs(MemoryStore):
    def get_job(self, job_id):
        return self._jobs[job_id]


class LiveEvents(MemoryStore):
    def job_events(self, job_id, after=0, limit=None):
        return [e for e in self._events[job_id] if e["seq"] > after][:limit]


class LiveAccuracies(MemoryStore):
    def get_accuracies(self, supernet_id, dataset_id):
        return self._accuracies.setdefault((supernet_id, dataset_id), {})


class InItsOwnWords(MemoryStore):
    def update_job(self, job_id, **fields):
        try:
            super().update_job(job_id, **fields)
        except ValueError:
            raise ValueError("invalid state") from None

    def delete_job(self, job_id):
        try:
            super().delete_job(job_id)
        except ValueError:
            raise ValueError(f"job {job_id} is still active") from None

    def put_latency(self, device_hash, space_name, arch_key, measurement):
        json.dumps(dict(measurement), default=lambda value: value.tolist() if hasattr(value, "tolist") else
                   json.JSONEncoder().default(value))  # json's own TypeError, not hwsearch's sentence
        super().put_latency(device_hash, space_name, arch_key, measurement)


for backend in (LiveRows, UncheckedTransitions, ClaimsShared, MergesProgress, LiveJobs, LiveEvents,
                LiveAccuracies, InItsOwnWords):
    globals()[f"Test{backend.__name__}"] = type(f"Test{backend.__name__}", (StoreContract,), {
        "store": pytest.fixture()(lambda self, backend=backend: backend())})
'''

#: What the kit must fail each faulty backend by (at least these tests); InItsOwnWords must pass.
_FAULTS = {
    "LiveRows": {"test_put_replaces_and_results_are_snapshots"},
    "UncheckedTransitions": {"test_a_transition_writes_only_from_the_expected_states_and_runner"},
    "ClaimsShared": {"test_pickling_keeps_contents_and_a_shared_store_shares_writes"},
    "MergesProgress": {"test_progress_replaces_the_whole_progress"},
    "LiveJobs": {"test_jobs_events_and_accuracies_are_snapshots"},
    "LiveEvents": {"test_jobs_events_and_accuracies_are_snapshots"},
    "LiveAccuracies": {"test_jobs_events_and_accuracies_are_snapshots"},
}


def test_the_contract_kit_fails_each_faulty_backend_by_its_rule_and_passes_one_in_its_own_words(
        tmp_path: Path) -> None:
    """The kit is what a plug-in's author trusts: five of these faults passed its first version (Y5), and a
    correct backend failed three tests for not using hwsearch's sentences."""
    import subprocess
    import sys

    (tmp_path / "test_backends.py").write_text(_BACKENDS)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "-o", "addopts=", "test_backends.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    failed: dict[str, set[str]] = {}
    for line in run.stdout.splitlines():
        if line.startswith("FAILED"):
            backend, test = line.split()[1].split("::")[1:3]
            failed.setdefault(backend.removeprefix("Test"), set()).add(test.split("[")[0])
    for backend, rules in _FAULTS.items():
        assert rules <= failed.get(backend, set()), (backend, run.stdout[-3000:])
    assert "InItsOwnWords" not in failed, run.stdout[-3000:]
