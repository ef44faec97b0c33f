"""The built-in demo: the shipped checkpoint, its recorded accuracies, and the whole flow end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hwsearch.demo import DEMO_CHECKPOINT, DEMO_RECIPE, DEMO_SUPERNET, demo_space
from tests._jobs import demo_devices_with_shorter_sessions


@pytest.fixture(scope="module")
def recipe() -> dict:
    return json.loads(DEMO_RECIPE.read_text())


def test_checkpoint_is_small_and_loads_with_weights_only(recipe: dict) -> None:
    import hashlib

    assert DEMO_CHECKPOINT.stat().st_size <= 10 * 2**20
    assert hashlib.sha256(DEMO_CHECKPOINT.read_bytes()).hexdigest() == recipe["checkpoint_sha256"]
    state = torch.load(DEMO_CHECKPOINT, weights_only=True, map_location="cpu")
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_recorded_accuracies_reproduce_and_differ(recipe: dict, tmp_path: Path) -> None:
    """Re-evaluating the smallest, middle and largest subnets gives the accuracies the recipe records."""
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.demo.data import load_digits
    from hwsearch.supernets import create_supernet

    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    _, heldout = load_digits(tmp_path)
    settings = EvalSettings()
    calibration, validation = heldout.split(settings.n_calibration, seed=settings.seed)
    measured = {}
    for name, entry in recipe["accuracies"].items():
        arch = net.space.from_dict(entry["arch"])
        measured[name] = subnet_accuracy(net, arch, calibration, validation, settings)
        assert measured[name] == pytest.approx(entry["accuracy"], abs=0.01), name
    assert measured["largest"] - measured["smallest"] >= 0.03
    assert measured["largest"] > 0.5  # far above chance (0.1): the weights are trained


@pytest.mark.slow
def test_shortened_demo_runs_end_to_end_with_a_users_checkpoint(tmp_path: Path) -> None:
    """The whole flow, with the shipped weights re-saved the way OFA publishes checkpoints.

    The demo searches FP32 and INT8 on both devices, so this is also the
    test of a whole job at two precisions: rows, accuracies and front points
    of each precision stay apart (:func:`_assert_precisions_kept_apart`).
    """
    from hwsearch.demo.run import DemoSettings, run_demo
    from hwsearch.results import ParetoFront
    from hwsearch.store import SQLiteStore

    user_checkpoint = tmp_path / "my_supernet.pth"
    state = torch.load(DEMO_CHECKPOINT, weights_only=True, map_location="cpu")
    torch.save({"state_dict": state, "epoch": 1}, user_checkpoint)
    steps: list[str] = []
    n_profile = 8
    result = run_demo(
        DemoSettings(out=tmp_path / "demo", checkpoint=user_checkpoint,
                     devices=demo_devices_with_shorter_sessions(tmp_path), n_profile=n_profile, budget=2, seed=1),
        progress=lambda step, fraction, message: steps.append(step),
    )
    assert {"profile", "accuracy", "train", "search"} <= set(steps)
    assert set(result.fronts) == {"demo-cpu-1t", "demo-cpu-2t"}
    space = demo_space()
    for device, front in result.fronts.items():
        assert isinstance(front, ParetoFront) and front.points
        for point in front.points:
            space.validate(point.arch)
            assert 0.0 < point.measured["accuracy"] <= 1.0
            assert point.measured["latency_ms"] > 0
    assert len(result.knees) == 2
    for knee in result.knees:
        assert knee.onnx_path.exists() and knee.export_max_abs_diff <= 1e-4
        assert knee.remeasured_latency_ms > 0 and knee.front_latency_ci is not None
        # The shipped file scores what the front says; its batch norm was once left as the supernet's.
        assert knee.file_accuracy == pytest.approx(knee.accuracy, abs=0.01), knee
    html = result.report["html"].read_text()
    assert html.count("<img") >= 2
    assert "INT8 against FP32" in html and "points by precision" in html
    # Every profiled subnet's measurement is kept in the run's store, for reuse by later runs, under the
    # shipped profiles' keys.
    store = SQLiteStore(result.store_path)
    stored = {d: len(store.get_latencies(key, space.network_id)) for d, key in _device_keys().items()}
    assert all(n >= n_profile for n in stored.values())
    job = store.get_job(result.job_id).result
    assert job["precisions"] == ["fp32", "int8"]
    for device, front in result.fronts.items():
        _assert_precisions_kept_apart(store, job, device, front, n_profile)
    _assert_points_show_their_rows(store, job, result.fronts)


def _assert_points_show_their_rows(store: Any, job: dict[str, Any], fronts: dict[str, Any]) -> None:
    """Each point's latency is its row's as the row reads now, beside that row's conditions: the anchor corrects
    rows as later sessions move its norm, and a point showed the value refinement had read (0.15% apart)."""
    from hwsearch.pipeline import finite_latencies

    for device, front in fronts.items():
        precisions = job["devices"][device]["precisions"]
        for point in front.points:
            row = finite_latencies(store, precisions[point.precision]["hash"], job["network_id"])[point.arch.key()]
            assert point.measured["latency_ms"] == row["latency_ms"], (device, point.arch.key())
            assert point.latency_conditions["row_offset"] == row.get("row_offset", row.get("session_offset"))


def _assert_precisions_kept_apart(store: Any, job: dict[str, Any], device: str, front: Any,
                                  n_profile: int) -> None:
    """One device of a job at FP32 and INT8: each precision has its own rows, accuracies and predictor.

    Every subnet, initial or refined, is measured at both precisions in one
    session; a candidate one precision's refinement picked has the other's
    latency row but only the accuracy of the precision that picked it; each
    front point carries its own precision's measurements.
    """
    entry = job["devices"][device]
    hashes = {p: entry["precisions"][p]["hash"] for p in ("fp32", "int8")}
    assert hashes == {"fp32": entry["hash"], "int8": f"{entry['hash']}@int8"}
    network = job["network_id"]
    fp32_rows = store.get_latencies(hashes["fp32"], network)
    int8_rows = store.get_latencies(hashes["int8"], network)
    assert len(fp32_rows) >= n_profile and set(fp32_rows) == set(int8_rows)
    for key, fp32 in fp32_rows.items():
        int8 = int8_rows[key]
        assert fp32["session_id"] == int8["session_id"]
        assert fp32["env"]["session_start"] == int8["env"]["session_start"]
        assert int8["quantization"]["fp32_bytes"] == fp32["onnx_bytes"] > int8["onnx_bytes"]
    fp32_acc = store.get_accuracies(DEMO_SUPERNET, job["dataset_id"])
    int8_acc = store.get_accuracies(DEMO_SUPERNET, f"{job['dataset_id']}@int8")
    initial = set(int8_acc) & set(fp32_acc)
    assert len(initial) >= n_profile
    assert set(int8_rows) - set(int8_acc) <= set(fp32_acc) - initial
    assert set(fp32_rows) - set(fp32_acc) <= set(int8_acc) - initial
    assert {"accuracy", "accuracy@int8", f"latency@{device}", f"latency@{device}@int8"} <= set(job["predictors"])
    assert set(front.settings["precisions"]) == {"fp32", "int8"}
    for point in front.points:
        assert point.precision in ("fp32", "int8") and point.latency_conditions
        rows, accuracies = (fp32_rows, fp32_acc) if point.precision == "fp32" else (int8_rows, int8_acc)
        assert point.measured["latency_ms"] == pytest.approx(rows[point.arch.key()]["latency_ms"])
        assert point.measured["accuracy"] == pytest.approx(accuracies[point.arch.key()])


def _device_keys() -> dict[str, str]:
    """What the demo's devices' rows are filed under: each profile on this host."""
    from devices import open_profiler
    from devices.profile import DeviceProfile
    from hwsearch.demo.run import default_devices

    return {DeviceProfile.load(p).name: open_profiler(p).device_key() for p in default_devices()}


def test_a_knee_remeasured_apart_from_its_front_point_beyond_both_intervals_says_why(tmp_path: Path) -> None:
    """A knee re-measured 18% below its "stable ±1.6%" front point (a one-file session of a 0.07 ms subnet)
    was printed without a word; within the intervals nothing is added."""
    from hwsearch.demo.run import DemoResult, KneeCheck, summarise

    def line(front_ms: float, remeasured_ms: float, front_ci: float | None) -> str:
        knee = KneeCheck(device="d", arch_key="k", onnx_path=tmp_path / "k.onnx", export_max_abs_diff=1e-6,
                         predicted_latency_ms=None, front_latency_ms=front_ms, remeasured_latency_ms=remeasured_ms,
                         remeasured_ratio_ci=0.009, accuracy=0.9, file_accuracy=0.9, front_latency_ci=front_ci)
        result = DemoResult(job_id="j", store_path=tmp_path / "s.db", fronts={}, knees=[knee],
                            report={"html": tmp_path / "r.html"}, seconds=1.0, precisions={})
        return summarise(result)[1]

    assert line(0.0856, 0.0697, 0.016).endswith(
        "19% below the front, beyond both intervals: the front's latency comes from sessions of many files and "
        "this from a session of one, which moves what a subnet much faster than the reference reads "
        "(docs/measurement.md, \"Session size\")")
    from hwsearch.demo.run import _front_ci

    assert _front_ci({"latency_ci": 0.0, "ratio_ci": 0.5}) == 0.0, "a latency_ci of 0 is known, not missing"
    assert _front_ci({"latency_ci": None, "ratio_ci": 0.02}) == 0.02 and _front_ci({}) is None
    assert line(0.0856, 0.0877, 0.016).endswith("re-measured 0.088 ms (±0.9%)"), "2.5% apart: within 0.9% + 1.6%"
    assert line(0.0856, 0.0697, None).endswith("(±0.9%)"), "no interval known for the front: no claim made"
