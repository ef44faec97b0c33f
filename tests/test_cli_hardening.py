"""Hostile or broken inputs to the CLI: one ``error:`` line, bounded reads, nothing stored lost.

Each case runs the real ``hwsearch`` command on a real file, as in
:mod:`tests.test_cli_errors`; the comment on each says what it did before.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices.reference import mobilenet_like_onnx
from hwsearch.archives import MIN_UNPACKED_BYTES
from tests.test_cli_errors import DEMO_CHECKPOINT, assert_one_line_error, run_cli

EXPORT = ("export", "--supernet", "demo_mbv3_mnist", "--out", "x.onnx")
FAST_PROFILE = ("name: fast\nclock: thread_cpu\nwarmup: {runs: 2, seconds: 0.0}\n"
                "protocol: {min_rounds: 5, max_rounds: 10, max_seconds: 5, ci_target: 0.5}\n")


def write_deflated_zeros(path: Path, member: str, size: int) -> Path:
    """A zip archive with one deflated member of ``size`` zero bytes: small on disk, ``size`` once read."""
    chunk = bytes(2**24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(member, "w", force_zip64=True) as out:
            for start in range(0, size, len(chunk)):
                out.write(chunk[:min(len(chunk), size - start)])
    return path


# --------------------------------------------------------------------------- unpacked sizes


def test_a_checkpoint_that_unpacks_past_the_bound_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """The audit's 2 MB bomb.pt was inflated to a 2 GiB tensor (2.37 GB RSS) before any check."""
    size = 4 * MIN_UNPACKED_BYTES  # 1 GiB of zeros: a few MB on disk, so its bound is 256 MiB
    bomb = write_deflated_zeros(tmp_path / "bomb.pt", "bomb/data/0", size)
    assert 16 * bomb.stat().st_size < MIN_UNPACKED_BYTES
    started = time.monotonic()
    result = run_cli(*EXPORT, "--checkpoint", str(bomb), cwd=tmp_path)
    assert_one_line_error(result, 2, "--checkpoint", str(bomb), f"unpacks to {size} bytes")
    assert time.monotonic() - started < 60


def test_a_large_checkpoint_stored_as_torch_saves_it_unpacks_to_its_own_size_and_is_read(tmp_path: Path) -> None:
    """The bound follows the file: a fixed 1 GiB cap would refuse real checkpoints an operator allows."""
    from hwsearch.archives import check_unpacked_size, default_bound

    stored = tmp_path / "stored.pt"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("w/data/0", bytes(300 * 2**20))  # 300 MiB, stored: past the 256 MiB floor
    assert default_bound(stored) > stored.stat().st_size > 300 * 2**20
    check_unpacked_size(stored)  # no error: it unpacks to its own size


def test_images_past_the_float_budget_are_refused_before_conversion(tmp_path: Path) -> None:
    """The audit's bomb.npz grew to 10.8 GB as float32 and ended in the allocator's traceback."""
    data = tmp_path / "many.npz"
    # Stored, not compressed: 411 MB on disk, so it unpacks within its bound and meets the float budget.
    np.savez(data, x=np.zeros((520_000, 28, 28, 1), np.uint8), y=np.zeros(520_000, np.int64))
    result = run_cli(*EXPORT, "--checkpoint", str(DEMO_CHECKPOINT), "--data", str(data), cwd=tmp_path)
    assert_one_line_error(result, 2, "--data", str(data), "as float32 tensors", "folder of images")


# --------------------------------------------------------------------------- the store


LATENCY_COLUMNS = ("device_hash TEXT NOT NULL, space_name TEXT NOT NULL, arch_key TEXT NOT NULL, "
                   "data TEXT NOT NULL, updated REAL NOT NULL")


def _our_tables(path: Path, *, columns: str = LATENCY_COLUMNS, user_version: int = 0) -> Path:
    """A store with a latencies table of ``columns`` (this hwsearch's by default) at ``user_version``."""
    with sqlite3.connect(path) as conn:
        conn.executescript(f"CREATE TABLE latencies ({columns}, PRIMARY KEY (device_hash, space_name, arch_key));"
                           f"PRAGMA user_version = {user_version};")
    return path


def _profile(store: Path, cwd: Path, n: int = 1) -> subprocess.CompletedProcess[str]:
    device = cwd / "fast.yaml"
    device.write_text(FAST_PROFILE)
    return run_cli("profile", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(DEMO_CHECKPOINT),
                   "--device", str(device), "--n", str(n), "--store", str(store), cwd=cwd)


@pytest.mark.parametrize("kind, mention", [
    ("folder", "is a folder"),  # a traceback: unable to open database file
    ("text", "is not a SQLite database"),  # a traceback: file is not a database
    ("newer", "schema version 99"),  # measured and stored into a schema it does not know
    ("extra column", "table latencies has columns"),  # measured, then a traceback at the first insert
])
def test_an_unusable_store_is_refused_before_anything_is_measured(tmp_path: Path, kind: str, mention: str) -> None:
    store = tmp_path / "store.db"
    if kind == "folder":
        store.mkdir()
    elif kind == "text":
        store.write_text("notes, not a database\n")
    else:
        _our_tables(store, user_version=99 if kind == "newer" else 0,
                    columns=LATENCY_COLUMNS + (", note TEXT NOT NULL" if kind == "extra column" else ""))
    before = store.read_bytes() if store.is_file() else None
    result = _profile(store, tmp_path)
    assert_one_line_error(result, 2, str(store), mention)
    assert "profiling on" not in result.stdout + result.stderr
    assert (store.read_bytes() if store.is_file() else None) == before


def test_a_locked_store_fails_when_opened_not_after_measuring(tmp_path: Path) -> None:
    """Measured before: 38 s of profiling, then 'database is locked' as a traceback, the rows lost."""
    store = _our_tables(tmp_path / "store.db")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(store)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(90)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = _profile(store, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(result, 2, str(store), "is locked by another process")
    assert "profiling on" not in result.stdout + result.stderr


def test_a_read_only_store_is_refused_before_anything_is_measured(tmp_path: Path) -> None:
    """Root writes a ``chmod 444`` file, so the store is made immutable (``chattr +i``), which binds root too."""
    store = _our_tables(tmp_path / "store.db")
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable attribute (chattr +i)")
    try:
        before = store.read_bytes()
        result = _profile(store, tmp_path)
        assert store.read_bytes() == before
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    assert_one_line_error(result, 2, str(store), "is read-only; hwsearch writes to its store")
    assert "profiling on" not in result.stdout + result.stderr


def test_rows_are_stored_by_column_name(tmp_path: Path) -> None:
    """A store whose latencies columns are in another order got each value in the wrong column."""
    store = _our_tables(tmp_path / "store.db", columns=", ".join(reversed(LATENCY_COLUMNS.split(", "))))
    result = _profile(store, tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(store) as conn:
        (data, updated, space_name), = conn.execute("SELECT data, updated, space_name FROM latencies")
    assert data.startswith("{") and isinstance(updated, float) and "demo" in space_name


def test_reporting_a_job_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    """It created missing-dir/ and an empty new.db, then said the job did not exist."""
    result = run_cli("report", "abc123", "--store", "missing-dir/new.db", cwd=tmp_path)
    assert_one_line_error(result, 2, "--store", "missing-dir/new.db")
    assert not (tmp_path / "missing-dir").exists()


# --------------------------------------------------------------------------- device profiles


def _alias_bomb(depth: int) -> str:
    """A profile whose name is a 'billion laughs': 9**depth strings from a few hundred bytes."""
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijkl"[:depth]
    for prev, cur in zip(names, names[1:]):
        parts.append(f"&{cur} [" + ",".join(["*" + prev] * 9) + "]")
    return "name: [" + ", ".join(parts) + "]\n"


@pytest.mark.parametrize("name, text, mention", [
    ("laughs.yaml", _alias_bomb(8), "aliases"),  # 4.8 GB for the error message's repr
    ("dup.yaml", "name: x\nwarmup: {runs: 1, seconds: 1, runs: 2}\n", "'runs' appears twice"),  # runs: 2 won
    ("dup.json", '{"name": "x", "batch": 1, "batch": 4}', "'batch' appears twice"),  # batch 4 won
    ("big.yaml", "name: x\n" + "#" * 70_000 + "\n", "the limit is 65536"),  # read whatever its size
    ("deep.yaml", "[" * 30_000 + "]" * 30_000, "nested too deeply"),  # a RecursionError traceback
    ("deep.json", "[" * 30_000 + "]" * 30_000, "nested too deeply"),
])
def test_profiles_are_plain_small_files(tmp_path: Path, name: str, text: str, mention: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert_one_line_error(run_cli("devices", "check", str(path), cwd=tmp_path), 2, "PROFILE", mention)


def test_a_long_value_is_quoted_short_in_the_error(tmp_path: Path) -> None:
    """The whole value was quoted: the line ran past the 1000-character cap, cutting off the option."""
    path = tmp_path / "long.json"
    path.write_text('{"name": "' + "x" * 5000 + '"}')
    line = assert_one_line_error(run_cli("devices", "check", str(path), cwd=tmp_path), 2, "field 'name'")
    assert line.endswith("(PROFILE)") and len(line) < 400


@pytest.mark.parametrize("reference", ["folder", "fifo", "/dev/zero", "text"])
def test_a_reference_model_that_is_no_onnx_file_is_refused_when_the_profile_loads(
        tmp_path: Path, reference: str) -> None:
    """At measure time: /dev/zero ran out of memory, a FIFO hung, a text file was a traceback."""
    target = {"folder": tmp_path, "fifo": tmp_path / "fifo", "/dev/zero": Path("/dev/zero"),
              "text": tmp_path / "notes.txt"}[reference]
    if reference == "fifo":
        os.mkfifo(target)
    elif reference == "text":
        target.write_text("not a model\n")
    device = tmp_path / "ref.yaml"
    device.write_text(f"name: r\nreference_model: {target}\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((16, 8, 3, 2),), seed=1, input_shape=(1, 3, 32, 32)))
    result = run_cli("measure", str(model), "--device", str(device), cwd=tmp_path)
    assert_one_line_error(result, 2, "--device", "reference_model", str(target))


# --------------------------------------------------------------------------- arch files, reports, batch


def test_a_deeply_nested_arch_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    arch = tmp_path / "deep.json"
    arch.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_error(run_cli(*EXPORT, "--arch", str(arch), cwd=tmp_path), 2, "--arch", "nested too deeply")


def test_an_arch_file_past_its_size_bound_is_not_read(tmp_path: Path) -> None:
    arch = tmp_path / "big.json"
    arch.write_text('{"resolution": 28}' + " " * 2**20)
    assert_one_line_error(run_cli(*EXPORT, "--arch", str(arch), cwd=tmp_path), 2, "--arch", "at most 1048576")


@pytest.mark.parametrize("content, mention", [
    (None, "holds no job store and no Pareto front"),  # an empty folder: a ValueError traceback
    ("{not json", "is not readable JSON"),  # a JSONDecodeError traceback
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # a RecursionError traceback
    ('{"device": "d", "points": [], "objectives": []}', "is not a readable Pareto front"),  # a KeyError traceback
])
def test_reporting_a_folder_without_readable_fronts(tmp_path: Path, content: str | None, mention: str) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    if content is not None:
        (folder / "a.json").write_text(content)
    result = run_cli("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert_one_line_error(result, 2, "JOB", mention)


def _front_json(**changes: Any) -> dict[str, Any]:
    """A real measured front of the demo space as JSON, its second point's measured values changed."""
    from hwsearch.problem import accuracy_latency
    from hwsearch.results import Candidate, ParetoFront
    from hwsearch.supernets import create_supernet

    space = create_supernet("demo_mbv3_mnist").space
    points = [Candidate(arch=arch, measured={"accuracy": acc, "latency_ms": lat})
              for arch, (acc, lat) in zip(space.sample(0, 3), [(0.80, 0.2), (0.85, 0.3), (0.90, 0.5)])]
    front = ParetoFront.build(device="x", space_name=space.name, candidates=points,
                              objectives=accuracy_latency(), reference_point=(-0.5, 1.0), seed=0)
    data = front.to_dict()
    data["points"][1]["measured"].update(changes)
    return data


@pytest.mark.parametrize("changes, mention", [
    ({"latency_ms": float("nan")}, "measured 'latency_ms' must be a finite number, got nan"),
    ({"accuracy": 5.0}, "measured 'accuracy' is 5.0; accuracy is a fraction in [0, 1]"),
])
def test_reporting_a_front_with_impossible_values(tmp_path: Path, changes: dict[str, float],
                                                  mention: str) -> None:
    """A NaN latency and an accuracy of 5.0 rendered with exit 0, the NaN point as the knee."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "front-x.json").write_text(json.dumps(_front_json(**changes)))
    result = run_cli("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert_one_line_error(result, 2, "JOB", "front-x.json", "point 1 (", mention)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("field, value", [
    ("device", 7),  # AttributeError in html.escape, after pareto-7.png was written
    ("device", [1]),  # TypeError: unhashable type: 'list'
    ("objectives", []),  # IndexError while drawing
    ("reference_point", "x"),  # ValueError: Unknown format code 'g' for object of type 'str'
])
def test_reporting_a_front_with_an_ill_typed_field(tmp_path: Path, field: str, value: Any) -> None:
    """A sound front next to the hostile one: the report writes nothing rather than half of itself."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "front-a.json").write_text(json.dumps(_front_json() | {"device": "a"}))
    (folder / "front-z.json").write_text(json.dumps(_front_json() | {field: value}))
    result = run_cli("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert_one_line_error(result, 2, "JOB", "front-z.json", f"field {field!r}")
    assert not (tmp_path / "report").exists()


def test_reporting_a_sound_front_with_unknown_conditions_works(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    data = _front_json()
    data["points"][0]["latency_conditions"] = {"stable": False, "latency_source": "median_ms",
                                               "latency_ci": None, "session_offset": None}
    (folder / "front-x.json").write_text(json.dumps(data))
    result = run_cli("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report" / "report.html").is_file()


def test_export_batch_is_bounded_like_a_profiles(tmp_path: Path) -> None:
    """--batch 100000 went on to allocate the export's input; a profile's batch stops at 1024."""
    result = run_cli(*EXPORT, "--batch", "1025", cwd=tmp_path)
    assert_one_line_error(result, 2, "--batch", "1024")
    assert not (tmp_path / "x.onnx").exists()


def test_export_batch_is_bounded_by_input_pixels_before_any_work(tmp_path: Path) -> None:
    """--batch 1000 of a 224 px subnet asked for 2.9 GB in one tensor and ended in an allocator traceback."""
    result = run_cli("export", "--supernet", "ofa_mbv3_d234_e346_k357_w1.0", "--out", str(tmp_path / "x.onnx"),
                     "--batch", "1000", cwd=tmp_path)
    assert_one_line_error(result, 2, "--batch", "4,194,304")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("command", [("profile", "--n", "1000000"), ("search", "--n-profile", "1000000"),
                                     ("search", "--budget", str(10**30)), ("demo", "--n-profile", "1000000")])
def test_subnet_counts_are_bounded_before_any_work(tmp_path: Path, command: tuple[str, ...]) -> None:
    """`profile --n 1000000` asked numpy for 13.7 GiB; `search --n-profile 10**30` started Ray and then
    failed with a numpy traceback, leaving a failed job in the store."""
    result = run_cli(*command, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert command[1] in result.stderr and "10000" in result.stderr
    assert list(tmp_path.iterdir()) == [] or all(p.name == "calibration" for p in tmp_path.iterdir())


def test_a_device_name_with_path_parts_writes_its_plot_inside_the_report_folder(tmp_path: Path) -> None:
    """``"device": "../x"`` wrote pareto-../x.png, outside --out."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name, device in (("a", "../escaped"), ("b", "..")):
        (folder / f"front-{name}.json").write_text(json.dumps(_front_json() | {"device": device}))
    result = run_cli("report", str(folder), "--out", str(tmp_path / "out" / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report"]
    plots = sorted((tmp_path / "out" / "report").glob("pareto-*.png"))
    assert len(plots) == 2 and all(p.parent == tmp_path / "out" / "report" for p in plots)
