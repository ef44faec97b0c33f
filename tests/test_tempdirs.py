"""Temp folders of runs that died are cleared by the next hwsearch command, and only those."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwsearch.tempdirs import OWNER_FILE, folder_bytes, owned_temp_dir, remove_dead_owners_folders

REPO = Path(__file__).resolve().parents[1]
# A run that makes an owned temp folder, writes 1 MB into it, says where, and waits to be killed.
_RUN = ("import sys, time\n"
        "from hwsearch.tempdirs import owned_temp_dir\n"
        "with owned_temp_dir('exports') as folder:\n"
        "    (folder / 'subnet.onnx').write_bytes(b'x' * 1_000_000)\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(600)\n")


def _start_run(temp: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-c", _RUN], stdout=subprocess.PIPE, text=True, env=env)
    assert run.stdout is not None
    return run, Path(run.stdout.readline().strip())


def test_only_folders_whose_owner_died_are_removed(tmp_path: Path) -> None:
    killed, dead_folder = _start_run(tmp_path)
    alive, live_folder = _start_run(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert (dead_folder / "subnet.onnx").exists(), "a killed run cannot clear its folder"
        unowned = tmp_path / "hwsearch-tmp-service"  # a service's own folder: no owner file
        unowned.mkdir()
        (unowned / "keep.onnx").write_bytes(b"x")
        elsewhere = tmp_path / "elsewhere"  # a dead owner's folder, reached only through a link
        elsewhere.mkdir()
        (elsewhere / OWNER_FILE).touch()
        (tmp_path / "hwsearch-link").symlink_to(elsewhere)

        freed = remove_dead_owners_folders(tmp_path)

        assert not dead_folder.exists()
        assert 1_000_000 <= freed < 1_100_000
        assert (live_folder / "subnet.onnx").exists(), "a live run's folder was removed under it"
        assert (unowned / "keep.onnx").exists() and (elsewhere / OWNER_FILE).exists()
        assert remove_dead_owners_folders(tmp_path) == 0
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert remove_dead_owners_folders(tmp_path) >= 1_000_000 and not live_folder.exists()


def test_a_stopped_commands_exit_ends_its_own_workers_and_removes_their_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's shutdown ends a stopped demo's workers a moment after it returns: two hwsearch-exports folders were
    left for the next command when it waited a fixed 3 s.  A worker of this command that is still running is
    ended, one that has not made its folder yet too; another command's live worker, and a process whose pid a
    folder names without carrying the tag, are not."""
    from hwsearch.tempdirs import COMMAND_TAG_ENV, remove_folders_of_ended_workers, tag_this_command

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setenv(COMMAND_TAG_ENV, "another-command")
    other, other_folder = _start_run(tmp_path)
    tag = tag_this_command()
    worker, worker_folder = _start_run(tmp_path)  # never ends by itself, as a worker stuck mid-export
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)\n" + _RUN], stdout=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)})
    untagged_env = {key: value for key, value in os.environ.items() if key != COMMAND_TAG_ENV}
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=untagged_env)
    claimed = tmp_path / "hwsearch-exports-claimed"  # an owner file naming the bystander's pid with our tag
    claimed.mkdir()
    (claimed / OWNER_FILE).write_text(f"{bystander.pid} {tag}\n")
    try:
        started = time.monotonic()
        freed = remove_folders_of_ended_workers(wait_s=60)
        assert time.monotonic() - started < 30
        assert worker.wait(timeout=30) == -signal.SIGKILL and late.wait(timeout=30) == -signal.SIGKILL
        assert not worker_folder.exists() and not claimed.exists() and freed >= 1_000_000
        assert (other_folder / "subnet.onnx").exists() and other.poll() is None
        assert bystander.poll() is None, "a process was killed on a folder's word alone"
        assert sorted(entry.name for entry in tmp_path.iterdir()) == [other_folder.name]
    finally:
        for run in (other, worker, late, bystander):
            run.kill()
            run.wait(timeout=30)


def test_a_folder_is_removed_when_its_owner_finishes_and_never_looks_dead_while_it_lives(tmp_path: Path) -> None:
    with owned_temp_dir("exports", tmp_path) as folder:
        assert folder.parent == tmp_path and folder.name.startswith("hwsearch-exports-")
        assert sorted(p.name for p in folder.iterdir()) == [OWNER_FILE]
        assert remove_dead_owners_folders(tmp_path) == 0 and folder.exists()
    assert not folder.exists()


# A folder held open by another thread, and a child forked meanwhile that exits as a Python program does.
_FORKED_WHILE_HELD = """
import json, os, threading
from hwsearch.tempdirs import owned_temp_dir

opened, done = threading.Event(), threading.Event()
held = []

def hold():
    with owned_temp_dir("exports") as folder:
        held.append(folder)
        opened.set()
        done.wait(60)

holder = threading.Thread(target=hold)
holder.start()
assert opened.wait(60)
child = os.fork()
if child == 0:
    raise SystemExit(0)
os.waitpid(child, 0)
kept = held[0].exists()
done.set()
holder.join(60)
print(json.dumps([kept, held[0].exists()]))
"""


def test_a_forked_childs_exit_leaves_its_parents_folders_alone(tmp_path: Path) -> None:
    """The child inherited the parent's records of open folders, and its exit removed a folder another thread of the
    parent was still working in."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _FORKED_WHILE_HELD], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[true, false]", result.stdout  # kept while held, removed by its owner


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another user needs root")
def test_another_users_folder_is_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "hwsearch-exports-theirs"
    foreign.mkdir()
    (foreign / OWNER_FILE).touch()
    os.chown(foreign, 65534, 65534)
    assert remove_dead_owners_folders(tmp_path) == 0 and foreign.exists()


def test_the_next_command_clears_what_a_killed_search_exported(tmp_path: Path, short_temp_dir: Path) -> None:
    """A real ``hwsearch search`` (with its Ray) killed mid-export, then any other command on that temp dir."""

    from tests._jobs import random_dataset

    temp = short_temp_dir
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    search = subprocess.Popen(
        [sys.executable, "-m", "hwsearch.cli.main", "search", "--supernet", "demo_mbv3_mnist",
         "--checkpoint", str(REPO / "hwsearch/demo/demo_mbv3_mnist.pt"),
         "--data", str(random_dataset(tmp_path / "val.npz")),
         "--device", str(REPO / "examples/devices/local-1thread.yaml"), "--n-profile", "6", "--budget", "1",
         "--out", str(tmp_path / "out")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(temp.glob("hwsearch-exports-*/**/*.onnx")):
            assert search.poll() is None, search.communicate()[1]
            assert time.monotonic() < deadline, "the search exported nothing in its temp dir"
            time.sleep(0.1)
        os.killpg(search.pid, signal.SIGKILL)  # the run and its Ray, as a crash or an OOM kill ends them
        search.wait(timeout=30)
        left = list(temp.glob("hwsearch-exports-*"))
        assert left, "a killed search leaves its exports behind"
        left_bytes = sum(folder_bytes(folder) for folder in left)
        listed = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "supernets", "list"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        said = "MB of temp files that killed runs left behind" in listed.stderr
        assert said == (left_bytes >= 50_000), (left_bytes, listed.stderr)  # "removed 0.0 MB" is not said
        assert not any(folder.exists() for folder in left)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)


# A run that exports a demo subnet and quantizes it to INT8 over and over until it is killed.
_QUANTIZING_RUN = ("import sys\n"
                   "from pathlib import Path\n"
                   "import numpy as np\n"
                   "from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET\n"
                   "from hwsearch.export import export_onnx\n"
                   "from hwsearch.quantize import QuantizeSettings, quantize_onnx\n"
                   "from hwsearch.supernets import create_supernet\n"
                   "out = Path(sys.argv[1])\n"
                   "net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)\n"
                   "size = max(net.space.resolutions)\n"
                   "subnet = net.extract(net.space.sample(np.random.default_rng(0), 1)[0])\n"
                   "export_onnx(subnet, out / 'fp32.onnx', input_shape=(1, 3, size, size))\n"
                   "images = np.random.default_rng(0).random((256, 3, size, size), dtype=np.float32)\n"
                   "while True:\n"
                   "    quantize_onnx(out / 'fp32.onnx', out / 'int8.onnx', images,\n"
                   "                  QuantizeSettings(method='percentile', n_images=256))\n"
                   "    print('quantized', flush=True)\n")


def _quantizing_run(temp: Path, out: Path) -> tuple[subprocess.Popen[str], list[Path]]:
    """Start :data:`_QUANTIZING_RUN` with ``TMPDIR=temp``; return it once onnxruntime is staging files.

    Also returns the staging folders seen (onnxruntime's ``ort.quant.*`` and
    ``pre.quant.*``), which must all lie inside hwsearch's quantizer folder.
    """
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-c", _QUANTIZING_RUN, str(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    assert run.stdout is not None
    assert run.stdout.readline() == "quantized\n", "the run never finished a first quantization"
    deadline = time.monotonic() + 120
    while not (staging := [*temp.glob("**/ort.quant.*"), *temp.glob("**/pre.quant.*")]):
        assert time.monotonic() < deadline, "onnxruntime staged no files while quantizing"
        time.sleep(0.01)
    return run, staging


def _quantizer_files(temp: Path) -> list[Path]:
    """hwsearch's and onnxruntime's staging folders in ``temp`` (not the ``.ses`` id onnxruntime's import writes)."""
    return sorted({*temp.glob("hwsearch-*"), *temp.glob("**/ort.quant.*"), *temp.glob("**/pre.quant.*")})


def test_a_run_killed_mid_quantization_leaves_onnxruntimes_files_where_the_next_command_clears_them(
        tmp_path: Path, short_temp_dir: Path) -> None:
    """``kill -9`` of the run and its quantizer child: onnxruntime's staging folders go with the sweep."""
    temp, out = short_temp_dir, tmp_path
    run, staging = _quantizing_run(temp, out)
    try:
        assert all(path.parent.name.startswith("hwsearch-quantizer-") and path.parent.parent == temp
                   for path in staging), staging
        os.killpg(run.pid, signal.SIGKILL)  # the run and its child, as a crash or an OOM kill ends them
        run.wait(timeout=30)
        assert list(temp.glob("hwsearch-quantizer-*")), "a killed quantizer leaves its folder behind"

        deadline = time.monotonic() + 60
        while not remove_dead_owners_folders(temp):  # the child's flock goes once the kernel has ended it
            assert time.monotonic() < deadline, "the killed quantizer's folder never looked dead"
            time.sleep(0.05)

        assert _quantizer_files(temp) == []
        assert (out / "int8.onnx").is_file() and not list(out.glob("*.part*"))
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_a_quantizer_whose_parent_is_killed_finishes_and_removes_its_own_folder(
        tmp_path: Path, short_temp_dir: Path) -> None:
    """``kill -9`` of the run alone: its child sees its stdin close and clears up without any sweep."""
    temp = short_temp_dir
    run, _ = _quantizing_run(temp, tmp_path)
    try:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 120
        while left := _quantizer_files(temp):
            assert time.monotonic() < deadline, f"the quantizer left {left}"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
