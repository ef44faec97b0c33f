"""OFA ProxylessNAS's layout, native ``ks/e/d/r`` form and cost model (numpy only).

ProxylessNAS shares MobileNetV3's elastic MBConv stages, so their arithmetic
and the ``ks/e`` codec are :mod:`hwsearch.families.ofa_mbv3.layout`'s.  What
differs is fixed: ReLU6 everywhere and no squeeze-excite, a first block with
no shortcut, a last stage of a single (elastic kernel and expand) block, and
a 1x1 feature-mix conv with batch norm *before* pooling instead of
MobileNetV3's final expand and post-pooling feature conv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hwsearch.batch import ArchBatch
from hwsearch.checks import positive_number
from hwsearch.costs import CostAccumulator, CostTable
from hwsearch.families.ofa_mbv3.layout import (
    add_mbconv_stages,
    add_mobilenet_stem,
    check_mbconv_space,
    mbconv_native,
    mbconv_native_batch,
    read_mbconv_native,
)
from hwsearch.space import (
    ArchConfig,
    Layout,
    SearchSpace,
    StageSpec,
    make_divisible,
    native_list,
)

__all__ = ["ProxylessLayout", "ofa_proxyless_space"]

@dataclass(frozen=True)
class ProxylessLayout(Layout):
    """The fixed macro-architecture of an OFA ProxylessNAS supernet.

    Widths are the *final* channel counts (width multiplier already applied).
    ``stage_*`` tuples have one entry per stage of the space; OFA's last stage
    is a stage whose only depth is 1.  ``feature`` is the width of the 1x1
    feature-mix conv the classifier reads.
    """

    family: ClassVar[str] = "proxyless"
    native_fields: ClassVar[frozenset[str]] = frozenset({"ks", "e", "d"})
    native_optional: ClassVar[frozenset[str]] = frozenset({"r"})

    stem: int
    first_block: int
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]
    feature: int
    n_classes: int
    in_channels: int = 3
    stem_stride: int = 2

    def check_space(self, space: SearchSpace) -> None:
        check_mbconv_space(space, self, ("stage_widths", "stage_strides"), "ProxylessNAS")

    def costs(self, space: SearchSpace, X: np.ndarray) -> CostTable:
        """Stem, first block, elastic MBConv stages, feature-mix conv, classifier."""
        n = X.shape[0]
        acc = CostAccumulator(n)
        h = add_mobilenet_stem(acc, space, X, self.in_channels, self.stem, self.stem_stride,
                               self.first_block)
        no_se = (False,) * len(space.stages)
        h, in_ch = add_mbconv_stages(acc, space, X, h, self.first_block, self.stage_widths,
                                     self.stage_strides, no_se)
        hw = (h * h).astype(np.float64)
        feat = self.feature
        acc.add("head_macs_conv", hw * in_ch * feat)
        acc.add("head_act", hw * feat)
        acc.add("head_macs_fc", np.full(n, feat * self.n_classes, dtype=np.float64))
        acc.add("head_params", in_ch * feat + 2 * feat + feat * self.n_classes + self.n_classes)
        return acc.table()

    def to_native(self, space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
        return mbconv_native(space, arch)

    def from_native(self, space: SearchSpace, data: Mapping[str, Any]) -> ArchConfig:
        return read_mbconv_native(space, data, _native_depths(space, data["d"]))

    def native_batch(self, batch: ArchBatch) -> list[dict[str, Any]]:
        return mbconv_native_batch(batch)


def _native_depths(space: SearchSpace, value: Any) -> list[Any]:
    """OFA's ``d`` (one depth per stage, or one for all) as the per-stage depths OFA runs.

    OFA's ``set_active_subnet`` runs ``min(d, blocks in the stage)`` blocks, and
    its own tools write any depth for the single-block last stage (its
    ``sample_active_subnet`` writes 1, its arch encoder's "mbv2" dicts 2..4,
    a scalar ``d`` repeats one value).  So a stage with one depth choice
    reads any whole number at least that depth as that depth.  Elastic stages
    are read strictly: there a depth outside the choices is a mistake to
    name, not to clamp.
    """
    depths = native_list(value, "d", len(space.stages), integer=True)
    for i, (stage, depth) in enumerate(zip(space.stages, depths)):
        if len(stage.depths) == 1 and depth >= stage.max_depth:
            depths[i] = stage.max_depth
    return depths


def ofa_proxyless_space(
    width_mult: float = 1.3,
    resolutions: Sequence[int] = tuple(range(128, 225, 4)),
    n_classes: int = 1000,
) -> SearchSpace:
    """OFA ProxylessNAS: kernel {3,5,7}, expand {3,4,6}, depth {2,3,4} in 5 stages, then 1 block.

    Widths are ProxylessNAS's (not MobileNetV2's "google" ones) times
    ``width_mult``, rounded as OFA rounds them; resolutions default to
    128..224 in steps of 4, the sizes OFA trains with.
    """
    base = (32, 16, 24, 40, 80, 96, 192, 320, 1280)
    positive_number(width_mult, "width_mult")  # 0 and -1 rounded up to 8 channels everywhere
    widths = [make_divisible(w * width_mult, 8) for w in base]
    layout = ProxylessLayout(
        stem=widths[0],
        first_block=widths[1],
        stage_widths=tuple(widths[2:8]),
        stage_strides=(2, 2, 2, 1, 2, 1),
        feature=widths[8],
        n_classes=n_classes,
    )
    return SearchSpace(
        name=f"ofa_proxyless_d234_e346_k357_w{width_mult}",
        resolutions=tuple(resolutions),
        stages=tuple(StageSpec((2, 3, 4)) for _ in range(5)) + (StageSpec((1,)),),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        layout=layout,
    )
