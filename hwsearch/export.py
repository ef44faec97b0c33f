"""ONNX export of subnets, verified before the file is written.

Every export is checked (unless ``check=False``): ``onnx.checker`` must pass
and onnxruntime's output on a random input must match torch's: the max abs
diff may be ``tolerance`` (1e-4) plus a share of the outputs' scale (1e-5 of
the largest |output| at float32, 1e-2 at float16), since two correct float
computations in different orders differ by rounding that grows with the
values: a trained demo subnet whose logits reach 2,726 on a random input
differed by 2.4e-4 (9e-8 of its scale) and failed a bare 1e-4.  A wrong graph
differs by a sizeable share of the scale.  A failing model is never
written, so a file at ``path`` is always a verified one.  Graphs have static
shapes, one input named ``input`` and one output named ``logits``, and carry
their provenance in ``metadata_props``.

``precision="int8"`` exports the verified FP32 graph and then quantizes it
statically with onnxruntime (:mod:`hwsearch.quantize`): what ships at INT8
is the quantized file, checked against its FP32 source on calibration images.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

import hwsearch
from hwsearch.checks import positive_int
from hwsearch.supernets import ArchLike, Supernet
from hwsearch.supernets.counting import measure

if TYPE_CHECKING:
    from hwsearch.data import Images
    from hwsearch.space import ArchConfig
    from hwsearch.quantize import QuantizeSettings

__all__ = ["CalibrationDataError", "ExportCheckError", "ExportReport", "NonFiniteOutput", "export_onnx",
           "export_subnet", "write_atomically"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2}
INPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ExportCheckError(RuntimeError):
    """The exported model failed ``onnx.checker`` or disagreed with torch."""


class NonFiniteOutput(ExportCheckError):
    """Torch's own output for the check input is NaN or infinite: the weights give no numbers to compare."""


class CalibrationDataError(ValueError):
    """The images an export calibrates on could not be read or used: the data's fault, not the export's.

    Folders are streamed, so a file that cannot be decoded (or is too
    large once resized) surfaces only while the export reads it; the
    service answers it as a bad ``dataset`` (422), not as its own failure.
    """


@dataclass(frozen=True)
class ExportReport:
    """What an export produced.

    ``seconds`` is the time to build the ONNX model (trace, metadata,
    serialisation); ``check_seconds`` the time spent verifying it.
    ``max_abs_diff`` is ``None`` when the check was skipped.  ``macs`` (per
    sample) and ``params`` are counted on the exported torch module.
    """

    path: Path
    seconds: float
    bytes: int
    max_abs_diff: float | None
    macs: int
    params: int
    input_shape: tuple[int, ...]
    check_seconds: float = 0.0
    precision: str = "fp32"
    quantization: Mapping[str, Any] | None = None
    #: A subnet's batch norm: ``recalibrated`` on the caller's data, ``inherited`` from the supernet
    #: (what the supernet's other subnets left: fine for latency, far from the subnet's accuracy),
    #: ``none`` (no batch norm); ``None`` for a plain module export, which cannot tell.
    bn_statistics: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["quantization"] = None if self.quantization is None else dict(self.quantization)
        data["path"] = str(self.path)
        data["input_shape"] = list(self.input_shape)
        return data


def export_onnx(
    module: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    metadata: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Export ``module`` (in eval mode) to ``path`` and verify it; see the module docstring.

    Exporting and verifying are CPU work, so they hold the host's compute lock
    (:func:`devices.hostlock.compute_unit`): they wait while a latency
    measurement session has the host, and a session waits for them to end.
    """
    from devices.hostlock import compute_unit

    with compute_unit():
        return _export_and_verify(Path(path), module, input_shape, metadata, opset, check, tolerance)


def _export_and_verify(path: Path, module: nn.Module, input_shape: tuple[int, ...],
                       metadata: Mapping[str, str] | None, opset: int, check: bool,
                       tolerance: float) -> ExportReport:
    was_training = module.training
    module.eval()
    try:
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
        first = next(module.parameters(), x)
        x = x.to(device=first.device, dtype=first.dtype)  # a float16 module takes float16 input
        expected, costs = measure(module, x)
        start = time.perf_counter()
        props = {**(metadata or {}), "hwsearch_version": hwsearch.__version__}
        data = _with_metadata(_to_onnx(module, x, opset), props)
        seconds = time.perf_counter() - start
    finally:
        module.train(was_training)
    start = time.perf_counter()
    diff = _verify(data, x, expected, tolerance) if check else None
    check_seconds = time.perf_counter() - start
    write_atomically(path, data)
    return ExportReport(path, seconds, len(data), diff, costs.macs, costs.params,
                        tuple(input_shape), check_seconds)


def export_subnet(
    supernet: Supernet,
    arch: ArchLike,
    path: str | Path,
    *,
    batch: int = 1,
    input_dtype: str = "float32",
    check: bool = True,
    precision: str = "fp32",
    calibration: Images | None = None,
    bn_data: Images | None = None,
    quantize: QuantizeSettings | None = None,
) -> ExportReport:
    """Extract ``arch`` from ``supernet`` and export it; the file records supernet and arch.

    ``input_dtype`` ``float16`` exports the subnet in half precision (weights,
    activations and input), which is what a device profile with that input
    dtype measures; the check then allows 1% of the outputs' scale.

    ``precision="int8"`` quantizes the (checked) FP32 export statically,
    calibrating on ``calibration`` images (required: the user's data, see
    :mod:`hwsearch.quantize`); ``quantize`` picks the calibration method and
    image count.  ``bn_data``, when given, re-estimates batch-norm statistics
    first (:func:`hwsearch.bn.recalibrate_bn`), as accuracy evaluation does,
    so the shipped file is the network whose accuracy was measured.  Without
    it a subnet keeps the statistics its supernet accumulated over other
    subnets: five sampled demo subnets at 0.90-0.93 top-1 scored 0.31-0.79
    so.  The report and the file's metadata say which (``bn_statistics``),
    so a file exported for latency alone is never mistaken for a deployable one.

    The whole export is one unit of the host's compute
    (:func:`devices.hostlock.compute_unit`), extraction and recalibration
    included: recalibrating 400 images at 224 px took 22.7 s of CPU, which
    ran beside another process's measurement session when only the ONNX
    export itself held the host.
    """
    from devices.hostlock import compute_unit
    from hwsearch.quantize import check_precision

    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype {input_dtype!r} is not one of {sorted(INPUT_DTYPES)}")
    check_precision(precision)
    batch = positive_int(batch, "batch")  # 0 divided by zero, -1 and 2.5 failed inside torch
    if precision == "int8" and (input_dtype != "float32" or calibration is None):
        raise ValueError("an int8 export needs input_dtype float32 and calibration images "
                         "(a few hundred of the user's data)")
    arch = supernet.arch(arch)
    with compute_unit():  # the exports' and the quantizer's own units nest in it
        return _extract_and_export(supernet, arch, Path(path), batch, input_dtype, check, precision,
                                   calibration, bn_data, quantize)


def _extract_and_export(supernet: Supernet, arch: ArchConfig, path: Path, batch: int, input_dtype: str,
                        check: bool, precision: str, calibration: Images | None, bn_data: Images | None,
                        quantize: QuantizeSettings | None) -> ExportReport:
    """:func:`export_subnet`'s work, once its arguments are checked."""
    from hwsearch.bn import has_batch_norm

    module = supernet.extract(arch)  # extract returns a fresh copy
    bn_statistics = "none" if not has_batch_norm(module) else "inherited" if bn_data is None else "recalibrated"
    metadata = {"supernet": supernet.name, "arch_key": arch.key(), "arch_json": arch.to_json(),
                "input_dtype": input_dtype, "precision": precision, "bn_statistics": bn_statistics}
    if bn_data is not None:
        module = _recalibrated(module, bn_data, arch.resolution)
    module = module.to(INPUT_DTYPES[input_dtype])
    shape = supernet.input_shape(arch, batch)
    if precision == "fp32":
        report = export_onnx(module, path, input_shape=shape, metadata=metadata, check=check)
    else:
        report = _export_int8(module, path, shape, metadata, check, calibration, arch.resolution, quantize)
    return replace(report, bn_statistics=bn_statistics)


def _recalibrated(module: nn.Module, data: Images, resolution: int) -> nn.Module:
    """``module`` with its batch-norm statistics re-estimated on ``data`` at ``resolution``."""
    from hwsearch.bn import recalibrate_bn
    from hwsearch.data import batches

    with _calibration_data():
        return recalibrate_bn(module, _varying(x for x, _ in batches(data, resolution)))


def _varying(images: Iterator[Tensor]) -> Iterator[Tensor]:
    """The batches, refused if each channel of the first one holds a single value (every image all zeros, say).

    Batch norm then takes a zero variance and divides by its epsilon alone:
    the exported network's outputs reached 1e11, its ONNX and torch outputs
    parted by more than the check allows, and the service answered 500.
    """
    from hwsearch.bn import ONE_VALUE_PER_CHANNEL, one_value_per_channel

    first = next(images, None)
    if first is not None:
        if one_value_per_channel(first):
            raise CalibrationDataError(ONE_VALUE_PER_CHANNEL)
        yield first
    yield from images


@contextmanager
def _calibration_data() -> Iterator[None]:
    """Report a ValueError raised while the calibration images are read or run as :class:`CalibrationDataError`.

    Besides an unreadable file, batch norm raises one for a batch whose
    channels hold a single value (one image reaching a 1x1 feature map).
    """
    try:
        yield
    except CalibrationDataError:
        raise
    except ValueError as error:
        raise CalibrationDataError(f"the calibration images cannot be used: {error}") from error


def _export_int8(module: nn.Module, path: Path, shape: tuple[int, ...],
                 metadata: Mapping[str, str], check: bool, calibration: Images,
                 resolution: int, settings: QuantizeSettings | None) -> ExportReport:
    """Export FP32 beside ``path`` (checked unless ``check=False``), then quantize into ``path``."""
    from hwsearch.quantize import AGREEMENT_IMAGES, QuantizeSettings, images_at, quantize_onnx

    settings = settings or QuantizeSettings()
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None,
                                     prefix=".hwsearch-fp32-") as tmp:
        fp32 = export_onnx(module, Path(tmp) / "fp32.onnx", input_shape=shape, metadata=metadata,
                           check=check)
        # The images after the calibration ones check the file on what the quantizer never saw.
        with _calibration_data():
            images = images_at(calibration, resolution, settings.n_images + AGREEMENT_IMAGES)
        quantized = quantize_onnx(fp32.path, path, images[:settings.n_images], settings,
                                  held_out=images[settings.n_images:])
    return replace(fp32, path=path, bytes=quantized.bytes, precision="int8",
                   seconds=fp32.seconds + quantized.seconds,
                   quantization=quantized.to_dict() | {"path": str(path)})


# torch's TorchScript exporter keeps process-wide state (``GLOBALS.in_onnx_export``) and
# ``warnings.catch_warnings`` swaps a global too: two threads exporting at once (two jobs in
# one process, or the service's export requests) fail with "in_onnx_export must be False".
_EXPORTER_LOCK = threading.Lock()


def _to_onnx(module: nn.Module, x: Tensor, opset: int) -> bytes:
    """The exporter's serialized ModelProto."""
    buffer = io.BytesIO()
    with _EXPORTER_LOCK, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated but exports a static CNN in a
        # fraction of the dynamo exporter's time; its notices are not news to users.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    return buffer.getvalue()


def _with_metadata(data: bytes, props: Mapping[str, Any]) -> bytes:
    """``data``, a serialized ModelProto without metadata, with ``props`` as its ``metadata_props``.

    Two serialized protobuf messages concatenated parse as one message with
    the repeated fields of both, so the props are appended as bytes instead
    of parsing the exporter's model and serializing it again (with the
    checker's own serialization: 24 ms against 3 ms, of an OFA-MobileNetV3
    export at 160 px that takes about 290 ms).  The exporter writes no
    metadata and no field numbered after it, so the file is byte-identical
    to the parsed and re-serialized model; ``tests/test_export.py`` checks
    that it is canonical.
    """
    props_only = onnx.ModelProto()
    onnx.helper.set_model_props(props_only, {key: str(value) for key, value in props.items()})
    return data + props_only.SerializeToString()


def _verify(data: bytes, x: Tensor, expected: Tensor, tolerance: float) -> float:
    """Run ``onnx.checker`` and onnxruntime on the serialized model; return the max abs diff to torch's output."""
    try:
        onnx.checker.check_model(data)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"onnx.checker rejected the model: {exc}") from exc
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})
    reference = expected.cpu().numpy()
    if not np.isfinite(reference).all():
        raise NonFiniteOutput("torch's output for this subnet is NaN or infinite, so its weights cannot be "
                              "exported and checked")
    if actual.shape != reference.shape:
        raise ExportCheckError(
            f"onnxruntime output shape {actual.shape} != torch {reference.shape}")
    diff = float(np.max(np.abs(actual.astype(np.float64) - reference.astype(np.float64))))
    allowed = tolerance + RELATIVE_TOLERANCE.get(reference.dtype, 0.0) * float(np.max(np.abs(reference)))
    if not diff <= allowed:
        raise ExportCheckError(f"onnxruntime and torch outputs differ by {diff:.3g} "
                               f"(max abs), more than the tolerance {allowed:.3g}")
    return diff


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file so readers never see a partial model; never once a stopped command exits.

    A job's thread goes on exporting while a stopped command's exit handlers
    run, and its folder, made again here after the exit had removed it, was
    left behind (:mod:`hwsearch.at_exit`).
    """
    from hwsearch.at_exit import unless_stopping

    with unless_stopping(f"writing {path.name}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
