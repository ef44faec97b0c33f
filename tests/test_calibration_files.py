"""The device's ruler and the host's kept records, against damaged files and busy hosts.

A reviewer wrote hostile calibration files by hand: each failed every later
session with a traceback after it had measured, or let a ruler of -5, NaN or
1e300 scale latencies that were reported stable; a ruler taken beside busy
loops sat 27.5% above the quiet reference for good.  Real sessions run here
(the CLI in a fresh interpreter); files are written as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devices.calibration import (Ruler, calibration, device_reference_ms, read_kept_file, reset_calibration,
                                 update_kept_file)
from devices.profile import DeviceProfile

QUICK = {"name": "cal-test", "clock": "thread_cpu", "warmup": {"runs": 2, "seconds": 0.0},
         "protocol": {"min_rounds": 5, "max_rounds": 10, "max_seconds": 5.0, "ci_target": 0.5}}
UNREADABLE = ['{"hosts": {"h": {"reference_ms": 2.0', "[]", '{"hosts": []}', b"\xff\xfe not utf-8",
              # JSON Python's reader refuses with other errors: a traceback in every later session (Y18)
              "[" * 100_000 + "]" * 100_000, '{"hosts": {"h": {"reference_ms": ' + "1" * 5000 + "}}}"]


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content", UNREADABLE, ids=lambda content: repr(content)[:40])
def test_an_unreadable_calibration_file_is_set_aside_and_the_device_starts_afresh(
        calibration_dir: Path, content: str | bytes) -> None:
    profile = DeviceProfile.from_dict(QUICK)
    path = _write(calibration_dir, f"{profile.hash()}.json", content)
    assert calibration(profile.hash(), "h") == {"recent": []}  # a reader changes nothing
    assert path.exists()
    assert device_reference_ms(profile, profile.hash(), "h", 2.5) == Ruler(2.5, "this-session", 2.5)
    kept = content if isinstance(content, bytes) else content.encode()
    aside = path.with_name(path.name + ".unreadable")
    if content == '{"hosts": []}':  # a JSON object: read, its hosts taken as none
        assert not aside.exists()
    else:
        assert aside.read_bytes() == kept
    assert json.loads(path.read_text())["hosts"]["h"]["reference_ms"] == 2.5


@pytest.mark.parametrize("ruler", [0, -5, float("nan"), 1e300, "fast", None])
def test_a_kept_ruler_that_is_no_plausible_time_is_ignored(calibration_dir: Path, ruler: object) -> None:
    """0 divided by zero and "fast" raised after the session; -5, NaN and 1e300 made latencies reported stable."""
    profile = DeviceProfile.from_dict(QUICK)
    _write(calibration_dir, f"{profile.hash()}.json", json.dumps(
        {"hosts": {"h": {"reference_ms": ruler, "created": 1.0,
                         "recent": [{"at": 1.0, "session_ms": -1}, {"at": 2.0, "session_ms": 3.0}]}}}))
    # The negative session is dropped: it had made every later session look fast (the slowdown check off).
    assert device_reference_ms(profile, profile.hash(), "h", 2.5) == Ruler(2.5, "this-session", 2.5)
    assert [r["session_ms"] for r in calibration(profile.hash(), "h")["recent"]] == [3.0, 2.5]


def test_a_busy_sessions_ruler_is_provisional_and_the_first_quiet_session_replaces_it(calibration_dir: Path) -> None:
    profile = DeviceProfile.from_dict(QUICK)
    device = profile.hash()
    assert device_reference_ms(profile, device, "h", 3.0, quiet=False) == Ruler(3.0, "this-session", 3.0)
    assert calibration(device, "h")["provisional"] is True
    assert device_reference_ms(profile, device, "h", 3.2, quiet=False) == Ruler(3.0, "stored", 3.0)
    assert device_reference_ms(profile, device, "h", 2.0) == Ruler(2.0, "this-session", 2.0)
    assert device_reference_ms(profile, device, "h", 2.1) == Ruler(2.0, "stored", 2.0)
    assert device_reference_ms(profile, device, "h", 1.5, quiet=False) == Ruler(2.0, "stored", 1.5)
    kept = calibration(device, "h")
    assert kept["provisional"] is False and kept["origin"] == "first quiet session"


def test_a_calibration_replaces_the_ruler_in_the_sessions_own_write_and_only_on_a_quiet_host(
        calibration_dir: Path) -> None:
    """It reset, then waited for the host: whichever session ended next, often another job's, set the ruler."""
    profile = DeviceProfile.from_dict(QUICK)
    device = profile.hash()
    device_reference_ms(profile, device, "h", 2.0)
    assert device_reference_ms(profile, device, "h", 2.4, replace=True, quiet=False) == Ruler(2.0, "stored", 2.0)
    assert device_reference_ms(profile, device, "h", 2.2, replace=True) == Ruler(2.2, "this-session", 2.0)
    assert calibration(device, "h")["origin"] == "calibration"
    assert reset_calibration(device, "h")
    assert [r["session_ms"] for r in calibration(device, "h")["recent"]] == [2.0, 2.4, 2.2]  # the host's record stays
    assert "reference_ms" not in calibration(device, "h")


@pytest.mark.parametrize("content", [c for c in UNREADABLE if c != '{"hosts": []}'], ids=lambda c: repr(c)[:40])
def test_an_unreadable_kept_file_reads_as_empty_and_is_set_aside_by_the_next_update(
        calibration_dir: Path, content: str | bytes) -> None:
    """A truncated kept anchor record of any device made every reader of rows raise."""
    path = _write(calibration_dir / "kept", "anchor-x.json", content)
    assert read_kept_file("anchor-x.json") == {}
    assert update_kept_file("anchor-x.json", lambda data: data.update(sessions={})) == {"sessions": {}}
    assert path.with_name("anchor-x.json.unreadable").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "link"])
def test_a_fifo_folder_or_link_in_place_of_a_calibration_file_is_set_aside_not_a_hang(
        calibration_dir: Path, kind: str) -> None:
    """A FIFO hung the session's ruler read; refused instead, each failed every session after it had measured."""
    profile = DeviceProfile.from_dict(QUICK)
    calibration_dir.mkdir()
    path = calibration_dir / f"{profile.hash()}.json"
    target = calibration_dir / "elsewhere.json"
    target.write_text('{"hosts": {"h": {"reference_ms": 9.0, "created": 1.0}}}')
    {"fifo": lambda: os.mkfifo(path), "folder": path.mkdir, "link": lambda: path.symlink_to(target)}[kind]()
    assert calibration(profile.hash(), "h") == {"recent": []}  # a reader neither blocks nor follows
    assert device_reference_ms(profile, profile.hash(), "h", 2.5) == Ruler(2.5, "this-session", 2.5)
    assert path.is_file() and not path.is_symlink()
    assert path.with_name(path.name + ".unreadable").exists()
    assert json.loads(target.read_text())["hosts"]["h"]["reference_ms"] == 9.0  # a link's target is untouched


def _cli(*args: str, calibration_folder: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEVICES_CALIBRATION_DIR": str(calibration_folder)}
    return subprocess.run([sys.executable, "-m", "hwsearch.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_measure_reset_and_show_work_on_a_truncated_calibration_file(tmp_path: Path) -> None:
    """Each failed with a JSONDecodeError traceback, measure after measuring; reset and show could not repair it."""
    from devices.reference import mobilenet_like_onnx

    profile = tmp_path / "device.json"
    profile.write_text(json.dumps(QUICK))
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((8, 8, 3, 1),), seed=1, input_shape=(1, 3, 16, 16)))
    folder = tmp_path / "calibration"
    device = DeviceProfile.from_dict(QUICK)
    for command in (["devices", "reset", str(profile)], ["devices", "show", str(profile), "--plain-runs", "5"],
                    ["measure", "--device", str(profile), str(model), "--json"]):
        path = _write(folder, f"{device.hash()}.json", '{"hosts": {')
        result = _cli(*command, calibration_folder=folder, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        if command[0] != "devices" or command[1] == "reset":  # writers set it aside; show only reads
            assert path.with_name(path.name + ".unreadable").exists()
        if command[0] == "measure":  # and the session kept its ruler in a new file
            assert json.loads(path.read_text())["hosts"]


def test_rows_read_after_a_ruler_reset_share_the_latest_ruler(calibration_dir: Path, tmp_path: Path) -> None:
    """Rows measured before a reset kept the old ruler and rows after it the new: two scales in one store.

    Two real sessions with a reset between them (the second sets a new ruler from its own reference);
    read now, the first session's rows are scaled to the second's ruler from their measured ratios.
    """
    from devices.local import LocalProfiler, host_fingerprint, runtime_version
    from devices.reference import mobilenet_like_onnx
    from hwsearch.anchor import in_current_norm

    models = []
    for seed in (1, 2):
        models.append(tmp_path / f"m{seed}.onnx")
        models[-1].write_bytes(mobilenet_like_onnx(((32, 16, 3, 2),), seed=seed, input_shape=(1, 3, 32, 32)))
    profile = DeviceProfile.from_dict(QUICK)
    [before] = LocalProfiler(profile).measure_many(models[:1])
    host = profile.measured_host(host_fingerprint(), runtime_version(profile.runtime))
    assert reset_calibration(before.device_hash, host)
    [after] = LocalProfiler(profile).measure_many(models[1:])
    old, new = before.env["reference_ms"], after.env["reference_ms"]
    assert old != new and after.env["reference_source"] == "this-session"

    rows = in_current_norm({"a": before.to_dict(), "b": after.to_dict()}, before.device_hash, "network")
    assert rows["a"]["latency_ms"] == pytest.approx(before.ratio * new, rel=1e-12)
    assert rows["a"]["env"]["reference_ms"] == new and rows["a"]["env"]["measured_reference_ms"] == old
    assert rows["b"] == after.to_dict()  # already on the latest ruler
    assert before.latency_ms == pytest.approx(before.ratio * old, rel=1e-12)  # the stored row is not changed


@pytest.mark.parametrize("bad_end", ["late", float("nan"), None])
def test_a_row_whose_session_end_is_no_number_sets_no_ruler_and_breaks_no_reader(bad_end: object) -> None:
    """A string session_end raised ValueError in every reader; a NaN one first pinned an old ruler."""
    from hwsearch.anchor.norm import on_latest_ruler

    def row(ruler: float, ended: object) -> dict:
        return {"latency_ms": 2.0 * ruler, "ratio": 2.0, "env": {"reference_ms": ruler, "session_end": ended}}

    rows = on_latest_ruler({"odd": row(5.0, bad_end), "old": row(10.0, 1.7e9), "new": row(20.0, 1.8e9)})
    assert [rows[k]["latency_ms"] for k in ("odd", "old", "new")] == [40.0, 40.0, 40.0]
