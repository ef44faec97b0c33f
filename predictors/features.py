"""Features of encoded subnets: depth-masked one-hot codes plus an analytic cost model.

Predictors see subnets as encoded gene matrices (``space.encode_many``), so
search-time prediction is one vectorised pass over ``(n, n_var)`` integers.

Two feature groups are produced:

* **Codes** - one-hot kernel/expand choices per block slot multiplied by the
  slot's active mask (a switched-off block contributes nothing, whatever its
  stale genes say), the active mask itself, width choices and resolution.
* **Costs** - additive per-stage cost components (multiply-accumulates split by
  layer kind, parameters, activation elements, active block counts, operator
  counts by kind and memory traffic by kind, see :data:`OVERHEAD_KINDS`)
  computed from ``space.layout`` with the exact channel rounding the supernets
  use.  Latency is close to additive over layers, so these columns also serve
  as the regressors of the linear base model in :mod:`predictors.base`: MAC
  columns carry compute-bound devices, operator counts and traffic carry
  overhead-bound ones (batch 1, small inputs, fast cores).

Counting convention (shared with ``Supernet.count``): MACs count the
multiply-accumulates of convolutions and linear layers at batch 1; parameters
count conv/linear weights and biases plus batch-norm affine weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsearch.space import MBv3Layout, ResNetLayout, SearchSpace, make_divisible

__all__ = ["FEATURE_VERSION", "ArchFeaturizer", "CostTable"]

FEATURE_VERSION = "2"


@dataclass
class CostTable:
    """Additive cost components of each row, column by named column.

    ``columns`` maps a component name (e.g. ``s2_macs_dw_k5``) to an ``(n,)``
    float64 array; ``macs``/``params`` are the totals, equal to the sums of the
    ``*macs*``/``*params*`` components.
    """

    columns: dict[str, np.ndarray]

    @property
    def macs(self) -> np.ndarray:
        return sum(v for k, v in self.columns.items() if "_macs" in k)

    @property
    def params(self) -> np.ndarray:
        return sum(v for k, v in self.columns.items() if k.endswith("_params"))


def _ceil_div(h: np.ndarray, stride: int) -> np.ndarray:
    """Spatial size after a 'same'-padded strided conv/pool: ``ceil(h / stride)``."""
    return -(-h // stride)


class _Accumulator:
    """Collects per-row additive components under stable names."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.columns: dict[str, np.ndarray] = {}

    def add(self, name: str, value: np.ndarray | float) -> None:
        value = np.broadcast_to(np.asarray(value, dtype=np.float64), (self.n,))
        if name in self.columns:
            self.columns[name] = self.columns[name] + value
        else:
            self.columns[name] = value.copy()

    def declare(self, *names: str) -> None:
        """Make columns exist (as zeros) so the column set never depends on the data."""
        for name in names:
            self.add(name, 0.0)


OVERHEAD_KINDS = ("ops_dw", "ops_pw", "ops_dense", "ops_se", "ops_elem", "ops_pool",
                  "mem_conv", "mem_elem")
"""Per-stage overhead components: operator counts by kind and memory traffic by kind.

On an overhead-bound device (batch 1, small inputs, a fast core) each
operator costs a fixed launch/scheduling/allocation time whatever its MACs,
and elementwise operators cost their memory traffic, so latency follows
these counts far more than MACs.  ``ops_*`` count the operators an exported
subnet runs (depthwise and pointwise convs, dense 3x3 convs, squeeze-excite
modules, elementwise ops: batch norm, activations, residual adds, SE scaling;
pooling); ``mem_*`` count the elements read and written by convolutions and
by elementwise ops.  A runtime that fuses batch norm and activations into
convs makes ``ops_elem``/``mem_elem`` cheap, one that does not makes them
dominate; the fit decides.
"""


def _overhead_names(stage: int) -> list[str]:
    return [f"s{stage}_{kind}" for kind in OVERHEAD_KINDS]


def _mbconv_overheads(acc: _Accumulator, stage: int, on: np.ndarray, has_expand: np.ndarray,
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


def _mbv3_costs(space: SearchSpace, layout: MBv3Layout, X: np.ndarray) -> CostTable:
    """OFA MobileNetV3: stem, first block, elastic MBConv stages, final expand, head."""
    n = X.shape[0]
    acc = _Accumulator(n)
    res = np.asarray(space.resolutions, dtype=np.int64)[X[:, 0]]
    h = _ceil_div(res, layout.stem_stride)
    hw = (h * h).astype(np.float64)
    c_in, stem = layout.in_channels, layout.stem
    acc.add("stem_macs", hw * stem * c_in * 9)
    acc.add("stem_params", stem * c_in * 9 + 2 * stem)
    # First block: MBConv with expand 1 (depthwise 3x3 + project), residual.
    fb = layout.first_block
    acc.add("stem_macs", hw * stem * 9 + hw * stem * fb)
    acc.add("stem_params", stem * 9 + 2 * stem + stem * fb + 2 * fb)
    acc.add("stem_act", hw * (stem + stem + fb))

    active = space.active_block_mask(X)
    n_stages = len(space.stages)
    k_start = 1 + n_stages
    e_start = k_start + space.n_blocks
    kernels = np.asarray(space.kernels, dtype=np.int64)
    slot, in_ch = 0, fb
    for s, (stage, out_ch) in enumerate(zip(space.stages, layout.stage_widths)):
        acc.declare(f"s{s}_macs_pw", f"s{s}_macs_se", f"s{s}_params", f"s{s}_act", f"s{s}_blocks",
                    *(f"s{s}_macs_dw_k{k}" for k in space.kernels), *_overhead_names(s))
        for j in range(stage.max_depth):
            on = active[:, slot].astype(np.float64)
            stride = layout.stage_strides[s] if j == 0 else 1
            h_out = _ceil_div(h, stride)
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
            if layout.stage_se[s]:
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
            _mbconv_overheads(acc, s, on, has_expand, layout.stage_se[s], residual=j > 0,
                              conv_io=np.where(has_expand, hw_in * (in_ch + mid), 0.0)
                              + hw_in * mid + hw_out * mid + hw_out * (mid + out_ch),
                              tensors=np.where(has_expand, hw_in * mid, 0.0) + hw_out * mid,
                              se_io=hw_out * mid, res_io=hw_out * out_ch)
            # Spatial size and width advance only through the first (always active) block.
            if j == 0:
                h, in_ch = h_out, out_ch
            slot += 1
    hw = (h * h).astype(np.float64)
    fe, feat = layout.final_expand, layout.feature
    acc.add("head_macs_conv", hw * in_ch * fe)
    acc.add("head_act", hw * fe)
    acc.add("head_macs_fc", np.full(n, fe * feat + feat * layout.n_classes, dtype=np.float64))
    acc.add("head_params", in_ch * fe + 2 * fe + fe * feat + feat * layout.n_classes
            + layout.n_classes)
    return CostTable(acc.columns)


def _bottleneck_overheads(acc: _Accumulator, stage: int, on: np.ndarray, down: np.ndarray | None,
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
    """OFA ResNet: 3-conv input stem (skippable middle block), bottleneck stages, classifier."""
    n = X.shape[0]
    acc = _Accumulator(n)
    widths = np.asarray(space.widths, dtype=np.float64)
    w_start = 1 + len(space.stages) + len(space.block_knobs) * space.n_blocks
    w_genes = X[:, w_start:w_start + space.n_width_slots]
    stem_out_choices = np.array([make_divisible(layout.stem * w, 8) for w in widths])
    stem_mid_choices = np.array([make_divisible(int(c) // 2, 8) for c in stem_out_choices])
    stem_mid = stem_mid_choices[w_genes[:, 0]].astype(np.float64)
    stem_out = stem_out_choices[w_genes[:, 1]].astype(np.float64)
    res = np.asarray(space.resolutions, dtype=np.int64)[X[:, 0]]
    h = _ceil_div(res, 2)
    hw = (h * h).astype(np.float64)
    c_in = layout.in_channels
    skip_on = (np.asarray(space.stages[0].depths)[X[:, 1]] > 0).astype(np.float64)
    acc.add("stem_macs", hw * stem_mid * c_in * 9 + skip_on * hw * stem_mid * stem_mid * 9
            + hw * stem_out * stem_mid * 9)
    acc.add("stem_params", stem_mid * c_in * 9 + 2 * stem_mid
            + skip_on * (stem_mid * stem_mid * 9 + 2 * stem_mid)
            + stem_out * stem_mid * 9 + 2 * stem_out)
    acc.add("stem_act", hw * (stem_mid * (1 + skip_on) + stem_out))
    h = _ceil_div(h, 2)  # max-pool 3x3, stride 2

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
                    f"s{s}_act", f"s{s}_blocks", *_overhead_names(s))
        for j in range(stage.max_depth):
            on = active[:, slot].astype(np.float64)
            stride = layout.stage_strides[s] if j == 0 else 1
            h_out = _ceil_div(h, stride)
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
    return CostTable(acc.columns)


class ArchFeaturizer:
    """Turns encoded gene matrices of one space into float32 feature matrices.

    Stateless apart from the space, so a saved predictor only needs the space
    and :data:`FEATURE_VERSION` to rebuild it.
    """

    def __init__(self, space: SearchSpace) -> None:
        if space.layout is None:
            raise ValueError(f"{space.name} has no layout; the analytic cost model needs one")
        self.space = space
        probe = self.costs(np.zeros((1, space.n_var), dtype=np.int64))
        self.cost_names: list[str] = list(probe.columns)
        self.names: list[str] = self._code_names() + self.cost_names + ["total_macs",
                                                                          "total_params"]

    # ------------------------------------------------------------------ costs

    def costs(self, X: np.ndarray) -> CostTable:
        """Additive per-stage cost components of each encoded row."""
        X = self._check(X)
        layout = self.space.layout
        if isinstance(layout, MBv3Layout):
            return _mbv3_costs(self.space, layout, X)
        if isinstance(layout, ResNetLayout):
            return _resnet_costs(self.space, layout, X)
        raise TypeError(f"no cost model for layout {type(layout).__name__}")

    def macs(self, X: np.ndarray) -> np.ndarray:
        """Total multiply-accumulates per row (batch 1)."""
        return self.costs(X).macs

    # ------------------------------------------------------------------ features

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, len(self.names))`` float32: masked codes, then cost components (in millions).

        Columns are written into one preallocated array; building blocks and
        stacking them costs more than the arithmetic at search-time batch sizes.
        """
        X = self._check(X)
        out = np.empty((len(X), len(self.names)), dtype=np.float32)
        n_codes = self._write_codes(X, out)
        table = self.costs(X)
        col = n_codes
        for value in table.columns.values():
            out[:, col] = value / 1e6
            col += 1
        out[:, col] = table.macs / 1e6
        out[:, col + 1] = table.params / 1e6
        return out

    def _write_codes(self, X: np.ndarray, out: np.ndarray) -> int:
        """Fill the code columns of ``out`` in :meth:`_code_names` order; return their count."""
        space = self.space
        active = space.active_block_mask(X)
        nb = space.n_blocks
        out[:, :nb] = active
        col, start = nb, 1 + len(space.stages)
        for knob in space.block_knobs:
            genes = X[:, start:start + nb]
            n_choices = len(getattr(space, knob + "s"))
            for c in range(n_choices):  # slot-major, choice-minor, as in _code_names
                out[:, col + c:col + n_choices * nb:n_choices] = (genes == c) & active
            col += nb * n_choices
            start += nb
        for i in range(space.n_width_slots):
            for c in range(len(space.widths)):
                out[:, col] = X[:, start + i] == c
                col += 1
        res = np.asarray(space.resolutions, dtype=np.float32)[X[:, 0]] / 224.0
        out[:, col] = res
        out[:, col + 1] = res * res
        return col + 2

    def _code_names(self) -> list[str]:
        space = self.space
        names = [f"on_{i}" for i in range(space.n_blocks)]
        for knob in space.block_knobs:
            names += [f"{knob}_{i}={c}" for i in range(space.n_blocks)
                      for c in getattr(space, knob + "s")]
        names += [f"width_{i}={w}" for i in range(space.n_width_slots) for w in space.widths]
        return names + ["res", "res_sq"]

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X))
        if X.ndim != 2 or X.shape[1] != self.space.n_var:
            raise ValueError(
                f"expected encoded genes of shape (n, {self.space.n_var}) for {self.space.name}, "
                f"got {X.shape}"
            )
        return X.astype(np.int64, copy=False)
