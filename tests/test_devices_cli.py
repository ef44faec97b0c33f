"""`hwsearch devices check`, `hwsearch measure` and `hwsearch agent`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devices.profile import DeviceProfile
from devices.reference import mobilenet_like_onnx
from hwsearch.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "devices"


@pytest.fixture(autouse=True)
def calibration_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICES_CALIBRATION_DIR", str(tmp_path / "calibration"))


def test_devices_check_prints_device_facts() -> None:
    result = CliRunner().invoke(app, ["devices", "check", str(EXAMPLES / "local-1thread.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["hash"] == DeviceProfile.load(EXAMPLES / "local-1thread.yaml").hash()
    assert report["device"]["onnxruntime"] and report["device"]["logical_cores"] >= 1
    assert "CPUExecutionProvider" in report["device"]["available_providers"]


def test_devices_check_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nproviders: [GPUExecutionProvider]\n")
    result = CliRunner().invoke(app, ["devices", "check", str(bad)])
    assert result.exit_code == 2
    assert "providers" in result.output and "GPUExecutionProvider" in result.output


def test_measure_json(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((32, 16, 3, 2),), seed=3, input_shape=(1, 3, 64, 64)))
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps(
        {"name": "cli", "warmup": {"runs": 2, "seconds": 0.1}, "protocol": {"min_rounds": 6, "max_rounds": 12}}
    ))
    result = CliRunner().invoke(app, ["measure", "--device", str(profile), str(model), "--json"])
    assert result.exit_code == 0, result.output
    (measurement,) = json.loads(result.output)
    assert measurement["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert measurement["latency_ms"] > 0 and measurement["n_runs"] >= 6

    table = CliRunner().invoke(app, ["measure", "--device", str(profile), str(model)])
    assert table.exit_code == 0 and "m.onnx" in table.output


def test_agent_command_is_registered() -> None:
    result = CliRunner().invoke(app, ["agent", "--help"])
    assert result.exit_code == 0 and "--token" in result.output and "--port" in result.output
