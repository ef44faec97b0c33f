"""Profiling on this machine: models in, Measurements out.

``latency_ms`` is the model's ratio to the reference times the device's
calibrated reference latency (see :mod:`devices.calibration`), so numbers
from different sessions on one device share one scale.

:func:`measure_model_bytes` is the one place that turns a profile plus model
bytes into Measurements; the local profiler and the edge agent both call it,
so a number means the same thing wherever it was taken.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

from devices.calibration import device_reference_ms
from devices.measure import Measurement
from devices.profile import DeviceProfile
from devices.protocol import ProgressFn, SessionResult, make_runner, run_protocol


def cpu_model() -> str:
    """The CPU's marketing name (Linux), or the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1/5/15-minute load average (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe_machine() -> dict[str, Any]:
    """What this machine reports about itself: runtimes, providers, CPU, cores."""
    from devices.ort import ort_facts
    from devices.ov import openvino_facts

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": load_average(),
        **ort_facts(),
        **openvino_facts(),
    }


def measure_model_bytes(
    profile: DeviceProfile,
    models: list[bytes],
    reference: bytes,
    *,
    progress: ProgressFn | None = None,
) -> list[Measurement]:
    """Run the interleaved protocol over ``models`` and return one Measurement each."""
    load_before = load_average()
    reference_runner = make_runner(reference, profile)
    runners = [make_runner(model, profile) for model in models]
    session = run_protocol(reference_runner, runners, profile, progress=progress)
    device_hash = profile.hash_with_reference(hashlib.sha256(reference).hexdigest())
    scale = device_reference_ms(profile, device_hash, session.reference_ms)
    env = _environment(profile, session, reference, reference_runner.provider, load_before, device_hash, scale)
    return [
        _to_measurement(hashlib.sha256(model).hexdigest(), index, session, profile, env)
        for index, model in enumerate(models)
    ]


def _environment(
    profile: DeviceProfile,
    session: SessionResult,
    reference: bytes,
    provider: str,
    load_before: list[float],
    device_hash: str,
    scale: tuple[float, str],
) -> dict[str, Any]:
    from devices.ort import ort_facts

    return {
        "runtime": profile.runtime,
        "onnxruntime": ort_facts()["onnxruntime"],
        "provider": provider,
        "clock": profile.clock,
        "intra_op_threads": profile.intra_op_threads,
        "inter_op_threads": profile.inter_op_threads,
        "cpu": cpu_model(),
        "hostname": platform.node(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "profile_name": profile.name,
        "profile_hash": device_hash,
        "reference_sha256": hashlib.sha256(reference).hexdigest(),
        "reference_ms": scale[0],
        "reference_source": scale[1],
        "session_reference_ms": session.reference_ms,
        "reference_drift": session.reference_ms / scale[0] - 1.0,
        "reference_median_ms": session.reference_summary["median_ms"],
        "reference_runs": session.reference_runs,
        "reference_jumps_dropped": session.dropped_reference_jumps,
        "rounds": session.rounds,
        "session_models": len(session.models),
        "session_seconds": round(session.seconds, 3),
    }


def _to_measurement(
    sha256: str, index: int, session: SessionResult, profile: DeviceProfile, env: dict[str, Any]
) -> Measurement:
    result = session.models[index]
    return Measurement(
        model_sha256=sha256,
        latency_ms=result.ratio * env["reference_ms"],
        ratio=result.ratio,
        ratio_ci=result.ratio_ci,
        n_runs=result.n_runs,
        stable=result.ratio_ci <= profile.protocol.ci_target,
        device_hash=env["profile_hash"],
        env={**env, "ratio_low": result.ratio_low, "ratio_samples_kept": result.n_kept},
        **result.times,
    )


class LocalProfiler:
    """Profiles ONNX files in this process with the profile's runtime settings."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile

    def measure_many(self, onnx_paths: list[Path], *, progress: ProgressFn | None = None) -> list[Measurement]:
        """Interleaved, reference-normalised measurement of all files in one session."""
        models = [Path(p).read_bytes() for p in onnx_paths]
        return measure_model_bytes(self.profile, models, self.profile.reference_bytes(), progress=progress)

    def describe(self) -> dict[str, Any]:
        """Machine facts plus the profile's name and hash."""
        return {"profile": self.profile.name, "profile_hash": self.profile.hash(), **describe_machine()}
