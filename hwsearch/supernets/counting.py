"""MACs and parameter counts: analytic formulas and a hook-based counter.

Convention (the one OFA's ``count_net_flops`` uses, which OFA papers call
"FLOPs"): multiply-accumulates of ``Conv2d`` and ``Linear`` layers only, for
one input sample; batch norm, activations, pooling and additions are free.
Parameters are every trainable tensor of the subnet, batch-norm affine
weights included (running statistics are buffers, not parameters).

Supernets count analytically (cheap enough to call for every candidate of a
search); :func:`measure` counts a real module with forward hooks, which is
what the tests compare the formulas against and what export reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Costs", "conv_costs", "conv_out", "linear_costs", "measure"]


@dataclass(frozen=True)
class Costs:
    """MACs for one sample and parameter count of a (sub)network."""

    macs: int
    params: int

    def __add__(self, other: Costs) -> Costs:
        return Costs(self.macs + other.macs, self.params + other.params)

    def to_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params}



def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output side length of a 'same'-padded conv (padding ``kernel // 2``)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def conv_costs(
    size: int,
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    bias: bool = False,
    bn: bool = True,
) -> tuple[Costs, int]:
    """Costs of a square 'same' conv (+ BN) on a ``size`` x ``size`` input; and its output size."""
    out = conv_out(size, kernel, stride)
    weights = out_channels * (in_channels // groups) * kernel * kernel
    params = weights + (out_channels if bias else 0) + (2 * out_channels if bn else 0)
    return Costs(out * out * weights, params), out


def linear_costs(in_features: int, out_features: int, *, bias: bool = True) -> Costs:
    weights = in_features * out_features
    return Costs(weights, weights + (out_features if bias else 0))


def measure(module: nn.Module, x: Tensor) -> tuple[Tensor, Costs]:
    """Run ``module(x)`` without gradients and count its MACs (per sample) with forward hooks."""
    macs = [0]

    def on_conv(layer: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        kh, kw = layer.kernel_size
        macs[0] += output.numel() * (layer.in_channels // layer.groups) * kh * kw

    def on_linear(layer: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        macs[0] += output.numel() * layer.in_features

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(on_linear))
    try:
        with torch.no_grad():
            output = module(x)
    finally:
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for p in module.parameters())
    return output, Costs(macs[0] // x.shape[0], params)
