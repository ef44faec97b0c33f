"""OFA ProxylessNAS supernets, built from a :class:`~hwsearch.families.proxyless.layout.ProxylessLayout`.

The module tree (and so the ``state_dict``) mirrors OFA's
``OFAProxylessNASNets`` exactly, kernel-transform matrices included, so the
checkpoint the Once-for-All project publishes for
``ofa_proxyless_d234_e346_k357_w1.3`` loads without conversion; extracted
subnets have the keys of the ``ProxylessNASNets`` OFA's
``get_active_subnet()`` builds.  The elastic MBConv blocks are the ones
MobileNetV3 uses (:class:`~hwsearch.supernets.elastic.ElasticMBConv`), with
ReLU6 and no squeeze-excite.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.families.proxyless.layout import ProxylessLayout, ofa_proxyless_space
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.supernets.base import Supernet, require_layout
from hwsearch.supernets.elastic import (
    ElasticResidual,
    active_mbconv_blocks,
    elastic_mbconv_stages,
)
from hwsearch.supernets.layers import MBConv, ResidualBlock, build_act, conv_bn_act
from hwsearch.supernets.registry import register_builder, register_supernet

__all__ = ["OFAProxylessNASNets", "ProxylessNASSubnet"]

_ACT = "relu6"
_STEM_KERNEL = 3
_FIRST_BLOCK_KERNEL = 3
# OFA builds ProxylessNAS with bn_param=(0.1, 1e-3): an epsilon 100x torch's default.  It is
# not in the state_dict, so a checkpoint cannot carry it; outputs depend on it.
_BN_EPS = 1e-3


class ProxylessNASSubnet(nn.Module):
    """A static ProxylessNAS subnet; module names follow OFA's ``ProxylessNASNets``."""

    def __init__(
        self,
        first_conv: nn.Sequential,
        blocks: list[nn.Module],
        feature_mix_layer: nn.Sequential,
        classifier: nn.Sequential,
    ) -> None:
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.feature_mix_layer = feature_mix_layer
        self.global_avg_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.global_avg_pool(self.feature_mix_layer(x))
        return self.classifier(self.flatten(x))


class OFAProxylessNASNets(nn.Module):
    """The elastic ProxylessNAS supernet of ``space`` (layout, depths, kernels, expand ratios).

    ``forward(x, arch)`` runs a subnet by slicing the shared weights;
    ``extract(arch)`` copies it out as a :class:`ProxylessNASSubnet`.  Neither
    changes the supernet, so both are safe to call from several threads.
    """

    def __init__(self, space: SearchSpace, dropout_rate: float = 0.0) -> None:
        super().__init__()
        layout = require_layout(space, ProxylessLayout, "an OFA ProxylessNAS supernet")
        self.space = space
        self.layout = layout
        self.dropout_rate = dropout_rate
        stem = layout.stem
        self.first_conv = conv_bn_act(
            nn.Conv2d(layout.in_channels, stem, _STEM_KERNEL, layout.stem_stride,
                      _STEM_KERNEL // 2, bias=False),
            nn.BatchNorm2d(stem), build_act(_ACT))
        n_stages = len(space.stages)
        stages, self.block_group_info, channels = elastic_mbconv_stages(
            space, layout.first_block, layout.stage_widths, layout.stage_strides,
            [_ACT] * n_stages, [False] * n_stages, first_index=1)
        self.blocks = nn.ModuleList([self._first_block(stem, layout.first_block), *stages])
        self.feature_mix_layer = conv_bn_act(
            nn.Conv2d(channels, layout.feature, 1, bias=False),
            nn.BatchNorm2d(layout.feature), build_act(_ACT))
        self.classifier = nn.Sequential(OrderedDict(
            [("linear", nn.Linear(layout.feature, layout.n_classes))]))
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = _BN_EPS

    @staticmethod
    def _first_block(stem: int, out_channels: int) -> ResidualBlock:
        """OFA's fixed first block: 3x3 depthwise + 1x1 projection, expand ratio 1, no shortcut."""
        depthwise = conv_bn_act(
            nn.Conv2d(stem, stem, _FIRST_BLOCK_KERNEL, 1, _FIRST_BLOCK_KERNEL // 2, groups=stem,
                      bias=False),
            nn.BatchNorm2d(stem), build_act(_ACT))
        projection = conv_bn_act(nn.Conv2d(stem, out_channels, 1, bias=False),
                                 nn.BatchNorm2d(out_channels), None)
        return ResidualBlock(MBConv(None, depthwise, projection), residual=False)

    def _active_blocks(self, arch: ArchConfig) -> Iterator[tuple[ElasticResidual, int, float]]:
        return active_mbconv_blocks(self.blocks, self.block_group_info, self.space, arch)

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor:
        arch = self.space.validate(arch)
        x = self.blocks[0](self.first_conv(x))
        for block, kernel, expand in self._active_blocks(arch):
            x = block(x, kernel, expand)
        x = self.feature_mix_layer(x).mean((2, 3))
        x = F.dropout(x, self.dropout_rate, self.training)
        return self.classifier(x)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> ProxylessNASSubnet:
        arch = self.space.validate(arch)
        # The stem, first block and head are not elastic: a deep copy is their extraction.
        fixed = copy.deepcopy(nn.ModuleList([self.first_conv, self.blocks[0],
                                             self.feature_mix_layer, self.classifier]))
        first_conv, first_block, feature_mix_layer, classifier = fixed
        blocks = [first_block] + [block.extract(kernel, expand)
                                  for block, kernel, expand in self._active_blocks(arch)]
        return ProxylessNASSubnet(first_conv, blocks, feature_mix_layer, classifier).eval()


# --------------------------------------------------------------------------- registry


@register_builder(ProxylessLayout.family)
def build(space: SearchSpace, dropout_rate: float = 0.0) -> OFAProxylessNASNets:
    """The elastic network of any space with a ``ProxylessLayout``."""
    return OFAProxylessNASNets(space, dropout_rate)


@register_supernet("ofa_proxyless_d234_e346_k357_w1.3")
def ofa_proxyless_w13(n_classes: int | None = None) -> Supernet:
    """OFA ProxylessNAS, width 1.3: kernel {3,5,7}, expand {3,4,6}, depth {2,3,4}, 128-224 px."""
    space = ofa_proxyless_space(1.3, n_classes=1000 if n_classes is None else n_classes)
    return Supernet(space.name, OFAProxylessNASNets(space))
