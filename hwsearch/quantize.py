"""INT8 post-training quantization of exported subnets with onnxruntime, and what precision means.

Edge devices rarely run FP32, and a subnet that wins at FP32 can lose at
INT8 (depthwise and squeeze-excite layers quantize worse than dense
convolutions, and not every kernel has a fast INT8 path), so hwsearch treats
precision as part of a subnet's identity: a verified FP32 export is
quantized *statically* by onnxruntime into a QDQ graph, and that graph is
what is measured, evaluated and shipped.

Choices, and why:

* **QDQ format** (QuantizeLinear/DequantizeLinear pairs around float ops):
  any runtime reads it, and each execution provider fuses the pairs into
  the INT8 kernels it has, so one file serves every device.
* **Per-channel INT8 weights, per-tensor UINT8 activations** (U8S8): what
  onnxruntime's x86 and ARM CPU kernels are fastest at; per-channel weights
  matter for depthwise convolutions, whose channels span very different ranges.
* **MinMax calibration** by default: the activation range is the observed
  range on the calibration images, in one pass without histograms
  (onnxruntime's default).  ``percentile`` (the 99.999th percentile, which
  clips rare outliers) builds a histogram per tensor; on three demo subnets
  it agreed with FP32 slightly better (99.2-100% against 97.7-99.6% of
  top-1), so it is offered for networks whose activations have heavy tails.
* **Pre-processing first** (onnxruntime's ``quant_pre_process``: shape
  inference and graph fusion).  Without it the Q/DQ pairs land between ops
  that onnxruntime would have fused, and a quantized OFA-MobileNetV3 subnet
  ran 1.9x *slower* than FP32 on one CPU thread; with it, 0.83x.
* **Calibration images come from the user's data** (the part that also
  recalibrates batch norm, never the validation part), resized to the
  subnet's resolution.  A few hundred suffice for per-tensor ranges.

Every quantized model passes ``onnx.checker`` and is run by onnxruntime
next to its FP32 source before it is written: the report gives the file
sizes, top-1 agreement and the largest logit difference, on images the
quantizer did not calibrate on where the caller has them (``held_out``).
On its own calibration images a model calibrated on one image agreed with
FP32 on 100% of them and scored 0.170 top-1 on validation images, against
0.687 for FP32; an agreement measured there says how faithfully the ranges
fit those images, not how the file predicts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AGREEMENT_IMAGES", "CALIBRATION_METHODS", "DEFAULT_PRECISION", "HELD_OUT", "IN_SAMPLE",
           "PRECISIONS", "PROFILE_CALIBRATION_IMAGES",
           "PROFILE_QUANTIZE", "PrecisionError",
           "QuantizationReport", "QuantizeSettings", "check_precision", "images_at",
           "model_input_shape", "precision_key", "quantize_onnx", "run_logits", "session"]

PRECISIONS = ("fp32", "int8")
DEFAULT_PRECISION = "fp32"
CALIBRATION_METHODS = ("minmax", "percentile")
MAX_CALIBRATION_IMAGES = 4096
AGREEMENT_IMAGES = 256
"""Images after the calibration ones that an export checks its INT8 file against FP32 on, at most."""
HELD_OUT, IN_SAMPLE = "held-out images", "calibration images"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class PrecisionError(ValueError):
    """A precision (or quantization setting) is not one hwsearch knows; the message says which are."""


def check_precision(value: Any, field: str = "precision") -> str:
    """``value`` if it is a known precision, else a :class:`PrecisionError` naming ``field``."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise PrecisionError(f"{field} {value!r} is not one of {list(PRECISIONS)}")
    return value


def precision_key(key: str, precision: str) -> str:
    """``key`` (a device identity or dataset id) for rows of ``precision``.

    FP32 keeps the bare key, so every row stored before precision existed
    stays where it was; any other precision gets a suffix, so an INT8
    latency or accuracy can never be read as the FP32 one (or the reverse).
    """
    check_precision(precision)
    return key if precision == DEFAULT_PRECISION else f"{key}@{precision}"


@dataclass(frozen=True)
class QuantizeSettings:
    """How a model is calibrated: the method, how many images, and which of them.

    ``n_images`` bounds the calibration images used (the first ones given);
    ``per_channel`` quantizes each output channel's weights with its own scale.
    """

    method: str = "minmax"
    n_images: int = 256
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise PrecisionError(f"calibration method {self.method!r} is not one of "
                                 f"{list(CALIBRATION_METHODS)}")
        if not (isinstance(self.n_images, int) and 1 <= self.n_images <= MAX_CALIBRATION_IMAGES):
            raise PrecisionError(f"n_images must be an integer in [1, {MAX_CALIBRATION_IMAGES}], "
                                 f"got {self.n_images!r}")


# Latency depends on the quantized graph, not on its ranges, so profiling calibrates on
# fewer images than a shipped export does (what keeps quantizing cheap).
PROFILE_CALIBRATION_IMAGES = 32
PROFILE_QUANTIZE = QuantizeSettings(n_images=PROFILE_CALIBRATION_IMAGES)


@dataclass(frozen=True)
class QuantizationReport:
    """A quantized model and how far it is from its FP32 source on ``agreement_images`` images.

    ``agreement_on`` says which: :data:`HELD_OUT` (the quantizer never saw
    them) or :data:`IN_SAMPLE` (its own calibration images: an optimistic
    figure, as the module says).
    """

    path: Path
    bytes: int
    fp32_bytes: int
    seconds: float
    method: str
    n_images: int
    top1_agreement: float
    max_logit_diff: float
    agreement_images: int
    agreement_on: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"path": str(self.path)}


def quantize_onnx(fp32_path: str | Path, out: str | Path, images: np.ndarray,
                  settings: QuantizeSettings = QuantizeSettings(),
                  held_out: np.ndarray | None = None) -> QuantizationReport:
    """Quantize the FP32 model at ``fp32_path`` into ``out`` (QDQ, INT8), verified; see the module.

    ``images`` are normalised float32 ``(N, C, H, W)`` at the model's input
    size; at least one full batch of the model's static batch is needed.
    ``held_out`` (same form, never calibrated on) is where the agreement with
    FP32 is measured when it holds a full batch; else the calibration images
    are, and the report says so.  Runs as one unit of compute on the host
    lock, like an export.
    """
    from devices.hostlock import compute_unit

    fp32_path, out = Path(fp32_path), Path(out)
    with compute_unit():
        return _quantize_and_verify(fp32_path, out, _calibration_images(images, settings),
                                    settings, held_out)


def _calibration_images(images: np.ndarray, settings: QuantizeSettings) -> np.ndarray:
    images = np.ascontiguousarray(np.asarray(images, dtype=np.float32)[:settings.n_images])
    if images.ndim != 4 or len(images) == 0:
        raise PrecisionError(f"calibration images must be a non-empty (N, C, H, W) array, "
                             f"got shape {images.shape}")
    return images


def _quantize_and_verify(fp32_path: Path, out: Path, images: np.ndarray,
                         settings: QuantizeSettings, held_out: np.ndarray | None) -> QuantizationReport:
    import onnx

    from hwsearch.export import ExportCheckError, write_atomically
    from hwsearch.quantize_worker import quantize_in_child

    batch = model_input_shape(fp32_path)[0]
    if len(images) < batch:
        raise PrecisionError(f"calibration needs at least one batch of {batch} images, "
                             f"got {len(images)}")
    fp32 = fp32_path.read_bytes()
    start = time.perf_counter()
    # In a child process: onnxruntime's temp files then live in a folder hwsearch can clear.
    model = onnx.load_from_string(quantize_in_child(fp32, images, batch,
                                                    input_name=INPUT_NAME, method=settings.method,
                                                    per_channel=settings.per_channel))
    seconds = time.perf_counter() - start
    props = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    props |= {"precision": "int8", "calibration_method": settings.method,
              "calibration_images": str(len(images))}
    onnx.helper.set_model_props(model, props)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"onnx.checker rejected the quantized model: {exc}") from exc
    data = model.SerializeToString()
    checked, on = _agreement_images(images, held_out, batch)
    agreement, diff = _agreement(fp32, data, checked, batch)
    write_atomically(out, data)
    return QuantizationReport(path=out, bytes=len(data), fp32_bytes=len(fp32),
                              seconds=seconds, method=settings.method, n_images=len(images),
                              top1_agreement=agreement, max_logit_diff=diff,
                              agreement_images=len(checked) // batch * batch, agreement_on=on)


def _agreement_images(calibration: np.ndarray, held_out: np.ndarray | None,
                      batch: int) -> tuple[np.ndarray, str]:
    """The images the agreement is measured on, and which they are: held out if a full batch is."""
    if held_out is not None:
        held_out = np.ascontiguousarray(np.asarray(held_out, dtype=np.float32))
        if held_out.ndim == 4 and held_out.shape[1:] == calibration.shape[1:] and len(held_out) >= batch:
            return held_out, HELD_OUT
    return calibration, IN_SAMPLE


def model_input_shape(path: str | Path) -> tuple[int, ...]:
    """The static input shape of an exported model (hwsearch exports static shapes only)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) for d in dims)
    if len(shape) != 4 or min(shape) < 1:
        raise PrecisionError(f"{path}: expected a static (N, C, H, W) input, got {shape}")
    return shape


def session(model: bytes | str | Path) -> Any:
    """A one-thread CPU onnxruntime session: evaluation must not take the cores measurements need."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_logits(sess: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """Logits of every full batch of ``images`` (static-batch models leave the remainder out)."""
    outputs = [sess.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
               for chunk in _full_batches(images, batch)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def _full_batches(images: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(images) - batch + 1, batch):
        yield images[i:i + batch]


def _agreement(fp32: bytes, int8: bytes, images: np.ndarray, batch: int) -> tuple[float, float]:
    """Top-1 agreement and max abs logit difference of the two models on ``images``."""
    from hwsearch.export import ExportCheckError

    reference = run_logits(session(fp32), images, batch)
    quantized = run_logits(session(int8), images, batch)
    if quantized.shape != reference.shape:
        raise ExportCheckError(f"quantized output shape {quantized.shape} != FP32 {reference.shape}")
    same = reference.argmax(axis=1) == quantized.argmax(axis=1)
    diff = np.abs(quantized.astype(np.float64) - reference.astype(np.float64))
    return float(same.mean()), float(diff.max())


def images_at(data: Any, resolution: int, n: int | None = None) -> np.ndarray:
    """The first ``n`` (default: all) images of ``data`` at ``resolution``, as float32 NCHW.

    ``data`` is either kind of :data:`hwsearch.data.Images` (in memory, or a
    folder streamed batch by batch).
    """
    from hwsearch.data import batches

    if n is not None and n < len(data):
        data = data.take(np.arange(n))
    chunks = [x.numpy() for x, _ in batches(data, resolution, batch_size=256)]
    return np.concatenate(chunks).astype(np.float32)
