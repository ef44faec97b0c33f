"""Device profiles (validation, hashing, files) and the robust statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices.measure import Measurement, median_ci_halfwidth, reference_jumps, rolling_median, time_summary
from devices.ort import OrtRunner
from devices.profile import DeviceProfile, ProfileError
from devices.reference import reference_model_bytes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "devices"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_profiles_load_and_round_trip(path: Path) -> None:
    profile = DeviceProfile.load(path)
    assert DeviceProfile.from_dict(profile.to_dict()) == profile
    assert DeviceProfile.from_dict(json.loads(json.dumps(profile.to_dict()))).hash() == profile.hash()


def test_json_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"name": "j", "intra_op_threads": 2, "protocol": {"ci_target": 0.02}}))
    profile = DeviceProfile.load(path)
    assert profile.intra_op_threads == 2 and profile.protocol.ci_target == 0.02


@pytest.mark.parametrize(
    ("data", "field_name"),
    [
        ({"name": "x", "intra_threads": 2}, "intra_threads"),
        ({"name": "x", "protocol": {"rounds": 5}}, "protocol.rounds"),
        ({"name": "x", "where": {"host": "a"}}, "where.host"),
        ({"name": "x", "intra_op_threads": 0}, "intra_op_threads"),
        ({"name": "x", "batch": -1}, "batch"),
        ({"name": "x", "batch": True}, "batch"),
        ({"name": "x", "protocol": {"ci_target": 2}}, "protocol.ci_target"),
        ({"name": "x", "protocol": {"min_rounds": 50, "max_rounds": 10}}, "protocol.max_rounds"),
        ({"name": "x", "warmup": {"runs": -3}}, "warmup.runs"),
        ({"name": "x", "graph_optimization": "max"}, "graph_optimization"),
        ({"name": "x", "runtime": "tflite"}, "runtime"),
        ({"name": "x", "input_dtype": "int4"}, "input_dtype"),
        ({"name": "x", "where": {"kind": "agent"}}, "where.url"),
        ({"name": "x", "where": {"kind": "local", "token_env": "T"}}, "where.token_env"),
        ({"name": "x", "warmup": {"seconds": float("inf")}}, "warmup.seconds"),
        ({"name": "x", "protocol": {"max_rounds": 10**9}}, "protocol.max_rounds"),
        ({"name": "x", "intra_op_threads": 100_000}, "intra_op_threads"),
        ({"name": ""}, "name"),
        ({"name": "x", "intra_op_threads": 2, "thread_affinity": "1;2"}, "thread_affinity"),
        ({"name": "x", "reference_ms": -1}, "reference_ms"),
        ({"name": "x", "clock": "tsc"}, "clock"),
        ({"name": "x", "clock": "thread_cpu", "intra_op_threads": 2}, "clock"),
        ({"name": "x", "clock": "thread_cpu", "runtime": "openvino"}, "clock"),
        ({"name": "x", "protocol": {"max_foreign_cores": -0.5}}, "protocol.max_foreign_cores"),
        ({"name": "x", "protocol": {"max_foreign_cores": float("inf")}}, "protocol.max_foreign_cores"),
        ({"name": "x", "protocol": {"max_foreign_cores": "lots"}}, "protocol.max_foreign_cores"),
        ({"name": "x", "protocol": {"max_reference_slowdown": -0.01}}, "protocol.max_reference_slowdown"),
        ({"name": "x", "protocol": {"max_reference_slowdown": float("nan")}}, "protocol.max_reference_slowdown"),
        ({"name": "x", "protocol": {"max_reference_slowdown": True}}, "protocol.max_reference_slowdown"),
        # A 400-digit integer raised OverflowError in math.isfinite: a traceback, not a refusal.
        ({"name": "x", "warmup": {"seconds": 10**400}}, "warmup.seconds"),
        ({"name": "x", "reference_ms": 10**400}, "reference_ms"),
        ({"name": "x", "protocol": {"max_seconds": -10**400}}, "protocol.max_seconds"),
        # YAML keys of mixed types: sorting them raised TypeError.
        ({"name": "x", 1: "a", "foo": "b"}, "1"),
        ({"name": "x", "warmup": {2: "a", "runs_": 1}}, "warmup.2"),
    ],
)
def test_bad_profiles_name_the_field(data: dict, field_name: str) -> None:
    with pytest.raises(ProfileError, match=f"'{field_name}'"):
        DeviceProfile.from_dict(data)


def test_unknown_provider_is_named() -> None:
    with pytest.raises(ProfileError, match="providers.*'CUDAExecutionProvder'"):
        DeviceProfile.from_dict({"name": "x", "providers": ["CUDAExecutionProvder"]})


def test_load_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nthreads: 2\n")
    with pytest.raises(ProfileError, match=r"bad\.yaml.*'threads'"):
        DeviceProfile.load(path)


def test_hash_covers_what_changes_latency_only() -> None:
    base = DeviceProfile.from_dict({"name": "box"})
    same = DeviceProfile.from_dict(
        {
            "name": "box",
            "warmup": {"runs": 3},
            "protocol": {"ci_target": 0.05},
            "where": {"kind": "agent", "url": "http://10.0.0.2:8765", "token_env": "T"},
        }
    )
    assert same.hash() == base.hash()
    for change in ({"intra_op_threads": 2}, {"batch": 4}, {"graph_optimization": "basic"}, {"name": "other"},
                   {"allow_spinning": False}, {"runtime": "openvino"}, {"clock": "thread_cpu"}):
        assert DeviceProfile.from_dict({"name": "box", **change}).hash() != base.hash(), change


def test_hash_follows_reference_content(tmp_path: Path) -> None:
    reference = tmp_path / "ref.onnx"
    reference.write_bytes(b"one")
    first = DeviceProfile.from_dict({"name": "box", "reference_model": str(reference)}).hash()
    reference.write_bytes(b"two")
    assert DeviceProfile.from_dict({"name": "box", "reference_model": str(reference)}).hash() != first


def test_hash_is_stable_across_processes() -> None:
    code = "from devices.profile import DeviceProfile as D; print(D.from_dict({'name': 'box'}).hash())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == DeviceProfile.from_dict({"name": "box"}).hash()


def test_time_summary_matches_numpy() -> None:
    times = np.random.default_rng(0).gamma(4.0, 2.0, size=501)
    summary = time_summary(times)
    assert summary["median_ms"] == pytest.approx(np.median(times))
    assert summary["p90_ms"] == pytest.approx(np.percentile(times, 90))
    assert summary["min_ms"] == times.min()
    assert summary["mad_ms"] == pytest.approx(np.median(np.abs(times - np.median(times))))


def test_median_ci_shrinks_with_more_samples_and_covers_the_median() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.lognormal(0, 0.1, 30), rng.lognormal(0, 0.1, 3000)
    assert median_ci_halfwidth(large) < median_ci_halfwidth(small)
    assert median_ci_halfwidth(large) == pytest.approx(1.2533 * 1.96 * 0.1 / math.sqrt(3000), rel=0.25)
    assert median_ci_halfwidth(np.ones(4)) == math.inf


def test_reference_jumps_flag_spikes_not_level_shifts() -> None:
    ref = np.r_[np.full(60, 8.3), np.full(60, 12.3)] * np.random.default_rng(2).lognormal(0, 0.01, 120)
    ref[30] *= 1.8
    flagged = np.flatnonzero(reference_jumps(ref, k_mads=5.0))
    assert 30 in flagged
    assert len(flagged) <= 4  # the slow state itself is not a jump
    assert rolling_median(ref, 15).shape == ref.shape


def test_measurement_round_trips_through_json() -> None:
    measurement = Measurement(
        model_sha256="ab" * 32, latency_ms=1.5, ratio=0.5, ratio_ci=0.01, median_ms=1.6, p10_ms=1.4, p90_ms=1.9,
        p99_ms=2.5, min_ms=1.3, mad_ms=0.1, n_runs=40, stable=True, device_hash="d" * 16, env={"cpu": "x"},
    )
    assert Measurement.from_dict(json.loads(json.dumps(measurement.to_dict()))) == measurement


# onnxruntime 1.32 refuses these only when a session starts; the next ones it takes, as typos
# (a stray comma, an empty entry) or processors no machine here has.
REFUSED_BY_ONNXRUNTIME = ["a", "-1", "0", "0-0", "2-1", "1-2-3", " 1", "+1", "2147483648"]
TAKEN_BY_ONNXRUNTIME = ["1,", ",1", "01", "1;;2", "4097"]


@pytest.mark.parametrize("affinity", REFUSED_BY_ONNXRUNTIME + TAKEN_BY_ONNXRUNTIME)
def test_malformed_affinities_are_refused_when_the_profile_is_read(affinity: str) -> None:
    threads = affinity.count(";") + 2
    with pytest.raises(ProfileError, match="'thread_affinity'.*numbered from 1"):
        DeviceProfile.from_dict({"name": "x", "intra_op_threads": threads, "thread_affinity": affinity})


@pytest.mark.parametrize("affinity", ["2", "1,2", "1-2", "1-1", "3", "1;2", "1,2;1-2"])
def test_affinities_the_profile_takes_start_a_real_session(affinity: str) -> None:
    threads = affinity.count(";") + 2
    profile = DeviceProfile.from_dict({"name": "x", "intra_op_threads": threads, "thread_affinity": affinity})
    assert OrtRunner(reference_model_bytes(), profile).run_ms() > 0
