"""The built-in reference model every latency is divided by.

On a shared machine the absolute speed of the CPU drifts by tens of percent
within seconds, but two graphs run back to back see the same machine state.
Dividing each model's time by a reference measured right beside it cancels
that drift.  The reference should look like the models it calibrates
(depthwise-separable convolutions, pointwise convolutions, a classifier
matmul) and cost about as much as a small OFA-MobileNetV3 subnet, so both
react to the machine's state the same way.

The graph is built with ``onnx.helper`` from a fixed seed, so its bytes (and
its SHA-256) are identical on every machine.  Only the side that prepares a
measurement needs the ``onnx`` package; an agent receives the reference as
bytes and needs only onnxruntime.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

REFERENCE_VERSION = "mbv-ref-v1"
REFERENCE_INPUT_SHAPE = (1, 3, 160, 160)
_SEED = 20240607
# (expanded channels, output channels, kernel, stride) per inverted-residual block.
_BLOCKS = (
    (64, 24, 3, 2), (72, 24, 3, 1), (72, 40, 5, 2), (120, 40, 5, 1), (120, 40, 5, 1),
    (240, 80, 3, 2), (200, 80, 3, 1), (184, 80, 3, 1), (480, 112, 3, 1), (672, 112, 3, 1),
    (672, 160, 5, 2), (960, 160, 5, 1), (960, 160, 5, 1),
)
_STEM_CHANNELS = 16
_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def reference_model_bytes() -> bytes:
    """Serialized reference ONNX model (deterministic, cached per process)."""
    return mobilenet_like_onnx(_BLOCKS, seed=_SEED, input_shape=REFERENCE_INPUT_SHAPE, name=REFERENCE_VERSION)


def mobilenet_like_onnx(
    blocks: tuple[tuple[int, int, int, int], ...],
    *,
    seed: int,
    input_shape: tuple[int, int, int, int] = REFERENCE_INPUT_SHAPE,
    name: str = "mobilenet-like",
) -> bytes:
    """A MobileNetV3-style ONNX graph from (expanded, out, kernel, stride) blocks.

    Deterministic for a given argument set; also useful to generate models of
    known relative cost when checking a device.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:])) or 1
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        initializers.append(numpy_helper.from_array(values, name))
        return name

    def conv(x: str, name: str, c_in: int, c_out: int, k: int, stride: int, groups: int, relu: bool) -> str:
        w = weight(f"{name}.w", (c_out, c_in // groups, k, k))
        b = weight(f"{name}.b", (c_out,))
        out = f"{name}.out"
        nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [out], kernel_shape=[k, k], strides=[stride, stride],
                pads=[k // 2] * 4, group=groups, name=name,
            )
        )
        if not relu:
            return out
        nodes.append(helper.make_node("HardSwish", [out], [f"{name}.act"], name=f"{name}.hswish"))
        return f"{name}.act"

    x = conv("input", "stem", input_shape[1], _STEM_CHANNELS, 3, 2, 1, relu=True)
    c_in = _STEM_CHANNELS
    for i, (c_mid, c_out, k, stride) in enumerate(blocks):
        h = conv(x, f"b{i}.expand", c_in, c_mid, 1, 1, 1, relu=True)
        h = conv(h, f"b{i}.dw", c_mid, c_mid, k, stride, c_mid, relu=True)
        h = conv(h, f"b{i}.project", c_mid, c_out, 1, 1, 1, relu=False)
        if stride == 1 and c_in == c_out:
            nodes.append(helper.make_node("Add", [h, x], [f"b{i}.res"], name=f"b{i}.add"))
            h = f"b{i}.res"
        x, c_in = h, c_out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1, name="flatten"))
    fc = weight("fc.w", (c_in, _CLASSES))
    nodes.append(helper.make_node("MatMul", ["features", fc], ["logits"], name="fc"))

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [input_shape[0], _CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, producer_name="hwsearch-devices", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def reference_sha256() -> str:
    """Content hash of the built-in reference; part of every device hash."""
    return hashlib.sha256(reference_model_bytes()).hexdigest()
