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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.families.proxyless.layout import ProxylessLayout, ofa_proxyless_space
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.supernets.base import Supernet, require_layout
from hwsearch.supernets.elastic import ElasticMobileNetBody
from hwsearch.supernets.layers import build_act, conv_bn_act
from hwsearch.supernets.registry import register_builder, register_supernet

__all__ = ["OFAProxylessNASNets", "ProxylessNASSubnet"]

_ACT = "relu6"
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


class OFAProxylessNASNets(ElasticMobileNetBody):
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
        n_stages = len(space.stages)
        # OFA's first ProxylessNAS block has no shortcut, whatever its widths.
        channels = self._build_body(
            space, layout.in_channels, layout.stem, layout.stem_stride, _ACT,
            layout.first_block, _ACT, False, layout.stage_widths, layout.stage_strides,
            [_ACT] * n_stages, [False] * n_stages)
        self.feature_mix_layer = conv_bn_act(
            nn.Conv2d(channels, layout.feature, 1, bias=False),
            nn.BatchNorm2d(layout.feature), build_act(_ACT))
        self.classifier = nn.Sequential(OrderedDict(
            [("linear", nn.Linear(layout.feature, layout.n_classes))]))
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = _BN_EPS

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor:
        x = self._body(x, self.space.validate(arch))
        x = self.feature_mix_layer(x).mean((2, 3))
        x = F.dropout(x, self.dropout_rate, self.training)
        return self.classifier(x)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> ProxylessNASSubnet:
        first_conv, blocks = self._extract_body(self.space.validate(arch))
        # The head is not elastic: a deep copy is its extraction.
        head = copy.deepcopy(nn.ModuleList([self.feature_mix_layer, self.classifier]))
        return ProxylessNASSubnet(first_conv, blocks, *head).eval()


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
