"""The whole hwsearch flow on the built-in demo supernet, as one function.

``run_demo`` is what ``hwsearch demo`` calls: it profiles subnets on each
device, measures their accuracy, trains predictors, searches and refines on
Ray (all through :func:`hwsearch.jobs.run_job`, the same code a service job
runs), then exports the knee subnet of every device's front to ONNX, profiles
that file on its device, and writes the report.  Everything lands in one
folder, with a SQLite store that makes a second run resume instead of
re-measuring.

The demo devices run FP32 and INT8 (``precisions: [fp32, int8]``), so each
front mixes both and the summary says, per device, how many front points
INT8 holds and what it costs or saves in latency and accuracy.  On this
project's CPU, INT8's Q/DQ overhead makes the 16-32 px demo subnets slower
than FP32 when both are measured in one session (docs/precision.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsearch.demo import DEMO_CHECKPOINT, DEMO_DEVICES_DIR, DEMO_SUPERNET
from hwsearch.jobs import ProgressFn

__all__ = ["DemoResult", "DemoSettings", "KneeCheck", "default_devices", "run_demo"]


def default_devices() -> list[Path]:
    """The built-in device profiles the demo measures on (this machine, 1 and 2 threads)."""
    return sorted(DEMO_DEVICES_DIR.glob("cpu-*.yaml"))


@dataclass(frozen=True)
class DemoSettings:
    """What to run; the defaults finish in a few minutes on a 2-core laptop."""

    out: Path = Path("runs/demo")
    checkpoint: Path = DEMO_CHECKPOINT
    devices: tuple[Path, ...] = field(default_factory=lambda: tuple(default_devices()))
    n_profile: int = 40
    budget: int = 20
    seed: int = 0
    ray_address: str | None = None


@dataclass(frozen=True)
class KneeCheck:
    """The knee subnet of one device's front, exported and measured again on that device."""

    device: str
    arch_key: str
    onnx_path: Path
    export_max_abs_diff: float
    predicted_latency_ms: float | None
    front_latency_ms: float
    remeasured_latency_ms: float
    remeasured_ratio_ci: float
    accuracy: float
    precision: str = "fp32"
    int8_agreement: float | None = None


@dataclass(frozen=True)
class DemoResult:
    job_id: str
    store_path: Path
    fronts: dict[str, Any]  # device -> ParetoFront
    knees: list[KneeCheck]
    report: dict[str, Path]
    seconds: float
    precisions: dict[str, Any] = field(default_factory=dict)  # device -> INT8 vs FP32 figures


def _job_spec(settings: DemoSettings, dataset: Path) -> Any:
    from devices.profile import DeviceProfile
    from hwsearch.jobs import JobSpec, SupernetRef

    if not settings.devices:
        raise ValueError("the demo needs at least one device profile")
    profiles = [DeviceProfile.load(path).to_dict() for path in settings.devices]
    return JobSpec(
        supernet=SupernetRef(name=DEMO_SUPERNET, registry=DEMO_SUPERNET,
                             checkpoint=str(Path(settings.checkpoint).resolve())),
        devices=tuple(profiles), dataset=str(dataset.resolve()), budget=settings.budget,
        seed=settings.seed, n_profile=settings.n_profile,
    )


def _check_knee(net: Any, front: Any, profile_path: Path, out: Path,
                calibration: Any) -> KneeCheck | None:
    """Export the knee subnet at its precision, verify the file, and measure it once more.

    An INT8 knee is quantized on the job's BN-calibration images (``calibration``),
    which also re-estimate batch norm, as they did when its accuracy was measured.
    """
    from devices import open_profiler
    from devices.profile import DeviceProfile
    from hwsearch.export import export_subnet

    knee = front.knee()
    if knee is None:
        return None
    profile = DeviceProfile.load(profile_path)
    path = out / f"knee-{profile.name}.onnx"
    data = calibration if knee.precision == "int8" else None
    report = export_subnet(net, knee.arch, path, batch=profile.batch,
                           input_dtype=profile.input_dtype, precision=knee.precision,
                           calibration=data, bn_data=data)
    [measurement] = open_profiler(profile).measure_many([report.path])
    return KneeCheck(
        device=profile.name, arch_key=knee.arch.key(), onnx_path=report.path,
        export_max_abs_diff=report.max_abs_diff,
        predicted_latency_ms=knee.predicted.get("latency_ms"),
        front_latency_ms=knee.measured["latency_ms"],
        remeasured_latency_ms=measurement.latency_ms, remeasured_ratio_ci=measurement.ratio_ci,
        accuracy=knee.measured["accuracy"], precision=knee.precision,
        int8_agreement=None if report.quantization is None
        else report.quantization["top1_agreement"],
    )


def run_demo(settings: DemoSettings = DemoSettings(), *,
             progress: ProgressFn | None = None) -> DemoResult:
    """Run the whole flow on the demo supernet; see the module docstring."""
    from devices.profile import DeviceProfile
    from hwsearch import report as reporting
    from hwsearch.demo.data import write_digits
    from hwsearch.jobs import build_supernet, run_job_watched
    from hwsearch.store import SQLiteStore

    started = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _, heldout = write_digits(out / "data")
    spec = _job_spec(settings, heldout)
    store = SQLiteStore(out / "hwsearch.db")
    job_id = store.create_job(spec.to_dict())
    run_job_watched(spec, store=store, job_id=job_id, ray_address=settings.ray_address,
                    progress=progress)

    record = store.get_job(job_id)
    if record.state != "succeeded":
        raise RuntimeError(f"demo job {job_id} ended {record.state}: {record.error}")
    data = reporting.from_store(store, job_id)
    net = build_supernet(spec.supernet)
    by_name = {DeviceProfile.load(p).name: p for p in settings.devices}
    if progress is not None:
        progress("knee", 0.97, "exporting and re-measuring each front's knee subnet")
    calibration = _calibration_images(spec, net)
    knees = [check for name, front in data.fronts.items()
             if (check := _check_knee(net, front, by_name[name], out, calibration)) is not None]
    reporting.write_job_dir(out / "job", store=store, job_id=job_id)
    written = reporting.build_report(data, out / "report")
    return DemoResult(job_id=job_id, store_path=out / "hwsearch.db", fronts=dict(data.fronts),
                      knees=knees, report=written, seconds=time.perf_counter() - started,
                      precisions=reporting.precision_comparison(data.measurements, data.fronts))


def _calibration_images(spec: Any, net: Any) -> Any:
    """The job's BN-calibration images (the same part its accuracy evaluation used)."""
    return spec.data_plan().open(size=max(net.space.resolutions)).calibration


def summarise(result: DemoResult) -> list[str]:
    """Plain-text lines describing a demo run (what the CLI prints after the tables)."""
    lines = [f"job {result.job_id} finished in {result.seconds:.0f} s; store {result.store_path}"]
    for knee in result.knees:
        predicted = ("n/a" if knee.predicted_latency_ms is None
                     else f"{knee.predicted_latency_ms:.3f} ms")
        agreement = ("" if knee.int8_agreement is None
                     else f", agrees with FP32 on {100 * knee.int8_agreement:.1f}% of top-1")
        lines.append(
            f"{knee.device}: knee {knee.arch_key} at {knee.precision}{agreement} -> {knee.onnx_path} "
            f"(ORT vs torch max |diff| {knee.export_max_abs_diff:.1e}); accuracy {knee.accuracy:.3f}; "
            f"latency predicted {predicted}, on the front {knee.front_latency_ms:.3f} ms, "
            f"re-measured {knee.remeasured_latency_ms:.3f} ms (±{100 * knee.remeasured_ratio_ci:.1f}%)")
    lines += [_precision_line(device, c) for device, c in sorted(result.precisions.items())]
    lines.append(f"report: {result.report['html']}")
    return lines


def _precision_line(device: str, comparison: dict[str, Any]) -> str:
    """Where INT8 wins on one device: its front points, and the latency and accuracy it trades."""
    ratio, change = comparison["latency_ratio"], comparison["accuracy_change_points"]
    accuracy = ("" if change is None else
                f"; INT8 changes accuracy by {change['median']:+.2f} points (median; "
                f"{change['min']:+.2f} to {change['max']:+.2f})")
    return (f"{device}: INT8 holds {comparison['int8_front_points']} of "
            f"{comparison['front_points']} front points; over {comparison['n_subnets']} subnets "
            f"measured at both, INT8 takes {ratio['min']:.2f}-{ratio['max']:.2f}x the FP32 "
            f"latency (median {ratio['median']:.2f}){accuracy}")
