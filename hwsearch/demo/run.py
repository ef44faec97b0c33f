"""The whole hwsearch flow on a built-in demo supernet, as one function.

``run_demo`` is what ``hwsearch demo`` calls: it profiles subnets on each
device, measures their accuracy, trains predictors, searches and refines on
Ray (all through :func:`hwsearch.jobs.run_job`, the same code a service job
runs), then exports the knee subnet of every device's front to ONNX, profiles
that file on its device, and writes the report.  Everything lands in one
folder, with a SQLite store that makes a second run resume instead of
re-measuring.  ``DemoSettings.supernet`` picks the demo: the OFA-MobileNetV3
(``demo_mbv3_mnist``, the default) or the elastic ViT (``demo_vit_mnist``).

The demo devices run FP32 and INT8 (``precisions: [fp32, int8]``), so each
front of the MobileNetV3 demo mixes both and the summary says, per device,
how many front points INT8 holds and what it costs or saves in latency and
accuracy.  On this project's CPU, INT8's Q/DQ overhead makes the 16-32 px
demo subnets slower than FP32 when both are measured in one session
(docs/precision.md).  The ViT demo searches FP32 only by default
(:data:`DEMO_PRECISIONS`): its INT8 exports quantize and run, but take
1.3-1.5x the FP32 latency here (docs/demo_vit.md), so INT8 would double the
measurements for points that never win on speed; ``DemoSettings.precisions``
turns it back on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsearch.demo import DEMO_DEVICES_DIR, DEMO_SUPERNET, DEMO_VIT_SUPERNET, demo_files
from hwsearch.jobs import ProgressFn

__all__ = ["DEMO_PRECISIONS", "DemoResult", "DemoSettings", "KneeCheck", "default_devices",
           "run_demo"]

# Precisions a demo searches on every device when DemoSettings.precisions is None; a demo
# not listed searches what each device profile says.
DEMO_PRECISIONS: dict[str, tuple[str, ...]] = {DEMO_VIT_SUPERNET: ("fp32",)}


def default_devices() -> list[Path]:
    """The built-in device profiles the demo measures on (this machine, 1 and 2 threads)."""
    return sorted(DEMO_DEVICES_DIR.glob("cpu-*.yaml"))


@dataclass(frozen=True)
class DemoSettings:
    """What to run; the defaults finish in a few minutes on a 2-core laptop.

    ``supernet`` names a built-in demo; ``checkpoint`` (default: the one it
    ships with) may be the user's own weights for it.  ``precisions``, when
    given, replaces every device profile's precisions (default: the demo's
    entry in :data:`DEMO_PRECISIONS`, else the profiles' own).
    """

    out: Path = Path("runs/demo")
    checkpoint: Path | None = None
    devices: tuple[Path, ...] = field(default_factory=lambda: tuple(default_devices()))
    n_profile: int = 40
    budget: int = 20
    seed: int = 0
    ray_address: str | None = None
    supernet: str = DEMO_SUPERNET
    precisions: tuple[str, ...] | None = None

    def weights(self) -> Path:
        """The checkpoint the demo loads: the given one, or the one shipped for ``supernet``."""
        return Path(self.checkpoint) if self.checkpoint is not None else demo_files(self.supernet)[0]

    def forced_precisions(self) -> tuple[str, ...] | None:
        """The precisions every device searches, or None to keep each profile's own."""
        return self.precisions if self.precisions is not None else DEMO_PRECISIONS.get(self.supernet)


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
    #: The exported file's own top-1 on the job's validation images: what the user ships.
    file_accuracy: float
    precision: str = "fp32"
    int8_agreement: float | None = None
    #: The front point's relative 95% half-width (``latency_ci``, else its session's ``ratio_ci``), if known.
    front_latency_ci: float | None = None


@dataclass(frozen=True)
class DemoResult:
    job_id: str
    store_path: Path
    fronts: dict[str, Any]  # device -> ParetoFront
    knees: list[KneeCheck]
    report: dict[str, Path]
    seconds: float
    precisions: dict[str, Any] = field(default_factory=dict)  # device -> INT8 vs FP32 figures
    searched_precisions: tuple[str, ...] | None = None  # forced on every device; None: profiles'


def _job_spec(settings: DemoSettings, dataset: Path) -> Any:
    from devices.profile import DeviceProfile
    from hwsearch.jobs import JobSpec, SupernetRef

    if not settings.devices:
        raise ValueError("the demo needs at least one device profile")
    profiles = [DeviceProfile.load(path).to_dict() for path in settings.devices]
    if (precisions := settings.forced_precisions()) is not None:
        profiles = [{**profile, "precisions": list(precisions)} for profile in profiles]
    return JobSpec(
        supernet=SupernetRef(name=settings.supernet, registry=settings.supernet,
                             checkpoint=str(settings.weights().resolve())),
        devices=tuple(profiles), dataset=str(dataset.resolve()), budget=settings.budget,
        seed=settings.seed, n_profile=settings.n_profile,
    )


def _check_knee(net: Any, front: Any, profile_path: Path, out: Path, split: Any) -> KneeCheck | None:
    """Export the knee subnet at its precision, score and verify the file, and measure it once more.

    Batch norm is re-estimated on the job's calibration images (``split``),
    as it was when the knee's accuracy was measured, and an INT8 knee is
    quantized on the same images; the file is then scored on the job's
    validation images, so the demo shows the accuracy of what it ships.
    """
    from devices import open_profiler
    from devices.profile import DeviceProfile
    from hwsearch.export import export_subnet
    from hwsearch.filenames import file_stem
    from hwsearch.onnx_accuracy import file_top1

    knee = front.knee()
    if knee is None:
        return None
    profile = DeviceProfile.load(profile_path)
    path = out / f"knee-{file_stem(profile.name)}.onnx"
    report = export_subnet(net, knee.arch, path, batch=profile.batch, input_dtype=profile.input_dtype,
                           precision=knee.precision, bn_data=split.calibration,
                           calibration=split.calibration if knee.precision == "int8" else None)
    [measurement] = open_profiler(profile).measure_many([report.path])
    return KneeCheck(
        device=profile.name, arch_key=knee.arch.key(), onnx_path=report.path,
        export_max_abs_diff=report.max_abs_diff,
        predicted_latency_ms=knee.predicted.get("latency_ms"),
        front_latency_ms=knee.measured["latency_ms"],
        front_latency_ci=_front_ci(knee.latency_conditions),
        remeasured_latency_ms=measurement.latency_ms, remeasured_ratio_ci=measurement.ratio_ci,
        accuracy=knee.measured["accuracy"], precision=knee.precision,
        file_accuracy=file_top1(report.path, split.validation, knee.arch.resolution),
        int8_agreement=None if report.quantization is None
        else report.quantization["top1_agreement"],
    )


def _front_ci(conditions: dict[str, Any]) -> float | None:
    """A front point's relative 95% half-width: ``latency_ci`` (the spread between sessions in it), else its
    session's own ``ratio_ci``; None when neither is known."""
    ci = conditions.get("latency_ci")
    return ci if ci is not None else conditions.get("ratio_ci")


def run_demo(settings: DemoSettings = DemoSettings(), *,
             progress: ProgressFn | None = None) -> DemoResult:
    """Run the whole flow on the demo supernet; see the module docstring."""
    from devices.profile import DeviceProfile
    from hwsearch import report as reporting
    from hwsearch.demo.data import write_digits
    from hwsearch.jobs import build_supernet, new_job, run_job_watched
    from hwsearch.store import SQLiteStore

    started = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _, heldout = write_digits(out / "data")
    spec = _job_spec(settings, heldout)
    store = SQLiteStore(out / "hwsearch.db")
    job_id, runner = new_job(store, spec.to_dict())  # ours from its first write: a service starting leaves it to us
    run_job_watched(spec, store=store, job_id=job_id, ray_address=settings.ray_address,
                    progress=progress, runner=runner)

    record = store.get_job(job_id)
    if record.state != "succeeded":
        raise RuntimeError(f"demo job {job_id} ended {record.state}: {record.error}")
    data = reporting.from_store(store, job_id)
    net = build_supernet(spec.supernet)
    by_name = {DeviceProfile.load(p).name: p for p in settings.devices}
    if progress is not None:
        progress("knee", 0.97, "exporting and re-measuring each front's knee subnet")
    split = spec.data_plan().open(size=max(net.space.resolutions))  # the job's own calibration/validation parts
    knees = [check for name, front in data.fronts.items()
             if (check := _check_knee(net, front, by_name[name], out, split)) is not None]
    reporting.write_job_dir(out / "job", store=store, job_id=job_id)
    written = reporting.build_report(data, out / "report")
    return DemoResult(job_id=job_id, store_path=out / "hwsearch.db", fronts=dict(data.fronts),
                      knees=knees, report=written, seconds=time.perf_counter() - started,
                      precisions=reporting.precision_comparison(data.measurements, data.fronts),
                      searched_precisions=settings.forced_precisions())


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
            f"(ORT vs torch max |diff| {knee.export_max_abs_diff:.1e}); accuracy {knee.accuracy:.3f} "
            f"(the file scores {knee.file_accuracy:.3f}); "
            f"latency predicted {predicted}, on the front {knee.front_latency_ms:.3f} ms, "
            f"re-measured {knee.remeasured_latency_ms:.3f} ms (±{100 * knee.remeasured_ratio_ci:.1f}%)"
            + _session_size_note(knee))
    lines += [_precision_line(device, c) for device, c in sorted(result.precisions.items())]
    if result.searched_precisions is not None:
        lines.append(f"precisions searched on every device: {', '.join(result.searched_precisions)}"
                     + ("" if "int8" in result.searched_precisions else
                        " (INT8 off for this demo: slower than FP32 on this CPU, docs/demo_vit.md)"))
    lines.append(f"report: {result.report['html']}")
    return lines


def _session_size_note(knee: KneeCheck) -> str:
    """What may part the knee's re-measurement from its front point, when they differ beyond both intervals.

    The re-measurement is a session of one file; the front's latencies come
    from sessions of a chunk's subnets and the anchor's, and how many models
    share a session moves what a subnet reads: 0.80-1.60 for the demo's
    0.06 ms subnets against a 1.2 ms reference, 1.4% at 2 ms
    (docs/measurement.md, "Session size").  A knee re-measured 18% below
    its "stable ±1.6%" front point was printed without a word.
    """
    gap = knee.remeasured_latency_ms / knee.front_latency_ms - 1.0
    if knee.front_latency_ci is None or abs(gap) <= knee.remeasured_ratio_ci + knee.front_latency_ci:
        return ""
    return (f"; {abs(gap):.0%} {'below' if gap < 0 else 'above'} the front, beyond both intervals: the front's "
            "latency comes from sessions of many files and this from a session of one, which moves what a "
            "subnet much faster than the reference reads (docs/measurement.md, \"Session size\")")


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
