"""OFA MobileNetV3 supernets, built from an :class:`~hwsearch.families.ofa_mbv3.layout.MBv3Layout`.

The module tree (and so the ``state_dict``) mirrors OFA's ``OFAMobileNetV3``
exactly, kernel-transform matrices and SE layers included, so the checkpoints
the Once-for-All project publishes load without conversion.  Any
:class:`~hwsearch.space.SearchSpace` whose layout is an ``MBv3Layout`` works:
other widths, strides, input channels, class counts and smaller choice sets
(a small demo supernet on 28x28 digits is one of them).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.families.ofa_mbv3.layout import MBv3Layout, ofa_mbv3_space
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.supernets.base import Supernet, require_layout
from hwsearch.supernets.elastic import (
    ElasticResidual,
    active_mbconv_blocks,
    elastic_mbconv_stages,
)
from hwsearch.supernets.layers import MBConv, ResidualBlock, build_act, conv_bn_act
from hwsearch.supernets.registry import register_builder, register_supernet

__all__ = ["MobileNetV3Subnet", "OFAMobileNetV3"]

_STEM_KERNEL = 3
_FIRST_BLOCK_ACT = "relu"
_FIRST_BLOCK_KERNEL = 3


class MobileNetV3Subnet(nn.Module):
    """A static MobileNetV3 subnet; module names follow OFA's ``MobileNetV3``."""

    def __init__(
        self,
        first_conv: nn.Sequential,
        blocks: list[nn.Module],
        final_expand_layer: nn.Sequential,
        feature_mix_layer: nn.Sequential,
        classifier: nn.Sequential,
    ) -> None:
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = final_expand_layer
        self.global_avg_pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix_layer = feature_mix_layer
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.feature_mix_layer(self.global_avg_pool(self.final_expand_layer(x)))
        return self.classifier(self.flatten(x))


class OFAMobileNetV3(nn.Module):
    """The elastic MobileNetV3 supernet of ``space`` (layout, depths, kernels, expand ratios).

    ``forward(x, arch)`` runs a subnet by slicing the shared weights;
    ``extract(arch)`` copies it out as a :class:`MobileNetV3Subnet`.  Neither
    changes the supernet, so both are safe to call from several threads.
    """

    def __init__(self, space: SearchSpace, dropout_rate: float = 0.0) -> None:
        super().__init__()
        layout = require_layout(space, MBv3Layout, "an OFA MobileNetV3 supernet")
        self.space = space
        self.layout = layout
        self.dropout_rate = dropout_rate
        stem = layout.stem
        self.first_conv = conv_bn_act(
            nn.Conv2d(layout.in_channels, stem, _STEM_KERNEL, layout.stem_stride,
                      _STEM_KERNEL // 2, bias=False),
            nn.BatchNorm2d(stem), build_act("h_swish"))
        stages, self.block_group_info, channels = elastic_mbconv_stages(
            space, layout.first_block, layout.stage_widths, layout.stage_strides,
            layout.stage_acts, layout.stage_se, first_index=1)
        self.blocks = nn.ModuleList([self._first_block(stem, layout.first_block), *stages])
        self.final_expand_layer = conv_bn_act(
            nn.Conv2d(channels, layout.final_expand, 1, bias=False),
            nn.BatchNorm2d(layout.final_expand), build_act("h_swish"))
        self.feature_mix_layer = conv_bn_act(
            nn.Conv2d(layout.final_expand, layout.feature, 1, bias=False), None,
            build_act("h_swish"))
        self.classifier = nn.Sequential(OrderedDict(
            [("linear", nn.Linear(layout.feature, layout.n_classes))]))

    @staticmethod
    def _first_block(stem: int, out_channels: int) -> ResidualBlock:
        """OFA's fixed first block: 3x3 depthwise + 1x1 projection, expand ratio 1."""
        depthwise = conv_bn_act(
            nn.Conv2d(stem, stem, _FIRST_BLOCK_KERNEL, 1, _FIRST_BLOCK_KERNEL // 2, groups=stem,
                      bias=False),
            nn.BatchNorm2d(stem), build_act(_FIRST_BLOCK_ACT))
        projection = conv_bn_act(nn.Conv2d(stem, out_channels, 1, bias=False),
                                 nn.BatchNorm2d(out_channels), None)
        return ResidualBlock(MBConv(None, depthwise, projection), stem == out_channels)

    def _active_blocks(self, arch: ArchConfig) -> Iterator[tuple[ElasticResidual, int, float]]:
        return active_mbconv_blocks(self.blocks, self.block_group_info, self.space, arch)

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor:
        arch = self.space.validate(arch)
        x = self.blocks[0](self.first_conv(x))
        for block, kernel, expand in self._active_blocks(arch):
            x = block(x, kernel, expand)
        x = self.final_expand_layer(x).mean((2, 3), keepdim=True)
        x = self.feature_mix_layer(x).flatten(1)
        x = F.dropout(x, self.dropout_rate, self.training)
        return self.classifier(x)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> MobileNetV3Subnet:
        arch = self.space.validate(arch)
        # The stem, first block and head are not elastic: a deep copy is their extraction.
        fixed = copy.deepcopy(nn.ModuleList([self.first_conv, self.blocks[0],
                                             self.final_expand_layer, self.feature_mix_layer,
                                             self.classifier]))
        first_conv, first_block, final_expand_layer, feature_mix_layer, classifier = fixed
        blocks = [first_block] + [block.extract(kernel, expand)
                                  for block, kernel, expand in self._active_blocks(arch)]
        subnet = MobileNetV3Subnet(first_conv, blocks, final_expand_layer, feature_mix_layer,
                                   classifier)
        return subnet.eval()


# --------------------------------------------------------------------------- registry


@register_builder(MBv3Layout.family)
def build(space: SearchSpace, dropout_rate: float = 0.0) -> OFAMobileNetV3:
    """The elastic network of any space with an ``MBv3Layout``."""
    return OFAMobileNetV3(space, dropout_rate)


def _ofa_mbv3(width_mult: float, n_classes: int | None) -> Supernet:
    space = ofa_mbv3_space(width_mult, n_classes=1000 if n_classes is None else n_classes)
    return Supernet(space.name, OFAMobileNetV3(space))


@register_supernet("ofa_mbv3_d234_e346_k357_w1.0")
def ofa_mbv3_w10(n_classes: int | None = None) -> Supernet:
    """OFA MobileNetV3, width 1.0: kernel {3,5,7}, expand {3,4,6}, depth {2,3,4}, 128-224 px."""
    return _ofa_mbv3(1.0, n_classes)


@register_supernet("ofa_mbv3_d234_e346_k357_w1.2")
def ofa_mbv3_w12(n_classes: int | None = None) -> Supernet:
    """OFA MobileNetV3, width 1.2: kernel {3,5,7}, expand {3,4,6}, depth {2,3,4}, 128-224 px."""
    return _ofa_mbv3(1.2, n_classes)
