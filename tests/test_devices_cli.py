"""`hwsearch devices check`, `hwsearch measure` and `hwsearch agent`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from devices.profile import KNOWN_ORT_PROVIDERS, DeviceProfile
from devices.reference import mobilenet_like_onnx
from hwsearch.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "devices"


pytestmark = pytest.mark.usefixtures("calibration_dir")  # tests/conftest.py


def test_devices_check_prints_device_facts() -> None:
    result = CliRunner().invoke(app, ["devices", "check", str(EXAMPLES / "local-1thread.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["hash"] == DeviceProfile.load(EXAMPLES / "local-1thread.yaml").hash()
    assert report["device"]["onnxruntime"] and report["device"]["logical_cores"] >= 1
    assert "CPUExecutionProvider" in report["device"]["available_providers"]


def test_devices_check_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nproviders: [GPUExecutionProvider]\n")
    result = CliRunner().invoke(app, ["devices", "check", str(bad)])
    assert result.exit_code == 2
    assert "providers" in result.output and "GPUExecutionProvider" in result.output


def test_devices_check_refuses_a_local_profile_whose_provider_this_machine_lacks(tmp_path: Path) -> None:
    missing = next(p for p in KNOWN_ORT_PROVIDERS if p not in ort.get_available_providers())
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(f"name: gpu\nproviders: [{missing}, CPUExecutionProvider]\n")
    result = CliRunner().invoke(app, ["devices", "check", str(gpu)])
    assert result.exit_code == 2, result.output
    assert "'providers' starts with" in result.output and missing in result.output


def test_measure_json(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((32, 16, 3, 2),), seed=3, input_shape=(1, 3, 64, 64)))
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps(
        {"name": "cli", "warmup": {"runs": 2, "seconds": 0.1}, "protocol": {"min_rounds": 6, "max_rounds": 12}}
    ))
    result = CliRunner().invoke(app, ["measure", "--device", str(profile), str(model), "--json"])
    assert result.exit_code == 0, result.output
    (measurement,) = json.loads(result.stdout)
    assert measurement["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert measurement["latency_ms"] > 0 and measurement["n_runs"] >= 6

    table = CliRunner().invoke(app, ["measure", "--device", str(profile), str(model)])
    assert table.exit_code == 0 and "m.onnx" in table.output


def test_measure_says_why_a_row_is_unstable(tmp_path: Path) -> None:
    """``stable NO`` left the reason to ``--json``: a 1e-9 CI target no session reaches is named ``ci``."""
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((32, 16, 3, 2),), seed=3, input_shape=(1, 3, 64, 64)))
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"name": "cli", "warmup": {"runs": 2, "seconds": 0.1},
                                   "protocol": {"min_rounds": 6, "max_rounds": 8, "ci_target": 1e-9}}))
    table = CliRunner().invoke(app, ["measure", "--device", str(profile), str(model)])
    assert table.exit_code == 0, table.output
    [row] = [line for line in table.stdout.splitlines() if line.startswith("m.onnx")]
    assert row.endswith("  NO (ci)") or row.split("  NO (")[1].startswith("ci, "), row


def test_agent_command_is_registered() -> None:
    result = CliRunner().invoke(app, ["agent", "--help"])
    assert result.exit_code == 0 and "--token" in result.output and "--port" in result.output


def test_the_ruler_is_shown_calibrated_and_reset(tmp_path: Path) -> None:
    profile = tmp_path / "quick.json"
    # max_foreign_cores: load from other tests must not refuse the calibration; the host is not the point here.
    profile.write_text(json.dumps({"name": "quick-1t", "warmup": {"runs": 2, "seconds": 0.0},
                                   "protocol": {"min_rounds": 8, "max_rounds": 12, "max_seconds": 5.0,
                                                "ci_target": 0.1, "max_foreign_cores": 4.0}}))
    runner = CliRunner()

    def show() -> dict:
        result = runner.invoke(app, ["devices", "show", str(profile), "--json", "--plain-runs", "5"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    before = show()
    assert before["reference_ms"] is None and before["plain_onnxruntime_ms"] > 0
    calibrated = runner.invoke(app, ["devices", "calibrate", str(profile), "--json"])
    assert calibrated.exit_code == 0, calibrated.output
    ruler = json.loads(calibrated.stdout)["reference_ms"]
    assert ruler > 0 and json.loads(calibrated.stdout)["session"]["env"]["reference_ms"] == ruler
    after = show()
    assert after["reference_ms"] == ruler and after["reference_source"] == "calibration on this host"
    assert after["session_drift"]["sessions"] == 1 and after["session_drift"]["median"] == 0.0
    assert after["session_drift"]["slowed"] == 0 and after["session_drift"]["max_reference_slowdown"] == 0.04
    text = runner.invoke(app, ["devices", "show", str(profile), "--plain-runs", "5"])
    assert "0 ran more than 4% slower than the fastest of them" in text.output, text.output
    assert after["device_key"] == before["device_key"] != after["settings_hash"]
    assert after["plain_over_ruler"] == pytest.approx(after["plain_onnxruntime_ms"] / ruler)
    reset = runner.invoke(app, ["devices", "reset", str(profile)])
    assert reset.exit_code == 0 and "forgotten" in reset.output
    assert show()["reference_ms"] is None


def _anchor_sessions(folder: Path, sessions: int) -> Any:
    """An anchor of three subnets (real files) seen in ``sessions`` sessions, each subnet moving on its own."""
    import numpy as np

    from devices.measure import Measurement
    from hwsearch.anchor import Anchor

    files = []
    for index in range(3):
        files.append([folder / f"{index}.onnx"])
        files[-1][0].write_bytes(b"anchor subnet %d" % index)
    anchor = Anchor.keep(["a", "b", "c"], files, folder / "kept", archs=[{"resolution": 32}] * 3)
    rng = np.random.default_rng(0)
    for session in range(sessions):
        ratios = np.array([1.0, 2.0, 3.0]) * np.exp(rng.normal(0.0, 0.02, 3))
        anchor.observe(f"s{session}", [
            Measurement(model_sha256="0" * 64, latency_ms=r, ratio=r, ratio_ci=0.01, median_ms=r, p10_ms=r,
                        p90_ms=r, p99_ms=r, min_ms=r, mad_ms=0.0, n_runs=10, stable=True, device_hash="d",
                        env={"session_reference_ms": 1.2}) for r in ratios])
    return anchor


def test_show_reports_the_spread_between_sessions_the_hosts_anchor_sessions_show(tmp_path: Path) -> None:
    """What a row's latency_ci adds to its session's CI, per network the device measured on this host."""
    from hwsearch.anchor import HostRecord

    profile = EXAMPLES / "local-1thread.yaml"
    runner = CliRunner()
    shown = runner.invoke(app, ["devices", "show", str(profile), "--json", "--plain-runs", "5"])
    assert shown.exit_code == 0, shown.output
    device_key = json.loads(shown.stdout)["device_key"]
    assert json.loads(shown.stdout)["between_sessions"] == []
    anchor = _anchor_sessions(tmp_path, 12)
    assert HostRecord(device_key, "net").remember(anchor, "fp32") == 12
    assert HostRecord("another device", "net").remember(anchor, "fp32") == 12
    shown = runner.invoke(app, ["devices", "show", str(profile), "--json", "--plain-runs", "5"])
    [spread] = json.loads(shown.stdout)["between_sessions"]
    assert spread == {"network_id": "net", "precision": "fp32", "anchor_subnets": 3, "sessions": 12,
                      "undisturbed_sessions": 12, "session_spread": pytest.approx(anchor.session_spread()),
                      "offset_slope": 0.0, "slope_pairs": 0,  # no subnet kept twice: nothing to lean by
                      "offset_slopes_at": {}}  # and no other precision
    assert 0.01 < spread["session_spread"] < 0.04
    text = runner.invoke(app, ["devices", "show", str(profile), "--plain-runs", "5"]).output
    assert f"network net at fp32: SD {spread['session_spread']:.1%} of one subnet's corrected ratio" in text
    assert "leans by +0.00 per unit of log MACs (from 0 pairs of sessions that measured the same subnet)" in text


def test_an_agent_devices_ruler_is_not_managed_here() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "devices", "show",
                             str(EXAMPLES / "agent-edge.yaml")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "agent" in result.stderr


def test_a_device_registered_with_the_service_is_named_with_store(tmp_path: Path) -> None:
    """`devices show NAME --store S` reads the service's own registration: one profile, one ruler."""
    from tests._server import Server

    quick = {"name": "served-1t", "warmup": {"runs": 2, "seconds": 0.0},
             "protocol": {"min_rounds": 8, "max_rounds": 12, "max_seconds": 5.0,
                          "ci_target": 0.1, "max_foreign_cores": 4.0}}  # calibrate is not refused for load
    store = tmp_path / "service.sqlite"
    server = Server(store).start()
    try:
        with server.client() as client:
            registered = client.post("/devices", json={"profile": quick})
            assert registered.status_code == 201, registered.text
    finally:
        server.stop()
    runner = CliRunner()
    shown = runner.invoke(app, ["devices", "show", "served-1t", "--store", str(store), "--json",
                                "--plain-runs", "5"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["settings_hash"] == registered.json()["hash"]
    calibrated = runner.invoke(app, ["devices", "calibrate", "served-1t", "--store", str(store),
                                     "--json"])
    assert calibrated.exit_code == 0 and json.loads(calibrated.stdout)["reference_ms"] > 0
    unknown = runner.invoke(app, ["devices", "show", "nope", "--store", str(store)])
    assert unknown.exit_code == 2 and "served-1t" in unknown.output
    no_file = runner.invoke(app, ["devices", "reset", "served-1t"])
    assert no_file.exit_code == 2 and "--store" in no_file.output
