"""Profiling on this machine: models in, Measurements out.

``latency_ms`` is the model's ratio to the reference times the device's
calibrated reference latency (see :mod:`devices.calibration`), so numbers
from different sessions on one device share one scale.

:func:`measure_model_bytes` is the one place that turns a profile plus model
bytes into Measurements; the local profiler and the edge agent both call it,
so a number means the same thing wherever it was taken.  It is also where
the host lock is taken (:mod:`devices.hostlock`): a session runs only when
no other session and no compute unit runs on this host, whichever process,
job or device asked for it, and every row records the conditions it was
taken under (host fingerprint, runtime, threads, clock, batch, input shape,
session interval and how long it waited for the host).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from devices.calibration import Ruler, device_reference_ms
from devices.cpuload import cpu_snapshot, foreign_cores, usable_cores
from devices.hostlock import Hold, measurement_session
from devices.measure import Measurement
from devices.ort import ModelInputError, require_threads_here
from devices.profile import DeviceProfile
from devices.protocol import ProgressFn, Runner, SessionResult, make_runner, run_protocol


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


@functools.lru_cache(maxsize=None)
def runtime_version(runtime: str) -> str | None:
    """The installed version of the profile's runtime (onnxruntime or OpenVINO); None where it is not installed.

    Part of every device's identity (:meth:`DeviceProfile.identity`), so kept
    once per process: OpenVINO answers by starting a ``Core``.
    """
    if runtime == "openvino":
        from devices.ov import openvino_facts

        return openvino_facts()["openvino"]
    from devices.ort import ort_facts

    return str(ort_facts()["onnxruntime"])


@functools.lru_cache(maxsize=1)
def host_fingerprint() -> str:
    """A stable short hash of what makes this host's latencies this host's.

    Hostname, CPU model, logical cores, OS and kernel, and the onnxruntime
    version: every model and reference a host measures is checked and loaded
    by onnxruntime first, whatever the profile's runtime, and keeping it here
    keeps the fingerprints agents report and calibrations name.  A device adds
    the version of its own runtime (:meth:`DeviceProfile.measured_host`), so an
    OpenVINO upgrade changes an OpenVINO device as an onnxruntime one changes any.
    """
    facts = [platform.node(), cpu_model(), str(os.cpu_count()), platform.platform(), runtime_version("onnxruntime")]
    return hashlib.sha256("\0".join(str(f) for f in facts).encode()).hexdigest()[:16]


def describe_machine() -> dict[str, Any]:
    """What this machine reports about itself: runtimes, providers, CPU, cores."""
    from devices.ort import ort_facts
    from devices.ov import openvino_facts

    return {
        "hostname": platform.node(),
        "host_fingerprint": host_fingerprint(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average": load_average(),
        **ort_facts(),
        **openvino_facts(),
    }


@dataclass(frozen=True)
class _Session:
    """One locked session: the protocol's result and the conditions it ran under."""

    result: SessionResult
    provider: str
    input_shapes: list[dict[str, list[int]]]
    load_before: list[float]
    load_after: list[float]
    hold: Hold
    foreign_cores: float | None  # other processes' CPU during the protocol (devices.cpuload)
    loads_per_model: int  # 2 when every model was loaded again (protocol.load_twice)
    ruler: Ruler  # what the session is scaled by, read (or set) while it still held the host


def measure_model_bytes(
    profile: DeviceProfile,
    models: list[bytes],
    reference: bytes,
    *,
    progress: ProgressFn | None = None,
    recalibrate: bool = False,
) -> list[Measurement]:
    """Run the interleaved protocol over ``models`` and return one Measurement each.

    The session holds the host exclusively (waiting is reported through
    ``progress`` as ``{"event": "waiting", ...}`` about once a second).
    ``recalibrate`` makes this session's reference the device's new ruler
    if the host was quiet (``hwsearch devices calibrate``).
    Raises :class:`~devices.ort.ModelInputError` when a model's batch is not
    the profile's: its row would be filed under a batch it was not measured at,
    and :class:`~devices.profile.ProfileError` when the profile asks for more
    threads than this machine runs (:func:`~devices.ort.require_threads_here`),
    before waiting for the host.
    """
    require_threads_here(profile)
    device_hash = profile.hash_with_reference(hashlib.sha256(reference).hexdigest())
    host = profile.host_fingerprint or host_fingerprint()
    measured_host = profile.measured_host(host, runtime_version(profile.runtime))
    session = _locked_session(profile, models, reference, progress, (device_hash, measured_host, recalibrate))
    env = _environment(profile, session, reference, device_hash, host, session.ruler)
    return [
        _to_measurement(hashlib.sha256(model).hexdigest(), index, session, profile, env)
        for index, model in enumerate(models)
    ]


def plain_median_ms(profile: DeviceProfile, model: bytes, *, runs: int = 50,
                    on_wait: ProgressFn | None = None) -> float:
    """What plain onnxruntime timing says: the median of ``runs`` back-to-back runs after warm-up.

    No reference, no interleaving: the number a user would get with a timing
    loop of their own, shown beside the calibrated ruler so they can see how
    reported milliseconds relate to it.  It still takes the host lock, so it
    is not disturbed by (and does not disturb) another measurement;
    ``on_wait`` hears the waits for it, as :func:`measure_model_bytes`'s ``progress`` does.
    """
    import numpy as np

    require_threads_here(profile)
    with measurement_session(on_wait=on_wait):
        runner = make_runner(model, profile)
        for _ in range(max(profile.warmup.runs, 5)):
            runner.run_ms()
        return float(np.median([runner.run_ms() for _ in range(runs)]))


def _locked_session(
    profile: DeviceProfile, models: list[bytes], reference: bytes, progress: ProgressFn | None,
    calibration: tuple[str, str, bool],
) -> _Session:
    """Load the models, run the protocol and read the ruler while holding the host.

    Loading is inside the hold: building sessions is heavy compute that would
    disturb another session's timing just as much as an export.  With
    ``protocol.load_twice`` the models are loaded again in reverse order,
    so each model's two copies sit at mirrored places of the load order.
    The ruler (``calibration``: device hash, host, whether to replace it) is
    read or set before the host is let go, so sessions take it in the order
    they ran, and whether the host was quiet decides whether it may keep it
    (:func:`~devices.calibration.device_reference_ms`).
    """
    with measurement_session(on_wait=progress) as hold:
        load_before = load_average()
        reference_runner = make_runner(reference, _as_reference(profile))
        runners = [make_runner(model, profile) for model in models]
        shapes = [_input_shapes(runner) for runner in runners]
        _check_batch(shapes, profile.batch)
        copies = _loaded_again(models, profile) if profile.protocol.load_twice else None
        before = cpu_snapshot()
        result = run_protocol(reference_runner, runners, profile, progress=progress, copies=copies)
        foreign = foreign_cores(before, cpu_snapshot())
        loads = 1 if copies is None else 2
        device_hash, host, replace = calibration
        ruler = device_reference_ms(profile, device_hash, host, result.reference_ms,
                                    quiet=_quiet_enough(profile, foreign), replace=replace)
        return _Session(result, reference_runner.provider, shapes, load_before, load_average(), hold, foreign, loads,
                        ruler)


def _loaded_again(models: list[bytes], profile: DeviceProfile) -> list[Runner]:
    """Every model loaded a second time, the last one first (so copies mirror the first loads); in model order."""
    return [make_runner(model, profile) for model in reversed(models)][::-1]


def _as_reference(profile: DeviceProfile) -> DeviceProfile:
    """The profile the reference runs under: the device's settings with float32 input.

    The built-in reference is a float32 graph whatever the device's
    ``input_dtype``; the dtype check is for the models under test, and a
    float16 device still needs the same float32 ruler.  A reference of the
    profile's own (``reference_model``) is taken to match its input dtype.
    """
    if profile.reference_model is not None:
        return profile
    return replace(profile, input_dtype="float32")


def _input_shapes(runner: Runner) -> dict[str, list[int]]:
    """The concrete input shapes a runner feeds (onnxruntime names them; OpenVINO lists them)."""
    feeds = getattr(runner, "feeds", None)
    if feeds is not None:
        return {name: list(array.shape) for name, array in feeds.items()}
    return {f"input{i}": list(array.shape) for i, array in enumerate(runner.inputs)}


def _check_batch(shapes: list[dict[str, list[int]]], batch: int) -> None:
    """Refuse a model whose batch is not the profile's: the profile's hash covers the batch and would mislabel it."""
    for index, model_shapes in enumerate(shapes):
        for name, shape in model_shapes.items():
            if shape and shape[0] != batch:
                raise ModelInputError(
                    f"model {index}: input '{name}' has batch {shape[0]} (shape {shape}) but the profile's batch "
                    f"is {batch}; export the model at the profile's batch"
                )


def _environment(
    profile: DeviceProfile,
    session: _Session,
    reference: bytes,
    device_hash: str,
    host: str,
    ruler: Ruler,
) -> dict[str, Any]:
    from devices.ort import ort_facts

    result, hold = session.result, session.hold
    return {
        "host_fingerprint": host,
        "runtime": profile.runtime,
        "runtime_version": runtime_version(profile.runtime),
        "onnxruntime": ort_facts()["onnxruntime"],
        "provider": session.provider,
        "providers": list(profile.providers),
        "clock": profile.clock,
        "intra_op_threads": profile.intra_op_threads,
        "inter_op_threads": profile.inter_op_threads,
        "batch": profile.batch,
        "cpu": cpu_model(),
        "hostname": platform.node(),
        "load_average_before": session.load_before,
        "load_average_after": session.load_after,
        "foreign_cpu_cores": None if session.foreign_cores is None else round(session.foreign_cores, 3),
        "session_start": hold.started_at,
        "session_end": hold.ended_at,
        "lock_wait_s": round(hold.waited_s, 3),
        "lock_lost": hold.lock_lost,
        "profile_name": profile.name,
        "profile_hash": device_hash,
        "reference_sha256": hashlib.sha256(reference).hexdigest(),
        "reference_ms": ruler.reference_ms,
        "reference_source": ruler.source,
        "session_reference_ms": result.reference_ms,
        "reference_drift": result.reference_ms / ruler.reference_ms - 1.0,
        "host_fastest_reference_ms": ruler.host_fastest_ms,
        "reference_slowdown": ruler.slowdown(result.reference_ms),
        "max_reference_slowdown": profile.reference_slowdown_limit(),
        "reference_median_ms": result.reference_summary["median_ms"],
        "reference_runs": result.reference_runs,
        "reference_jumps_dropped": result.dropped_reference_jumps,
        "rounds": result.rounds,
        "session_models": len(result.models),
        "session_seconds": round(result.seconds, 3),
        "protocol": asdict(profile.protocol),
        "loads_per_model": session.loads_per_model,
    }


def _to_measurement(
    sha256: str, index: int, session: _Session, profile: DeviceProfile, env: dict[str, Any]
) -> Measurement:
    """One model's row.  Stable takes a tight CI, a quiet host and a host in its usual speed state.

    The last two are session-wide: a tight CI cannot reveal a busy neighbour
    (:func:`_quiet_enough`) nor a session whose reference ran slower than the
    device's fastest recent sessions here (:mod:`devices.calibration`),
    since both shift every ratio of the session together.
    """
    result = session.result.models[index]
    reasons = _unstable_reasons(result.ratio_ci, profile, session.foreign_cores, env)
    per_model = {"ratio_low": result.ratio_low, "ratio_samples_kept": result.n_kept,
                 "runs_per_sample": result.runs_per_sample,
                 "input_shape": session.input_shapes[index], "unstable_reasons": reasons}
    return Measurement(
        model_sha256=sha256,
        latency_ms=result.ratio * env["reference_ms"],
        ratio=result.ratio,
        ratio_ci=result.ratio_ci,
        n_runs=result.n_runs,
        stable=not reasons,
        device_hash=env["profile_hash"],
        env={**env, **per_model},
        **result.times,
    )


def _unstable_reasons(ratio_ci: float, profile: DeviceProfile, foreign: float | None,
                      env: dict[str, Any]) -> list[str]:
    """Why a row is not stable, in a fixed order; empty when it is.

    ``ci``: its ratio's CI is wider than the target (or unusable);
    ``foreign_load``: other programs kept a wall-clock session's cores busy;
    ``reference_slowdown``: the reference ran slower than the host's fastest
    recent sessions; ``lock_lost``: the host lock's file was deleted or
    replaced during the session (:class:`devices.hostlock.Hold`), so another
    session may have run alongside.  Named rather than folded into one flag
    so that a caller who judges the session better can overrule its
    session-wide reasons (the pipeline's anchor overrules the slowdown alone,
    ``hwsearch.anchor.overrules_slowdown``; nothing overrules a lost lock).
    """
    reasons = []
    if not ratio_ci <= profile.protocol.ci_target:
        reasons.append("ci")
    if not _quiet_enough(profile, foreign):
        reasons.append("foreign_load")
    if not env["reference_slowdown"] <= env["max_reference_slowdown"]:
        reasons.append("reference_slowdown")
    if env["lock_lost"]:
        reasons.append("lock_lost")
    return reasons


def _quiet_enough(profile: DeviceProfile, foreign: float | None) -> bool:
    """Whether other processes left a wall-clock session alone (:mod:`devices.cpuload`).

    A ``thread_cpu`` session counts only its own thread's CPU time and keeps
    its ratios under a busy neighbour, so only wall-clock sessions are held
    to ``protocol.max_foreign_cores``.
    """
    return profile.clock != "wall" or foreign is None or foreign <= profile.protocol.max_foreign_cores


class LocalProfiler:
    """Profiles ONNX files in this process with the profile's runtime settings."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile

    def measure_many(self, onnx_paths: list[Path], *, progress: ProgressFn | None = None) -> list[Measurement]:
        """Interleaved, reference-normalised measurement of all files in one session.

        The session waits for the host (see :func:`measure_model_bytes`);
        ``progress`` sees the waiting as well as the rounds.
        """
        models = [Path(p).read_bytes() for p in onnx_paths]
        return measure_model_bytes(self.profile, models, self.profile.reference_bytes(), progress=progress)

    def describe(self) -> dict[str, Any]:
        """Machine facts plus the profile's name, hash and device identity."""
        return {"profile": self.profile.name, "profile_hash": self.profile.hash(),
                "device_key": self.device_key(), **describe_machine()}

    def device_key(self) -> str:
        """What this device's measurements are filed under: the profile on this host, with its runtime's version."""
        return self.profile.identity(host_fingerprint(), runtime_version(self.profile.runtime))
