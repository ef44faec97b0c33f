"""The ViT demo: its shipped checkpoint, its recorded accuracies, and the demo job on it end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from hwsearch.demo import (
    DEMO_VIT_CHECKPOINT,
    DEMO_VIT_RECIPE,
    DEMO_VIT_SUPERNET,
    demo_vit_space,
)
from tests._jobs import demo_devices_with_shorter_sessions


@pytest.fixture(scope="module")
def recipe() -> dict:
    return json.loads(DEMO_VIT_RECIPE.read_text())


def test_checkpoint_is_small_matches_its_recipe_and_loads_with_weights_only(recipe: dict) -> None:
    assert DEMO_VIT_CHECKPOINT.stat().st_size <= 10 * 2**20
    assert hashlib.sha256(DEMO_VIT_CHECKPOINT.read_bytes()).hexdigest() == recipe["checkpoint_sha256"]
    state = torch.load(DEMO_VIT_CHECKPOINT, weights_only=True, map_location="cpu")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert recipe["supernet"] == DEMO_VIT_SUPERNET
    assert {p["teacher"] for p in recipe["recipe"]["phases"]} == {"frozen", "inplace"}


def test_recorded_accuracies_reproduce_on_the_heldout_digits(recipe: dict, tmp_path: Path) -> None:
    """Re-evaluating the recorded subnets gives the recorded accuracies; size buys accuracy."""
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.demo.train import load_demo_digits
    from hwsearch.supernets import create_supernet

    net = create_supernet(DEMO_VIT_SUPERNET, checkpoint=DEMO_VIT_CHECKPOINT)
    _, heldout = load_demo_digits(tmp_path, max(net.space.resolutions))
    settings = EvalSettings()
    calibration, validation = heldout.split(settings.n_calibration, seed=settings.seed)
    measured = {}
    for name, entry in recipe["accuracies"].items():
        arch = net.space.from_dict(entry["arch"])
        assert net.count(arch).macs == entry["macs"]
        measured[name] = subnet_accuracy(net, arch, calibration, validation, settings)
        assert measured[name] == pytest.approx(entry["accuracy"], abs=0.01), name
    assert measured["largest"] - measured["smallest"] >= 0.01
    assert measured["smallest"] > 0.5  # far above chance (0.1): every subnet learnt the digits


def test_vit_demo_is_selectable_and_its_settings_pick_its_checkpoint() -> None:
    from hwsearch.demo.run import DemoSettings, _job_spec

    settings = DemoSettings(supernet=DEMO_VIT_SUPERNET)
    assert settings.weights() == DEMO_VIT_CHECKPOINT
    assert DemoSettings().weights().name == "demo_mbv3_mnist.pt"
    spec = _job_spec(settings, DEMO_VIT_RECIPE)
    assert spec.supernet.registry == DEMO_VIT_SUPERNET
    assert Path(spec.supernet.checkpoint) == DEMO_VIT_CHECKPOINT.resolve()
    # The ViT demo searches FP32 only; the MobileNetV3 demo keeps the profiles' FP32 + INT8.
    assert [d["precisions"] for d in spec.devices] == [["fp32"]] * len(spec.devices)
    mbv3 = _job_spec(DemoSettings(), DEMO_VIT_RECIPE)
    assert [d["precisions"] for d in mbv3.devices] == [["fp32", "int8"]] * len(mbv3.devices)
    both = _job_spec(DemoSettings(supernet=DEMO_VIT_SUPERNET, precisions=("fp32", "int8")),
                     DEMO_VIT_RECIPE)
    assert [d["precisions"] for d in both.devices] == [["fp32", "int8"]] * len(both.devices)
    with pytest.raises(ValueError, match="demo_vit_mnist"):
        DemoSettings(supernet="demo_vit").weights()


def test_cli_rejects_an_unknown_demo_naming_the_choices(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "demo", "--supernet",
                             "demo_vit", "--out", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "demo_vit_mnist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_shortened_vit_demo_runs_end_to_end(tmp_path: Path) -> None:
    from hwsearch.demo.run import DemoSettings, run_demo, summarise
    from hwsearch.results import ParetoFront

    steps: list[str] = []
    result = run_demo(
        DemoSettings(out=tmp_path / "demo", supernet=DEMO_VIT_SUPERNET,
                     devices=demo_devices_with_shorter_sessions(tmp_path), n_profile=10, budget=3, seed=1),
        progress=lambda step, fraction, message: steps.append(step),
    )
    assert {"profile", "accuracy", "train", "search"} <= set(steps)
    assert set(result.fronts) == {"demo-cpu-1t", "demo-cpu-2t"}
    space = demo_vit_space()
    for front in result.fronts.values():
        assert isinstance(front, ParetoFront) and front.points
        for point in front.points:
            space.validate(point.arch)
            assert 0.1 < point.measured["accuracy"] <= 1.0
            assert point.measured["latency_ms"] > 0
    assert len(result.knees) == 2
    for knee in result.knees:
        assert knee.onnx_path.exists() and knee.export_max_abs_diff <= 1e-4
        assert knee.remeasured_latency_ms > 0
    assert any("knee" in line for line in summarise(result))
