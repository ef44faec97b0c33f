"""onnxruntime's static quantizer, run in a child process whose temp folder hwsearch owns.

``quant_pre_process`` and ``quantize_static`` stage their intermediate models
(about one model's size each) in ``tempfile.TemporaryDirectory`` folders
named ``pre.quant.*`` and ``ort.quant.*`` in the process-wide temp dir.  A
run killed mid-quantization (``kill -9``, an out-of-memory kill, a Ray worker
ended with its task) leaves them behind, and nobody can tell them from
another program's.  Pointing them elsewhere means setting
``tempfile.tempdir``, which every thread of the process shares, so it cannot
be done in a service that runs several jobs at once.

In a child process it can.  The child makes its own folder with
:func:`hwsearch.tempdirs.owned_temp_dir` and points ``tempfile.tempdir`` at
it, so everything onnxruntime stages lives in a folder that a later hwsearch
command removes once the child is dead, however it died.  Models and images
travel over the child's stdin and stdout; the parent and the child share no
folder, so neither can leave files in the other's.

The child is started on the first quantization and reused (importing onnx
and onnxruntime's quantizer costs about 1.1 s, about a demo subnet's
quantization twice over); calls from several threads take turns.  It exits
when its stdin closes, which happens when the parent exits or dies, and
finishes a quantization already under way first, so it then removes its own
folder.

Protocol, one request at a time: a JSON header line, then the header's
``model`` bytes of ONNX model and ``images`` bytes of C-ordered float32
images of ``shape``; the reply is a JSON header line with either ``bytes``
(followed by that many bytes of quantized model) or ``error``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["QuantizerError", "quantize_in_child"]

_CHILD_EXIT_SECONDS = 30.0


class QuantizerError(RuntimeError):
    """onnxruntime's quantizer rejected a model, or its child process died; the message says which."""


def quantize_in_child(model: bytes, images: np.ndarray, batch: int, *, input_name: str, method: str,
                      per_channel: bool) -> bytes:
    """The QDQ INT8 model onnxruntime makes of ``model``, calibrated on ``images`` fed ``batch`` at a time.

    ``method`` is ``"minmax"`` or ``"percentile"``.  Raises
    :class:`QuantizerError` if onnxruntime fails or the child dies.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    header = {"model": len(model), "images": images.nbytes, "shape": list(images.shape),
              "batch": batch, "input_name": input_name, "method": method, "per_channel": per_channel}
    return _CHILD.call(header, model, images)


class _Child:
    """The quantizer child of this process: started when first needed, restarted after it dies."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start from nothing: what a forked process must do, since its parent's child and lock are not its own."""
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def call(self, header: dict[str, Any], model: bytes, images: np.ndarray) -> bytes:
        with self._lock:
            process = self._running()
            try:
                _send(process.stdin, header, model, images)
                reply = _read_reply(process.stdout)
            except (OSError, EOFError, ValueError) as exc:
                self._stop()
                raise QuantizerError(f"the quantizer process failed ({exc}); "
                                     f"exit code {process.poll()}; see its stderr above") from exc
        if "error" in reply:
            raise QuantizerError(f"onnxruntime could not quantize the model: {reply['error']}")
        return reply["model"]

    def _running(self) -> subprocess.Popen[bytes]:
        """The live child, started afresh if there is none or it died."""
        if self._process is None or self._process.poll() is not None:
            self._process = _start_child()
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        try:
            process.wait(timeout=_CHILD_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close_at_exit(self) -> None:
        """Let the child remove its folder before this process exits, so no sweep is left to do.

        A call still under way in another thread keeps the child; it exits
        when this process's end closes its stdin.
        """
        if self._lock.acquire(blocking=False):
            try:
                self._stop()
            finally:
                self._lock.release()


def _start_child() -> subprocess.Popen[bytes]:
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.Popen([sys.executable, "-m", "hwsearch.quantize_worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": path})


def _send(stream: IO[bytes] | None, header: dict[str, Any], model: bytes, images: np.ndarray) -> None:
    assert stream is not None
    stream.write(json.dumps(header).encode() + b"\n")
    stream.write(model)
    stream.write(memoryview(images).cast("B"))
    stream.flush()


def _read_reply(stream: IO[bytes] | None) -> dict[str, Any]:
    assert stream is not None
    reply = json.loads(_header_line(stream))
    if "bytes" in reply:
        reply["model"] = _read_exactly(stream, int(reply["bytes"]))
    return reply


def _header_line(stream: IO[bytes]) -> bytes:
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise EOFError("the other side closed the pipe")
    return line


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"the pipe closed after {len(data)} of {n} bytes")
    return data


_CHILD = _Child()
atexit.register(_CHILD.close_at_exit)
os.register_at_fork(after_in_child=_CHILD.forget)


# --- the child --------------------------------------------------------------------------------


def _serve() -> None:
    """Answer requests on stdin until it closes; every temp file lives in this process's owned folder."""
    from hwsearch.tempdirs import owned_temp_dir

    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # onnxruntime's calibrators print progress: keep it off the reply pipe
    logging.getLogger().addFilter(_per_tensor_fallback_notices)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so a plain kill still removes the folder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, whose exit then ends this
    with owned_temp_dir("quantizer") as scratch:
        tempfile.tempdir = str(scratch)  # this process's alone: onnxruntime stages into our folder
        while True:
            try:
                header = json.loads(_header_line(requests))
                model = _read_exactly(requests, int(header["model"]))
                images = np.frombuffer(_read_exactly(requests, int(header["images"])), dtype=np.float32)
            except EOFError:
                return
            try:
                replies.write(_answer(header, model, images.reshape(header["shape"]), scratch))
                replies.flush()
            except BrokenPipeError:  # the parent is gone (stopped by SIGTERM): no one to answer
                return


def _answer(header: dict[str, Any], model: bytes, images: np.ndarray, scratch: Path) -> bytes:
    try:
        data = _quantize(model, images, header, scratch)
    except Exception as exc:  # onnxruntime's own errors, of any type: the parent reports them
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n"
    return json.dumps({"bytes": len(data)}).encode() + b"\n" + data


def _quantize(model: bytes, images: np.ndarray, header: dict[str, Any], scratch: Path) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source, prepared, quantized = scratch / "fp32.onnx", scratch / "prepared.onnx", scratch / "int8.onnx"
    reader = _reader(images, int(header["batch"]), str(header["input_name"]))
    source.write_bytes(model)
    try:
        _prepare(source, prepared)
        quantize_static(str(prepared), str(quantized), reader,
                        quant_format=QuantFormat.QDQ, per_channel=bool(header["per_channel"]),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile}[header["method"]],
                        extra_options={"CalibTensorRangeSymmetric": False})
        return quantized.read_bytes()
    finally:
        for path in (source, prepared, quantized):
            path.unlink(missing_ok=True)


def _per_tensor_fallback_notices(record: logging.LogRecord) -> bool:
    """False for onnxruntime's "Axis 1 is out-of-range for weight ... with rank 1", printed for each layer norm.

    Per-channel quantization asks for an axis a 1-D weight (a LayerNorm's
    scale) does not have, and onnxruntime quantizes it per tensor instead,
    which is right; but it said so on the user's terminal, 9 lines per
    AutoFormer export and 52 in a 6-subnet search (probe Z11).
    """
    message = record.getMessage()
    return not (message.startswith("Axis ") and "is out-of-range for weight" in message)


#: Pre-processing that grows the model past this many times its size folded computed tensors into constants.
MAX_PREPARED_GROWTH = 2.0


def _prepare(source: Path, prepared: Path) -> None:
    """onnxruntime's quantization pre-processing, without its graph optimisation where that bloats the model.

    The optimisation folds subgraphs whose inputs are constant into new
    constants.  An AutoFormer ViT computes its relative-position tables
    from small learned ones, so folding wrote them out whole (197 x 197 x 64
    per table and layer): AutoFormer-T's 38.4 MiB subnet became 302.7 MiB,
    every table was then quantised and dequantised at each run, and the
    INT8 file was 2.98x the FP32 one and ran at 0.86-0.89x its time, against
    0.74x without the folding (probe Z11).  Elsewhere the optimisation
    helps (the demo ViT's INT8 ran 1.38x FP32 with it, 1.49x without; it
    grew that model 1.21x), so it is kept unless the model more than
    doubles (MobileNetV3 and the demos: 1.00-1.21x).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(prepared))
    if prepared.stat().st_size > MAX_PREPARED_GROWTH * source.stat().st_size:
        quant_pre_process(str(source), str(prepared), skip_optimization=True)


def _reader(images: np.ndarray, batch: int, input_name: str) -> Any:
    """onnxruntime's calibration reader over ``images``: full batches only (the graphs' batch is static)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (images[i:i + batch] for i in range(0, len(images) - batch + 1, batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self.batches, None)
            return None if chunk is None else {input_name: chunk}

    return Reader()


if __name__ == "__main__":
    _serve()
