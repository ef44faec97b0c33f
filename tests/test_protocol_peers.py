"""A round's common move, read from the session's other models, is divided out of every sample.

On this host the subnets' times flip between states that the reference does
not see (devices/protocol.py, ``_peer_normalised``).  The scripted host here
does the same: in some rounds every model runs 1.6x slower while the
reference runs as before, so only the models themselves can tell.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest

from devices.profile import DeviceProfile
from devices.protocol import MIN_PEERS, ModelResult, Runner, run_protocol
from devices.reference import mobilenet_like_onnx

SLOW_STATE = 1.6
MODEL_MS = (0.8, 1.0, 1.3, 1.7, 2.2, 2.9, 3.5, 4.0)


class _FlippingHost:
    """Counts reference runs; every few of them it may enter or leave the slow state (seeded)."""

    def __init__(self, seed: int, slow_share: float = 0.4, runs_per_state: int = 9) -> None:
        self.rng, self.slow_share, self.runs_per_state = np.random.default_rng(seed), slow_share, runs_per_state
        self.reference_runs, self.slow = 0, False

    def reference_ran(self) -> None:
        self.reference_runs += 1
        if self.reference_runs % self.runs_per_state == 0:
            self.slow = bool(self.rng.random() < self.slow_share)

    def noise(self) -> float:
        return float(np.exp(self.rng.normal(0.0, 0.005)))


class _Reference:
    provider = "CPUExecutionProvider"

    def __init__(self, host: _FlippingHost) -> None:
        self.host = host

    def run_ms(self) -> float:
        self.host.reference_ran()
        return 2.0 * self.host.noise()


class _Model:
    """A model whose time is its own times the host's state: the slow state does not reach the reference."""

    provider = "CPUExecutionProvider"

    def __init__(self, host: _FlippingHost, ms: float) -> None:
        self.host, self.ms = host, ms

    def run_ms(self) -> float:
        return self.ms * (SLOW_STATE if self.host.slow else 1.0) * self.host.noise()


def _profile(peer_normalisation: bool) -> DeviceProfile:
    return DeviceProfile.from_dict({
        "name": "scripted", "timing": "interleaved", "warmup": {"runs": 0, "seconds": 0.0},
        "protocol": {"min_rounds": 60, "max_rounds": 60, "max_seconds": 60.0, "ci_target": 0.02,
                     "peer_normalisation": peer_normalisation}})


def _session(peer_normalisation: bool, models: tuple[float, ...] = MODEL_MS, seed: int = 1) -> list[ModelResult]:
    host = _FlippingHost(seed)
    runners: list[Runner] = [_Model(host, ms) for ms in models]
    return run_protocol(_Reference(host), runners, _profile(peer_normalisation)).models


def test_a_move_every_model_shares_is_divided_out_and_the_ratios_keep_their_proportions() -> None:
    normalised, plain = _session(True), _session(False)
    target = _profile(True).protocol.ci_target
    assert all(m.ratio_ci <= target for m in normalised), [m.ratio_ci for m in normalised]
    assert all(p.ratio_ci > 2 * n.ratio_ci for p, n in zip(plain, normalised)), (
        [p.ratio_ci for p in plain], [n.ratio_ci for n in normalised])
    ratios = np.array([m.ratio for m in normalised])
    assert ratios / ratios[0] == pytest.approx(np.array(MODEL_MS) / MODEL_MS[0], rel=0.01)


def test_the_same_samples_judged_with_and_without_peers() -> None:
    """A session keeps its samples, so another setting can judge them again (bench/peer_normalisation.py)."""
    host = _FlippingHost(2)
    session = run_protocol(_Reference(host), [_Model(host, ms) for ms in MODEL_MS], _profile(True))
    again = session.evaluated(_profile(True))
    plain = session.evaluated(_profile(False))
    assert [m.ratio for m in again] == [m.ratio for m in session.models]
    assert [m.n_kept for m in plain] == [m.n_kept for m in session.models]
    assert all(p.ratio_ci > n.ratio_ci for p, n in zip(plain, session.models))


@pytest.mark.parametrize("models", [MODEL_MS[:1], MODEL_MS[:MIN_PEERS]])
def test_a_session_with_too_few_other_models_is_left_as_the_reference_measured_it(models: tuple[float, ...]) -> None:
    """One model never normalises itself; with fewer than MIN_PEERS others, no round's move is read."""
    normalised, plain = _session(True, models), _session(False, models)
    assert [m.ratio for m in normalised] == [m.ratio for m in plain]
    assert [m.ratio_ci for m in normalised] == [m.ratio_ci for m in plain]


def test_real_models_on_this_host_keep_their_ratio_within_a_few_ci() -> None:
    """Real onnxruntime sessions of four models of different sizes: the two judgements agree within their CIs."""
    from devices.ort import OrtRunner

    sizes = [((8, 8, 3, 1),), ((16, 16, 3, 1),), ((24, 24, 3, 2),), ((32, 32, 3, 2), (32, 32, 3, 1))]
    blobs = [mobilenet_like_onnx(layers, seed=i, input_shape=(1, 3, 32, 32)) for i, layers in enumerate(sizes)]
    profile = DeviceProfile.from_dict({
        "name": "peers-1t", "intra_op_threads": 1, "clock": "thread_cpu", "timing": "interleaved",
        "warmup": {"runs": 3, "seconds": 0.0},
        "protocol": {"min_rounds": 30, "max_rounds": 30, "max_seconds": 30.0, "ci_target": 0.05}})
    session = run_protocol(OrtRunner(profile.reference_bytes(), profile),
                           [OrtRunner(blob, profile) for blob in blobs], profile)
    plain = session.evaluated(dataclasses.replace(
        profile, protocol=dataclasses.replace(profile.protocol, peer_normalisation=False)))
    for peered, alone in zip(session.models, plain):
        assert peered.n_kept == alone.n_kept >= 20
        assert abs(peered.ratio / alone.ratio - 1) <= 3 * max(alone.ratio_ci, 0.01), (peered, alone)


def test_a_profile_with_a_bad_peer_setting_is_refused() -> None:
    from devices.profile import ProfileError

    with pytest.raises(ProfileError, match="protocol.peer_normalisation"):
        DeviceProfile.from_dict({"name": "x", "protocol": {"peer_normalisation": "yes"}})
