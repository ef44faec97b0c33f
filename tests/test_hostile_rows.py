"""A store holding rows no hwsearch wrote (hand edits, another version's bugs, a damaged disk).

Each case puts such rows into a real SQLite store beside sound ones and runs
what a user runs on it: ``hwsearch train`` and ``hwsearch report`` in a
subprocess, ``hwsearch serve`` on 127.0.0.1.  A bad row is set aside and
named, the sound rows are used, and nothing ends in a traceback or a 500.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from devices import open_profiler
from devices.profile import DeviceProfile
from hwsearch.store import SQLiteStore
from hwsearch.supernets import create_supernet
from tests._jobs import fast_device
from tests._server import Server
from tests.test_cli_errors import LOCAL_PROFILE, assert_one_line_error, run_cli
from tests.test_cli_hardening import _front_json

SUPERNET = "demo_mbv3_mnist"
DATASET = "val"
N_SOUND = 40


def _damage(path: Path, statement: str, *arguments: object) -> None:
    """Change the store's file on a plain connection, as a hand edit or a bad disk would."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(statement, arguments)


def _sound_store(path: Path, n: int = N_SOUND) -> tuple[SQLiteStore, str, str, list[str]]:
    """``n`` sound latency and accuracy rows of the demo supernet (labels that follow MACs); the device's key,
    the space's network id, and keys of 10 more subnets of the space for hostile rows."""
    net = create_supernet(SUPERNET)
    archs = list({a.key(): a for a in net.space.sample(np.random.default_rng(0), 2 * n + 20)}.values())
    device_key = open_profiler(DeviceProfile.load(LOCAL_PROFILE)).device_key()
    store = SQLiteStore(path)
    for i, arch in enumerate(archs[:n]):
        macs = net.count(arch).macs
        ratio = 0.02 + macs / 1e8
        store.put_latency(device_key, net.space.network_id, arch.key(),
                          {"latency_ms": ratio * 5.0, "ratio": ratio, "env": {"reference_ms": 5.0 + 0.01 * i}})
        store.put_accuracy(SUPERNET, DATASET, arch.key(), 0.5 + macs / 2e7)
    return store, device_key, net.space.network_id, [a.key() for a in archs[n:n + 10]]


def _insert_latency(path: Path, device_key: str, network_id: str, key: str, data: str) -> None:
    _damage(path, "INSERT INTO latencies (device_hash, space_name, arch_key, data, updated) VALUES (?, ?, ?, ?, 0)",
            device_key, network_id, key, data)


def _insert_accuracy(path: Path, key: str, accuracy: object) -> None:
    """Raw, as a store written before accuracies were checked could hold them."""
    _damage(path, "INSERT INTO accuracies (supernet_id, dataset_id, arch_key, accuracy, updated) "
            "VALUES (?, ?, ?, ?, 0)", SUPERNET, DATASET, key, accuracy)


OTHER_SPACE_KEY = "r224-d2,2,2,2,2-k3,3,3,3,3,3,3,3,3,3-e3,3,3,3,3,3,3,3,3,3"


def _train(tmp_path: Path, store: Path, *target: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "predictor"
    return run_cli("train", *target, "--supernet", SUPERNET, "--store", str(store), "--out", str(out),
                   cwd=tmp_path), out


def _assert_trained_on_sound_rows(result: subprocess.CompletedProcess[str], out: Path) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    meta_text = (out / "meta.json").read_text()
    assert "Infinity" not in meta_text and "NaN" not in meta_text, meta_text
    meta = json.loads(meta_text)
    assert meta["n_train"] + meta["metrics"]["test"]["n"] == N_SOUND, meta
    assert math.isfinite(meta["metrics"]["cv"]["rmse"])


def _assert_named(stderr: str, hostile: dict[str, str]) -> None:
    """Every hostile key is on stderr with the reason it was set aside (as ``N reason (e.g. 'key', ...)``)."""
    for key, reason in hostile.items():
        assert f"{reason} (e.g. {key!r}" in stderr or f", {key!r}" in stderr, (key, stderr)
        assert reason in stderr, (reason, stderr)


def test_train_sets_aside_latency_rows_that_cannot_be_right_and_names_them(tmp_path: Path) -> None:
    """Before: a NaN ruler left 'only 0 labelled subnets', a ratio of 1e300 saved a model with RMSE inf, a ruler
    of "fast", an env of null or a row that is not JSON ended in a traceback, and a ratio of -5 went unsaid."""
    store, device_key, network_id, spare = _sound_store(tmp_path / "s.db")
    row = {"latency_ms": 0.5, "ratio": 0.1, "env": {"reference_ms": 5.0}}
    ruler = "with env.reference_ms not a time in (0, 600000] ms"
    ratio = "with a ratio that is not a number in [1e-06, 1e+06]"
    rows = [(row | {"env": {"reference_ms": float("nan")}}, ruler), (row | {"ratio": 1e300}, ratio),
            (row | {"ratio": -5.0}, ratio), (row | {"env": {"reference_ms": "fast"}}, ruler),
            (row | {"env": None}, "with env not an object"), (row, "not an arch key"),
            (row, f"not a subnet of {SUPERNET}")]
    keys = [*spare[:5], "not-a-key", OTHER_SPACE_KEY]
    for key, (data, _) in zip(keys, rows):
        _insert_latency(store.path, device_key, network_id, key, json.dumps(data))
    _insert_latency(store.path, device_key, network_id, spare[5], "{bad json")

    result, out = _train(tmp_path, store.path, "--target", "latency", "--device", str(LOCAL_PROFILE))

    _assert_trained_on_sound_rows(result, out)
    assert "warning: skipped 7 of 47 rows that cannot be right" in result.stderr, result.stderr
    _assert_named(result.stderr, {key: reason for key, (_, reason) in zip(keys, rows)})
    assert "are not JSON objects" in result.stderr and repr(spare[5]) in result.stderr, result.stderr


def test_train_sets_aside_latency_rows_the_anchor_code_cannot_read_and_names_them(tmp_path: Path) -> None:
    """Rows that passed the screen but not what reads them next (:func:`hwsearch.anchor.in_current_norm`): before,
    a host fingerprint that was a list ended in "TypeError: unhashable type: 'list'", anchor ratios of text and an
    anchored session's end of text in "ValueError: could not convert string to float"."""
    store, device_key, network_id, spare = _sound_store(tmp_path / "s.db")
    row = {"latency_ms": 0.5, "ratio": 0.1, "env": {"reference_ms": 5.0, "session_end": 1.0}}
    anchored = row | {"anchor_keys": [spare[9]], "anchor_ratios": [1.0], "session_id": "s", "anchor_precision": "fp32"}
    rows = [(row | {"env": row["env"] | {"host_fingerprint": ["a", "b"]}}, "with env.host_fingerprint not text"),
            (anchored | {"anchor_ratios": ["x"]}, "with anchor_ratios not a list of numbers"),
            (anchored | {"env": row["env"] | {"session_end": "yesterday"}}, "with env.session_end not a number"),
            (anchored | {"anchor_keys": 7}, "with anchor_keys not a list of arch keys")]
    for key, (data, _) in zip(spare, rows):
        _insert_latency(store.path, device_key, network_id, key, json.dumps(data))

    result, out = _train(tmp_path, store.path, "--target", "latency", "--device", str(LOCAL_PROFILE))

    _assert_trained_on_sound_rows(result, out)
    assert "warning: skipped 4 of 44 rows that cannot be right" in result.stderr, result.stderr
    _assert_named(result.stderr, {key: reason for key, (_, reason) in zip(spare, rows)})


def test_train_sets_aside_accuracy_rows_that_cannot_be_right_and_names_them(tmp_path: Path) -> None:
    """Before: inf, -3, 57 and 1e300 ended in tracebacks that named no row, 'not-a-key' in 'cannot parse arch key',
    and a key of another space in one line that did not say which."""
    store, _, _, spare = _sound_store(tmp_path / "s.db")
    outside, not_finite = "with an accuracy outside [0, 1]", "with an accuracy that is not a finite number"
    hostile = {spare[0]: (float("inf"), not_finite), spare[1]: (-3.0, outside), spare[2]: (57.0, outside),
               spare[3]: (1e300, outside), spare[4]: ("high", not_finite),
               "not-a-key": (0.9, "not an arch key"), OTHER_SPACE_KEY: (0.9, f"not a subnet of {SUPERNET}")}
    for key, (accuracy, _) in hostile.items():
        _insert_accuracy(store.path, key, accuracy)

    result, out = _train(tmp_path, store.path, "--target", "accuracy", "--dataset-id", DATASET)

    _assert_trained_on_sound_rows(result, out)
    assert "warning: skipped 7 of 47 rows that cannot be right" in result.stderr, result.stderr
    _assert_named(result.stderr, {key: reason for key, (_, reason) in hostile.items()})


def test_train_fails_in_one_line_when_too_few_sound_rows_remain(tmp_path: Path) -> None:
    store, _, _, spare = _sound_store(tmp_path / "s.db", n=8)
    for key, accuracy in zip(spare, (-1.0, 2.0, "n/a")):
        _insert_accuracy(store.path, key, accuracy)

    result, out = _train(tmp_path, store.path, "--target", "accuracy", "--dataset-id", DATASET)

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("only 8 labelled subnets") and "skipped 3 of 11 rows" in lines[0], lines[0]
    assert not out.exists()


def _corrupt_store(tmp_path: Path) -> tuple[Path, str]:
    """A store of about 900 KB with a finished job, its pages 3-7 overwritten with 0xff; and the job's id."""
    store, _, _, _ = _sound_store(tmp_path / "corrupt.db", n=10)
    for i in range(200):
        store.put_latency("other-device", "space", f"k{i}", {"latency_ms": 1.0, "pad": "x" * 4000})
    job = store.create_job({"kind": "search"})
    store.update_job(job, state="succeeded", result={"fronts": {}})
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file, none in the WAL
    assert store.path.stat().st_size > 800_000
    with open(store.path, "r+b") as file:
        file.seek(2 * 4096)
        file.write(b"\xff" * 5 * 4096)
    return store.path, job


def test_a_corrupt_store_is_reported_in_one_line(tmp_path: Path) -> None:
    """Before: a 42-line traceback ending in sqlite3.DatabaseError: database disk image is malformed."""
    path, job = _corrupt_store(tmp_path)
    for command in (["report", job, "--store", str(path)],
                    ["train", "--target", "accuracy", "--dataset-id", DATASET, "--supernet", SUPERNET,
                     "--store", str(path), "--out", str(tmp_path / "predictor")]):
        assert_one_line_error(run_cli(*command, cwd=tmp_path), 1, "database disk image is malformed")


def test_train_refuses_another_programs_database_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    """Before: it added hwsearch's tables to the file, switched it to WAL and set its user_version."""
    foreign = tmp_path / "places.sqlite"
    with closing(sqlite3.connect(foreign)) as conn, conn:
        conn.execute("CREATE TABLE bookmarks (url TEXT, title TEXT)")
        conn.execute("INSERT INTO bookmarks VALUES ('https://example.org', 'example')")
    before = foreign.read_bytes()

    result, _ = _train(tmp_path, foreign, "--target", "accuracy", "--dataset-id", DATASET)

    assert_one_line_error(result, 2, str(foreign), "another program's SQLite database", "'bookmarks'")
    assert foreign.read_bytes() == before
    assert not list(tmp_path.glob("places.sqlite-*"))


def test_damaged_job_rows_neither_stop_the_service_nor_fail_its_answers(tmp_path: Path) -> None:
    """Before: a spec that is not JSON stopped ``hwsearch serve`` from starting (a JSONDecodeError while it looked
    for unused checkpoints); a progress that is not JSON made /jobs, /jobs/{id} and its events 500s; a result of
    ``{"fronts": 5}`` made its fronts a 500, and ``[]`` the page of /jobs that held it."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    jobs = {}
    for name in ("oldest", "spec", "list_result", "fronts", "progress", "newest"):
        jobs[name] = store.create_job({"kind": "search", "supernet": {"name": SUPERNET}})
        store.update_job(jobs[name], state="succeeded", progress={"step": "done", "fraction": 1.0},
                         result={"fronts": {}, "hypervolume": 0.5})
    _damage(store.path, "UPDATE jobs SET spec = '{not json' WHERE job_id = ?", jobs["spec"])
    _damage(store.path, "UPDATE jobs SET progress = '{not json' WHERE job_id = ?", jobs["progress"])
    _damage(store.path, "UPDATE job_events SET data = '{not json' WHERE job_id = ?", jobs["progress"])
    _damage(store.path, "UPDATE jobs SET result = '{\"fronts\": 5}' WHERE job_id = ?", jobs["fronts"])
    _damage(store.path, "UPDATE jobs SET result = '[]' WHERE job_id = ?", jobs["list_result"])

    server = Server(store.path).start()
    try:
        with server.client() as client:
            page = client.get("/jobs", params={"limit": 5})
            assert page.status_code == 200, page.text
            listed = {job["id"]: job for job in page.json()["jobs"]}
            assert set(listed) == {jobs[name] for name in ("spec", "list_result", "fronts", "progress", "newest")}
            assert listed[jobs["newest"]]["unreadable"] == [] and listed[jobs["newest"]]["result"]
            assert listed[jobs["progress"]]["unreadable"] == ["progress"]
            assert listed[jobs["progress"]]["state"] == "succeeded" and listed[jobs["progress"]]["progress"] is None
            assert listed[jobs["spec"]]["unreadable"] == ["spec"] and listed[jobs["spec"]]["kind"] == "unknown"
            assert listed[jobs["list_result"]]["unreadable"] == ["result"]

            older = client.get("/jobs", params={"before": jobs["fronts"], "limit": 5})
            assert older.status_code == 200, older.text
            assert [job["id"] for job in older.json()["jobs"]] == [jobs["list_result"], jobs["spec"], jobs["oldest"]]

            one = client.get(f"/jobs/{jobs['progress']}")
            assert one.status_code == 200 and one.json()["unreadable"] == ["progress"], one.text
            events = client.get(f"/jobs/{jobs['progress']}/events")
            assert events.status_code == 200, events.text
            assert [(e["seq"], e["unreadable"]) for e in events.json()["events"]] == [(1, True)]

            fronts = client.get(f"/jobs/{jobs['fronts']}/fronts")
            assert fronts.status_code == 409 and jobs["fronts"] in fronts.json()["detail"], fronts.text
            assert client.get(f"/jobs/{jobs['newest']}/fronts").json()["fronts"] == {}
            assert client.get("/health").status_code == 200
    finally:
        server.stop()
    assert f"job {jobs['spec']}: its stored spec is not JSON" in server.log.read_text()


def test_a_progress_holding_a_number_past_a_floats_range_is_shown_as_none(tmp_path: Path) -> None:
    """A stored ``fraction`` of 10**400 (an integer JSON reads back whole) made the check of what the API can show
    raise OverflowError: a 500 from ``GET /jobs`` and the job's own page (Y19)."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    job = store.create_job({"kind": "search", "supernet": {"name": SUPERNET}})
    store.update_job(job, state="succeeded", progress={"step": "done", "fraction": 1.0}, result={"fronts": {}})
    huge = '{"step": "done", "fraction": 1' + "0" * 400 + "}"
    _damage(store.path, "UPDATE jobs SET progress = ? WHERE job_id = ?", huge, job)
    server = Server(store.path).start()
    try:
        with server.client() as client:
            listed, one = client.get("/jobs"), client.get(f"/jobs/{job}")
    finally:
        server.stop()
    assert listed.status_code == 200 and one.status_code == 200, (listed.text, one.text)
    assert one.json()["progress"] is None and listed.json()["jobs"][0]["progress"] is None


def test_jobs_whose_creation_time_is_damaged_are_still_paged_through(tmp_path: Path) -> None:
    """A listing's ``next_before`` holds its last job's creation time; a damaged one (text, or a number past a
    float's range, which reads as inf) made that ``next_before`` a 422 when it came back (Y16)."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    ids = [store.create_job({"kind": "search", "supernet": {"name": SUPERNET}}) for _ in range(4)]
    for job_id in ids:
        store.update_job(job_id, state="succeeded", result={"fronts": {}})
    _damage(store.path, "UPDATE jobs SET created = 'when?' WHERE job_id = ?", ids[1])
    _damage(store.path, "UPDATE jobs SET created = 9e999 WHERE job_id = ?", ids[2])

    server = Server(store.path).start()
    seen, before, answers = [], None, []
    try:
        with server.client() as client:
            while len(answers) < 10:
                answers.append(client.get("/jobs", params={"limit": 1, **({"before": before} if before else {})}))
                if answers[-1].status_code != 200:
                    break
                seen += [job["id"] for job in answers[-1].json()["jobs"]]
                if (before := answers[-1].json()["next_before"]) is None:
                    break
    finally:
        server.stop()
    assert all(answer.status_code == 200 for answer in answers), answers[-1].text
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids), seen


def test_a_job_whose_stored_state_is_unknown_reads_as_failed_and_is_never_run(tmp_path: Path) -> None:
    """Before: a state of ``bogus`` made every /jobs page that held it, and /jobs/{id}, a 500 (JobRead's state
    allows only the six).  Now it reads as failed with ``unreadable: ["state"]``; a resume is a 409 that says why
    and changes nothing, and the job can be deleted."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    sound, bogus = (store.create_job({"kind": "search", "supernet": {"name": SUPERNET}}) for _ in range(2))
    store.update_job(sound, state="succeeded", result={"fronts": {}})
    store.update_job(bogus, state="interrupted", error="the service stopped")
    _damage(store.path, "UPDATE jobs SET state = 'bogus' WHERE job_id = ?", bogus)

    server = Server(store.path).start()
    try:
        with server.client() as client:
            page = client.get("/jobs")
            one = client.get(f"/jobs/{bogus}")
            resumed = client.post(f"/jobs/{bogus}/resume")
            stored_after_resume = store.get_job(bogus)
            deleted = client.delete(f"/jobs/{bogus}")
            gone = client.get(f"/jobs/{bogus}")
    finally:
        server.stop()
    assert page.status_code == 200, page.text
    listed = {job["id"]: job for job in page.json()["jobs"]}
    assert (listed[bogus]["state"], listed[bogus]["unreadable"]) == ("failed", ["state"]), listed[bogus]
    assert (listed[sound]["state"], listed[sound]["unreadable"]) == ("succeeded", []), listed[sound]
    assert one.status_code == 200 and one.json()["state"] == "failed", one.text
    assert resumed.status_code == 409 and "stored state cannot be read" in resumed.json()["detail"], resumed.text
    assert (stored_after_resume.state, stored_after_resume.unreadable) == ("failed", ("state",)), \
        "the resume moved a job whose state could not be read"
    assert deleted.status_code == 204 and gone.status_code == 404, (deleted.text, gone.text)


def test_report_of_a_succeeded_job_with_a_damaged_result_says_so_in_one_line(tmp_path: Path) -> None:
    """Before: a result that was not JSON read "job ... is succeeded; a report needs a succeeded search job", and
    fronts that were a list, or a front that was a number, ended in a traceback (the API answers them with 409)."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    damaged = {"{broken": "stored result cannot be read", '{"fronts": [1, 2]}': "holds no fronts by device",
               '{"fronts": {"cpu": 5}}': "stored front of device 'cpu' is not a readable Pareto front"}
    jobs = {}
    for text in damaged:
        jobs[text] = store.create_job({"kind": "search"})
        store.update_job(jobs[text], state="succeeded", result={"fronts": {}})
        _damage(store.path, "UPDATE jobs SET result = ? WHERE job_id = ?", text, jobs[text])
    for text, said in damaged.items():
        result = run_cli("report", jobs[text], "--store", str(store.path), "--out", str(tmp_path / "r"),
                         cwd=tmp_path)
        line = assert_one_line_error(result, 2, jobs[text], said, "(JOB)")
        assert "is succeeded" not in line, line


def _profiled(tmp_path: Path) -> tuple[tuple[str, ...], Path, str, str]:
    """``hwsearch profile`` of three subnets into a new store: the command, the store, the device key, the network."""
    profile = tmp_path / "fast.json"
    profile.write_text(json.dumps(fast_device("cpu-1t")))
    store_path = tmp_path / "s.db"
    command = ("profile", "--supernet", SUPERNET, "--device", str(profile), "--n", "3", "--seed", "5",
               "--store", str(store_path), "--json")
    first = run_cli(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    [(device_key, network_id)] = {(row[0], row[1]) for row in _latency_rows(store_path)}
    return command, store_path, device_key, network_id


#: Damage a reader of a row's norm could not survive: each ended a job (and ``hwsearch report``) in a traceback.
ROW_DAMAGE = {
    "fingerprint-a-list": lambda row: row | {"env": row["env"] | {"host_fingerprint": ["a", "b"]}},
    "ratio-a-list": lambda row: row | {"ratio": ["x"]},
    "anchor-shas-a-number": lambda row: row | {"anchor_keys": ["k"], "anchor_ratios": [1.0], "anchor_shas": 5,
                                               "session_id": "s"},
}


def _damage_one_row(store_path: Path, device_key: str, network_id: str, damage: str) -> str:
    rows = SQLiteStore(store_path).get_latencies(device_key, network_id)
    key = sorted(rows)[0]
    _damage(store_path, "UPDATE latencies SET data = ? WHERE arch_key = ?", json.dumps(ROW_DAMAGE[damage](rows[key])),
            key)
    return key


@pytest.mark.parametrize("damage", ROW_DAMAGE)
def test_a_damaged_latency_row_is_measured_again_not_read(tmp_path: Path, damage: str) -> None:
    """A job read a hand-damaged row as measured, and the first reader of its norm failed with a traceback
    (``TypeError: unhashable type: 'list'``); it is now left out, so the next run measures the subnet again."""
    command, store_path, device_key, network_id = _profiled(tmp_path)
    key = _damage_one_row(store_path, device_key, network_id, damage)

    second = run_cli(*command, cwd=tmp_path)

    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["measured"] == 1, second.stdout
    again = SQLiteStore(store_path).get_latencies(device_key, network_id)[key]
    assert isinstance(again["env"]["host_fingerprint"], str) and isinstance(again["ratio"], float), again
    assert f"latency row {key}" in second.stderr and "measured again" in second.stderr
    assert second.stderr.count(f"latency row {key}") == 1, "said again at every read of the device's rows"


def test_a_report_leaves_a_damaged_latency_row_out_and_a_damaged_result_is_no_missing_job(tmp_path: Path) -> None:
    """``hwsearch report`` read every stored row of a job's devices: one damaged row ended it in a traceback.  And a
    result lacking a field it reads said "no job ... in STORE" of a job that was there."""
    _, store_path, device_key, network_id = _profiled(tmp_path)
    key = _damage_one_row(store_path, device_key, network_id, "fingerprint-a-list")
    store = SQLiteStore(store_path)
    result = {"fronts": {"cpu-1t": _front_json() | {"device": "cpu-1t"}}, "devices": {"cpu-1t": {"hash": device_key}},
              "space_name": network_id, "dataset_id": "digits", "supernet_id": SUPERNET}
    jobs = []
    for stored in (result, {key: value for key, value in result.items() if key != "devices"}):
        jobs.append(store.create_job({"kind": "search"}))
        store.update_job(jobs[-1], state="succeeded", result=stored)

    whole = run_cli("report", jobs[0], "--store", str(store_path), "--out", str(tmp_path / "r0"), cwd=tmp_path)
    lacking = run_cli("report", jobs[1], "--store", str(store_path), "--out", str(tmp_path / "r1"), cwd=tmp_path)

    assert whole.returncode == 0, whole.stderr[-2000:]
    assert f"latency row {key}" in whole.stderr and (tmp_path / "r0" / "report.html").is_file()
    line = assert_one_line_error(lacking, 2, jobs[1], "stored result cannot be read", "(JOB)")
    assert "no job" not in line, line


def _latency_rows(path: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT device_hash, space_name, arch_key FROM latencies").fetchall()


def test_a_result_or_front_holding_no_latency_or_no_ci_is_shown_with_nulls_not_called_damaged(tmp_path: Path) -> None:
    """A profile measured in an unsettled state has a NaN latency and an infinite CI, and a front's point may have
    no CI: sound records, yet the damaged-row checks showed such a result as null (``unreadable``) and answered
    such a front with a 409."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    profile = store.create_job({"kind": "profile"})
    store.update_job(profile, state="succeeded", result={"measurement": {
        "median_ms": 1.5, "latency_ms": math.nan, "ratio_ci": math.inf, "stable": False}})
    front = _front_json() | {"device": "cpu-1t"}
    front["points"][0]["latency_conditions"] = {"stable": False, "ratio_ci": math.inf}
    search = store.create_job({"kind": "search"})
    store.update_job(search, state="succeeded", result={"fronts": {"cpu-1t": front}})
    server = Server(store.path).start()
    try:
        with server.client() as client:
            shown = client.get(f"/jobs/{profile}").json()
            fronts = client.get(f"/jobs/{search}/fronts")
    finally:
        server.stop()
    assert shown["unreadable"] == [] and shown["result"]["measurement"] == {
        "median_ms": 1.5, "latency_ms": None, "ratio_ci": None, "stable": False}, shown
    assert fronts.status_code == 200, fronts.text
    assert fronts.json()["fronts"]["cpu-1t"]["points"][0]["latency_conditions"]["ratio_ci"] is None
