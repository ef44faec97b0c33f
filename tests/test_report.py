"""Reports of a real finished job: PNG plots per device and one self-contained HTML page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hwsearch.report import build_report, from_dir, from_store, write_job_dir
from hwsearch.store import SQLiteStore
from tests._jobs import FinishedJob, own_copy

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, finished_tiny_job: FinishedJob) -> tuple[SQLiteStore, str]:
    return own_copy(finished_tiny_job, tmp_path_factory.mktemp("report")), finished_tiny_job.job_id


def test_report_shows_fronts_predictors_and_measurements(job: tuple[SQLiteStore, str], tmp_path: Path,
                                                         finished_tiny_job: FinishedJob) -> None:
    store, job_id = job
    data = from_store(store, job_id)
    written = build_report(data, tmp_path)
    assert written["cpu-1t"].read_bytes().startswith(PNG_MAGIC)
    page = written["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2, "one overview plot and one plot per device, inlined"
    assert not re.search(r'(src|href)="(http|file|/)', page), "nothing is loaded from elsewhere"
    front = store.get_job(job_id).result["fronts"]["cpu-1t"]
    for point in front["points"]:
        assert point["arch_key"] in page
    assert "latency@cpu-1t" in page and "accuracy" in page
    measured = data.measurements["cpu-1t"]
    spec = finished_tiny_job.spec  # every subnet it profiled or refined
    assert len(measured) == spec.n_profile + spec.budget and all(row["accuracy"] is not None for row in measured)
    assert f"cpu-1t: {len(measured)} measured subnets" in page


def test_a_job_dir_gives_the_same_report_without_the_store(job: tuple[SQLiteStore, str],
                                                           tmp_path: Path) -> None:
    store, job_id = job
    directory = write_job_dir(tmp_path / "job", store=store, job_id=job_id)
    again = from_dir(directory)
    original = from_store(store, job_id)
    assert {d: f.to_dict() for d, f in again.fronts.items()} == \
        {d: f.to_dict() for d, f in original.fronts.items()}
    assert again.predictors == original.predictors
    assert again.measurements == original.measurements


def test_cli_report_from_a_job_id_and_from_a_directory(job: tuple[SQLiteStore, str],
                                                       tmp_path: Path) -> None:
    store, job_id = job
    command = [sys.executable, "-m", "hwsearch.cli.main", "report"]
    out = subprocess.run([*command, job_id, "--store", str(store.path), "--out",
                          str(tmp_path / "a"), "--json"],
                         capture_output=True, text=True, check=True)
    paths = json.loads(out.stdout)
    assert Path(paths["html"]).is_file() and Path(paths["cpu-1t"]).read_bytes().startswith(PNG_MAGIC)

    directory = write_job_dir(tmp_path / "job", store=store, job_id=job_id)
    out = subprocess.run([*command, str(directory), "--out", str(tmp_path / "b"), "--json"],
                         capture_output=True, text=True, check=True)
    assert Path(json.loads(out.stdout)["html"]).is_file()

    missing = subprocess.run([*command, "no-such-job", "--store", str(store.path)],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no-such-job" in missing.stderr


def test_the_latency_axis_says_what_one_latency_times() -> None:
    """A batch-4 front's plot read "latency (ms)" for four images' time."""
    from dataclasses import replace

    from hwsearch.report import _axis_label
    from tests.test_results import _front

    plain = _front()
    batch4 = replace(plain, settings={"timed_input": {"batch": 4, "input_dtype": "float32"}})
    fp16 = replace(plain, settings={"timed_input": {"batch": 1, "input_dtype": "float16"}})
    assert [_axis_label("latency_ms", fronts) for fronts in ([plain], [batch4], [fp16], [batch4, fp16])] == [
        "latency (ms)", "latency (ms per batch of 4)", "latency (ms on float16 inputs)",
        "latency (ms, one inference of each device's batch)"]
    assert _axis_label("accuracy", [batch4]) == "top-1 accuracy"
    assert _axis_label("latency_ms", [replace(plain, settings={"timed_input": "edited"})]) == "latency (ms)"
