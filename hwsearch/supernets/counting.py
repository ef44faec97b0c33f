"""MACs and parameter counts: the family's analytic cost model, and a hook-based counter.

Convention (the one OFA's ``count_net_flops`` uses, which OFA papers call
"FLOPs", extended to attention): multiply-accumulates of ``Conv2d`` and
``Linear`` layers and of attention's two matrix products, for one input
sample; normalisation, activations, pooling, softmax and additions are free.
Parameters are every trainable tensor of the subnet, normalisation affine
weights included (running statistics are buffers, not parameters).

Supernets count with their family's cost model (:func:`count_arch`, the one
predictors use too, cheap enough for every candidate of a search);
:func:`measure` counts a real module with forward hooks, which is what the
tests compare the cost models against and what export reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hwsearch.space import ArchConfig, SearchSpace

__all__ = ["Costs", "check_cost_model", "count_arch", "measure"]


@dataclass(frozen=True)
class Costs:
    """MACs for one sample and parameter count of a (sub)network."""

    macs: int
    params: int

    def __add__(self, other: Costs) -> Costs:
        return Costs(self.macs + other.macs, self.params + other.params)

    def to_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params}


def count_arch(space: SearchSpace, arch: ArchConfig) -> Costs:
    """Exact MACs (batch 1) and parameters of ``arch`` from the family's cost model."""
    table = space.layout.costs(space, space.encode(arch)[None, :])
    return Costs(int(round(float(table.macs[0]))), int(round(float(table.params[0]))))


def check_cost_model(supernet: Any, archs: Sequence[ArchConfig]) -> None:
    """Refuse a family's cost model that does not count the networks its supernet builds.

    Searches rank subnets by the model's MACs and parameters and predictors
    read its columns, so a model that is off is silently wrong everywhere
    downstream: columns named ``stem_flops`` instead of ``stem_macs`` left
    a family's stem out of every total (:class:`hwsearch.costs.CostTable`).
    Each of ``archs`` is extracted and counted with hooks (:func:`measure`);
    a ValueError names the first whose counts differ.  Every registered
    supernet passes it in the tests; a family kept outside hwsearch calls it
    in its own.
    """
    for arch in archs:
        subnet = supernet.extract(arch)
        _, hooked = measure(subnet, torch.zeros(supernet.input_shape(arch)))
        modelled = supernet.count(arch)
        if modelled != hooked:
            raise ValueError(f"{supernet.name}: its family's cost model counts {modelled.macs:,} MACs and "
                             f"{modelled.params:,} parameters for {arch.key()}, the network it builds "
                             f"{hooked.macs:,} and {hooked.params:,} (docs/families.md, cost columns)")


def measure(module: nn.Module, x: Tensor) -> tuple[Tensor, Costs]:
    """Run ``module(x)`` without gradients and count its MACs (per sample) with forward hooks.

    ``Conv2d`` and ``Linear`` layers are counted from their shapes.  A module
    doing multiply-accumulates of its own, outside such layers (attention's
    products between activations), declares them with a method
    ``extra_macs(inputs, output) -> int`` (for the whole batch), which is
    added on top of its child layers' counts; this keeps the counter free of
    any family's modules.
    """
    macs = [0]

    def on_conv(layer: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        kh, kw = layer.kernel_size
        macs[0] += output.numel() * (layer.in_channels // layer.groups) * kh * kw

    def on_linear(layer: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        macs[0] += output.numel() * layer.in_features

    def on_extra(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        macs[0] += int(layer.extra_macs(inputs, output))

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(on_linear))
        if callable(getattr(layer, "extra_macs", None)):
            handles.append(layer.register_forward_hook(on_extra))
    try:
        with torch.no_grad():
            output = module(x)
    finally:
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for p in module.parameters())
    return output, Costs(macs[0] // x.shape[0], params)
