"""ONNX export: real files, checked with onnx.checker and compared with onnxruntime here again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import hwsearch
from _ofa_reference import randomize_weights
from hwsearch.cli.main import app
from hwsearch.export import ExportCheckError, export_onnx, export_subnet
from hwsearch.supernets import Supernet, create_supernet

MBV3 = "ofa_mbv3_d234_e346_k357_w1.0"


@pytest.fixture(scope="module")
def mbv3() -> Supernet:
    net = create_supernet(MBV3)
    randomize_weights(net.module, seed=3)
    return net


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return session.run(None, {"input": x.numpy()})[0]


def test_export_subnet_writes_a_verified_model_with_metadata(mbv3: Supernet,
                                                             tmp_path: Path) -> None:
    arch = dataclasses.replace(mbv3.space.sample(np.random.default_rng(0), 1)[0], resolution=224)
    path = tmp_path / "sub" / "mbv3.onnx"

    report = export_subnet(mbv3, arch, path)

    assert report.path == path and report.bytes == path.stat().st_size
    assert report.input_shape == (1, 3, 224, 224)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert (report.macs, report.params) == (mbv3.count(arch).macs, mbv3.count(arch).params)
    assert report.seconds > 0 and report.check_seconds > 0
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert path.read_bytes() == model.SerializeToString()  # the props appended as bytes: a canonical file
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    props = {p.key: p.value for p in model.metadata_props}
    assert len(props) == len(model.metadata_props) == 7  # each key once
    assert props["supernet"] == MBV3 and props["arch_key"] == arch.key()
    assert props["bn_statistics"] == report.bn_statistics == "inherited"  # no bn_data: the supernet's
    assert props["hwsearch_version"] == hwsearch.__version__
    assert mbv3.space.from_json(props["arch_json"]) == arch
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = mbv3.forward(x, arch).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_run_onnx(path, x), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch", [0, -1, 2.5, True, "2"])
def test_export_subnet_refuses_a_batch_that_is_not_a_positive_whole_number(batch: object,
                                                                           tmp_path: Path) -> None:
    """0 once divided by zero, -1 and 2.5 failed inside torch; each is now refused by name."""
    net = create_supernet("demo_mbv3_mnist")
    path = tmp_path / "demo.onnx"

    with pytest.raises(ValueError, match="batch"):
        export_subnet(net, net.space.sample(0, 1)[0], path, batch=batch)

    assert not path.exists()


def test_export_resnet50_with_odd_feature_maps(tmp_path: Path) -> None:
    """132 px gives 33x33 and 17x17 maps: ceil-mode average pooling must survive the export."""
    net = create_supernet("ofa_resnet50")
    randomize_weights(net.module, seed=4)
    arch = net.space.smallest(132)
    report = export_subnet(net, arch, tmp_path / "resnet.onnx", batch=2)
    assert report.input_shape == (2, 3, 132, 132) and report.max_abs_diff <= 1e-4
    x = torch.randn(2, 3, 132, 132)
    with torch.no_grad():
        expected = net.forward(x, arch).numpy()
    np.testing.assert_allclose(_run_onnx(tmp_path / "resnet.onnx", x), expected, rtol=0, atol=1e-4)


def test_export_onnx_generic_module_and_failed_check(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(4, 2)).train()
    report = export_onnx(module, tmp_path / "m.onnx", input_shape=(1, 3, 8, 8),
                         metadata={"purpose": "test"}, check=False)
    assert report.max_abs_diff is None and module.training
    assert report.macs == 8 * 8 * 4 * 3 * 9 + 4 * 2
    assert report.params == sum(p.numel() for p in module.parameters())
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props == {"purpose": "test", "hwsearch_version": hwsearch.__version__}
    with pytest.raises(ExportCheckError, match="more than the tolerance"):
        export_onnx(module, tmp_path / "bad.onnx", input_shape=(1, 3, 8, 8), tolerance=-1.0)
    assert not (tmp_path / "bad.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_check_scales_with_large_outputs(tmp_path: Path) -> None:
    """Logits in the tens of thousands differ by float rounding alone; a correct graph still passes.

    A trained demo subnet reached logits of 2,726 on the check's random input
    and differed from onnxruntime by 2.4e-4, over a bare 1e-4.  Here the
    outputs are about 1e5, whose float32 spacing alone is about 0.008.
    """
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                           nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16 * 16, 10))
    with torch.no_grad():
        module[-1].weight.mul_(1e5)
    report = export_onnx(module, tmp_path / "large.onnx", input_shape=(1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = float(module(x).abs().max())
    assert scale > 1e4
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4 + 1e-5 * scale
    np.testing.assert_allclose(_run_onnx(tmp_path / "large.onnx", x), module(x).detach().numpy(),
                               rtol=1e-5, atol=1e-5 * scale)
    with pytest.raises(ExportCheckError, match="more than the tolerance"):
        export_onnx(module, tmp_path / "bad.onnx", input_shape=(1, 3, 16, 16), tolerance=-scale)


# --------------------------------------------------------------------------- CLI


def test_cli_export_sampled_and_ofa_native_arch(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--supernet", MBV3, "--seed", "3",
                                 "--out", str(tmp_path / "a.onnx")])
    assert result.exit_code == 0, result.output
    assert "MACs" in result.output and "check    passed" in result.output
    native = {"ks": [3, 5, 7, 3] * 5, "e": [3, 4, 6, 4] * 5, "d": [2, 3, 4, 2, 3], "r": [128]}
    (tmp_path / "arch.json").write_text(json.dumps(native))
    result = runner.invoke(app, ["export", "--supernet", MBV3,
                                 "--arch", str(tmp_path / "arch.json"),
                                 "--out", str(tmp_path / "b.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the warnings below go to stderr, so stdout stays one JSON object
    assert data["weights"] == "random initialisation" and data["bn_statistics"] == "inherited"
    assert "no --checkpoint" in result.stderr and "no --data" in result.stderr
    net = create_supernet(MBV3)
    arch = net.space.from_dict(native)
    assert data["arch_key"] == arch.key() and data["check"] == "passed"
    assert data["macs"] == net.count(arch).macs and data["input_shape"] == [1, 3, 128, 128]
    assert Path(data["path"]).stat().st_size == data["bytes"]


def test_cli_export_uses_the_checkpoint(mbv3: Supernet, tmp_path: Path) -> None:
    torch.save({"state_dict": mbv3.module.state_dict()}, tmp_path / "weights.pth")
    arch = mbv3.space.smallest(128)
    (tmp_path / "arch.json").write_text(arch.to_json())
    result = CliRunner().invoke(app, ["export", "--supernet", MBV3,
                                      "--checkpoint", str(tmp_path / "weights.pth"),
                                      "--arch", str(tmp_path / "arch.json"),
                                      "--out", str(tmp_path / "s.onnx")])
    assert result.exit_code == 0, result.output
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = mbv3.forward(x, arch).numpy()
    np.testing.assert_allclose(_run_onnx(tmp_path / "s.onnx", x), expected, rtol=0, atol=1e-4)
    state = mbv3.module.state_dict()
    del state["classifier.linear.bias"]
    torch.save(state, tmp_path / "broken.pth")
    result = CliRunner().invoke(app, ["export", "--supernet", MBV3,
                                      "--checkpoint", str(tmp_path / "broken.pth"),
                                      "--out", str(tmp_path / "t.onnx")])
    assert result.exit_code == 2 and "missing keys: classifier.linear.bias" in result.output


def test_cli_export_with_data_ships_the_accuracy_the_subnet_has(tmp_path: Path) -> None:
    """A file exported with --data scores what the subnet scores; one without says it is fit for latency only.

    Both files pass the export check (onnxruntime against the same torch
    module), so only scoring the files tells them apart: before, the one
    without --data was exported as silently as the other.
    """
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.demo.data import write_digits
    from hwsearch.evaldata import DataPlan
    from hwsearch.onnx_accuracy import file_top1

    _, heldout = write_digits(tmp_path / "data")
    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    arch = net.space.sample(4, 1)[0]
    split = DataPlan(str(heldout)).open(size=max(net.space.resolutions))
    expected = subnet_accuracy(net, arch, split.calibration, split.validation, EvalSettings())
    base = ["export", "--supernet", DEMO_SUPERNET, "--checkpoint", str(DEMO_CHECKPOINT), "--seed", "4", "--json"]
    scored = {}
    for name, extra in {"with": ["--data", str(heldout)], "without": []}.items():
        result = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / f"{name}.onnx")])
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)
        assert printed["arch_key"] == arch.key() and printed["weights"] == str(DEMO_CHECKPOINT)
        scored[name] = (printed["bn_statistics"], file_top1(tmp_path / f"{name}.onnx", split.validation,
                                                             arch.resolution), result.stderr)
        assert onnx.load(tmp_path / f"{name}.onnx").metadata_props  # provenance travels with the file
    bn, accuracy, warnings = scored["with"]
    assert bn == "recalibrated" and accuracy == pytest.approx(expected, abs=0.01) and "warning" not in warnings
    bn, accuracy, warnings = scored["without"]
    assert bn == "inherited" and "no --data: batch norm keeps the supernet's" in warnings
    assert accuracy < expected - 0.1  # why the warning: the file is far from the subnet's accuracy
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "without.onnx").metadata_props}
    assert metadata["bn_statistics"] == "inherited"


def test_cli_export_reports_bad_input(tmp_path: Path) -> None:
    (tmp_path / "arch.json").write_text(json.dumps({"resolution": 100, "depths": [2, 2, 2, 2, 2]}))
    result = CliRunner().invoke(app, ["export", "--supernet", MBV3,
                                      "--arch", str(tmp_path / "arch.json"),
                                      "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "resolution=100 is not allowed" in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_cli_supernets_list() -> None:
    result = CliRunner().invoke(app, ["supernets", "list", "--json"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.stdout)]
    assert {MBV3, "ofa_mbv3_d234_e346_k357_w1.2", "ofa_resnet50"} <= set(names)
