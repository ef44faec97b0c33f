"""Precision as a job axis: every device is measured, predicted and refined at each precision it runs.

A device profile lists its precisions (``precisions: [fp32, int8]``).  A job
treats each (device, precision) pair as a :class:`Target`: its own latency
rows (filed under the device's key with the precision's suffix, see
:func:`hwsearch.quantize.precision_key`), its own latency predictor and its
own refinement run; accuracy has one predictor per precision, trained on
accuracies measured at that precision (INT8: the quantized ONNX model in
onnxruntime, :mod:`hwsearch.onnx_accuracy`).

Why separate models rather than one model with a precision feature: the
predictors are gradient-boosted trees over the subnet's genes, and the INT8
to FP32 latency ratio varies from subnet to subnet (0.81-1.01x over 30 OFA
subnets at 160 px, Kendall tau 0.88 between the two rankings; see
docs/precision.md), so a shared model would need the precision to interact
with every gene; separate models get that for free,
each with the same number of training rows a single-precision job has, and
they need nothing from :mod:`predictors`.  Each device's front then merges
the measured points of all its precisions, each labelled with its own.

A device's precisions are targets of their own for predictors and
refinement, but never for measurement: :func:`profile_device` measures a
subnet's FP32 and INT8 files in one session (the pipeline quantizes each
FP32 export, :func:`hwsearch.pipeline.profile_precisions`), so the rows
that compare the precisions share one reference scale and one state of the
machine.  Measured in separate sessions on a wall-clock device of a shared
machine, INT8 came out slower than FP32 on 14 of 30 demo subnets where one
session found it faster on all 30 (docs/precision.md).
:class:`QuantizingProfiler` remains for measuring one file at one precision
(``POST /profiles``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hwsearch.jobs.context import JobDevice, latency_conditions
from hwsearch.quantize import (
    DEFAULT_PRECISION,
    PRECISIONS,
    PROFILE_QUANTIZE,
    QuantizeSettings,
    precision_key,
)
from hwsearch.store import Store

__all__ = ["QuantizingProfiler", "Target", "calibration_part", "device_keys", "job_precisions",
           "label_front", "merge_fronts", "profile_device", "targets"]


@dataclass(frozen=True)
class Target:
    """One device at one precision: what one latency predictor and one refinement run are for."""

    device: JobDevice
    precision: str

    @property
    def key(self) -> str:
        """Where this target's latency rows are filed (the device's key, suffixed unless FP32)."""
        return precision_key(self.device.key, self.precision)

    @property
    def label(self) -> str:
        """``device`` for FP32 (as before precision existed), ``device@int8`` otherwise."""
        return precision_key(self.device.name, self.precision)


def device_keys(device: JobDevice) -> dict[str, str]:
    """Where each of the device's precisions files its latency rows, in :data:`PRECISIONS` order."""
    return {t.precision: t.key for t in targets([device])}


def profile_device(net: Any, archs: Sequence[Any], device: JobDevice, data: Any, store: Store,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Profile ``archs`` at every precision of ``device``, a subnet's files in one session.

    Returns :class:`~hwsearch.pipeline.ProfileReport` by precision.  INT8
    calibrates on the BN-calibration part of ``data`` (the job's data,
    :func:`calibration_part`); a device running only FP32 never reads it.
    """
    from hwsearch.pipeline import profile_precisions

    keys = device_keys(device)
    calibration = None if list(keys) == [DEFAULT_PRECISION] else calibration_part(data)
    return profile_precisions(net, archs, device.profiler(), keys, store,
                              calibration=calibration, progress=progress)


def targets(devices: Sequence[JobDevice]) -> list[Target]:
    """Every (device, precision) pair of a job, in device order, precisions in :data:`PRECISIONS` order."""
    return [Target(d, p) for d in devices for p in PRECISIONS if p in _precisions(d)]


def job_precisions(devices: Sequence[JobDevice]) -> list[str]:
    """The precisions at least one of the job's devices runs, in :data:`PRECISIONS` order."""
    wanted = {p for d in devices for p in _precisions(d)}
    return [p for p in PRECISIONS if p in wanted]


def _precisions(device: JobDevice) -> tuple[str, ...]:
    return tuple(getattr(device.profile, "precisions", (DEFAULT_PRECISION,)))


def calibration_part(data: Any) -> Any:
    """The job's BN-calibration images (never its validation images), which also calibrate INT8.

    ``data`` is a job's :class:`~hwsearch.evaldata.EvalSplit`, or one
    dataset, split as accuracy evaluation splits it.
    """
    from hwsearch.accuracy_eval import EvalSettings
    from hwsearch.evaldata import EvalSplit

    if isinstance(data, EvalSplit):
        return data.calibration
    settings = EvalSettings()
    return data.split(min(settings.n_calibration, len(data) // 2), seed=settings.seed)[0]


class QuantizingProfiler:
    """A device's profiler that measures the INT8 quantization of each FP32 file it is given.

    For one file at one precision (``POST /profiles``); a job measures all
    of a device's precisions together instead (:func:`profile_device`).
    The quantized file sits beside its source (``<name>.int8.onnx``) and is
    reused when a measurement is repeated, so each file is quantized once.
    """

    def __init__(self, inner: Any, calibration: Any,
                 settings: QuantizeSettings = PROFILE_QUANTIZE
                 ) -> None:
        self.inner, self.calibration, self.settings = inner, calibration, settings

    @property
    def profile(self) -> Any:
        """The device's profile (batch, input dtype, where it measures), as the pipeline reads it."""
        return self.inner.profile

    def device_key(self) -> str:
        return self.inner.device_key()

    def measure_many(self, onnx_paths: Sequence[Path], **options: Any) -> list[Any]:
        """Quantize every file (or reuse its quantization), then measure them in one session."""
        return self.inner.measure_many([self._quantized(Path(p)) for p in onnx_paths], **options)

    def _quantized(self, path: Path) -> Path:
        from hwsearch.quantize import images_at, model_input_shape, quantize_onnx

        out = path.with_suffix(".int8.onnx")
        if not out.exists():
            batch, *_, resolution = model_input_shape(path)
            n = max(self.settings.n_images, batch)
            quantize_onnx(path, out, images_at(self.calibration, resolution, n),
                          replace(self.settings, n_images=n))
        return out


def label_front(front: Any, precision: str, rows: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """The points of one target's front, labelled with ``precision`` and their latency conditions, each
    measured latency as its row (``rows``: :func:`~hwsearch.pipeline.finite_latencies`) reads now.

    The anchor corrects a row against its norm as later sessions move it:
    a point showed the 0.112887 ms refinement had read, beside the
    conditions of its row's 0.113053 (``row_offset`` 1.0, where the value
    shown had been divided by 1.0015).
    """
    labelled = []
    for point in front.points:
        row = rows.get(point.arch.key())
        if row is None:
            labelled.append(replace(point, precision=precision, latency_conditions={}))
            continue
        measured = dict(point.measured)
        if "latency_ms" in measured:
            measured["latency_ms"] = float(row["latency_ms"])
        labelled.append(replace(point, precision=precision, measured=measured,
                                latency_conditions=latency_conditions(row)))
    return labelled


def merge_fronts(device: str, fronts: Mapping[str, Any],
                 rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Any:
    """One device's front over all its precisions: the non-dominated points of every precision's front.

    ``fronts`` and ``rows`` are by precision.  A point dominated within its
    own precision is dominated in the union too, so merging fronts loses
    nothing.  The reference point is the worst of the precisions' reference
    points, so it bounds every precision's points as each one's own did;
    each precision's own hypervolume was taken against its own point, so
    compare hypervolumes only against one point.  A single precision's
    front keeps its settings as they were.
    """
    from hwsearch.results import ParetoFront

    first = next(iter(fronts.values()))
    points = [c for p, front in fronts.items() for c in label_front(front, p, rows[p])]
    reference = [max(values) for values in zip(*(f.reference_point for f in fronts.values()))]
    settings = (dict(first.settings) if len(fronts) == 1
                else {"precisions": {p: dict(f.settings) for p, f in fronts.items()},
                      "targets": first.settings.get("targets")})
    return ParetoFront.build(device=device, space_name=first.space_name, candidates=points,
                             objectives=first.objectives, reference_point=reference,
                             seed=first.seed, settings=settings)
