"""The OFA ResNet50 supernet, built from a :class:`~hwsearch.families.ofa_resnet.layout.ResNetLayout`.

The module tree (and so the ``state_dict``) mirrors OFA's ``OFAResNets`` with
``depth_list=[0, 1, 2]``, ``expand_ratio_list=[0.2, 0.25, 0.35]`` and
``width_mult_list=[0.65, 0.8, 1.0]``, so OFA's checkpoint loads as it is.

Width slots (``arch.width``): 0 sets the input stem's first two convs
(``make_divisible(make_divisible(64 w) // 2)`` channels), 1 its last conv
(``make_divisible(64 w)``), 2-5 the four stages.  Depth: stage 0 of the space
switches the stem's residual 3x3 conv on or off; stages 1-4 count active
bottlenecks.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.families.ofa_resnet.layout import ResNetLayout, ofa_resnet50_space
from hwsearch.space import ArchConfig, SearchSpace, make_divisible
from hwsearch.supernets.base import Supernet, require_layout
from hwsearch.supernets.elastic import (
    ElasticBottleneck,
    ElasticConvLayer,
    ElasticLinear,
    ElasticResidual,
)
from hwsearch.supernets.registry import register_builder, register_supernet

__all__ = ["OFAResNets", "ResNetSubnet"]

_ActiveBlock = tuple[ElasticBottleneck, int, float]  # block, output channels, expand ratio


class ResNetSubnet(nn.Module):
    """A static ResNet subnet; module names follow OFA's ``ResNets``."""

    def __init__(self, input_stem: list[nn.Module], blocks: list[nn.Module],
                 classifier: nn.Sequential) -> None:
        super().__init__()
        self.input_stem = nn.ModuleList(input_stem)
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.ModuleList(blocks)
        self.global_avg_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.input_stem:
            x = layer(x)
        x = self.max_pooling(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.flatten(self.global_avg_pool(x)))


class OFAResNets(nn.Module):
    """The elastic ResNet supernet of ``space`` (depth, expand ratio and width per slot).

    ``forward(x, arch)`` runs a subnet on the shared weights; ``extract(arch)``
    copies it out as a :class:`ResNetSubnet`.  Neither changes the supernet.
    """

    def __init__(self, space: SearchSpace, dropout_rate: float = 0.0) -> None:
        super().__init__()
        layout = require_layout(space, ResNetLayout, "an OFA ResNet supernet")
        self.space = space
        self.layout = layout
        self.dropout_rate = dropout_rate
        mid, stem = max(self._stem_channels(w) for w in space.widths)
        self.input_stem = nn.ModuleList([
            ElasticConvLayer(layout.in_channels, mid, 3, 2, "relu"),
            ElasticResidual(ElasticConvLayer(mid, mid, 3, 1, "relu"), residual=True),
            ElasticConvLayer(mid, stem, 3, 1, "relu"),
        ])
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        self.block_group_info: list[list[int]] = []
        in_list = [self._stem_channels(w)[1] for w in space.widths]
        for stage, base, stride in zip(space.stages[1:], layout.stage_widths, layout.stage_strides):
            out_list = [make_divisible(base * w, 8) for w in space.widths]
            self.block_group_info.append(list(range(len(blocks), len(blocks) + stage.max_depth)))
            for i in range(stage.max_depth):
                block_stride = stride if i == 0 else 1
                identity = block_stride == 1 and in_list == out_list
                blocks.append(ElasticBottleneck(max(in_list), max(out_list), space.expands,
                                                block_stride, identity))
                in_list = out_list
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Sequential(OrderedDict(
            [("linear", ElasticLinear(max(in_list), layout.n_classes))]))

    def _stem_channels(self, width: float) -> tuple[int, int]:
        """(first two convs, last conv) channels of the input stem at width multiplier ``width``."""
        stem = make_divisible(self.layout.stem * width, 8)
        return make_divisible(stem // 2, 8), stem

    def _plan(self, arch: ArchConfig) -> tuple[int, int, list[_ActiveBlock]]:
        """Stem channels and the active bottlenecks with their output width and expand ratio."""
        mid, _ = self._stem_channels(arch.width[0])
        _, stem = self._stem_channels(arch.width[1])
        blocks = []
        stage_ranges = self.space.block_ranges(arch.depths)
        for stage, (group, active) in enumerate(zip(self.block_group_info, stage_ranges)):
            out = make_divisible(self.layout.stage_widths[stage] * arch.width[2 + stage], 8)
            for block_index, i in zip(group, active):
                blocks.append((self.blocks[block_index], out, arch.expand[i]))
        return mid, stem, blocks

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor:
        arch = self.space.validate(arch)
        mid, stem, blocks = self._plan(arch)
        first, residual, last = self.input_stem
        x = first(x, mid)
        if arch.depths[0]:
            x = residual(x, mid)
        x = self.max_pooling(last(x, stem))
        for block, out, expand in blocks:
            x = block(x, out, expand)
        x = F.dropout(x.mean((2, 3)), self.dropout_rate, self.training)
        return self.classifier.linear(x)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> ResNetSubnet:
        arch = self.space.validate(arch)
        mid, stem, blocks = self._plan(arch)
        first, residual, last = self.input_stem
        input_stem = [first.extract(self.layout.in_channels, mid)]
        if arch.depths[0]:
            input_stem.append(residual.extract(mid, mid))
        input_stem.append(last.extract(mid, stem))
        static_blocks, channels = [], stem
        for block, out, expand in blocks:
            static_blocks.append(block.extract(channels, out, expand))
            channels = out
        classifier = nn.Sequential(OrderedDict(
            [("linear", self.classifier.linear.extract(channels))]))
        return ResNetSubnet(input_stem, static_blocks, classifier).eval()


@register_builder(ResNetLayout.family)
def build(space: SearchSpace, dropout_rate: float = 0.0) -> OFAResNets:
    """The elastic network of any space with a ``ResNetLayout``."""
    return OFAResNets(space, dropout_rate)


@register_supernet("ofa_resnet50")
def ofa_resnet50(n_classes: int | None = None) -> Supernet:
    """OFA ResNet50: depth {0,1,2}, expand {0.2,0.25,0.35}, width {0.65,0.8,1.0}, 128-224 px."""
    space = ofa_resnet50_space(n_classes=1000 if n_classes is None else n_classes)
    return Supernet(space.name, OFAResNets(space))
