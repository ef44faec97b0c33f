"""One measurement at a time per host: real processes, real onnxruntime sessions, one flock.

Every test gets its own lock directory (``DEVICES_LOCK_DIR``) and calibration
folder, so it neither waits for nor disturbs measurements other people run
on this machine.  Worker processes are started with :mod:`subprocess` and
report through files: measurements and progress events as JSON lines, and
marker files saying when they hold the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices.calibration import RECENT_SESSIONS, Ruler, device_reference_ms
from devices.hostlock import Hold, HostLock, HostLockError
from devices.local import LocalProfiler, host_fingerprint, runtime_version
from devices.ort import ModelInputError
from devices.profile import DeviceProfile
from devices.reference import mobilenet_like_onnx

TINY_BLOCKS = ((32, 16, 3, 2), (48, 24, 5, 1))
QUICK = {"name": "host-test", "warmup": {"runs": 2, "seconds": 0.0},
         "protocol": {"min_rounds": 6, "max_rounds": 12, "max_seconds": 5.0, "ci_target": 0.5}}
# A session that never converges: it holds the host until it is killed (or 60 s pass).
ENDLESS = {"name": "host-test", "warmup": {"runs": 1, "seconds": 0.0},
           "protocol": {"min_rounds": 6, "max_rounds": 100_000, "max_seconds": 60.0, "ci_target": 1e-9}}
DEADLINE_S = 60.0

WORKER = r'''
import json, sys, time
from pathlib import Path

task = json.loads(sys.argv[1])
out = Path(task["out"])

def log(record):
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")

def wait_for(path):
    while not Path(path).exists():
        time.sleep(0.01)

if task["kind"] == "measure":
    from devices.local import LocalProfiler
    from devices.profile import DeviceProfile

    profiler = LocalProfiler(DeviceProfile.from_dict(task["profile"]))
    rows = profiler.measure_many([Path(p) for p in task["models"]],
                                 progress=lambda event: log({"progress": event}))
    log({"rows": [m.to_dict() for m in rows]})
else:
    from devices.hostlock import HostLock

    lock = HostLock()
    with (lock.shared() if task["kind"] == "shared" else lock.exclusive()) as hold:
        log({"holding": True, "started_at": hold.started_at})
        wait_for(task["release"])
    log({"released": True, "ended_at": hold.ended_at})
'''


@pytest.fixture(autouse=True)
def private_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own lock directory and calibrations (inherited by its worker processes)."""
    monkeypatch.setenv("DEVICES_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("DEVICES_CALIBRATION_DIR", str(tmp_path / "calibration"))
    return tmp_path / "locks"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny MobileNet-like graphs (32 px), a fraction of a millisecond each."""
    folder = tmp_path_factory.mktemp("tiny-models")
    paths = []
    for seed in (1, 2):
        path = folder / f"tiny{seed}.onnx"
        path.write_bytes(mobilenet_like_onnx(TINY_BLOCKS, seed=seed, input_shape=(1, 3, 32, 32)))
        paths.append(path)
    return paths


class Worker:
    """A worker process and the JSON lines it writes."""

    def __init__(self, tmp_path: Path, name: str, task: dict[str, Any], **popen: Any) -> None:
        self.out = tmp_path / f"{name}.jsonl"
        self.release_file = tmp_path / f"{name}.release"
        task = {**task, "out": str(self.out), "release": str(self.release_file)}
        self.process = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(task)], **popen)

    def records(self) -> list[dict[str, Any]]:
        """The lines written whole so far: a reader may see part of a long line (a ``rows`` record) mid-write."""
        text = self.out.read_text() if self.out.exists() else ""
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]

    def first(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if key in r), None)

    def wait_for(self, condition: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            assert self.process.poll() is None, f"worker exited with {self.process.returncode} before {what}"
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def finish(self) -> list[dict[str, Any]]:
        assert self.process.wait(timeout=DEADLINE_S) == 0
        return self.records()

    def release(self) -> None:
        self.release_file.touch()

    def waiting_events(self) -> list[dict[str, Any]]:
        return [r["progress"] for r in self.records() if r.get("progress", {}).get("event") == "waiting"]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str, dict[str, Any]], Worker]]:
    """Start workers; whatever is still running at the end is killed."""
    started: list[Worker] = []

    def start(name: str, task: dict[str, Any], **popen: Any) -> Worker:
        started.append(Worker(tmp_path, name, task, **popen))
        return started[-1]

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def measure_task(models: list[Path], profile: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "measure", "models": [str(p) for p in models], "profile": profile}


def blocked(mode: str) -> bool:
    """Whether a new ``mode`` hold would have to wait right now (it is taken and released if not)."""

    class Blocked(Exception):
        pass

    def refuse(event: dict[str, Any]) -> None:
        raise Blocked(event["message"])

    lock = HostLock()
    try:
        with (lock.shared if mode == "shared" else lock.exclusive)(on_wait=refuse):
            return False
    except Blocked:
        return True


def session_of(rows: list[dict[str, Any]]) -> tuple[float, float]:
    env = rows[0]["env"]
    assert all(r["env"]["session_start"] == env["session_start"] for r in rows)
    return env["session_start"], env["session_end"]


# --------------------------------------------------------------------------- sessions take turns


def test_concurrent_measurers_take_turns_in_arrival_order_and_report_waiting(models: list[Path], workers) -> None:
    holder = workers("holder", {"kind": "exclusive"})
    holder.wait_for(lambda: holder.first("holding"), "the first session to start")
    measurers = [workers(f"m{i}", measure_task(models, QUICK)) for i in range(3)]
    holder.wait_for(lambda: HostLock().status()["sessions_waiting"] == 3, "three sessions to queue")
    holder.release()
    ended = holder.finish()[-1]["ended_at"]
    runs = [(w.waiting_events(), w.finish()[-1]["rows"]) for w in measurers]

    # Each one's first report says where it joined the queue; they run in that order, one at a time.
    runs.sort(key=lambda run: run[0][0]["sessions_ahead"])
    assert [events[0]["sessions_ahead"] for events, _ in runs] == [1, 2, 3]
    assert all(e["message"].startswith("waiting for local host: ") for events, _ in runs for e in events)
    sessions = [session_of(rows) for _, rows in runs]
    assert all(start < end for start, end in sessions)
    assert ended <= sessions[0][0] and all(a[1] <= b[0] for a, b in zip(sessions, sessions[1:])), sessions
    # Every row records its wait.  The waits need not grow down the queue: each counts from the moment
    # its process joined it, and a later process can join as late as an earlier one's session lasts
    # (seen: 0.201 s and 0.201 s for the first two in line).
    waits = [rows[0]["env"]["lock_wait_s"] for _, rows in runs]
    assert all(wait > 0 for wait in waits)


def test_rows_record_host_batch_input_shape_and_session(tmp_path: Path, models: list[Path]) -> None:
    events: list[dict[str, Any]] = []
    before = time.time()
    rows = LocalProfiler(DeviceProfile.from_dict(QUICK)).measure_many(models, progress=events.append)
    after = time.time()
    for row in rows:
        env = row.env
        assert env["host_fingerprint"] == host_fingerprint() and len(env["host_fingerprint"]) == 16
        assert env["batch"] == 1 and env["input_shape"] == {"input": [1, 3, 32, 32]}
        assert env["runtime"] == "onnxruntime" and env["runtime_version"] == env["onnxruntime"]
        assert env["providers"] == ["CPUExecutionProvider"] and env["intra_op_threads"] == 1
        assert before <= env["session_start"] < env["session_end"] <= after
        assert 0 <= env["lock_wait_s"] < 1.0
    assert not [e for e in events if e.get("event") == "waiting"]  # nobody else held this host

    batched = tmp_path / "batch2.onnx"
    batched.write_bytes(mobilenet_like_onnx(TINY_BLOCKS, seed=3, input_shape=(2, 3, 32, 32)))
    profile = DeviceProfile.from_dict({**QUICK, "batch": 2})
    [row] = LocalProfiler(profile).measure_many([batched])
    assert row.env["batch"] == 2 and row.env["input_shape"] == {"input": [2, 3, 32, 32]}
    with pytest.raises(ModelInputError, match="batch 1 .* profile's batch is 2"):
        LocalProfiler(profile).measure_many(models[:1])


# --------------------------------------------------------------------------- dead processes


def test_a_holder_killed_with_sigkill_does_not_block_the_next_session(models: list[Path], workers) -> None:
    victim = workers("victim", measure_task(models, ENDLESS))
    victim.wait_for(lambda: any("round" in r.get("progress", {}) for r in victim.records()), "the victim to measure")
    assert blocked("exclusive") and blocked("shared")

    os.kill(victim.process.pid, signal.SIGKILL)
    assert victim.process.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    events: list[dict[str, Any]] = []
    rows = LocalProfiler(DeviceProfile.from_dict(QUICK)).measure_many(models, progress=events.append)
    assert rows[0].env["lock_wait_s"] < 1.0
    assert not [e for e in events if e.get("event") == "waiting"]


def test_a_waiter_killed_with_sigkill_leaves_no_ticket_that_blocks_compute(models: list[Path], workers) -> None:
    compute = workers("compute", {"kind": "shared"})
    compute.wait_for(lambda: compute.first("holding"), "the compute unit to start")
    waiter = workers("waiter", measure_task(models, QUICK))
    waiter.wait_for(waiter.waiting_events, "the session to queue behind the compute unit")
    assert blocked("shared")  # the queued session keeps new compute out

    os.kill(waiter.process.pid, signal.SIGKILL)
    waiter.process.wait(timeout=DEADLINE_S)
    assert not blocked("shared")  # its ticket died with it
    assert blocked("exclusive")  # the compute unit still runs
    compute.release()
    compute.finish()
    assert not blocked("exclusive")


# --------------------------------------------------------------------------- compute and sessions


def test_compute_blocks_a_session_until_it_ends(models: list[Path], workers) -> None:
    compute = workers("compute", {"kind": "shared"})
    compute.wait_for(lambda: compute.first("holding"), "the compute unit to start")
    session = workers("session", measure_task(models, QUICK))
    [first_wait] = session.wait_for(lambda: session.waiting_events()[:1], "the session to wait")
    assert first_wait["compute_running"] == 1 and first_wait["sessions_ahead"] == 0
    session.wait_for(lambda: len(session.waiting_events()) >= 2, "the session to say again that it waits")
    time.sleep(1.5)  # the session keeps waiting while compute runs
    assert not session.first("rows")

    compute.release()
    ended = compute.finish()[-1]["ended_at"]
    rows = session.finish()[-1]["rows"]
    start, _ = session_of(rows)
    assert start >= ended
    assert rows[0]["env"]["lock_wait_s"] >= 1.5


def test_a_session_waits_for_compute_whose_lock_file_a_cleaner_removed(private_host: Path, models: list[Path],
                                                                      workers) -> None:
    """``host.lock`` is never written, so a ``/tmp`` cleaner's age rule can remove it while a compute unit holds
    its flock; the next session flocked a file made anew at once and ran beside the compute, its rows stable
    (Y18).  The compute unit's ticket still says it holds the host."""
    compute = workers("compute", {"kind": "shared"})
    compute.wait_for(lambda: compute.first("holding"), "the compute unit to start")
    (private_host / "host.lock").unlink()
    session = workers("session", measure_task(models, QUICK))
    [first_wait] = session.wait_for(lambda: session.waiting_events()[:1], "the session to wait")
    assert first_wait["compute_running"] == 1
    time.sleep(1.0)
    assert not session.first("rows")
    compute.release()
    ended = compute.finish()[-1]["ended_at"]
    start, _ = session_of(session.finish()[-1]["rows"])
    assert start >= ended


def test_a_waiting_session_keeps_new_compute_out(models: list[Path], workers) -> None:
    running = workers("running", {"kind": "shared"})
    running.wait_for(lambda: running.first("holding"), "the first compute unit to start")
    assert not blocked("shared")  # compute alone runs alongside compute
    session = workers("session", measure_task(models, QUICK))
    session.wait_for(session.waiting_events, "the session to queue")

    late: dict[str, Hold] = {}
    late_events: list[dict[str, Any]] = []

    def late_compute() -> None:
        with HostLock().shared(on_wait=late_events.append) as hold:
            late["hold"] = hold

    thread = threading.Thread(target=late_compute)
    thread.start()
    session.wait_for(lambda: late_events, "the late compute unit to wait")
    assert late_events[0]["mode"] == "shared" and late_events[0]["sessions_ahead"] == 1
    running.release()
    rows = session.finish()[-1]["rows"]
    thread.join(timeout=DEADLINE_S)
    _, session_end = session_of(rows)
    assert late["hold"].started_at >= session_end


def test_a_session_inside_a_hold_of_the_same_thread_is_refused() -> None:
    lock = HostLock()
    with lock.shared() as outer:
        with lock.shared() as inner:  # compute inside compute is covered by the outer hold
            assert inner.nested and not outer.nested
            assert HostLock().status()["compute_holding"] == 1
        assert inner.ended_at is not None and outer.ended_at is None
        with pytest.raises(HostLockError, match="would wait for itself"):
            with lock.exclusive():
                pass
    with lock.exclusive() as hold:
        assert not hold.nested and hold.waited_s < 1.0
    assert hold.ended_at is not None and hold.ended_at >= hold.started_at


def test_an_unsafe_lock_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(HostLockError, match="not a link"):
        with HostLock(tmp_path / "link").exclusive():
            pass
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(HostLockError, match="world-writable"):
        with HostLock(open_dir).shared():
            pass


def test_the_default_lock_folder_is_the_hosts_whatever_tmpdir_says(monkeypatch, tmp_path: Path) -> None:
    import tempfile

    from devices.hostlock import DEFAULT_LOCK_DIR, LOCK_DIR_ENV, lock_dir

    monkeypatch.delenv(LOCK_DIR_ENV)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches; make it read TMPDIR again
    assert tempfile.gettempdir() == str(tmp_path)
    assert lock_dir() == DEFAULT_LOCK_DIR == Path("/tmp/hwsearch-devices-locks")
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "chosen"))
    assert lock_dir() == tmp_path / "chosen"


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another user needs root")
def test_a_default_lock_folder_another_user_planted_is_refused(monkeypatch, tmp_path: Path) -> None:
    import devices.hostlock as hostlock

    planted = tmp_path / "hwsearch-devices-locks"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)  # nobody's, as if made first in the shared /tmp
    monkeypatch.setattr(hostlock, "DEFAULT_LOCK_DIR", planted)
    with pytest.raises(HostLockError, match=r"belongs to another user \(uid 65534\).*DEVICES_LOCK_DIR"):
        with HostLock(planted).exclusive():
            pass
    assert list(planted.iterdir()) == [], "nothing was written into the other user's folder"
    group = tmp_path / "group"  # the same ownership in a folder the operator chose is a shared one
    group.mkdir(mode=0o770)
    os.chown(group, 65534, 0)
    with HostLock(group).exclusive() as hold:
        assert not hold.nested


# --------------------------------------------------------------------------- a damaged, shared or deleted lock folder

# One hold in a fresh process, reporting what it saw: a hang there is a timeout, not a hung test run.  The
# module is loaded from its file alone, so that another user's Python without our packages can run it too.
HOLD_ONCE = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("hostlock", sys.argv[2])
sys.modules["hostlock"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
HostLock, HostLockError = module.HostLock, module.HostLockError

class Blocked(Exception):
    pass

def refuse(event):
    raise Blocked()

lock = HostLock()
try:
    with (lock.shared if sys.argv[1] == "shared" else lock.exclusive)(on_wait=refuse):
        result = {"held": True}
except Blocked:
    result = {"held": False}
except HostLockError as error:
    result = {"error": str(error)}
print(json.dumps({**result, "status": None if "error" in result else lock.status()}))
'''


def hold_once(mode: str, python: str = sys.executable, **popen: Any) -> tuple[dict[str, Any], str]:
    """One ``mode`` hold taken in a new process without waiting: what it saw, and what it logged."""
    import devices.hostlock

    done = subprocess.run([python, "-c", HOLD_ONCE, mode, devices.hostlock.__file__], capture_output=True, text=True,
                          timeout=30, **popen)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


@pytest.mark.parametrize("make", [os.mkfifo, Path.mkdir], ids=["fifo", "folder"])
def test_a_fifo_or_folder_named_like_a_ticket_is_skipped_and_left_alone(private_host: Path,
                                                                        make: Callable[[Path], Any]) -> None:
    """A FIFO once blocked every session and export forever in ``open``; a folder made the stale-ticket cleanup
    raise IsADirectoryError."""
    entry = private_host / "queue" / "000000000001-exclusive-waiting-1.ticket"
    entry.parent.mkdir(parents=True)
    make(entry)
    for mode in ("exclusive", "shared"):
        seen, logged = hold_once(mode)
        assert seen["held"] and seen["status"]["sessions_waiting"] == seen["status"]["sessions_holding"] == 0
        assert logged.count(f"ignoring {entry} in the queue") == 1, logged  # once per process, not per look
    assert entry.is_fifo() if make is os.mkfifo else entry.is_dir()  # skipped, never removed


@pytest.mark.parametrize("member, make", [
    ("tickets.counter", lambda path: path.mkdir()),
    ("tickets.counter", lambda path: path.symlink_to(path.parent.parent / "elsewhere")),
    ("tickets.counter", os.mkfifo),
    ("host.lock", os.mkfifo),
    ("queue", lambda path: path.write_text("")),
], ids=["counter-folder", "counter-link", "counter-fifo", "host-lock-fifo", "queue-file"])
def test_a_lock_folder_member_of_the_wrong_type_is_a_host_lock_error(private_host: Path, member: str,
                                                                     make: Callable[[Path], Any]) -> None:
    private_host.mkdir()
    (private_host.parent / "elsewhere").write_text("untouched")
    make(private_host / member)
    seen, _ = hold_once("exclusive")
    assert f"{private_host / member}" in seen["error"] and "DEVICES_LOCK_DIR" in seen["error"], seen
    assert (private_host.parent / "elsewhere").read_text() == "untouched"


def python_for(user: dict[str, Any]) -> str:
    """A Python that ``user`` may run (ours may sit in root's home)."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            subprocess.run([python, "-c", ""], check=True, capture_output=True, **user)
            return python
        except (OSError, subprocess.CalledProcessError):
            continue
    pytest.skip("no Python the other user may run")


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_users_tickets_count_in_a_group_folder_whatever_their_umask(monkeypatch, workers) -> None:
    nobody = 65534  # the other user, whose group (nogroup, also 65534) shares the folder
    top = Path(tempfile.mkdtemp(prefix="hostlock-group-", dir="/tmp"))  # pytest's own tmp is closed to others
    try:
        top.chmod(0o755)
        locks = top / "locks"
        for folder in (locks, locks / "queue"):
            folder.mkdir()
            os.chown(folder, 0, nobody)
            folder.chmod(0o2770)  # setgid: files made inside belong to the group
        monkeypatch.setenv("DEVICES_LOCK_DIR", str(locks))
        compute = workers("compute", {"kind": "shared"}, umask=0o077)
        compute.wait_for(lambda: compute.first("holding"), "the compute unit to start")
        session = workers("session", {"kind": "exclusive"}, umask=0o077)
        compute.wait_for(lambda: HostLock().status()["sessions_waiting"] == 1, "the session to queue")

        as_nobody = {"user": nobody, "group": nobody, "extra_groups": [], "cwd": "/tmp"}
        as_nobody["python"] = python_for(as_nobody)
        seen, _ = hold_once("shared", **as_nobody)
        assert seen.get("held") is False, seen  # the other user's waiting session keeps new compute out
        assert seen["status"] == {"sessions_holding": 0, "sessions_waiting": 1, "compute_holding": 1,
                                  "compute_waiting": 0}
        # A ticket it may not open (an older version made them under the umask) is alive, not dead.
        [ticket] = (locks / "queue").glob("*-exclusive-waiting-*.ticket")
        ticket.chmod(0o600)
        assert hold_once("shared", **as_nobody)[0]["held"] is False

        compute.release()
        session.wait_for(lambda: session.first("holding"), "the session to start")
        session.release()
        compute.finish(), session.finish()
        # One left by a process that died is not: counted alive, it would have held the host for ever.
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = locks / "queue" / f"{999_999:012d}-exclusive-waiting-{dead.pid}.ticket"
        stale.touch(mode=0o600)
        stale.chmod(0o600)
        assert hold_once("shared", **as_nobody)[0]["held"] is True
    finally:
        shutil.rmtree(top)


def test_a_session_whose_lock_folder_was_deleted_is_not_stable(private_host: Path, models: list[Path],
                                                               workers) -> None:
    intruder: list[Worker] = []

    def delete_the_folder_once(event: dict[str, Any]) -> None:
        if "round" in event and not intruder:
            shutil.rmtree(private_host)
            intruder.append(workers("intruder", {"kind": "exclusive"}))
            intruder[0].wait_for(lambda: intruder[0].first("holding"), "the next session to start")

    rows = LocalProfiler(DeviceProfile.from_dict(QUICK)).measure_many(models, progress=delete_the_folder_once)
    # The next session ran inside this one (the lock cannot prevent it); the rows say so and are not stable.
    assert intruder[0].first("holding")["started_at"] < rows[0].env["session_end"]
    assert all(row.env["lock_lost"] and "lock_lost" in row.env["unstable_reasons"] for row in rows)
    assert not any(row.stable for row in rows)
    intruder[0].release()
    intruder[0].finish()
    [row] = LocalProfiler(DeviceProfile.from_dict(QUICK)).measure_many(models[:1])
    assert not row.env["lock_lost"] and "lock_lost" not in row.env["unstable_reasons"]


def test_a_session_waiting_when_the_lock_folder_is_deleted_queues_again_and_is_not_stable(
        private_host: Path, models: list[Path], workers) -> None:
    holder = workers("holder", {"kind": "exclusive"})
    holder.wait_for(lambda: holder.first("holding"), "the first session to start")
    waiter = workers("waiter", measure_task(models, QUICK))
    holder.wait_for(lambda: HostLock().status()["sessions_waiting"] == 1, "the session to queue")
    shutil.rmtree(private_host)
    # It queued again in the folder made anew (it used to die on the missing queue)...
    rows = waiter.finish()[-1]["rows"]
    assert len(rows) == len(models)
    # ...and ran while the old holder still held the deleted folder, so its rows cannot be stable.
    assert not holder.first("released")
    assert all(row["env"]["lock_lost"] and "lock_lost" in row["env"]["unstable_reasons"] for row in rows)
    assert not any(row["stable"] for row in rows)
    holder.release()
    holder.finish()


# --------------------------------------------------------------------------- calibration per host


def test_calibration_is_kept_per_host_fingerprint(tmp_path: Path) -> None:
    profile = DeviceProfile.from_dict(QUICK)
    device = profile.hash()
    assert device_reference_ms(profile, device, "host-a", 2.0) == Ruler(2.0, "this-session", 2.0)
    assert device_reference_ms(profile, device, "host-a", 3.0) == Ruler(2.0, "stored", 2.0)
    assert device_reference_ms(profile, device, "host-b", 3.0) == Ruler(3.0, "this-session", 3.0)
    assert device_reference_ms(profile, device, "host-a", 1.5) == Ruler(2.0, "stored", 1.5)
    slow = device_reference_ms(profile, device, "host-a", 5.0)
    assert slow == Ruler(2.0, "stored", 1.5) and slow.slowdown(5.0) == pytest.approx(5.0 / 1.5 - 1)
    stored = json.loads((tmp_path / "calibration" / f"{device}.json").read_text())
    assert {h: r["reference_ms"] for h, r in stored["hosts"].items()} == {"host-a": 2.0, "host-b": 3.0}


def test_the_host_fastest_state_forgets_sessions_beyond_the_recent_ones(tmp_path: Path) -> None:
    """A fast session long ago no longer makes every session look slow: only the recent ones count."""
    profile = DeviceProfile.from_dict({**QUICK, "reference_ms": 2.0})
    device = profile.hash()
    assert device_reference_ms(profile, device, "host-a", 1.0) == Ruler(2.0, "profile", 1.0)
    for _ in range(RECENT_SESSIONS - 1):
        assert device_reference_ms(profile, device, "host-a", 1.8).host_fastest_ms == 1.0
    assert device_reference_ms(profile, device, "host-a", 1.9) == Ruler(2.0, "profile", 1.8)


def test_a_session_never_borrows_another_hosts_ruler(tmp_path: Path, models: list[Path]) -> None:
    # Load from other tests must not make the first session's ruler provisional: the host is not the point here.
    profile = DeviceProfile.from_dict({**QUICK, "protocol": {**QUICK["protocol"], "max_foreign_cores": 4.0}})
    path = tmp_path / "calibration" / f"{profile.hash()}.json"
    path.parent.mkdir()
    # A ruler taken elsewhere, and one from before calibrations named their host.
    path.write_text(json.dumps({"reference_ms": 99.0, "hosts": {"another-host": {"reference_ms": 77.0}}}))
    first = LocalProfiler(profile).measure_many(models[:1])[0]
    assert first.env["reference_source"] == "this-session"
    assert first.env["reference_ms"] == first.env["session_reference_ms"] not in (77.0, 99.0)
    second = LocalProfiler(profile).measure_many(models[:1])[0]
    assert second.env["reference_source"] == "stored" and second.env["reference_ms"] == first.env["reference_ms"]
    stored = json.loads(path.read_text())
    assert stored["reference_ms"] == 99.0 and stored["hosts"]["another-host"]["reference_ms"] == 77.0
    here = profile.measured_host(host_fingerprint(), runtime_version(profile.runtime))
    assert stored["hosts"][here]["reference_ms"] == first.env["reference_ms"]


def test_racing_first_sessions_agree_on_one_calibration(tmp_path: Path) -> None:
    code = ("import sys; from devices.calibration import device_reference_ms as d; "
            "from devices.profile import DeviceProfile as P; p = P.from_dict({'name': 'race'}); "
            "print(d(p, p.hash(), 'host-r', float(sys.argv[1])).reference_ms)")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(1.0 + i)], stdout=subprocess.PIPE, text=True)
              for i in range(4)]
    answers = {float(r.communicate(timeout=DEADLINE_S)[0]) for r in racers}
    assert len(answers) == 1 and answers <= {1.0, 2.0, 3.0, 4.0}
    assert [p.name for p in (tmp_path / "calibration").iterdir()] == [
        f"{DeviceProfile.from_dict({'name': 'race'}).hash()}.json"]


# --------------------------------------------------------------------------- the pipeline's compute


@pytest.fixture(scope="module")
def tiny_supernet() -> Any:
    """OFA MobileNetV3 narrowed to 32 px (random weights): exports in about a second."""
    pytest.importorskip("torch")
    from hwsearch.jobs import SupernetRef, build_supernet
    from tests._jobs import SUPERNET

    return build_supernet(SupernetRef(**SUPERNET))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_pipeline_exports_wait_for_a_session_and_use_the_profile_batch(
        tmp_path: Path, tiny_supernet: Any, workers) -> None:
    from devices import open_profiler
    from hwsearch.pipeline import profile_subnets
    from hwsearch.store import MemoryStore

    profile = DeviceProfile.from_dict({**QUICK, "batch": 2})
    archs = tiny_supernet.space.sample(0, 2)
    store, workdir = MemoryStore(), tmp_path / "work"
    workdir.mkdir()
    session = workers("session", {"kind": "exclusive"})
    session.wait_for(lambda: session.first("holding"), "the session to start")

    run = threading.Thread(target=profile_subnets, args=(tiny_supernet, archs, open_profiler(profile),
                                                          profile.hash(), store), kwargs={"workdir": workdir})
    run.start()
    wait_until(lambda: HostLock().status()["compute_waiting"] == 1, "the first export to queue")
    time.sleep(0.5)
    assert not list(workdir.rglob("*.onnx"))  # nothing exported while the session runs
    session.release()
    ended = session.finish()[-1]["ended_at"]
    run.join(timeout=DEADLINE_S)

    rows = store.get_latencies(profile.hash(), tiny_supernet.space.network_id)
    assert set(rows) == {a.key() for a in archs}
    for row in rows.values():
        assert row["env"]["batch"] == 2 and row["env"]["input_shape"] == {"input": [2, 3, 32, 32]}
        assert row["env"]["session_start"] >= ended


def test_pipeline_progress_says_when_its_session_waits_for_the_host(tiny_supernet: Any, workers) -> None:
    from devices import open_profiler
    from hwsearch.pipeline import profile_subnets
    from hwsearch.store import MemoryStore

    profile = DeviceProfile.from_dict(QUICK)
    archs = tiny_supernet.space.sample(2, 1)
    compute = workers("compute", {"kind": "shared"})
    compute.wait_for(lambda: compute.first("holding"), "the compute unit to start")
    events: list[dict[str, Any]] = []
    store = MemoryStore()
    run = threading.Thread(target=profile_subnets, args=(tiny_supernet, archs, open_profiler(profile),
                                                          profile.hash(), store), kwargs={"progress": events.append})
    run.start()  # its export runs beside the compute unit; its session has to wait for it
    wait_until(lambda: any(e["stage"] == "waiting" for e in events), "the session to report waiting")
    compute.release()
    ended = compute.finish()[-1]["ended_at"]
    run.join(timeout=DEADLINE_S)

    waiting = [e for e in events if e["stage"] == "waiting"]
    assert waiting[0]["done"] == 0 and waiting[0]["total"] == 1
    assert waiting[0]["message"].startswith("waiting for local host: 0 sessions ahead, 1 compute unit")
    assert events[-1] == {"done": 1, "total": 1, "stage": "measure"}
    [row] = store.get_latencies(profile.hash(), tiny_supernet.space.network_id).values()
    assert row["env"]["session_start"] >= ended


def test_accuracy_evaluation_waits_for_a_session(tmp_path: Path, tiny_supernet: Any, workers) -> None:
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.data import load_images
    from tests._jobs import random_dataset

    data = load_images(random_dataset(tmp_path / "data.npz", n=24), size=32)
    calibration, validation = data.split(8)
    arch = tiny_supernet.space.sample(1, 1)[0]
    session = workers("session", {"kind": "exclusive"})
    session.wait_for(lambda: session.first("holding"), "the session to start")

    finished: dict[str, float] = {}

    def evaluate() -> None:
        accuracy = subnet_accuracy(tiny_supernet, arch, calibration, validation, EvalSettings(batch_size=8))
        finished.update(accuracy=accuracy, at=time.time())

    thread = threading.Thread(target=evaluate)
    thread.start()
    wait_until(lambda: HostLock().status()["compute_waiting"] == 1, "the evaluation to queue")
    session.release()
    ended = session.finish()[-1]["ended_at"]
    thread.join(timeout=DEADLINE_S)
    assert finished["at"] >= ended and 0.0 <= finished["accuracy"] <= 1.0
    assert HostLock().status() == {"sessions_holding": 0, "sessions_waiting": 0,
                                   "compute_holding": 0, "compute_waiting": 0}


def _build(tmp_path: Path, supernet: Any) -> Any:
    from hwsearch.jobs import SupernetRef, build_supernet
    from tests._jobs import SUPERNET

    return build_supernet(SupernetRef(**SUPERNET))


def _open_data(tmp_path: Path, supernet: Any) -> Any:
    from hwsearch.evaldata import DataPlan
    from tests._jobs import random_dataset

    return DataPlan(str(random_dataset(tmp_path / "data.npz", n=24))).open(size=32)


def _export_recalibrated_on_blank_images(tmp_path: Path, supernet: Any) -> Any:
    """Blank images: the recalibration refuses its first batch, so the error says when the images were read."""
    from hwsearch.data import load_images
    from hwsearch.export import CalibrationDataError, export_subnet

    np.savez(tmp_path / "blank.npz", x=np.zeros((8, 32, 32, 3), np.uint8), y=np.zeros(8, np.int64))
    try:
        export_subnet(supernet, supernet.space.sample(3, 1)[0], tmp_path / "s.onnx",
                      bn_data=load_images(tmp_path / "blank.npz", size=32))
    except CalibrationDataError as error:
        return error
    raise AssertionError("blank calibration images were accepted")


@pytest.mark.parametrize("work", [_build, _open_data, _export_recalibrated_on_blank_images],
                         ids=["supernet build", "data opening", "export's batch-norm recalibration"])
def test_building_loading_and_recalibrating_wait_for_a_session(tmp_path: Path, tiny_supernet: Any, workers,
                                                               work: Callable[[Path, Any], Any]) -> None:
    """Each is seconds of CPU at real sizes (recalibrating 400 images at 224 px: 22.7 s) and ran during sessions."""
    session = workers("session", {"kind": "exclusive"})
    session.wait_for(lambda: session.first("holding"), "the session to start")
    finished: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: finished.update(result=work(tmp_path, tiny_supernet), at=time.time()))
    thread.start()
    wait_until(lambda: HostLock().status()["compute_waiting"] == 1 or not thread.is_alive(),
               "the work to queue for the host")
    assert thread.is_alive() and not finished, "it ran while the session held the host"
    session.release()
    ended = session.finish()[-1]["ended_at"]
    thread.join(timeout=DEADLINE_S)
    assert finished["result"] is not None and finished["at"] >= ended


def test_fitting_a_jobs_predictors_waits_for_a_session(tmp_path: Path, tiny_supernet: Any, workers) -> None:
    """A search job's first fits (XGBoost, cross-validated) ran outside the host lock, beside other jobs'
    sessions (Y18); every refinement round's fit already waited."""
    from hwsearch.evaldata import DataPlan
    from hwsearch.jobs import SupernetRef
    from hwsearch.jobs.context import JobContext, job_device
    from hwsearch.jobs.control import start_job
    from hwsearch.jobs.spec import JobSpec
    from hwsearch.jobs.stages import fit_predictors
    from hwsearch.pipeline import select_subnets
    from hwsearch.store import MemoryStore
    from tests._jobs import SUPERNET, fast_device, random_dataset

    store = MemoryStore()
    job_id = store.create_job({"kind": "search"})
    device = fast_device("cpu-1t")
    archs = select_subnets(tiny_supernet.space, 8, seed=3)
    job = JobContext(store=store, job_id=job_id, net=tiny_supernet, devices=[job_device(device, None)],
                     data=DataPlan(str(random_dataset(tmp_path / "data.npz", n=24))).open(size=32),
                     dataset_id="random", archs=archs)
    job.shared  # noqa: B018  (put in Ray's object store before the clock starts: not what is timed here)
    for arch in archs:  # rows as a session stores them, so no measurement is needed
        store.put_latency(job.devices[0].key, tiny_supernet.space.network_id, arch.key(),
                          {"latency_ms": 1.0 + tiny_supernet.count(arch).macs / 1e7, "stable": True})
    accuracies = {"fp32": {arch.key(): 0.5 + 0.01 * i for i, arch in enumerate(archs)}}
    spec = JobSpec(supernet=SupernetRef(**SUPERNET), devices=(device,))
    session = workers("session", {"kind": "exclusive"})
    session.wait_for(lambda: session.first("holding"), "the session to start")
    finished: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: finished.update(
        fitted=fit_predictors(start_job(store, job_id), job, spec, accuracies), at=time.time()))
    thread.start()
    wait_until(lambda: HostLock().status()["compute_waiting"] == 1 or not thread.is_alive(),
               "the fit to queue for the host")
    assert thread.is_alive() and not finished, "it fitted while the session held the host"
    session.release()
    ended = session.finish()[-1]["ended_at"]
    thread.join(timeout=DEADLINE_S)
    predictors, searches, quality = finished["fitted"]
    assert finished["at"] >= ended and set(predictors) == {"fp32"} and len(searches["fp32"]) == 1
    assert "fitting predictors: compute waiting for local host: 1 session running or queued" in [
        event["message"] for event in store.job_events(job_id)]


def test_the_measure_command_checks_its_models_only_between_sessions(models: list[Path], workers,
                                                                     tmp_path: Path) -> None:
    """``hwsearch measure`` built an onnxruntime session per model to check it (9.9 s of CPU for a large graph)
    while another process's session held the host (Y18)."""
    profile = tmp_path / "dev.json"
    profile.write_text(json.dumps(QUICK))
    session = workers("session", {"kind": "exclusive"})
    session.wait_for(lambda: session.first("holding"), "the session to start")
    command = subprocess.Popen([sys.executable, "-m", "hwsearch.cli.main", "measure", "--device", str(profile),
                                *map(str, models), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_until(lambda: HostLock().status()["compute_waiting"] == 1 or command.poll() is not None,
                   "the command's check to queue for the host")
        assert command.poll() is None
        session.release()
        ended = session.finish()[-1]["ended_at"]
        stdout, stderr = command.communicate(timeout=DEADLINE_S)
    finally:
        command.kill()
    assert command.returncode == 0, stderr
    assert "compute waiting for local host" in stderr
    start, _ = session_of(json.loads(stdout))
    assert start >= ended


FORK_DURING_A_HOLD = """
import os, sys, time
from devices.hostlock import HostLock
started_r, started_w = os.pipe()
with HostLock().shared():
    child = os.fork()
    if child == 0:  # a data loader's worker, say: it outlives the hold
        os.write(started_w, b"1")  # fork's handlers have run in this process by now
        time.sleep(30)
        os._exit(0)
    os.close(started_w)  # the child's copy alone: a child that died before writing ends the read
if os.read(started_r, 1) != b"1":
    sys.exit("the child ended before it wrote")
print(child, flush=True)  # the only line: the child's own print once landed inside this one
sys.stdin.read()  # the parent lives on, its hold over, until the test is done
os.kill(child, 9)
"""


def test_a_child_forked_during_a_hold_does_not_keep_the_host(private_host: Path) -> None:
    """A flock belongs to the open file, which a forked child's copy of the descriptor kept open: the host stayed
    locked while the child lived, with no ticket to say who held it (Y18)."""
    parent = subprocess.Popen([sys.executable, "-c", FORK_DURING_A_HOLD], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        child = int(parent.stdout.readline())  # the parent's hold over, the child running
        os.kill(child, 0)  # alive, holding its copies of the parent's descriptors until it exits
        assert HostLock().status() == {"sessions_holding": 0, "sessions_waiting": 0,
                                       "compute_holding": 0, "compute_waiting": 0}
        assert not blocked("exclusive")
    finally:
        parent.communicate("", timeout=DEADLINE_S)


LEAVING_CHILD = """
import os, sys
from devices.hostlock import HostLock
with HostLock().shared():
    child = os.fork()
    if child == 0:
        sys.exit(0)  # leaves the hold's block in the child, as an exception would
    os.waitpid(child, 0)
    print("the child is gone", flush=True)
    sys.stdin.read()  # the parent still holds its compute unit until the test is done
"""


def test_a_forked_child_leaving_the_hold_leaves_the_parents_ticket_and_descriptors(private_host: Path) -> None:
    """The child ran the hold's cleanup as its own: it unlinked the parent's ticket, so sessions no longer waited
    for the parent's compute, and closed descriptor numbers that may name its own files by then (Y19)."""
    parent = subprocess.Popen([sys.executable, "-c", LEAVING_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert parent.stdout.readline().strip() == "the child is gone"
        assert HostLock().status()["compute_holding"] == 1
        assert blocked("exclusive")
    finally:
        parent.communicate("", timeout=DEADLINE_S)
    assert parent.returncode == 0
