"""The ``hwsearch`` CLI reports bad input and failed work in one line, not a traceback.

Every case runs the real command in a subprocess and checks what a user
sees: a non-zero exit code (2 bad input, 1 failed work, 130 interrupted), a
single ``error: ...`` line on stderr naming the option or the file, no
traceback unless ``--debug`` or ``HWSEARCH_DEBUG=1`` asks for it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from devices.reference import mobilenet_like_onnx

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "hwsearch" / "demo" / "demo_mbv3_mnist.pt"
LOCAL_PROFILE = REPO / "examples" / "devices" / "local-1thread.yaml"
TIMEOUT_S = 120
TOKEN = "a-token-of-16-chars"  # a server refuses a shorter one


def run_cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``hwsearch ARGS`` as a user runs it, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "hwsearch.cli.main", *args], cwd=cwd,
                          env=_cli_env(cwd, extra_env), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _cli_env(cwd: Path, extra_env: dict[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "HWSEARCH_DEBUG"}
    env.update(RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1",
               DEVICES_CALIBRATION_DIR=str(cwd / "calibration"), **(extra_env or {}))
    return env


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int,
                          *mentions: str) -> str:
    """The command failed with ``exit_code`` and one ``error:`` line containing ``mentions``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == exit_code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for mention in mentions:
        assert mention in lines[0], lines[0]
    return lines[0]


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_agent_profile(path: Path, port: int) -> Path:
    path.write_text(
        "name: edge\n"
        f"where: {{kind: agent, url: 'http://127.0.0.1:{port}', token_env: HWSEARCH_TEST_TOKEN,"
        " retries: 0, timeout_s: 60}\n")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.onnx"
    path.write_bytes(mobilenet_like_onnx(((16, 8, 3, 2),), seed=1, input_shape=(1, 3, 32, 32)))
    return path


def search_args(out: Path, *, data: Path, device: Path = LOCAL_PROFILE) -> list[str]:
    return ["search", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(DEMO_CHECKPOINT),
            "--data", str(data), "--device", str(device), "--n-profile", "4", "--budget", "1",
            "--out", str(out)]


# --------------------------------------------------------------------------- export


def test_export_with_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--checkpoint", "/etc/passwd",
                     "--out", str(tmp_path / "x.onnx"), cwd=tmp_path)
    line = assert_one_line_error(result, 2, "/etc/passwd", "--checkpoint")
    assert "not a loadable weights-only checkpoint" in line
    assert not (tmp_path / "x.onnx").exists()


def test_export_refuses_a_pickled_object_without_advising_unsafe_loading(tmp_path: Path) -> None:
    """torch's own message says to retry with weights_only=False, which runs the file's code."""
    pickled = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "hook": np.random.default_rng(0)}, pickled)
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(pickled),
                     "--out", str(tmp_path / "x.onnx"), cwd=tmp_path)
    line = assert_one_line_error(result, 2, str(pickled), "--checkpoint")
    assert "not a loadable weights-only checkpoint" in line
    assert "weights_only" not in result.stderr and "False" not in result.stderr


def test_export_refuses_a_checkpoint_whose_keys_are_not_strings(tmp_path: Path) -> None:
    """An int key was an AttributeError traceback from the legacy-key renaming."""
    odd = tmp_path / "intkey.pt"
    torch.save({1: torch.zeros(1), "a": torch.zeros(1)}, odd)
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(odd),
                     "--out", str(tmp_path / "x.onnx"), cwd=tmp_path)
    assert_one_line_error(result, 2, str(odd), "--checkpoint", "state dict keys must be strings", "keys: 1")
    assert not (tmp_path / "x.onnx").exists()


def test_export_into_a_path_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--checkpoint",
                     str(DEMO_CHECKPOINT), "--out", str(blocker / "sub" / "x.onnx"), cwd=tmp_path)
    assert_one_line_error(result, 2, str(blocker), "--out")
    assert blocker.read_text() == "not a folder"


# --------------------------------------------------------------------------- search


def test_search_with_a_text_file_as_data(tmp_path: Path) -> None:
    text = tmp_path / "labels.txt"
    text.write_text("0 1 2\n")
    out = tmp_path / "run"
    result = run_cli(*search_args(out, data=text), cwd=tmp_path)
    assert_one_line_error(result, 2, str(text), "--data")
    assert not out.exists(), "the search started work before validating its inputs"


def test_search_with_an_npz_lacking_x_and_y(tmp_path: Path) -> None:
    arrays = tmp_path / "other.npz"
    np.savez(arrays, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2))
    out = tmp_path / "run"
    result = run_cli(*search_args(out, data=arrays), cwd=tmp_path)
    assert_one_line_error(result, 2, str(arrays), "--data", "'x', 'y'")
    assert not out.exists()


def test_search_with_an_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    fake = tmp_path / "fake.npz"
    fake.write_text("x,y\n1,2\n")
    result = run_cli(*search_args(tmp_path / "run", data=fake), cwd=tmp_path)
    line = assert_one_line_error(result, 2, str(fake), "--data")
    assert "allow_pickle" not in line


def test_a_search_without_a_checkpoint_says_its_accuracies_are_of_random_weights(tmp_path: Path) -> None:
    """The help said "default: the registry's"; no registered supernet ships weights, so a search without
    --checkpoint ranked subnets by accuracies near chance without a word."""
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), np.uint8),
             y=np.arange(16) % 10)
    (tmp_path / "out").write_text("a file where --out's folder goes: the run stops once the inputs are read")
    args = search_args(tmp_path / "out", data=tmp_path / "d.npz")
    untrained = args[:args.index("--checkpoint")] + args[args.index("--checkpoint") + 2:]
    runs = {name: run_cli(*command, cwd=tmp_path) for name, command in (("trained", args), ("untrained", untrained))}
    assert_one_line_error(runs["trained"], 2, "--out")
    warning, error = runs["untrained"].stderr.strip().splitlines()
    assert warning == (f"warning: no --checkpoint: demo_mbv3_mnist's weights are a random initialisation, so every "
                       f"accuracy is near chance; hwsearch ships this one's trained weights: --checkpoint "
                       f"{DEMO_CHECKPOINT}") and "--out" in error


def test_search_with_a_bad_device_field(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text("name: x\nintra_op_threads: many\n")
    data = tmp_path / "digits.npz"
    np.savez(data, x=np.zeros((4, 28, 28, 1), np.uint8), y=np.arange(4))
    out = tmp_path / "run"
    result = run_cli(*search_args(out, data=data, device=profile), cwd=tmp_path)
    assert_one_line_error(result, 2, "bad.yaml", "intra_op_threads", "--device")
    assert not out.exists()


@pytest.mark.parametrize("option, value, says", [
    ("--targets-ms", "15,fast", "comma-separated numbers"),
    ("--targets-ms", "elsewhere=15", "'elsewhere' is not one of the devices"),
    ("--band-ms", "40:15", "below high"),
])
def test_search_with_bad_latency_targets(tmp_path: Path, option: str, value: str,
                                         says: str) -> None:
    data = tmp_path / "digits.npz"  # images that vary: all zeros are refused as data first
    np.savez(data, x=np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), np.uint8), y=np.arange(4))
    out = tmp_path / "run"
    result = run_cli(*search_args(out, data=data), option, value, cwd=tmp_path)
    assert_one_line_error(result, 2, option, says)
    assert not out.exists(), "the search started work before validating its targets"


# --------------------------------------------------------------------------- measure


def test_measure_a_file_that_is_not_onnx(tmp_path: Path, model: Path) -> None:
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("not a model")
    result = run_cli("measure", "--device", str(LOCAL_PROFILE), str(model), str(bogus),
                     cwd=tmp_path)
    assert_one_line_error(result, 2, str(bogus), "not a valid ONNX model")


def test_measure_on_an_unreachable_agent(tmp_path: Path, model: Path) -> None:
    port = closed_port()
    profile = write_agent_profile(tmp_path / "edge.yaml", port)
    result = run_cli("measure", "--device", str(profile), str(model), cwd=tmp_path,
                     extra_env={"HWSEARCH_TEST_TOKEN": "secret"})
    line = assert_one_line_error(result, 1, f"127.0.0.1:{port}")
    assert "secret" not in line


def test_measure_with_a_file_where_the_host_locks_queue_belongs(tmp_path: Path, model: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "queue").write_text("")  # raised a bare FileExistsError before
    result = run_cli("measure", "--device", str(LOCAL_PROFILE), str(model), cwd=tmp_path,
                     extra_env={"DEVICES_LOCK_DIR": str(locks)})
    assert_one_line_error(result, 1, str(locks / "queue"), "DEVICES_LOCK_DIR")


# --------------------------------------------------------------------------- debug, Ctrl-C


@pytest.mark.parametrize("how", ["--debug", "HWSEARCH_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    flag = ["--debug"] if how == "--debug" else []
    env = {"HWSEARCH_DEBUG": "1"} if how != "--debug" else {}
    result = run_cli(*flag, "export", "--supernet", "demo_mbv3_mnist", "--checkpoint",
                     "/etc/passwd", "--out", str(tmp_path / "x.onnx"), cwd=tmp_path,
                     extra_env=env)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_usage_errors_keep_click_formatting(tmp_path: Path) -> None:
    result = run_cli("export", "--supernet", "demo_mbv3_mnist", "--out", "x.onnx",
                     "--checkpoint", str(tmp_path / "absent.pt"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Usage:" in result.stderr and "absent.pt" in result.stderr
    assert "Traceback" not in result.stderr


def test_profile_with_sessions_of_no_subnets(tmp_path: Path) -> None:
    result = run_cli("profile", "--device", str(LOCAL_PROFILE), "--supernet", "demo_mbv3_mnist",
                     "--checkpoint", str(DEMO_CHECKPOINT), "--n", "2", "--chunk", "0",
                     "--store", str(tmp_path / "store.db"), cwd=tmp_path)
    assert result.returncode == 2
    assert "--chunk" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "store.db").exists()


def test_profile_says_it_measures_fp32_only_on_a_device_that_lists_int8(tmp_path: Path) -> None:
    """It stored FP32 rows for an FP32+INT8 device and said nothing of INT8 (probe Z11)."""
    from tests._jobs import fast_device

    device = tmp_path / "both.json"
    device.write_text(json.dumps({**fast_device("both"), "precisions": ["fp32", "int8"]}))
    result = run_cli("profile", "--device", str(device), "--supernet", "demo_mbv3_mnist", "--n", "2",
                     "--store", str(tmp_path / "store.db"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: this command measures FP32 exports only; both.json lists int8" in result.stderr
    assert "hwsearch search" in result.stderr


@pytest.fixture
def silent_agent() -> Iterator[socket.socket]:
    """A 127.0.0.1 socket that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(TIMEOUT_S)
        yield server


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path, model: Path,
                                        silent_agent: socket.socket) -> None:
    """A user's Ctrl-C while the CLI waits for an agent.

    The CLI starts with SIGINT at its default, as from a terminal: a suite
    started in the background by a non-interactive shell inherits SIGINT
    ignored, and the CLI would then sit out its 60 s upload timeout instead.
    """
    profile = write_agent_profile(tmp_path / "edge.yaml", silent_agent.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "hwsearch.cli.main", "measure", "--device", str(profile),
         str(model)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_cli_env(tmp_path, {"HWSEARCH_TEST_TOKEN": "secret"}),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        connection, _ = silent_agent.accept()  # the CLI is now waiting for the agent's answer
        with connection:
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["interrupted"]
    assert "Traceback" not in stderr + stdout


def test_valid_input_still_works(tmp_path: Path) -> None:
    """The error handling leaves a successful command's output and exit code alone."""
    result = run_cli("supernets", "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo_mbv3_mnist" in [row["name"] for row in json.loads(result.stdout)]


def test_devices_check_with_malformed_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    result = run_cli("devices", "check", str(broken), cwd=tmp_path)
    assert_one_line_error(result, 2, str(broken), "PROFILE", "line 2")


@pytest.mark.parametrize("option", ["--max-body-mb", "--max-export-mb", "--max-checkpoints-mb",
                                    "--max-supernet-mb", "--read-timeout-s"])
def test_serve_refuses_an_infinite_bound_naming_the_option_before_making_anything(tmp_path: Path,
                                                                                   option: str) -> None:
    """`inf` passed `min=` and crashed the start with an OverflowError traceback, after the data folder
    and its lock were made."""
    store = tmp_path / "store.sqlite"
    result = run_cli("serve", "--store", str(store), "--token", TOKEN, "--port", "0", option, "inf", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert option in result.stderr
    assert not Path(f"{store}.data").exists()


def test_serve_never_writes_through_a_temp_folder_another_user_planted(tmp_path: Path) -> None:
    """The service's temp folder sits in the shared /tmp: a link planted there is refused, not followed."""
    from hwsearch.ray_session import private_temp_dir

    store = tmp_path / "store.sqlite"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not the service's")
    planted = private_temp_dir(str(Path(f"{store}.data")), "tmp")
    planted.symlink_to(victim)
    try:
        result = run_cli("serve", "--store", str(store), "--token", TOKEN, "--port", "0", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr  # a usage error, as click shows one
        assert str(planted) in result.stderr and "--data-dir" in result.stderr
        assert planted.is_symlink() and (victim / "keep.txt").read_text() == "not the service's"
    finally:
        planted.unlink()


@pytest.mark.parametrize("plant", ["a link", "another user's folder"])
def test_serve_never_gives_its_ray_a_folder_it_does_not_own(tmp_path: Path, plant: str) -> None:
    """Ray's sockets live under the folder: whoever owns it could swap them and read the Ray token."""
    from hwsearch.ray_session import private_temp_dir

    store = tmp_path / "store.sqlite"
    planted = private_temp_dir(str(Path(f"{store}.data")))
    victim = tmp_path / "victim"
    victim.mkdir()
    if plant == "a link":
        planted.symlink_to(victim)
    elif os.geteuid() == 0:
        planted.mkdir()
        os.chown(planted, 65534, 65534)  # nobody
        planted.chmod(0o777)
    else:
        pytest.skip("only root can make a folder another user owns")
    try:
        result = run_cli("serve", "--store", str(store), "--token", TOKEN, "--port", "0", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert str(planted) in result.stderr and "--data-dir" in result.stderr
        assert not list(victim.iterdir()) and (planted.is_symlink() or not list(planted.iterdir()))
    finally:
        planted.unlink() if planted.is_symlink() else planted.rmdir()


def test_serve_makes_its_own_ray_folder_private(tmp_path: Path) -> None:
    """One left open (0755, as Ray makes it) is closed; a planted temp-files link then stops the start."""
    from hwsearch.ray_session import private_temp_dir

    store = tmp_path / "store.sqlite"
    ray_folder = private_temp_dir(str(Path(f"{store}.data")))
    ray_folder.mkdir()
    ray_folder.chmod(0o755)
    stop = private_temp_dir(str(Path(f"{store}.data")), "tmp")
    stop.symlink_to(tmp_path)
    try:
        result = run_cli("serve", "--store", str(store), "--token", TOKEN, "--port", "0", cwd=tmp_path)
        assert result.returncode == 2 and str(stop) in result.stderr, result.stderr
        assert ray_folder.stat().st_mode & 0o777 == 0o700
    finally:
        stop.unlink()
        ray_folder.rmdir()


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("192.0.2.7", True), ("edge.example", True),
                                          ("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
                                          ("localhost", False)])
def test_serving_plain_http_beyond_loopback_warns(tmp_path: Path, host: str, warned: bool) -> None:
    """Stopped by a bad --agent right after the check, so no server binds anything."""
    result = run_cli("serve", "--store", str(tmp_path / "s.sqlite"), "--host", host, "--agent", "no-equals-sign",
                     cwd=tmp_path, extra_env={"HWSEARCH_TOKEN": TOKEN})
    assert result.returncode == 2 and "--agent" in result.stderr, result.stderr
    assert ("warning: serving plain HTTP" in result.stderr) == warned, result.stderr


@pytest.mark.parametrize("command", [["export", "--supernet", "demo_mbv3_mnist", "--out", "x.onnx"],
                                     ["train", "--supernet", "demo_mbv3_mnist", "--store", "s.sqlite",
                                      "--out", "predictor"]])
@pytest.mark.parametrize("seed", ["-1", str(2**31)])
def test_seeds_outside_what_the_generators_take_are_usage_errors(tmp_path: Path, command: list[str],
                                                                  seed: str) -> None:
    """numpy refused a negative seed with a traceback, after the supernet had loaded."""
    (tmp_path / "s.sqlite").touch()
    result = run_cli(*command, "--seed", seed, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--seed" in result.stderr


@pytest.mark.parametrize("option", ["MODELS", "--device", "--arch"])
def test_a_fifo_named_as_an_input_is_refused_not_waited_on(tmp_path: Path, option: str) -> None:
    """Reading a FIFO waits for a writer that never comes: measured, the command hung until killed."""
    fifo = tmp_path / "input"
    os.mkfifo(fifo)
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((16, 8, 3, 2),), seed=1, input_shape=(1, 3, 32, 32)))
    device = REPO / "examples" / "devices" / "local-1thread.yaml"
    args = {
        "MODELS": ["measure", str(fifo), "--device", str(device)],
        "--device": ["measure", str(model), "--device", str(fifo)],
        "--arch": ["export", "--supernet", "demo_mbv3_mnist", "--arch", str(fifo), "--out", "x.onnx"],
    }[option]
    assert_one_line_error(run_cli(*args, cwd=tmp_path), 2, option, "not a regular file")


def _bounds_cases() -> list[tuple[list[str], str]]:
    """(a command, the option at fault) for values no run can use: each was a traceback or a run."""
    device = str(REPO / "examples" / "devices" / "local-1thread.yaml")
    search = ["search", "--supernet", "demo_mbv3_mnist", "--checkpoint", str(DEMO_CHECKPOINT),
              "--device", device, "--data", "d.npz"]
    accuracy = ["profile-accuracy", "--supernet", "demo_mbv3_mnist", "--data", "d.npz", "--store", "s.sqlite"]
    return [
        ([*search, "--budget-ms", "-1"], "--budget-ms"),  # ran, for a front no subnet could enter
        ([*search, "--params-limit", "0"], "--params-limit"),
        ([*search, "--accuracy-floor", "2"], "--accuracy-floor"),
        # NaN passed every check: 35 s of profiling, then a 116-line Ray traceback, exit 1
        ([*search, "--budget-ms", "nan"], "--budget-ms"),
        ([*search, "--budget-ms", "inf"], "--budget-ms"),
        ([*search, "--params-limit", "nan"], "--params-limit"),
        ([*search, "--accuracy-floor", "nan"], "--accuracy-floor"),  # typer's [0, 1] bound refuses it
        ([*search, "--n-profile", "-1"], "--n-profile"),  # a traceback
        ([*search, "--budget", "-1"], "--budget"),  # ran
        (["demo", "--n-profile", "-1"], "--n-profile"),
        (["demo", "--budget", "-1"], "--budget"),
        ([*accuracy, "--n", "-2"], "--n"),
        ([*accuracy, "--n-calibration", "-5"], "--n-calibration"),
        (["profile", "--supernet", "demo_mbv3_mnist", "--device", device, "--n", "-3", "--store", "s.sqlite"], "--n"),
        (["serve", "--store", "sv.sqlite", "--port", "-1", "--token", TOKEN], "--port"),  # a traceback
        (["serve", "--store", "sv.sqlite", "--max-body-mb", "-1", "--token", TOKEN], "--max-body-mb"),  # served
        (["agent", "--port", "-5", "--token", TOKEN], "--port"),
        (["agent", "--read-timeout-s", "-1", "--token", TOKEN], "--read-timeout-s"),  # exit 1 before
        (["agent", "--max-upload-mb", "-1", "--token", TOKEN], "--max-upload-mb"),
    ]


@pytest.mark.parametrize("args, option", _bounds_cases())
def test_values_no_run_can_use_are_usage_errors_naming_the_option(tmp_path: Path, args: list[str],
                                                                   option: str) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((64, 28, 28, 1), np.uint8), y=np.zeros(64, np.int64))
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert option in result.stderr


def test_measure_with_more_threads_than_the_machine_runs(tmp_path: Path, model: Path) -> None:
    """onnxruntime starts a pool per session: 256 threads over 8 models loaded twice took 4,085 threads."""
    threads = len(os.sched_getaffinity(0)) + 1
    profile = tmp_path / "wide.yaml"
    profile.write_text(f"name: wide\nintra_op_threads: {threads}\nwarmup: {{runs: 1, seconds: 0}}\n"
                       "protocol: {min_rounds: 5, max_rounds: 5, max_seconds: 10}\n")
    result = run_cli("measure", "--device", str(profile), str(model), cwd=tmp_path,
                     extra_env={"DEVICES_LOCK_DIR": str(tmp_path / "locks")})
    assert_one_line_error(result, 2, "intra_op_threads", f"is {threads}")


@pytest.mark.parametrize("command", [["profile", "--device", str(LOCAL_PROFILE)],
                                     ["profile-accuracy", "--data", "d.npz", "--device", "cpu"]])
def test_a_misspelt_supernet_leaves_no_store_behind(tmp_path: Path, command: list[str]) -> None:
    """The store was opened first: the one-line error came with a new 36 KB SQLite file."""
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4))
    result = run_cli(*command, "--supernet", "demo_mbv3_mnistt", "--store", "new.sqlite", cwd=tmp_path)
    assert_one_line_error(result, 2, "--supernet", "demo_mbv3_mnistt")
    assert not (tmp_path / "new.sqlite").exists()
