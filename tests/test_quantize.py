"""INT8 export: onnxruntime static quantization of the demo supernet's subnets, run for real.

The demo supernet is trained on MNIST digits and ships with its weights, so
agreement with FP32 and accuracy are measured on real predictions; every
model here is run by onnxruntime, the FP32 one beside the INT8 one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from hwsearch.demo import DEMO_CHECKPOINT, DEMO_RECIPE, DEMO_SUPERNET


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo supernet with its weights, its held-out digits, and their calibration/validation parts."""
    from hwsearch.demo.data import write_digits
    from hwsearch.evaldata import DataPlan
    from hwsearch.supernets import create_supernet

    _, heldout = write_digits(tmp_path_factory.mktemp("digits"))
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    split = DataPlan(str(heldout)).open(size=max(net.space.resolutions))
    middle = json.loads(DEMO_RECIPE.read_text())["accuracies"]["middle"]["arch"]
    return {"net": net, "heldout": heldout, "split": split, "arch": net.space.from_dict(middle)}


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    from hwsearch.quantize import run_logits, session

    return run_logits(session(path), images, batch=1)


def test_cli_int8_export_runs_in_onnxruntime_and_agrees_with_fp32(demo: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """``hwsearch export --precision int8``: a checked QDQ file that predicts like its FP32 source.

    Agreement is measured here, independently of the export's own check, on
    validation digits the quantizer never saw.
    """
    from hwsearch.export import export_subnet
    from hwsearch.quantize import images_at

    arch_file = tmp_path / "arch.json"
    arch_file.write_text(demo["arch"].to_json())
    out = tmp_path / "int8.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "hwsearch.cli.main", "export", "--supernet", DEMO_SUPERNET,
         "--checkpoint", str(DEMO_CHECKPOINT), "--arch", str(arch_file), "--out", str(out),
         "--precision", "int8", "--data", str(demo["heldout"]), "--json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed["precision"] == "int8" and printed["quantization"]["method"] == "minmax"
    assert printed["quantization"]["top1_agreement"] >= 0.95
    # 256 calibration images of the 500-image calibration part; the other 244 check the file.
    assert printed["quantization"]["agreement_on"] == "held-out images"
    assert printed["quantization"]["agreement_images"] == 244
    assert "warning" not in run.stderr

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "int8"

    # The FP32 file of the same subnet, BN re-estimated on the same images, as the CLI does.
    calibration = demo["split"].calibration
    fp32 = export_subnet(demo["net"], demo["arch"], tmp_path / "fp32.onnx", bn_data=calibration)
    assert out.stat().st_size < 0.5 * fp32.bytes
    images = images_at(demo["split"].validation, demo["arch"].resolution, 300)
    int8_logits, fp32_logits = _logits(out, images), _logits(fp32.path, images)
    assert int8_logits.shape == fp32_logits.shape == (300, 10)
    agreement = float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean())
    assert agreement >= 0.95, agreement


def _cli_int8_export(demo: dict[str, Any], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(demo["net"].space.smallest().to_json())
    return subprocess.run(
        [sys.executable, "-m", "hwsearch.cli.main", "export", "--supernet", DEMO_SUPERNET,
         "--checkpoint", str(DEMO_CHECKPOINT), "--arch", str(arch_file), "--out", str(tmp_path / "int8.onnx"),
         "--precision", "int8", "--data", str(demo["heldout"]), "--json", *args],
        capture_output=True, text=True, timeout=300)


def test_int8_agreement_is_measured_on_images_the_quantizer_never_saw(demo: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """Calibrated on one image, the smallest subnet's file was said to agree with FP32 on 100% (of that image).

    It scored 0.170 top-1 against FP32's 0.687.  The figure now comes from the
    calibration part's next images, agrees with an independent count on
    validation digits, and is warned about.
    """
    from hwsearch.export import export_subnet
    from hwsearch.quantize import images_at

    run = _cli_int8_export(demo, tmp_path, "--calibration-images", "1")
    assert run.returncode == 0, run.stderr
    q = json.loads(run.stdout)["quantization"]
    assert q["agreement_on"] == "held-out images" and q["agreement_images"] == 256 and q["n_images"] == 1
    assert q["top1_agreement"] < 0.9
    assert f"warning: int8: the file agrees with FP32 on only {100 * q['top1_agreement']:.1f}% of 256" in run.stderr

    arch = demo["net"].space.smallest()
    fp32 = export_subnet(demo["net"], arch, tmp_path / "fp32.onnx", bn_data=demo["split"].calibration)
    images = images_at(demo["split"].validation, arch.resolution, 300)
    on_validation = float((_logits(tmp_path / "int8.onnx", images).argmax(1)
                           == _logits(fp32.path, images).argmax(1)).mean())
    assert on_validation < 0.9 and abs(on_validation - q["top1_agreement"]) < 0.15, (on_validation, q)


def test_int8_agreement_on_the_calibration_images_themselves_is_labelled_and_warned(
        demo: dict[str, Any], tmp_path: Path) -> None:
    """With every image of the calibration part calibrating, none is left to check on: the figure says so."""
    run = _cli_int8_export(demo, tmp_path, "--calibration-images", "500")
    assert run.returncode == 0, run.stderr
    q = json.loads(run.stdout)["quantization"]
    assert q["agreement_on"] == "calibration images" and q["agreement_images"] == q["n_images"] == 500
    assert "warning: int8: the agreement with FP32 was measured on the 500 images the quantizer calibrated on" \
        in run.stderr


def test_int8_accuracy_is_measured_on_the_quantized_model_after_bn_recalibration(
        demo: dict[str, Any]) -> None:
    """INT8 accuracy (onnxruntime) sits within two points of FP32 (torch), both after the same BN step."""
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.onnx_accuracy import quantized_accuracy

    split = demo["split"]
    fp32 = subnet_accuracy(demo["net"], demo["arch"], split.calibration, split.validation,
                           EvalSettings())
    int8 = quantized_accuracy(demo["net"], demo["arch"], split.calibration, split.validation)
    assert fp32 > 0.9  # the recorded accuracy of this subnet is 0.945
    assert abs(int8 - fp32) <= 0.02, (int8, fp32)


def test_percentile_calibration_is_the_documented_alternative(demo: dict[str, Any],
                                                              tmp_path: Path) -> None:
    from hwsearch.export import export_subnet
    from hwsearch.quantize import QuantizeSettings

    report = export_subnet(demo["net"], demo["arch"], tmp_path / "p.onnx", precision="int8",
                           calibration=demo["split"].calibration,
                           quantize=QuantizeSettings(method="percentile", n_images=64))
    assert report.quantization["method"] == "percentile"
    assert report.quantization["n_images"] == 64
    assert report.quantization["top1_agreement"] >= 0.9


@pytest.mark.parametrize("args, message", [
    (["--precision", "int4"], "error: precision 'int4' is not one of ['fp32', 'int8'] (--precision)"),
    (["--precision", "int8"], "give --data (--data)"),
    (["--precision", "int8", "--data", "{data}", "--calibration-method", "entropy"],
     "calibration method 'entropy' is not one of ['minmax', 'percentile'] (--calibration-method)"),
    (["--precision", "int8", "--data", "{data}", "--batch", "40", "--calibration-images", "32"],
     "--batch 40 is more than the 32 calibration images it has"),
])
def test_bad_precision_settings_are_one_line_errors(demo: dict[str, Any], tmp_path: Path,
                                                    args: list[str], message: str) -> None:
    args = [a.replace("{data}", str(demo["heldout"])) for a in args]
    run = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "export", "--supernet",
                          DEMO_SUPERNET, "--out", str(tmp_path / "x.onnx"), *args],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert message in run.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_an_autoformer_int8_file_is_smaller_than_its_fp32_one(tmp_path: Path, capfd: pytest.CaptureFixture[str]
                                                              ) -> None:
    """Quantization's graph optimisation wrote AutoFormer's relative-position tables out whole: 2.98x FP32 (Z11).

    The quantizer also said, once per layer norm, that it quantized a 1-D weight per tensor (as it should).
    """
    from hwsearch.export import export_subnet
    from hwsearch.quantize import quantize_onnx
    from hwsearch.supernets import create_supernet

    net = create_supernet("autoformer_tiny")
    fp32 = tmp_path / "fp32.onnx"
    export_subnet(net, net.space.sample(0, 1)[0], fp32, check=False)
    images = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    report = quantize_onnx(fp32, tmp_path / "int8.onnx", images)
    assert report.bytes < 0.5 * report.fp32_bytes, (report.bytes, report.fp32_bytes)
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(node.op_type == "DequantizeLinear" for node in int8.graph.node)
    assert "is out-of-range for weight" not in capfd.readouterr().err


def test_export_subnet_refuses_what_it_cannot_quantize(demo: dict[str, Any], tmp_path: Path) -> None:
    from hwsearch.export import export_subnet
    from hwsearch.quantize import PrecisionError

    with pytest.raises(PrecisionError, match="precision 'fp8' is not one of"):
        export_subnet(demo["net"], demo["arch"], tmp_path / "a.onnx", precision="fp8")
    with pytest.raises(ValueError, match="needs input_dtype float32 and calibration images"):
        export_subnet(demo["net"], demo["arch"], tmp_path / "b.onnx", precision="int8")
    with pytest.raises(ValueError, match="needs input_dtype float32"):
        export_subnet(demo["net"], demo["arch"], tmp_path / "c.onnx", precision="int8",
                      input_dtype="float16", calibration=demo["split"].calibration)
    assert not list(tmp_path.glob("*.onnx"))


def _quantizer_children() -> list[int]:
    """Pids of this process's quantizer children (see :mod:`hwsearch.quantize_worker`)."""
    found = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "hwsearch.quantize_worker"],
                           capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_the_quantizer_child_reports_onnxruntimes_errors_and_is_started_again_after_it_dies(
        demo: dict[str, Any], tmp_path: Path) -> None:
    """One child serves every quantization; a model onnxruntime rejects is an error, a dead child is replaced."""
    from hwsearch.export import export_subnet
    from hwsearch.quantize import QuantizeSettings
    from hwsearch.quantize_worker import QuantizerError, quantize_in_child

    def quantize(name: str) -> float:
        report = export_subnet(demo["net"], demo["arch"], tmp_path / name, precision="int8",
                               calibration=demo["split"].calibration, quantize=QuantizeSettings(n_images=32))
        return report.quantization["top1_agreement"]

    assert quantize("first.onnx") >= 0.9
    first = _quantizer_children()
    assert len(first) == 1, first
    with pytest.raises(QuantizerError, match="^onnxruntime could not quantize the model: .+"):
        quantize_in_child(b"not an onnx model", np.zeros((2, 3, 8, 8), np.float32), 1,
                          input_name="input", method="minmax", per_channel=True)
    assert quantize("same_child.onnx") >= 0.9 and _quantizer_children() == first

    os.kill(first[0], signal.SIGKILL)  # as an out-of-memory kill would, between two calls
    deadline = time.monotonic() + 30
    while first[0] in _quantizer_children():
        assert time.monotonic() < deadline, "SIGKILL did not end the quantizer"
        time.sleep(0.01)
    assert quantize("new_child.onnx") >= 0.9
    second = _quantizer_children()
    assert len(second) == 1 and second != first


def test_a_forked_process_starts_its_own_quantizer_even_when_forked_mid_call(
        demo: dict[str, Any], tmp_path: Path) -> None:
    """A fork copies the parent's quantizer handle and lock (held, if a thread was quantizing); it must use neither.

    Holding the lock across ``os.fork`` stands in for another thread being
    in the middle of a quantization at that moment, which a timed thread
    could hit only by chance.  Without the fork hook the forked process
    would wait for a lock no thread of its own will ever release.
    """
    from hwsearch.export import export_subnet
    from hwsearch.quantize_worker import _CHILD, quantize_in_child

    export_subnet(demo["net"], demo["arch"], tmp_path / "fp32.onnx")
    model = (tmp_path / "fp32.onnx").read_bytes()
    dims = [d.dim_value for d in onnx.load_from_string(model).graph.input[0].type.tensor_type.shape.dim]
    images = np.random.default_rng(0).standard_normal((4, *dims[1:])).astype(np.float32)

    def quantize() -> bytes:
        return quantize_in_child(model, images, 1, input_name="input", method="minmax", per_channel=True)

    in_parent = quantize()
    parents_quantizer = _quantizer_children()
    assert len(parents_quantizer) == 1, parents_quantizer
    read_end, write_end = os.pipe()
    with _CHILD._lock:
        pid = os.fork()
        if pid == 0:  # the forked process: report what it got, never return into pytest
            try:
                os.close(read_end)
                signal.alarm(120)  # a deadlock ends the process, and the parent sees no report
                same = quantize() == in_parent
                os.write(write_end, json.dumps({"same": same, "quantizers": _quantizer_children()}).encode())
            finally:
                os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reports:
        report = reports.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"forked process ended with status {status}"
    assert report, "the forked process could not quantize (it hung on its parent's lock, or failed)"
    forked = json.loads(report)
    assert forked["same"], "the forked process's quantizer returned other bytes for the same request"
    assert len(forked["quantizers"]) == 1 and forked["quantizers"] != parents_quantizer
    assert quantize() == in_parent and _quantizer_children() == parents_quantizer
