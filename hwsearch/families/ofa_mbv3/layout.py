"""OFA MobileNetV3's layout, native ``ks/e/d/r`` form and cost model (numpy only).

The elastic MBConv stages' arithmetic (:func:`add_mbconv_stages`) is shared
with other MobileNet-like families (ProxylessNAS), which differ only in the
fixed layers around them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hwsearch.batch import ArchBatch
from hwsearch.checks import positive_number
from hwsearch.costs import CostAccumulator, CostTable, ceil_div, overhead_names
from hwsearch.space import (
    ArchConfig,
    Layout,
    SearchSpace,
    StageSpec,
    make_divisible,
    native_errors,
    native_list,
    native_resolution,
)

__all__ = ["MBv3Layout", "add_mbconv_stages", "add_mobilenet_stem", "check_mbconv_space",
           "mbconv_native",
           "mbconv_native_batch",
           "ofa_mbv3_space", "read_mbconv_native"]


@dataclass(frozen=True)
class MBv3Layout(Layout):
    """The fixed macro-architecture of an OFA MobileNetV3 supernet.

    Widths are the *final* channel counts (width multiplier already applied).
    ``stage_*`` tuples have one entry per elastic stage.
    """

    family: ClassVar[str] = "mbv3"
    native_fields: ClassVar[frozenset[str]] = frozenset({"ks", "e", "d"})
    native_optional: ClassVar[frozenset[str]] = frozenset({"r"})

    stem: int
    first_block: int
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]
    stage_acts: tuple[str, ...]
    stage_se: tuple[bool, ...]
    final_expand: int
    feature: int
    n_classes: int
    in_channels: int = 3
    stem_stride: int = 2

    def check_space(self, space: SearchSpace) -> None:
        check_mbconv_space(space, self, ("stage_widths", "stage_strides", "stage_acts", "stage_se"),
                           "MobileNetV3")

    def costs(self, space: SearchSpace, X: np.ndarray) -> CostTable:
        """Stem, first block, elastic MBConv stages, final expand, head."""
        n = X.shape[0]
        acc = CostAccumulator(n)
        h = add_mobilenet_stem(acc, space, X, self.in_channels, self.stem, self.stem_stride,
                               self.first_block)
        h, in_ch = add_mbconv_stages(acc, space, X, h, self.first_block, self.stage_widths,
                                     self.stage_strides, self.stage_se)
        hw = (h * h).astype(np.float64)
        fe, feat = self.final_expand, self.feature
        acc.add("head_macs_conv", hw * in_ch * fe)
        acc.add("head_act", hw * fe)
        acc.add("head_macs_fc", np.full(n, fe * feat + feat * self.n_classes, dtype=np.float64))
        acc.add("head_params", in_ch * fe + 2 * fe + fe * feat + feat * self.n_classes
                + self.n_classes)
        return acc.table()

    def to_native(self, space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
        return mbconv_native(space, arch)

    def from_native(self, space: SearchSpace, data: Mapping[str, Any]) -> ArchConfig:
        depths = native_list(data["d"], "d", len(space.stages), integer=True)
        return read_mbconv_native(space, data, depths, depths_are_d=True)

    def native_batch(self, batch: ArchBatch) -> list[dict[str, Any]]:
        return mbconv_native_batch(batch)


def check_mbconv_space(space: SearchSpace, layout: Layout, per_stage: Sequence[str],
                       family: str) -> None:
    """Refuse a space whose stages do not match the layout's per-stage fields, or lack MBConv knobs."""
    for name in per_stage:
        if len(getattr(layout, name)) != len(space.stages):
            raise ValueError(f"{space.name}: layout.{name} has {len(getattr(layout, name))} "
                             f"entries; the space has {len(space.stages)} stages")
    if not space.kernels or not space.expands or not all(s.elastic for s in space.stages):
        raise ValueError(f"{space.name}: {family} spaces need kernel and expand choices "
                         "and elastic stages only")


def mbconv_native(space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
    """OFA's ``ks/e/d/r`` dict; switched-off blocks are written with the smallest choice."""
    return {"ks": space.pad_blocks(arch, "kernel"), "e": space.pad_blocks(arch, "expand"),
            "d": list(arch.depths), "r": [arch.resolution]}


def mbconv_native_batch(batch: ArchBatch) -> list[dict[str, Any]]:
    """:func:`mbconv_native` of every row of ``batch``, vectorised (a search scores thousands)."""
    space = batch.space
    ks = np.where(batch.active, batch.kernel, min(space.kernels)).tolist()
    e = np.where(batch.active, batch.expand, min(space.expands)).tolist()
    d, r = batch.depths.tolist(), batch.resolution.tolist()
    return [{"ks": ks[i], "e": e[i], "d": d[i], "r": [r[i]]} for i in range(len(batch))]


def read_mbconv_native(space: SearchSpace, data: Mapping[str, Any],
                       depths: Sequence[Any], *, depths_are_d: bool = False) -> ArchConfig:
    """An arch from OFA's ``ks``/``e``/``r`` given the per-stage ``depths`` already read.

    ``depths_are_d``: ``depths`` are the native ``d`` as given (MobileNetV3's),
    so an error about them names ``d``; ProxylessNAS's are read from its
    ``d`` by an offset, and named as depths.
    """
    resolution = native_resolution(data.get("r", max(space.resolutions)))
    kernel = space.unpad_blocks(native_list(data["ks"], "ks", space.n_blocks, integer=True), depths)
    expand = space.unpad_blocks(native_list(data["e"], "e", space.n_blocks), depths)
    names = {"kernel": "ks", "expand": "e", "resolution": "r", **({"depths": "d"} if depths_are_d else {})}
    with native_errors(names, space.block_slots(depths)):
        return space.arch(resolution=resolution, depths=depths, kernel=kernel, expand=expand)


def add_mobilenet_stem(acc: CostAccumulator, space: SearchSpace, X: np.ndarray,
                       in_channels: int, stem: int, stem_stride: int, first_block: int
                       ) -> np.ndarray:
    """Add the stem conv and OFA's fixed first block; return the spatial size after them.

    The cost side of :class:`hwsearch.supernets.elastic.ElasticMobileNetBody`'s
    fixed part: a 3x3 conv + BN, then a 3x3 depthwise + BN and a 1x1
    projection + BN (expand ratio 1).  Its shortcut, where there is one, is free.
    """
    res = np.asarray(space.resolutions, dtype=np.int64)[X[:, 0]]
    h = ceil_div(res, stem_stride)
    hw = (h * h).astype(np.float64)
    k2 = 9  # both 3x3 kernels
    acc.add("stem_macs", hw * stem * in_channels * k2)
    acc.add("stem_params", stem * in_channels * k2 + 2 * stem)
    acc.add("stem_macs", hw * stem * k2 + hw * stem * first_block)
    acc.add("stem_params", stem * k2 + 2 * stem + stem * first_block + 2 * first_block)
    acc.add("stem_act", hw * (stem + stem + first_block))
    return h


def _mbconv_overheads(acc: CostAccumulator, stage: int, on: np.ndarray, has_expand: np.ndarray,
                      se: bool, *, residual: bool, conv_io: np.ndarray, tensors: np.ndarray,
                      se_io: np.ndarray, res_io: np.ndarray) -> None:
    """Operator counts and memory traffic of one MBConv slot (zero where it is switched off).

    ``tensors`` is the element count of the expand and depthwise outputs, each
    passed through a batch norm and an activation (read and written twice)
    when the runtime does not fuse them.
    """
    n_pw = has_expand.astype(np.float64) + 1.0
    elementwise = 2.0 * n_pw + 1.0 + (1.0 if residual else 0.0)  # BN+act per conv, BN, add
    acc.add(f"s{stage}_ops_dw", on)
    acc.add(f"s{stage}_ops_pw", on * n_pw)
    acc.add(f"s{stage}_ops_elem", on * (elementwise + (4.0 if se else 0.0)))
    acc.add(f"s{stage}_mem_conv", on * conv_io)
    mem_elem = 4.0 * tensors + (3.0 * res_io if residual else 0.0)
    if se:
        acc.add(f"s{stage}_ops_se", on)
        acc.add(f"s{stage}_ops_pool", on)
        mem_elem = mem_elem + 3.0 * se_io  # pool read, scale read and write
    acc.add(f"s{stage}_mem_elem", on * mem_elem)


def add_mbconv_stages(acc: CostAccumulator, space: SearchSpace, X: np.ndarray, h: np.ndarray,
                      in_ch: int, stage_widths: Sequence[int], stage_strides: Sequence[int],
                      stage_se: Sequence[bool]) -> tuple[np.ndarray, int]:
    """Add the costs of the elastic MBConv stages; return the spatial size and width after them.

    Each block slot: optional 1x1 expand, KxK depthwise, optional squeeze-excite
    (``make_divisible(mid // 4)`` hidden units), 1x1 projection, residual on
    every block but a stage's first.
    """
    active = space.active_block_mask(X)
    k_start = 1 + len(space.stages)
    e_start = k_start + space.n_blocks
    kernels = np.asarray(space.kernels, dtype=np.int64)
    slot = 0
    for s, (stage, out_ch) in enumerate(zip(space.stages, stage_widths)):
        acc.declare(f"s{s}_macs_pw", f"s{s}_macs_se", f"s{s}_params", f"s{s}_act", f"s{s}_blocks",
                    *(f"s{s}_macs_dw_k{k}" for k in space.kernels), *overhead_names(s))
        for j in range(stage.max_depth):
            on = active[:, slot].astype(np.float64)
            stride = stage_strides[s] if j == 0 else 1
            h_out = ceil_div(h, stride)
            hw_in, hw_out = (h * h).astype(np.float64), (h_out * h_out).astype(np.float64)
            k = kernels[X[:, k_start + slot]]
            e_idx = X[:, e_start + slot]
            mid_choices = [make_divisible(round(in_ch * c), 8) for c in space.expands]
            mid = np.asarray(mid_choices, dtype=np.float64)[e_idx]
            has_expand = np.asarray([c != 1 for c in space.expands])[e_idx]
            pw = np.where(has_expand, hw_in * in_ch * mid, 0.0) + hw_out * mid * out_ch
            params = np.where(has_expand, in_ch * mid + 2 * mid, 0.0) + mid * k * k + 2 * mid
            params = params + mid * out_ch + 2 * out_ch
            act = np.where(has_expand, hw_in * mid, 0.0) + hw_out * (mid + out_ch)
            if stage_se[s]:
                se_mid = np.asarray([make_divisible(m // 4, 8) for m in mid_choices],
                                    dtype=np.float64)[e_idx]
                acc.add(f"s{s}_macs_se", on * 2 * mid * se_mid)
                params = params + 2 * mid * se_mid + se_mid + mid
            for kk in space.kernels:
                acc.add(f"s{s}_macs_dw_k{kk}", on * (k == kk) * hw_out * mid * kk * kk)
            acc.add(f"s{s}_macs_pw", on * pw)
            acc.add(f"s{s}_params", on * params)
            acc.add(f"s{s}_act", on * act)
            acc.add(f"s{s}_blocks", on)
            _mbconv_overheads(acc, s, on, has_expand, stage_se[s],
                              residual=j > 0 or (stride == 1 and in_ch == out_ch),
                              conv_io=np.where(has_expand, hw_in * (in_ch + mid), 0.0)
                              + hw_in * mid + hw_out * mid + hw_out * (mid + out_ch),
                              tensors=np.where(has_expand, hw_in * mid, 0.0) + hw_out * mid,
                              se_io=hw_out * mid, res_io=hw_out * out_ch)
            # Spatial size and width advance only through the first (always active) block.
            if j == 0:
                h, in_ch = h_out, out_ch
            slot += 1
    return h, in_ch


def ofa_mbv3_space(
    width_mult: float = 1.0,
    resolutions: Sequence[int] = tuple(range(128, 225, 4)),
    n_classes: int = 1000,
) -> SearchSpace:
    """OFA MobileNetV3: kernel {3,5,7}, expand {3,4,6}, depth {2,3,4} in 5 stages.

    Resolutions default to 128..224 in steps of 4, the sizes OFA trains with.
    """
    base = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
    positive_number(width_mult, "width_mult")  # 0 and -1 rounded up to 8 channels everywhere
    widths = [make_divisible(w * width_mult, 8) for w in base]
    layout = MBv3Layout(
        stem=widths[0],
        first_block=widths[1],
        stage_widths=tuple(widths[2:7]),
        stage_strides=(2, 2, 2, 1, 2),
        stage_acts=("relu", "relu", "h_swish", "h_swish", "h_swish"),
        stage_se=(False, True, False, True, True),
        final_expand=widths[7],
        feature=widths[8],
        n_classes=n_classes,
    )
    return SearchSpace(
        name=f"ofa_mbv3_d234_e346_k357_w{width_mult}",
        resolutions=tuple(resolutions),
        stages=tuple(StageSpec((2, 3, 4)) for _ in range(5)),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        layout=layout,
    )
