"""Data or weights no accuracy can be read from fail, naming the cause, before any work; they never succeed.

Review W ran real CLI commands: a checkpoint of NaN weights and pixels near 3e38 (finite, but not once
normalised) gave ``exit 0`` and one accuracy for every subnet (argmax of NaN is class 0); labels past
the supernet's head ended ``profile-accuracy`` in a traceback and ``search`` only after every device
was measured; two devices of one name failed at refinement; SIGTERM in ``profile-accuracy`` ended in
Ray's stack dump.  Real CLI runs, real files, the demo supernet and its checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli_errors import DEMO_CHECKPOINT, LOCAL_PROFILE, _cli_env, assert_one_line_error, run_cli, search_args


def digits(path: Path, *, labels: np.ndarray | None = None, pixels: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 28, 28, 1), dtype=np.uint8) if pixels is None else pixels
    np.savez(path, x=x, y=rng.integers(0, 10, len(x)) if labels is None else labels)
    return path


def profile_accuracy(data: Path, tmp_path: Path, checkpoint: Path = DEMO_CHECKPOINT, n: int = 2) -> list[str]:
    return ["profile-accuracy", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(checkpoint), "--data",
            str(data), "--store", str(tmp_path / "store.sqlite"), "--n", str(n), "--device", "cpu"]


def test_labels_past_the_head_are_a_usage_error_naming_data(tmp_path: Path) -> None:
    """A traceback in profile-accuracy; in search, after the devices were measured (17 s in)."""
    data = digits(tmp_path / "wide.npz", labels=np.arange(48))
    result = run_cli(*profile_accuracy(data, tmp_path), cwd=tmp_path)
    assert_one_line_error(result, 2, "labels reach class 47", "predicts 10 classes", "--data")
    started = time.monotonic()
    result = run_cli(*search_args(tmp_path / "run", data=data), cwd=tmp_path)
    assert_one_line_error(result, 2, "labels reach class 47", "--data")
    assert time.monotonic() - started < 60 and not (tmp_path / "run").exists(), "it measured before refusing"


def test_two_devices_of_one_name_are_refused_before_any_work(tmp_path: Path) -> None:
    result = run_cli(*search_args(tmp_path / "run", data=digits(tmp_path / "d.npz")), "--device",
                     str(LOCAL_PROFILE), cwd=tmp_path)
    assert_one_line_error(result, 2, "device names must be unique", "--device")
    assert not (tmp_path / "run").exists()


def test_pixels_outside_their_range_are_refused_naming_the_file(tmp_path: Path) -> None:
    """Pixels near 3e38 overflowed once normalised; floats of 0..255 were scored as they were."""
    data = digits(tmp_path / "huge.npz", pixels=np.full((48, 28, 28, 1), 3e38, np.float32))
    result = run_cli(*profile_accuracy(data, tmp_path), cwd=tmp_path)
    assert_one_line_error(result, 2, "huge.npz", "float pixels must lie in [0, 1]", "--data")
    grey = digits(tmp_path / "grey.npz")
    with np.load(grey) as arrays:
        np.savez(tmp_path / "grey-float.npz", x=arrays["x"].astype(np.float32), y=arrays["y"])
    result = run_cli(*profile_accuracy(tmp_path / "grey-float.npz", tmp_path), cwd=tmp_path)
    assert_one_line_error(result, 2, "grey-float.npz", "x holds 0..255", "--data")


@pytest.mark.parametrize("supernet, says_bn", [("demo_mbv3_mnist", True), ("demo_vit_mnist", False)])
def test_the_summary_claims_batch_norm_recalibration_only_for_a_supernet_with_batch_norm(
        tmp_path: Path, supernet: str, says_bn: bool) -> None:
    """A ViT's summary said "(BN on 24)": it has layer norms only, and nothing was recalibrated."""
    from hwsearch.demo import DEMO_CHECKPOINT as MBV3, DEMO_VIT_CHECKPOINT as VIT

    args = profile_accuracy(digits(tmp_path / "d.npz"), tmp_path, checkpoint=VIT if "vit" in supernet else MBV3)
    args[args.index("demo_mbv3_mnist")] = supernet
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("(BN on 24)" in result.stdout) == says_bn and "2 subnets on 24 validation images" in result.stdout, \
        result.stdout


def test_an_unreadable_image_in_a_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    """A macOS ._x.png is hidden and skipped; a truncated image ended profile-accuracy in a 95-line Ray traceback."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(10):
        (tmp_path / "val" / str(label)).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                tmp_path / "val" / str(label) / f"{index}.png")
    (tmp_path / "val" / "4" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # skipped
    (tmp_path / "val" / "7" / "cut.png").write_bytes((tmp_path / "val" / "7" / "0.png").read_bytes()[:60])
    args = profile_accuracy(tmp_path / "val", tmp_path)
    args[args.index("--n") + 1] = "1"
    result = run_cli(*args, "--n-calibration", "4", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()  # Ray's "Started a local Ray instance" comes first
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith("error: ") and "7/cut.png: not a readable image" in lines[-1], lines[-1]
    assert "._0.png" not in result.stderr


def test_weights_that_give_no_numbers_fail_the_run_not_score_it(tmp_path: Path) -> None:
    import torch

    weights = torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)
    state = weights.get("state_dict", weights) if isinstance(weights, dict) else weights
    head = [name for name in state if "classifier" in name and name.endswith("weight")]
    assert head, sorted(state)[-5:]
    for name in head:
        state[name] = torch.full_like(state[name], float("nan"))
    torch.save(weights, tmp_path / "nan.pt")
    result = run_cli(*profile_accuracy(digits(tmp_path / "d.npz"), tmp_path, checkpoint=tmp_path / "nan.pt"),
                     cwd=tmp_path)
    assert result.returncode not in (0, 2) and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "gives NaN or infinite outputs" in result.stderr, result.stderr[-2000:]


#: A command whose SIGTERM exit is swallowed and replaced by SystemExit(1), as Ray's ``ray.wait`` does.
_SWALLOWED_SIGTERM = """
import os, signal, sys, time
import typer
from hwsearch.cli._errors import exit_on_sigterm
from hwsearch.cli.main import _ReportingGroup

app = typer.Typer(cls=_ReportingGroup)

@app.command()
def waits() -> None:
    exit_on_sigterm()
    swallowed = False
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except SystemExit:
        swallowed = True
    if swallowed:
        raise SystemExit(1)  # outside the except: Ray's carries no trace of the first exit

@app.command()
def fails() -> None:
    raise SystemExit(1)

app()
"""


@pytest.mark.parametrize("args, code, said", [(["waits"], 128 + signal.SIGTERM, "terminated"), (["fails"], 1, "")])
def test_an_exit_after_sigterm_ends_as_terminated_whatever_its_code(tmp_path: Path, args: list[str], code: int,
                                                                    said: str) -> None:
    """Ray's ``ray.wait`` raises SystemExit(1) in place of SIGTERM's SystemExit(15): 5 of 108 stops of
    profile-accuracy ended 1, without a word."""
    result = subprocess.run([sys.executable, "-c", _SWALLOWED_SIGTERM, *args], cwd=tmp_path,
                            env=_cli_env(tmp_path, None), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip()) == (code, said), result.stderr[-2000:]


def test_starting_ray_keeps_the_commands_sigterm_handler(tmp_path: Path) -> None:
    """ray.init in the main thread put its own bare sys.exit(15) in place of the CLI's, which records SIGTERM."""
    script = ("import signal\n"
              "from hwsearch.cli._errors import exit_on_sigterm\n"
              "from hwsearch.ray_session import init_ray\n"
              "exit_on_sigterm()\n"
              "ours = signal.getsignal(signal.SIGTERM)\n"
              "init_ray(num_cpus=1)\n"
              "print(signal.getsignal(signal.SIGTERM) is ours, ours.__qualname__)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_cli_env(tmp_path, None),
                            capture_output=True, text=True, timeout=180)
    assert result.stdout.split() == ["True", "_exit_for_sigterm"], (result.stdout, result.stderr[-2000:])
