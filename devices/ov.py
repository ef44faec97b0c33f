"""OpenVINO runner: a really different backend reading the same ONNX files.

OpenVINO compiles the graph with its own kernels and threading, so a subnet
that is fast under onnxruntime need not be fast here; a profile with
``runtime: openvino`` is therefore a distinct device with its own hash.  The
runner mirrors :class:`devices.ort.OrtRunner` so the protocol treats both alike.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from devices.ort import EXTERNAL_DATA_REFUSED, build_inputs, refuse_unsafe_model
from devices.profile import DeviceProfile

_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)"}


class OpenVinoRunner:
    """One compiled OpenVINO model with a fixed input, timed one run at a time."""

    def __init__(self, model_bytes: bytes, profile: DeviceProfile) -> None:
        import openvino as ov

        refuse_unsafe_model(model_bytes)
        core = ov.Core()
        model = _read_onnx(core, model_bytes)
        config = {
            "INFERENCE_NUM_THREADS": profile.intra_op_threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": profile.thread_affinity is not None,
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        declared = [
            (p.any_name, [d.get_length() if d.is_static else None for d in p.get_partial_shape()],
             _OV_TYPES.get(p.get_element_type().get_type_name(), "unsupported"))
            for p in model.inputs
        ]
        feeds = build_inputs(declared, profile)
        self.inputs = [feeds[name] for name, _, _ in declared]
        self.provider = "OpenVINO-CPU"
        self.stopped = False

    def run_ms(self) -> float:
        """Wall time of one synchronous inference in milliseconds."""
        if self.stopped:
            raise RuntimeError("the runner was stopped")
        start = time.perf_counter_ns()
        self.request.infer(self.inputs)
        return (time.perf_counter_ns() - start) / 1e6

    def stop(self) -> None:
        """Cancel the inference running now, and refuse later ones."""
        self.stopped = True
        self.request.cancel()


def openvino_facts() -> dict[str, object]:
    """OpenVINO's version and devices, or why it is unavailable."""
    try:
        import openvino as ov
    except ImportError:
        return {"openvino": None}
    core = ov.Core()
    return {"openvino": ov.__version__, "openvino_devices": list(core.available_devices)}


def _read_onnx(core, model_bytes: bytes):  # -> openvino.Model
    """OpenVINO's ONNX frontend reads files, so spill the bytes to one, alone in a folder of its own.

    The frontend reads a model's external-data tensors from the files they
    name, confined to the model's folder.  Spilled straight into the temp
    folder, a model could name any file there (measured: a ``secret.txt``
    in it loaded as the model's weight); alone in a fresh folder, it finds
    none, and the read fails.
    """
    with tempfile.TemporaryDirectory(prefix="devices-ov-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model_bytes)
        try:
            return core.read_model(str(path))
        except Exception as error:  # OpenVINO raises its own RuntimeError subclasses
            if "external" in str(error).lower():
                raise ValueError(f"not a model this tool measures: {EXTERNAL_DATA_REFUSED}") from None
            raise
