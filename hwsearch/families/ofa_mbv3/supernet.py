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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.families.ofa_mbv3.layout import MBv3Layout, ofa_mbv3_space
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.supernets.base import Supernet, require_layout
from hwsearch.supernets.elastic import ElasticMobileNetBody
from hwsearch.supernets.layers import build_act, conv_bn_act
from hwsearch.supernets.registry import register_builder, register_supernet

__all__ = ["MobileNetV3Subnet", "OFAMobileNetV3"]

_FIRST_BLOCK_ACT = "relu"


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


class OFAMobileNetV3(ElasticMobileNetBody):
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
        channels = self._build_body(
            space, layout.in_channels, layout.stem, layout.stem_stride, "h_swish",
            layout.first_block, _FIRST_BLOCK_ACT, layout.stem == layout.first_block,
            layout.stage_widths, layout.stage_strides, layout.stage_acts, layout.stage_se)
        self.final_expand_layer = conv_bn_act(
            nn.Conv2d(channels, layout.final_expand, 1, bias=False),
            nn.BatchNorm2d(layout.final_expand), build_act("h_swish"))
        self.feature_mix_layer = conv_bn_act(
            nn.Conv2d(layout.final_expand, layout.feature, 1, bias=False), None,
            build_act("h_swish"))
        self.classifier = nn.Sequential(OrderedDict(
            [("linear", nn.Linear(layout.feature, layout.n_classes))]))

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor:
        x = self._body(x, self.space.validate(arch))
        x = self.final_expand_layer(x).mean((2, 3), keepdim=True)
        x = self.feature_mix_layer(x).flatten(1)
        x = F.dropout(x, self.dropout_rate, self.training)
        return self.classifier(x)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> MobileNetV3Subnet:
        first_conv, blocks = self._extract_body(self.space.validate(arch))
        # The head is not elastic: a deep copy is its extraction.
        head = copy.deepcopy(nn.ModuleList([self.final_expand_layer, self.feature_mix_layer,
                                            self.classifier]))
        return MobileNetV3Subnet(first_conv, blocks, *head).eval()


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
