"""The CLI says when it waits for the host: a session queued behind another looked hung.

Each command runs as a real subprocess while a real holder process keeps the
host's measurement lock (:mod:`devices.hostlock`) in a lock folder of the
test's own; the waiting line must reach stderr, once per message rather
than once a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devices.profile import DeviceProfile
from tests._jobs import fast_device

HOLDER = """
import sys
from devices.hostlock import measurement_session
with measurement_session():
    print("holding", flush=True)
    sys.stdin.readline()
"""
#: How long the host stays held after the command has said it waits: a printer that repeated its line
#: every second would print this many.
HOLD_S = 4.0


@pytest.fixture()
def device(tmp_path: Path) -> Path:
    path = tmp_path / "device.json"
    profile = fast_device("waits")
    profile["protocol"]["max_foreign_cores"] = 4.0  # calibrate is refused on a busy host; other tests load it
    path.write_text(json.dumps(profile))
    return path


def _while_the_host_is_held(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``hwsearch COMMAND`` while another process holds the host until the command has said it waits,
    and :data:`HOLD_S` seconds more.

    Held for a fixed 4 s from the start instead, ``profile`` (torch imported and a supernet built before it
    reaches the lock, 3.4-4.6 s under load) found the host free and had nothing to say in 3 runs of 6.
    """
    env = {**os.environ, "DEVICES_LOCK_DIR": str(tmp_path / "locks"),
           "DEVICES_CALIBRATION_DIR": str(tmp_path / "calibration")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with open(tmp_path / "stdout.txt", "w") as stdout:
            cli = subprocess.Popen([sys.executable, "-m", "hwsearch.cli.main", *command], env=env, text=True,
                                   stdout=stdout, stderr=subprocess.PIPE, cwd=tmp_path)
        said: list[str] = []
        waits = threading.Event()

        def read_stderr() -> None:
            assert cli.stderr is not None
            for line in cli.stderr:
                said.append(line)
                if "waiting for local host" in line:
                    waits.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not waits.wait(0.1) and cli.poll() is None and time.monotonic() < deadline:
            pass  # a command that never says it waits fails its caller's assertion
        time.sleep(HOLD_S)
        assert holder.stdin is not None
        holder.stdin.write("\n")  # the host is free again
        holder.stdin.flush()
        returncode = cli.wait(timeout=300)
        reader.join(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    done = subprocess.CompletedProcess(command, returncode, (tmp_path / "stdout.txt").read_text(), "".join(said))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("command", [["measure", "--json"], ["devices", "show", "--plain-runs", "5"],
                                     ["devices", "calibrate", "--json"]], ids=" ".join)
def test_a_command_that_waits_for_the_host_says_so_on_stderr(tmp_path: Path, device: Path,
                                                             command: list[str]) -> None:
    model = tmp_path / "reference.onnx"
    model.write_bytes(DeviceProfile.load(device).reference_bytes())
    if command[0] == "measure":
        command = [*command, "--device", str(device), str(model)]
    else:
        command = [*command, str(device)]
    done = _while_the_host_is_held(tmp_path, *command)
    waits = [line for line in done.stderr.splitlines() if "waiting for local host" in line]
    assert waits, done.stderr[-3000:]
    assert len(waits) < HOLD_S, f"one line per change of the message, not one a second: {waits}"
    if "--json" in command:
        json.loads(done.stdout)  # stdout stays one JSON document


def test_profile_says_it_waits_for_the_host(tmp_path: Path, device: Path) -> None:
    done = _while_the_host_is_held(tmp_path, "profile", "--device", str(device), "--supernet", "demo_mbv3_mnist",
                                   "--n", "1", "--store", str(tmp_path / "rows.db"), "--json")
    assert "waiting for local host" in done.stderr, done.stderr[-3000:]
    assert json.loads(done.stdout)["measured"] == 1


def test_the_printer_says_each_wait_once_and_hands_every_event_on(capsys: pytest.CaptureFixture[str]) -> None:
    from hwsearch.cli._waiting import waiting_printer

    seen: list[dict] = []
    show = waiting_printer(seen.append)
    events = [{"event": "waiting", "message": "waiting for local host: 2 sessions ahead"}] * 3 + [
        {"event": "waiting", "message": "waiting for local host: 1 session ahead"},
        {"stage": "waiting", "message": "waiting for local host: 1 session ahead"},
        {"stage": "measure", "done": 1},
        {"event": "waiting", "message": "waiting for local host: 1 session ahead"}]
    for event in events:
        show(event)
    assert capsys.readouterr().err.splitlines() == [
        "waiting for local host: 2 sessions ahead", "waiting for local host: 1 session ahead",
        "waiting for local host: 1 session ahead"]
    assert seen == events
