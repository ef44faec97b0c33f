"""OFA ResNet50's layout, native ``d/e/w/r`` form and cost model (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hwsearch.costs import CostAccumulator, CostTable, ceil_div, overhead_names
from hwsearch.space import (
    ArchConfig,
    ArchValidationError,
    Layout,
    SearchSpace,
    StageSpec,
    make_divisible,
    native_errors,
    native_list,
    native_resolution,
)

__all__ = ["ResNetLayout", "ofa_resnet50_space"]


@dataclass(frozen=True)
class ResNetLayout(Layout):
    """The fixed macro-architecture of an OFA ResNet supernet (widths before multipliers).

    Width slots (``arch.width``): 0 sets the input stem's first two convs, 1 its
    last conv, 2.. the stages.  Stage 0 of the space switches the stem's
    residual 3x3 conv on or off; the other stages count active bottlenecks.
    """

    family: ClassVar[str] = "resnet"
    native_fields: ClassVar[frozenset[str]] = frozenset({"d", "e", "w"})
    native_optional: ClassVar[frozenset[str]] = frozenset({"r"})

    stem: int
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]
    n_classes: int
    in_channels: int = 3

    def check_space(self, space: SearchSpace) -> None:
        n_stages = len(self.stage_widths)
        stem_stage, *stages = space.stages
        if (stem_stage.elastic or stem_stage.depths != (0, 1) or len(stages) != n_stages
                or not all(s.elastic for s in stages)):
            raise ValueError(f"{space.name}: expected a stem stage with depths (0, 1) and "
                             f"{n_stages} elastic stages")
        if not space.expands or space.kernels or space.n_width_slots != 2 + n_stages:
            raise ValueError(f"{space.name}: expected expand choices, no kernel choices and "
                             f"{2 + n_stages} width slots")

    def check_restriction(self, space: SearchSpace, stages: tuple[StageSpec, ...]) -> None:
        if stages != space.stages:
            raise ValueError("depths: OFA ResNet's native form counts depths from each stage's "
                             "full choices, so its depths cannot be restricted; use a Limit")

    def costs(self, space: SearchSpace, X: np.ndarray) -> CostTable:
        """3-conv input stem (skippable middle block), bottleneck stages, classifier."""
        return _resnet_costs(space, self, X)

    def to_native(self, space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
        """OFA's dict: ``d`` counts blocks beyond each stage's minimum; ``w`` holds width indices."""
        stem, *stage_depths = arch.depths
        max_d = max(_depth_offsets(space))
        return {
            "d": [max_d if stem else 0]
            + [d - (s.max_depth - max_d) for d, s in zip(stage_depths, space.stages[1:])],
            "e": space.pad_blocks(arch, "expand"),
            "w": [space.widths.index(w) for w in arch.width],
            "r": [arch.resolution],
        }

    def from_native(self, space: SearchSpace, data: Mapping[str, Any]) -> ArchConfig:
        resolution = native_resolution(data.get("r", max(space.resolutions)))
        native_d = native_list(data["d"], "d", len(space.stages), integer=True)
        offsets = _depth_offsets(space)
        max_d = max(offsets)
        if native_d[0] not in offsets:
            raise ArchValidationError(f"d[0]={native_d[0]} is not allowed; choose from {offsets}")
        depths = [1 if native_d[0] == max_d else 0]
        for i, (d, stage) in enumerate(zip(native_d[1:], space.stages[1:]), start=1):
            if d not in offsets:
                raise ArchValidationError(f"d[{i}]={d} is not allowed; choose from {offsets}")
            depths.append(stage.max_depth - max_d + d)
        expand = space.unpad_blocks(native_list(data["e"], "e", space.n_blocks), depths)
        w_idx = native_list(data["w"], "w", space.n_width_slots, integer=True)  # numpy ints as ints
        for i, w in enumerate(w_idx):
            if not 0 <= w < len(space.widths):
                raise ArchValidationError(f"w[{i}]={w!r} must be an index "
                                          f"0..{len(space.widths) - 1} into {list(space.widths)}")
        with native_errors({"expand": "e", "resolution": "r"}, space.block_slots(depths)):
            return space.arch(resolution=resolution, depths=depths, expand=expand,
                              width=[space.widths[i] for i in w_idx])


def _depth_offsets(space: SearchSpace) -> list[int]:
    """OFA ResNet's depth choices (``d`` values), from the first elastic stage."""
    stage = space.stages[1]
    return [d - min(stage.depths) for d in stage.depths]


def _bottleneck_overheads(acc: CostAccumulator, stage: int, on: np.ndarray, down: np.ndarray | None,
                          *, hw_in: np.ndarray, hw_out: np.ndarray, in_ch: np.ndarray | int,
                          mid: np.ndarray, out_ch: np.ndarray) -> None:
    """Operator counts and memory traffic of one bottleneck slot (``down``: has a shortcut conv)."""
    has_down = np.zeros_like(on) if down is None else np.asarray(down, dtype=np.float64)
    acc.add(f"s{stage}_ops_pw", on * (2.0 + has_down))
    acc.add(f"s{stage}_ops_dense", on)
    acc.add(f"s{stage}_ops_elem", on * (7.0 + has_down))  # BN per conv, 3 ReLU, residual add
    conv_io = hw_in * (in_ch + mid) + hw_out * mid * 2 + hw_out * (mid + out_ch)
    acc.add(f"s{stage}_mem_conv", on * (conv_io + has_down * (hw_in * in_ch + hw_out * out_ch)))
    tensors = hw_in * mid + hw_out * mid + hw_out * out_ch * (1.0 + has_down)
    acc.add(f"s{stage}_mem_elem", on * (4.0 * tensors + 3.0 * hw_out * out_ch))


def _resnet_costs(space: SearchSpace, layout: ResNetLayout, X: np.ndarray) -> CostTable:
    n = X.shape[0]
    acc = CostAccumulator(n)
    widths = np.asarray(space.widths, dtype=np.float64)
    w_start = 1 + len(space.stages) + len(space.block_knobs) * space.n_blocks
    w_genes = X[:, w_start:w_start + space.n_width_slots]
    stem_out_choices = np.array([make_divisible(layout.stem * w, 8) for w in widths])
    stem_mid_choices = np.array([make_divisible(int(c) // 2, 8) for c in stem_out_choices])
    stem_mid = stem_mid_choices[w_genes[:, 0]].astype(np.float64)
    stem_out = stem_out_choices[w_genes[:, 1]].astype(np.float64)
    res = np.asarray(space.resolutions, dtype=np.int64)[X[:, 0]]
    h = ceil_div(res, 2)
    hw = (h * h).astype(np.float64)
    c_in = layout.in_channels
    skip_on = (np.asarray(space.stages[0].depths)[X[:, 1]] > 0).astype(np.float64)
    acc.add("stem_macs", hw * stem_mid * c_in * 9 + skip_on * hw * stem_mid * stem_mid * 9
            + hw * stem_out * stem_mid * 9)
    acc.add("stem_params", stem_mid * c_in * 9 + 2 * stem_mid
            + skip_on * (stem_mid * stem_mid * 9 + 2 * stem_mid)
            + stem_out * stem_mid * 9 + 2 * stem_out)
    acc.add("stem_act", hw * (stem_mid * (1 + skip_on) + stem_out))
    h = ceil_div(h, 2)  # max-pool 3x3, stride 2

    active = space.active_block_mask(X)
    e_start = 1 + len(space.stages)
    slot, in_ch = 0, stem_out
    elastic = [st for st in space.stages if st.elastic]
    for s, (stage, base_w) in enumerate(zip(elastic, layout.stage_widths)):
        out_choices = [make_divisible(base_w * w, 8) for w in widths]
        w_idx = w_genes[:, 2 + s]
        out_ch = np.asarray(out_choices, dtype=np.float64)[w_idx]
        # Bottleneck width: make_divisible(round(out * e), 8), tabulated over (width, expand).
        mid_table = np.array([[make_divisible(round(o * e), 8) for e in space.expands]
                              for o in out_choices], dtype=np.float64)
        acc.declare(f"s{s}_macs_pw", f"s{s}_macs_conv3", f"s{s}_macs_down", f"s{s}_params",
                    f"s{s}_act", f"s{s}_blocks", *overhead_names(s))
        for j in range(stage.max_depth):
            on = active[:, slot].astype(np.float64)
            stride = layout.stage_strides[s] if j == 0 else 1
            h_out = ceil_div(h, stride)
            hw_in, hw_out = (h * h).astype(np.float64), (h_out * h_out).astype(np.float64)
            mid = mid_table[w_idx, X[:, e_start + slot]]
            acc.add(f"s{s}_macs_pw", on * (hw_in * in_ch * mid + hw_out * mid * out_ch))
            acc.add(f"s{s}_macs_conv3", on * hw_out * mid * mid * 9)
            params = in_ch * mid + 2 * mid + mid * mid * 9 + 2 * mid + mid * out_ch + 2 * out_ch
            act = hw_in * mid + hw_out * (mid + out_ch)
            if j == 0:
                down = (stride != 1) | (in_ch != out_ch)
                acc.add(f"s{s}_macs_down", np.where(down, hw_out * in_ch * out_ch, 0.0))
                params = params + np.where(down, in_ch * out_ch + 2 * out_ch, 0.0)
                act = act + np.where(down, hw_out * out_ch, 0.0)
            acc.add(f"s{s}_params", on * params)
            acc.add(f"s{s}_act", on * act)
            acc.add(f"s{s}_blocks", on)
            _bottleneck_overheads(acc, s, on, down if j == 0 else None, hw_in=hw_in,
                                  hw_out=hw_out, in_ch=in_ch, mid=mid, out_ch=out_ch)
            if j == 0:
                h, in_ch = h_out, out_ch
            slot += 1
    acc.add("head_macs_fc", in_ch * layout.n_classes)
    acc.add("head_params", in_ch * layout.n_classes + layout.n_classes)
    return acc.table()


def ofa_resnet50_space(
    resolutions: Sequence[int] = tuple(range(128, 225, 4)), n_classes: int = 1000
) -> SearchSpace:
    """OFA ResNet50: depth {0,1,2} extra blocks, expand {0.2,0.25,0.35}, width {0.65,0.8,1.0}.

    Stage 0 is the input stem's skippable residual block (depth 0 or 1);
    stages 1-4 hold 2-4, 2-4, 4-6 and 2-4 bottlenecks.  Six width slots:
    two for the stem, one per stage.
    """
    return SearchSpace(
        name="ofa_resnet50",
        resolutions=tuple(resolutions),
        stages=(
            StageSpec((0, 1), elastic=False),
            StageSpec((2, 3, 4)),
            StageSpec((2, 3, 4)),
            StageSpec((4, 5, 6)),
            StageSpec((2, 3, 4)),
        ),
        expands=(0.2, 0.25, 0.35),
        widths=(0.65, 0.8, 1.0),
        n_width_slots=6,
        layout=ResNetLayout(
            stem=64, stage_widths=(256, 512, 1024, 2048), stage_strides=(1, 2, 2, 2),
            n_classes=n_classes,
        ),
    )
