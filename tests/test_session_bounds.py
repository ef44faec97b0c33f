"""What one measurement session may take of the machine that measures: its threads and its time.

Real onnxruntime sessions throughout; the models are small graphs built with
``onnx.helper`` whose run time is set by the size of a matrix product.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from devices import open_profiler
from devices.ort import OrtRunner
from devices.profile import DeviceProfile, ProfileError
from devices.protocol import SessionOverrun, SessionResult, run_protocol
from devices.reference import mobilenet_like_onnx


@pytest.fixture(autouse=True)
def _own_lock_and_rulers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not queued behind other suites' sessions, and no ruler of theirs read or written."""
    monkeypatch.setenv("DEVICES_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("DEVICES_CALIBRATION_DIR", str(tmp_path / "calibration"))


@pytest.mark.parametrize("field", ["intra_op_threads", "inter_op_threads"])
def test_a_local_session_with_more_threads_than_the_machine_runs_is_refused_naming_the_field(
    tmp_path: Path, field: str,
) -> None:
    """Refused before a session starts: each model's session would start its own pool of that many threads."""
    threads = len(os.sched_getaffinity(0)) + 1
    model = tmp_path / "m.onnx"
    model.write_bytes(mobilenet_like_onnx(((8, 8, 3, 2),), seed=1, input_shape=(1, 3, 32, 32)))
    profile = DeviceProfile.from_dict({"name": "wide", field: threads, "allow_spinning": False,
                                       "warmup": {"runs": 1, "seconds": 0.0},
                                       "protocol": {"min_rounds": 5, "max_rounds": 5, "max_seconds": 10}})
    with pytest.raises(ProfileError, match=f"field '{field}' is {threads}, but this machine"):
        open_profiler(profile).measure_many([model])
    assert not (tmp_path / "calibration").exists(), "nothing was measured"


def matmul_chain(size: int, depth: int) -> bytes:
    """``x @ x @ x ...`` on a ``size`` x ``size`` input: a few dozen bytes whose run time ``depth`` sets."""
    nodes, last = [], "x"
    for step in range(depth):
        nodes.append(helper.make_node("MatMul", [last, "x"], [f"y{step}"]))
        last = f"y{step}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size, size])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def slow_profile(max_seconds: float, warmup_runs: int, **protocol: Any) -> DeviceProfile:
    return DeviceProfile.from_dict({
        "name": "slow", "warmup": {"runs": warmup_runs, "seconds": 0.0},
        "protocol": {"min_rounds": 5, "max_rounds": 100_000, "max_seconds": max_seconds, "ci_target": 1e-6,
                     **protocol}})


def bound_s(profile: DeviceProfile) -> float:
    """The bound the profile states for a whole session (``DeviceProfile.session_limit_s``)."""
    return profile.warmup.seconds + profile.protocol.max_seconds


def run_ms(runner: OrtRunner) -> float:
    """The runner's time per inference here and now (median of three, after one to warm it)."""
    runner.run_ms()
    return float(np.median([runner.run_ms() for _ in range(3)]))


def run_bounded(reference: OrtRunner, models: list[OrtRunner], profile: DeviceProfile,
                wait_s: float) -> tuple[SessionResult | BaseException, float]:
    """``run_protocol`` in a thread, with its outcome and seconds; a session still running after
    ``wait_s`` (the old unbounded one) is stopped through its runners and the test fails."""
    outcome: list[SessionResult | BaseException] = []

    def session() -> None:
        try:
            outcome.append(run_protocol(reference, models, profile))
        except BaseException as error:  # the outcome under test
            outcome.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=session, daemon=True)
    thread.start()
    thread.join(wait_s)
    seconds = time.monotonic() - started
    if thread.is_alive():
        for runner in (reference, *models):
            runner.stop()
        thread.join(60)
        pytest.fail(f"the session was still running after {seconds:.1f} s; its bound was {bound_s(profile):g} s")
    return outcome[0], seconds


def test_a_warm_up_longer_than_the_sessions_bound_ends_it_with_an_overrun() -> None:
    """10,000 warm-up runs of a 0.32 s model kept an agent and the host busy 53 minutes with max_seconds 2."""
    reference = OrtRunner(matmul_chain(64, 1), slow_profile(1.0, 0))
    model = OrtRunner(matmul_chain(600, 2), slow_profile(1.0, 0))
    per_run = run_ms(model) / 1000
    profile = slow_profile(1.0, 10_000)
    outcome, seconds = run_bounded(reference, [model], profile, wait_s=bound_s(profile) + 10)
    assert isinstance(outcome, SessionOverrun), outcome
    assert "did not finish its warm-up (10000 runs" in str(outcome) and "bound of 1 s" in str(outcome)
    assert seconds < bound_s(profile) + 2 * per_run + 1.5, (seconds, per_run)  # unbounded, it ran 53 minutes


def _six_models_whose_round_outlasts(seconds: float, profile: DeviceProfile) -> tuple[list[OrtRunner], float, float]:
    """Six matmul chains, deepened until one round of them (two runs each) takes over ``seconds`` here and now.

    Sized on the spot: with a fixed depth, a round took 0.87 s when the host
    was in a fast state, too short for the bound this test needs it to outlast.
    Returns the models, one run of the largest, and a round, in seconds.
    """
    depth = 8
    while True:
        models = [OrtRunner(matmul_chain(1000 + index, depth), profile) for index in range(6)]
        per_run = run_ms(models[-1]) / 1000  # the largest; they differ by a few rows
        round_s = 2 * per_run * len(models)  # at least: timing: warm runs each model twice or more a round
        if round_s > seconds:
            return models, per_run, round_s
        depth = math.ceil(depth * 1.5 * seconds / round_s)


def test_a_round_of_slow_models_is_stopped_within_the_bound_not_after_it() -> None:
    """Checked only between rounds, one round of these six models ran longer than the whole bound."""
    quick = slow_profile(0.5, 0)
    reference = OrtRunner(matmul_chain(64, 1), quick)
    models, per_run, round_s = _six_models_whose_round_outlasts(4 * bound_s(quick), quick)
    outcome, seconds = run_bounded(reference, models, quick, wait_s=round_s * quick.protocol.min_rounds / 2)
    assert isinstance(outcome, SessionOverrun), outcome
    assert "protocol.min_rounds (0 of 5 rounds over 6 models)" in str(outcome)
    assert seconds < bound_s(quick) + 3 * per_run + 0.6 < round_s, (seconds, per_run, round_s)


def test_rounds_cut_at_the_bound_after_a_long_warm_up_are_judged_from_the_rounds_they_ran() -> None:
    """The rounds' own max_seconds starts after the warm-up; the session's bound is what ends them here.

    The warm-up is sized to a quarter of the bound from one timing: at 40% of a 2 s bound, a host 1.7 times
    slower than at that timing left too little of the bound for five rounds.  A quarter of 4 s still puts the
    old end (the rounds' own 4 s after the warm-up) a second past the bound.
    """
    max_seconds = 4.0
    reference = OrtRunner(matmul_chain(64, 1), slow_profile(max_seconds, 0))
    models = [OrtRunner(matmul_chain(300 + index, 4), slow_profile(max_seconds, 0)) for index in range(3)]
    per_run = max(run_ms(model) for model in models) / 1000
    runs = math.ceil(0.25 * max_seconds / (per_run * len(models)))  # the warm-up takes about 25% of the bound
    profile = slow_profile(max_seconds, runs)
    outcome, seconds = run_bounded(reference, models, profile, wait_s=3 * max_seconds + 10)
    assert isinstance(outcome, SessionResult), outcome
    assert outcome.rounds >= profile.protocol.min_rounds
    assert all(model.n_runs >= profile.protocol.min_rounds for model in outcome.models)
    assert seconds < bound_s(profile) + 3 * per_run + 0.6, (seconds, per_run, runs)
