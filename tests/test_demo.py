"""The built-in demo: the shipped checkpoint, its recorded accuracies, and the whole flow end to end."""

from __future__ import annotations

import json
from pathlib import Path

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
    """The whole flow, with the shipped weights re-saved the way OFA publishes checkpoints."""
    from hwsearch.demo.run import DemoSettings, run_demo
    from hwsearch.results import ParetoFront

    user_checkpoint = tmp_path / "my_supernet.pth"
    state = torch.load(DEMO_CHECKPOINT, weights_only=True, map_location="cpu")
    torch.save({"state_dict": state, "epoch": 1}, user_checkpoint)
    steps: list[str] = []
    result = run_demo(
        DemoSettings(out=tmp_path / "demo", checkpoint=user_checkpoint,
                     devices=demo_devices_with_shorter_sessions(tmp_path), n_profile=12, budget=4, seed=1),
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
        assert knee.remeasured_latency_ms > 0
    assert result.report["html"].read_text().count("<img") >= 2
    # Every profiled subnet's measurement is kept in the run's store, for reuse by later runs, under the
    # shipped profiles' keys.
    from hwsearch.store import SQLiteStore

    store = SQLiteStore(result.store_path)
    stored = {d: len(store.get_latencies(key, space.network_id)) for d, key in _device_keys().items()}
    assert all(n >= 12 for n in stored.values())


def _device_keys() -> dict[str, str]:
    """What the demo's devices' rows are filed under: each profile on this host."""
    from devices import open_profiler
    from devices.profile import DeviceProfile
    from hwsearch.demo.run import default_devices

    return {DeviceProfile.load(p).name: open_profiler(p).device_key() for p in default_devices()}
