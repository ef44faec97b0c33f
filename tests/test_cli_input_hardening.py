"""Inputs that hung a command, ended it in a traceback, or failed it only after the work.

Each case runs the real command in a subprocess on real files (FIFOs, sparse
files, files where folders belong) and checks the one ``error: ...`` line
naming the option, exit code 2, and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli_hardening import _front_json
from tests.test_cli_errors import LOCAL_PROFILE, _cli_env, assert_one_line_error, run_cli

TOKEN = "a-token-long-enough-for-the-service"
#: A sparse file this large takes no disk, and reading it whole ended in a MemoryError.
SPARSE_BYTES = 50 << 30


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder\n")
    return path


@pytest.fixture
def sparse(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = tmp_path / request.param
    path.touch()
    os.truncate(path, SPARSE_BYTES)
    try:
        yield path
    finally:
        path.unlink()


def serve_args(tmp_path: Path, *more: str) -> list[str]:
    return ["serve", "--store", str(tmp_path / "s.sqlite"), "--token", TOKEN, "--port", "0", *more]


# --------------------------------------------------------------------------- FIFOs


@pytest.mark.parametrize("command", ["serve", "agent"])
def test_a_fifo_as_certificate_is_refused_not_waited_on(tmp_path: Path, fifo: Path, command: str) -> None:
    """Loading the pair from a FIFO blocked the start forever."""
    tls = ["--ssl-certfile", str(fifo), "--ssl-keyfile", str(fifo)]
    args = serve_args(tmp_path, *tls) if command == "serve" else ["agent", "--token", TOKEN, "--port", "0", *tls]
    assert_one_line_error(run_cli(*args, cwd=tmp_path), 2, "--ssl-certfile", str(fifo), "not a regular file")
    assert not (tmp_path / "s.sqlite").exists()


def test_a_fifo_as_key_is_refused_not_waited_on(tmp_path: Path, fifo: Path) -> None:
    from tests._tls import self_signed_certificate

    certfile, _ = self_signed_certificate(tmp_path)
    result = run_cli(*serve_args(tmp_path, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(fifo)),
                     cwd=tmp_path)
    assert_one_line_error(result, 2, "--ssl-keyfile", str(fifo), "not a regular file")


def test_the_bare_agent_refuses_a_fifo_as_certificate(tmp_path: Path, fifo: Path) -> None:
    """``python -m devices.agent`` (no hwsearch on the box) checks too, in hwsearch's one-line form."""
    result = subprocess.run([sys.executable, "-m", "devices.agent", "--token", TOKEN, "--port", "0",
                             "--ssl-certfile", str(fifo), "--ssl-keyfile", str(fifo)], cwd=tmp_path,
                            env=_cli_env(tmp_path, None), capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, 2, "--ssl-certfile", str(fifo), "not a regular file")


@pytest.mark.parametrize("runner", ["hwsearch agent", "python -m devices.agent"])
def test_both_agents_stop_on_a_certificate_and_key_that_do_not_match_in_one_line(tmp_path: Path, runner: str) -> None:
    """The bare agent printed a plain message and ended 1; ``hwsearch agent`` the same, unlike its other errors."""
    from tests._tls import self_signed_certificate

    certfile, _ = self_signed_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed_certificate(tmp_path / "other")
    args = ["--token", TOKEN, "--port", "0", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(other_key)]
    temp = tmp_path / "temp"  # where the agent makes its state folder when given none
    temp.mkdir()
    if runner == "hwsearch agent":
        result = run_cli("agent", *args, cwd=tmp_path, extra_env={"TMPDIR": str(temp)})
    else:
        result = subprocess.run([sys.executable, "-m", "devices.agent", *args], cwd=tmp_path,
                                env=_cli_env(tmp_path, {"TMPDIR": str(temp)}), capture_output=True, text=True,
                                timeout=60)
    assert_one_line_error(result, 2, f"cannot use {certfile} with {other_key}")
    assert not list(temp.glob("devices-agent-*")), "a refused start left a state folder"


def test_a_fifo_as_agent_secrets_is_refused_not_waited_on(tmp_path: Path, fifo: Path) -> None:
    result = run_cli(*serve_args(tmp_path, "--agent-secrets", str(fifo)), cwd=tmp_path)
    assert_one_line_error(result, 2, "--agent-secrets", str(fifo), "not a regular file")
    assert not (tmp_path / "s.sqlite").exists()


def test_a_fifo_as_checkpoint_is_not_called_missing(tmp_path: Path, fifo: Path) -> None:
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(fifo),
                     "--out", str(tmp_path / "x.onnx"), cwd=tmp_path)
    line = assert_one_line_error(result, 2, "--checkpoint", str(fifo), "not a regular file")
    assert "does not exist" not in line


def test_agent_secrets_are_still_read(tmp_path: Path) -> None:
    """The bounded reader reads a good file: the agent gets its token (stopped by a bad --agent after)."""
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"edge": "its-token"}')
    result = run_cli(*serve_args(tmp_path, "--agent-secrets", str(secrets), "--agent", "edge=http://127.0.0.1:1",
                                 "--agent", "other=http://127.0.0.1:1"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "'other' has no token" in result.stderr and "'edge'" not in result.stderr, result.stderr


@pytest.mark.parametrize("content, says", [(b'{"edge": ', "is not JSON"), (b'{"a": "SECRET\xfftoken"}', "not UTF-8"),
                                           (b'["edge"]', "expected a JSON object of agent name -> token")],
                         ids=["cut-short", "not-utf8", "a-list"])
def test_a_secrets_file_that_is_not_a_json_object_is_named_as_agent_secrets(
        tmp_path: Path, content: bytes, says: str) -> None:
    """It was reported under --agent, an option the operator had given right."""
    secrets = tmp_path / "secrets.json"
    secrets.write_bytes(content)
    result = run_cli(*serve_args(tmp_path, "--agent-secrets", str(secrets), "--agent", "edge=http://127.0.0.1:1"),
                     cwd=tmp_path)
    line = assert_one_line_error(result, 2, "--agent-secrets", str(secrets), says)
    assert "(--agent)" not in line and "0xff" not in line and "position" not in line


# --------------------------------------------------------------------------- unbounded reads


@pytest.mark.parametrize("sparse", ["secrets.json"], indirect=True)
def test_a_huge_agent_secrets_file_is_refused_unread(tmp_path: Path, sparse: Path) -> None:
    """read_text on a 50 GB sparse file ended in a MemoryError traceback."""
    result = run_cli(*serve_args(tmp_path, "--agent-secrets", str(sparse)), cwd=tmp_path)
    assert_one_line_error(result, 2, "--agent-secrets", str(sparse), "at most")


@pytest.mark.parametrize("sparse", ["huge.onnx"], indirect=True)
def test_a_huge_model_is_refused_unread(tmp_path: Path, sparse: Path) -> None:
    """read_bytes on a 50 GB sparse file ended in a MemoryError traceback."""
    result = run_cli("measure", str(sparse), "--device", str(LOCAL_PROFILE), cwd=tmp_path)
    assert_one_line_error(result, 2, "MODELS", str(sparse), "at most")


# --------------------------------------------------------------------------- --test-fraction


@pytest.mark.parametrize("fraction", ["nan", "inf", "-inf", "-1", "0", "1", "2"])
def test_a_test_fraction_outside_0_1_is_a_usage_error(tmp_path: Path, fraction: str) -> None:
    (tmp_path / "s.sqlite").touch()
    result = run_cli("train", "--supernet", "demo_mbv3_mnist", "--store", "s.sqlite", "--out", "predictor",
                     "--test-fraction", fraction, cwd=tmp_path)
    assert_one_line_error(result, 2, "--test-fraction")
    assert not (tmp_path / "predictor").exists()


# --------------------------------------------------------------------------- --arch


def test_an_arch_file_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    """json kept the last one: {"resolution": 16, "resolution": 32} was exported at 32."""
    arch = tmp_path / "a.json"
    arch.write_text('{"resolution": 16, "resolution": 32}')
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--arch", str(arch),
                     "--out", str(tmp_path / "x.onnx"), cwd=tmp_path)
    assert_one_line_error(result, 2, "--arch", "resolution", "twice")
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- output folders that are files


def _folder_cases(tmp_path: Path, afile: Path) -> dict[str, list[str]]:
    (tmp_path / "s.sqlite").touch()
    fronts = tmp_path / "fronts"
    fronts.mkdir()
    (fronts / "x.json").write_text(json.dumps(_front_json()))  # a readable front: the job is read first
    return {
        "train": ["train", "--supernet", "demo_mbv3_mnist", "--store", "s.sqlite", "--out", str(afile)],
        "report": ["report", str(fronts), "--out", str(afile)],
        "agent": ["agent", "--token", TOKEN, "--port", "0", "--state-dir", str(afile)],
        "serve": serve_args(tmp_path, "--data-root", str(afile)),
    }


@pytest.mark.parametrize("command, option", [("train", "--out"), ("report", "--out"), ("agent", "--state-dir"),
                                             ("serve", "--data-root")])
def test_a_file_where_an_output_folder_belongs_is_a_usage_error(tmp_path: Path, afile: Path, command: str,
                                                                option: str) -> None:
    """train failed only after fitting, report after plotting ("File exists", code 1), agent as
    "afile/models: Not a directory", serve only once the app was built."""
    result = run_cli(*_folder_cases(tmp_path, afile)[command], cwd=tmp_path)
    assert_one_line_error(result, 2, option, str(afile), "not a folder")
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize("option", ["--data", "--calibration"])
def test_a_fifo_as_a_dataset_is_refused_unread(tmp_path: Path, option: str) -> None:
    """``mkfifo d.npz`` given as data or calibration held profile-accuracy for ever (killed at 120 s)."""
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).integers(0, 256, (48, 28, 28, 1), np.uint8), y=np.arange(48) % 10)
    data, calibration = (fifo, good) if option == "--data" else (good, fifo)
    result = run_cli("profile-accuracy", "--supernet", "demo_mbv3_mnist", "--data", str(data), "--calibration",
                     str(calibration), "--store", str(tmp_path / "s.sqlite"), "--n", "1", "--device", "cpu",
                     cwd=tmp_path)
    assert_one_line_error(result, 2, str(fifo), "is not a regular file", "--data")
