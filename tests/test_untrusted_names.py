"""Names that others chose (a device profile's, a front file's) are names, not paths, markup or math.

Review findings: a profile named ``../../escaped[/]`` wrote its front two
folders above ``--out`` and then crashed ``hwsearch search``'s table as Rich
markup; ``cpu[link=...]`` printed a hyperlink; ``cpu$\\undefinedmacro$`` and a
lone surrogate crashed ``hwsearch report`` with tracebacks; fronts and job
files held ``Infinity``, which no JavaScript reader takes; and report.html was
written in the locale's encoding while declaring UTF-8.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from devices.reference import mobilenet_like_onnx
from hwsearch.cli._fronts import front_table, target_table
from hwsearch.report import build_report, from_dir, write_job_dir
from hwsearch.results import ParetoFront
from hwsearch.store import MemoryStore
from tests._jobs import fast_device, random_dataset
from tests.test_cli_errors import assert_one_line_error, closed_port, run_cli
from tests.test_cli_hardening import _front_json

HOSTILE_NAMES = ["../../escaped[/]", "cpu[link=https://evil.example]click[/link]", "..", "x[/]"]


def strict_json(text: str) -> Any:
    """``text`` parsed as standard JSON: ``NaN`` and ``Infinity`` are refused, as JavaScript's JSON.parse does."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", ["cpu\u202eevil", "cpu\x1b]0;owned\x07", "two\nlines", "a" * 101, " "])
def test_a_profile_name_that_cannot_be_printed_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    """Control, bidi or surrogate characters (and an empty or overlong name) are refused before any work."""
    profile = tmp_path / "dev.json"
    profile.write_text(json.dumps({"name": name, "where": {
        "kind": "agent", "url": f"http://127.0.0.1:{closed_port()}", "token_env": "T", "retries": 0}}))
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((8, 8, 3, 2),), seed=1, input_shape=(1, 3, 32, 32)))
    result = run_cli("measure", "--device", str(profile), str(model), cwd=tmp_path, extra_env={"T": "token"})
    assert_one_line_error(result, 2, "field 'name'", "control")


def test_a_search_keeps_a_device_named_like_a_path_and_markup_inside_out_and_prints_it(tmp_path: Path) -> None:
    """``../../escaped[/] (CPU)`` is a legal name (names like "Pixel 7 (CPU)" are, and name stored rows).

    Its front once went two folders above ``--out`` and then crashed the
    table as Rich markup after the whole search; now the file name is made
    safe, the table shows the name as it is, and nothing lands outside.
    """
    name = "../../escaped[/] (CPU)"
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    profile = work / "dev.json"
    profile.write_text(json.dumps(fast_device(name)))
    data = random_dataset(work / "val.npz")
    out = work / "out"
    result = run_cli("search", "--supernet", "demo_mbv3_mnist", "--device", str(profile), "--data", str(data),
                     "--n-profile", "4", "--budget", "1", "--out", str(out), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    [front_file] = (out / "fronts").glob("*.json")
    assert strict_json(front_file.read_text())["device"] == name
    ours = (out, work / "calibration")  # the run's folder, and the rulers' (run_cli puts them there)
    outside = [path for path in tmp_path.rglob("*.json")
               if not any(folder in path.parents for folder in ours) and path != profile]
    assert outside == [], outside
    assert name in result.stdout and "Traceback" not in result.stderr


def _store_with_job(front: ParetoFront) -> tuple[MemoryStore, str]:
    """A store holding one succeeded search job whose result is ``front`` (no measurements)."""
    store = MemoryStore()
    job_id = store.create_job({"kind": "search"})
    store.update_job(job_id, state="succeeded", result={
        "fronts": {front.device: front.to_dict()}, "devices": {}, "space_name": front.space_name})
    return store, job_id


def _front_without_a_ci(device: str) -> ParetoFront:
    """A front whose first point's session made no CI (ratio_ci inf) and whose spread is infinite."""
    data = _front_json() | {"device": device}
    data["points"][0]["latency_conditions"] = {"stable": False, "ratio_ci": math.inf}
    data["points"][0]["predicted"] = {"latency_ms": 0.25}
    data["points"][0]["spread"] = {"latency_ms": math.inf}
    return ParetoFront.from_dict(data)


def test_a_job_dir_keeps_every_device_inside_and_is_standard_json_that_reads_back(tmp_path: Path) -> None:
    """front-{device}.json took the name as a path; Infinity went out as written and broke JSON.parse."""
    out = tmp_path / "out" / "job"
    store, job_id = _store_with_job(_front_without_a_ci("../../escaped[/]"))
    write_job_dir(out, store=store, job_id=job_id)
    written = sorted(p for p in (tmp_path).rglob("*") if p.is_file())
    assert written and all(p.parent == out for p in written), written
    for file in written:
        strict_json(file.read_text(encoding="utf-8"))
    [front_file] = [p for p in written if p.name.startswith("front-")]
    assert strict_json(front_file.read_text())["points"][0]["latency_conditions"]["ratio_ci"] is None
    data = from_dir(out)  # null reads back as "no CI", "no spread"
    point = data.fronts["../../escaped[/]"].points[0]
    assert point.latency_conditions["ratio_ci"] is None and point.spread["latency_ms"] is None
    page = build_report(data, tmp_path / "out" / "report")["html"].read_text(encoding="utf-8")
    assert "UNSTABLE" in page and "../../escaped[/]" in page


def test_a_front_is_written_as_standard_json() -> None:
    text = _front_without_a_ci("x").to_json()
    point = strict_json(text)["points"][0]
    assert point["latency_conditions"]["ratio_ci"] is None and point["spread"]["latency_ms"] is None


def _rendered(table: Any) -> str:
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, color_system="truecolor", width=400).print(table)
    return buffer.getvalue()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_device_name_in_a_table_is_text_not_markup(name: str) -> None:
    """``cpu[link=...]`` printed an OSC 8 hyperlink; ``x[/]`` raised MarkupError after the whole run."""
    front = ParetoFront.from_dict(_front_json() | {"device": name, "settings": {"targets": {"budgets_ms": [1.0]}}})
    for table in (front_table(name, front), target_table(name, front)):
        shown = _rendered(table)
        assert "\x1b]8;" not in shown and name in shown, shown


@pytest.mark.parametrize("device", ["cpu$\\undefinedmacro$", "cpu $5 and $6", "cpü-1"])
def test_a_device_name_is_drawn_and_written_as_it_is(tmp_path: Path, device: str) -> None:
    """``$...$`` was parsed as math text (a ValueError traceback); the page, which declares UTF-8, was
    written in the locale's encoding (here ASCII: a UnicodeEncodeError)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "front-a.json").write_text(json.dumps(_front_json() | {"device": device}))
    ascii_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    result = run_cli("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path,
                     extra_env=ascii_locale)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    page = (tmp_path / "report" / "report.html").read_bytes().decode("utf-8")
    assert f"Device {device}" in page
    assert len(list((tmp_path / "report").glob("pareto-*.png"))) == 1


@pytest.mark.parametrize("device", ["cpu\ud800", "cpu\x1b]0;owned\x07", "cpu\u202eevil"])
def test_a_front_whose_device_holds_control_characters_is_refused(tmp_path: Path, device: str) -> None:
    """A lone surrogate crashed the plot with a TypeError traceback; control codes reached the terminal."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "front-a.json").write_text(json.dumps(_front_json() | {"device": device}))
    result = run_cli("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path)
    line = assert_one_line_error(result, 2, "JOB", "field 'device'", "control characters")
    assert line.isprintable()
    assert not (tmp_path / "report").exists()


def test_measure_json_is_standard_json_with_null_for_no_ci(tmp_path: Path) -> None:
    """Five rounds make no CI: ``hwsearch measure --json`` printed ``"ratio_ci": Infinity``."""
    profile = tmp_path / "cpu.json"
    profile.write_text(json.dumps({"name": "cpu", "warmup": {"runs": 2, "seconds": 0.1},
                                   "protocol": {"min_rounds": 5, "max_rounds": 5, "max_seconds": 10}}))
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((8, 8, 3, 2),), seed=2, input_shape=(1, 3, 32, 32)))
    result = run_cli("measure", "--device", str(profile), str(model), "--json", cwd=tmp_path,
                     extra_env={"DEVICES_LOCK_DIR": str(tmp_path / "locks")})
    assert result.returncode == 0, result.stderr
    [row] = strict_json(result.stdout)
    assert row["ratio_ci"] is None and row["stable"] is False and row["median_ms"] > 0
