"""Elastic vision transformers in AutoFormer's style: layout, native form, cost model (numpy only).

A ViT supernet maps onto the generic :class:`~hwsearch.space.SearchSpace` as
agreed for every transformer family:

* one elastic stage whose depths are the numbers of encoder layers (a subnet
  of depth ``d`` runs the supernet's first ``d`` layers);
* per active layer, ``kernel`` is the number of attention heads and
  ``expand`` the MLP ratio;
* one width slot, the embedding dimension (shared by every layer, as
  AutoFormer samples it);
* one resolution, because the position embedding is sized for it.

The architecture is AutoFormer's ``Vision_TransformerSuper`` in the
configuration its published supernets were trained with (``--change_qkv
--relative_position --gp``, ``qkv_bias=True``): pre-norm encoder layers,
queries/keys/values of ``heads * head_dim`` channels (head width fixed at
64), 2-D relative position tables on keys and values beside the absolute
position embedding, and the classifier on the mean of the patch tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hwsearch.checks import is_integer, positive_int
from hwsearch.costs import CostAccumulator, CostTable
from hwsearch.space import (
    ArchConfig,
    ArchValidationError,
    Layout,
    SearchSpace,
    StageSpec,
    native_errors,
    native_list,
)

__all__ = ["AUTOFORMER_SIZES", "AutoFormerSize", "ViTLayout", "autoformer_space", "mlp_hidden",
           "vit_space"]

_STAGE = 0  # the one stage of a ViT space: cost columns are named s0_*


@dataclass(frozen=True)
class ViTLayout(Layout):
    """The fixed parts of an AutoFormer-style ViT supernet.

    ``super_embed_dim`` and ``super_mlp_ratio`` size the stored weights, as
    AutoFormer's ``SUPERNET`` section does: every subnet slices its embedding
    channels, its ``3 * heads * head_dim`` query/key/value rows and its
    ``int(embed * mlp_ratio)`` hidden units out of them, so they may exceed
    the largest choices (AutoFormer-T stores 256 channels for embeddings of
    at most 240, because 4 heads of 64 need 256 query channels).
    """

    family: ClassVar[str] = "vit"
    native_fields: ClassVar[frozenset[str]] = frozenset(
        {"layer_num", "embed_dim", "num_heads", "mlp_ratio"})

    patch_size: int
    n_classes: int
    super_embed_dim: int
    super_mlp_ratio: float
    in_channels: int = 3
    head_dim: int = 64
    qkv_bias: bool = True
    relative_position: bool = True
    max_relative_position: int = 14
    abs_pos: bool = True
    global_pool: bool = True

    # ------------------------------------------------------------------ shapes

    @property
    def super_mlp_hidden(self) -> int:
        """Rows of the stored ``fc1`` (AutoFormer: ``int(mlp_ratio * embed_dim)``)."""
        return mlp_hidden(self.super_embed_dim, self.super_mlp_ratio)

    @property
    def relative_table_rows(self) -> int:
        """Rows of each relative position table: distances -M..M, plus one for the class token."""
        return 2 * self.max_relative_position + 2

    def n_patches(self, resolution: int) -> int:
        return (resolution // self.patch_size) ** 2

    def check_space(self, space: SearchSpace) -> None:
        self._check_knobs(space)
        self._check_capacity(space)

    def _check_knobs(self, space: SearchSpace) -> None:
        if len(space.stages) != 1 or not space.stages[0].elastic:
            raise ValueError(f"{space.name}: a ViT space has one elastic stage (its layers)")
        if not space.kernels or not space.expands or space.n_width_slots != 1:
            raise ValueError(f"{space.name}: a ViT space needs head counts (kernels), MLP ratios "
                             "(expands) and one width slot (the embedding dimension)")
        if len(space.resolutions) != 1:
            raise ValueError(f"{space.name}: a ViT space has one resolution (the position "
                             f"embedding is sized for it), got {list(space.resolutions)}")
        resolution = space.resolutions[0]
        if resolution < self.patch_size or resolution % self.patch_size:
            raise ValueError(f"{space.name}: resolution {resolution} is not a multiple of the "
                             f"patch size {self.patch_size}")
        for name, values in (("kernels (heads)", space.kernels), ("widths (embed dims)",
                                                                  space.widths)):
            if not all(float(v).is_integer() and v > 0 for v in values):
                raise ValueError(f"{space.name}: {name} must be positive integers, got {values}")
        if not all(r > 0 for r in space.expands):
            raise ValueError(f"{space.name}: MLP ratios must be positive, got {space.expands}")

    def _check_capacity(self, space: SearchSpace) -> None:
        """The stored weights must hold the largest slice any subnet takes."""
        needs = {
            "the largest embedding dimension": max(space.widths),
            "the largest query width (heads x head_dim)": max(space.kernels) * self.head_dim,
        }
        for what, need in needs.items():
            if need > self.super_embed_dim:
                raise ValueError(f"{space.name}: super_embed_dim={self.super_embed_dim} is "
                                 f"smaller than {what}, {need}")
        hidden = max(mlp_hidden(e, r) for e in space.widths for r in space.expands)
        if hidden > self.super_mlp_hidden:
            raise ValueError(f"{space.name}: the stored MLP has {self.super_mlp_hidden} hidden "
                             f"units; a subnet needs {hidden}")

    # ------------------------------------------------------------------ native form

    def to_native(self, space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
        """AutoFormer's sampled config: ``layer_num`` and one value per layer in each list."""
        depth = arch.depths[0]
        return {"layer_num": depth, "embed_dim": [arch.width[0]] * depth,
                "num_heads": list(arch.kernel), "mlp_ratio": list(arch.expand)}

    def from_native(self, space: SearchSpace, data: Mapping[str, Any]) -> ArchConfig:
        """Read AutoFormer's config; per-layer lists hold ``layer_num`` or max-depth entries.

        AutoFormer ignores list entries beyond ``layer_num``; so does this
        reader.  Its search samples one embedding dimension for all layers,
        which is the only form this space has, so the entries must agree.
        """
        depth = data["layer_num"]
        if not is_integer(depth):
            raise ArchValidationError(f"layer_num must be an int, got {depth!r}")
        depth = int(depth)
        stage = space.stages[0]
        if depth not in stage.depths:
            raise ArchValidationError(f"layer_num={depth} is not allowed; choose from "
                                      f"{list(stage.depths)}")
        lists = {name: _per_layer(data[name], name, depth, stage.max_depth)
                 for name in ("embed_dim", "num_heads", "mlp_ratio")}
        if len(set(lists["embed_dim"])) != 1:
            raise ArchValidationError(f"embed_dim must be the same for every layer in "
                                      f"{space.name}, got {lists['embed_dim']}")
        with native_errors({"kernel": "num_heads", "expand": "mlp_ratio", "width": "embed_dim"}):
            return space.arch(resolution=space.resolutions[0], depths=[depth],
                              kernel=lists["num_heads"], expand=lists["mlp_ratio"],
                              width=lists["embed_dim"][:1])

    # ------------------------------------------------------------------ cost model

    def costs(self, space: SearchSpace, X: np.ndarray) -> CostTable:
        """Patch embedding, encoder layers (per active layer, summed), final norm and head."""
        acc = CostAccumulator(X.shape[0])
        shape = _TokenShape.of(self, space, X)
        self._patch_costs(acc, shape)
        self._layer_costs(acc, space, X, shape)
        e = shape.embed
        acc.add("head_macs", e * self.n_classes)
        acc.add("head_params", 2 * e + e * self.n_classes + self.n_classes)
        acc.add("head_act", shape.tokens * e + e + self.n_classes)
        return acc.table()

    def _patch_costs(self, acc: CostAccumulator, shape: _TokenShape) -> None:
        e, patches = shape.embed, shape.tokens - 1
        kernel = self.in_channels * self.patch_size**2
        acc.add("patch_macs", patches * e * kernel)
        positions = shape.tokens * e if self.abs_pos else 0.0
        acc.add("patch_params", e * kernel + e + e + positions)  # conv, bias, class token
        acc.add("patch_act", patches * e + shape.tokens * e)

    def _layer_costs(self, acc: CostAccumulator, space: SearchSpace, X: np.ndarray,
                     shape: _TokenShape) -> None:
        """Every active layer's arithmetic, from per-slot ``(n, max_depth)`` arrays."""
        on = space.active_block_mask(X).astype(np.float64)
        nb = space.n_blocks
        head_genes = X[:, 2:2 + nb]
        ratio_genes = X[:, 2 + nb:2 + 2 * nb]
        heads = np.asarray(space.kernels, dtype=np.float64)[head_genes]
        hidden_table = np.array([[mlp_hidden(e, r) for r in space.expands] for e in space.widths],
                                dtype=np.float64)
        hidden = hidden_table[X[:, -1:], ratio_genes]
        layer = _LayerShape(t=shape.tokens[:, None], e=shape.embed[:, None],
                            q=heads * self.head_dim, h=heads, m=hidden)
        s = f"s{_STAGE}"
        for name, value in self._layer_columns(layer).items():
            acc.add(f"{s}_{name}", (on * value).sum(axis=1))
        acc.add(f"{s}_blocks", on.sum(axis=1))

    def _layer_columns(self, x: _LayerShape) -> dict[str, np.ndarray | float]:
        """One layer's costs by component.

        MACs: the qkv projection, attention's products (``QK^T`` and
        ``attn V``, each ``T*T*q``; with relative positions also ``q R_k``
        and ``attn R_v``, as much again, in ``macs_relpos``), the output
        projection and the MLP.
        """
        t, e, q, h, m = x.t, x.e, x.q, x.h, x.m
        rel = 1.0 if self.relative_position else 0.0
        bias = 1.0 if self.qkv_bias else 0.0
        tables = rel * 4 * self.relative_table_rows * self.head_dim
        columns = {
            "macs_qkv": t * e * 3 * q,
            "macs_attn": 2 * t * t * q,
            "macs_proj": t * q * e,
            "macs_mlp": 2 * t * e * m,
            # two layer norms, qkv, proj, fc1, fc2, relative position tables
            "params": 4 * e + (3 * q * e + bias * 3 * q) + (q * e + e) + (2 * e * m + m + e)
            + tables,
            "act": t * (3 * q + q + 2 * e + m) + h * t * t * (1 + rel),
        }
        if self.relative_position:
            columns["macs_relpos"] = 2 * t * t * q
        return columns | self._overheads(x, rel, bias)

    def _overheads(self, x: _LayerShape, rel: float, bias: float) -> dict[str, np.ndarray | float]:
        """Operators one exported layer runs, and the elements they read and write.

        Counted on the ONNX graph ``export_subnet`` writes (opset 17): matrix
        products (``MatMul``, bias ``Add`` separate on 3-D inputs), one
        softmax, two ``LayerNormalization``; elementwise ops: score scaling,
        GELU as exported (``Div``, ``Erf``, ``Add``, two ``Mul``), residual
        and bias adds, and with relative positions the table lookups and
        adds, the scaled relative scores and the added relative values;
        layout ops: reshapes, transposes and the q/k/v and table gathers.
        """
        t, e, q, h, m = x.t, x.e, x.q, x.h, x.m
        maps = h * t * t  # one attention score map per head
        pairs = t * t * self.head_dim  # one relative position embedding of every token pair
        return {
            "ops_matmul": 6 + 2 * rel,
            "ops_softmax": 1,
            "ops_norm": 2,
            "ops_elem": 1 + 5 + 2 + (3 + bias) + rel * 5,
            "ops_layout": 8 + rel * 13,
            "mem_matmul": (t * e + 3 * t * q) + (2 * t * q + maps) + (maps + 2 * t * q)
            + (t * q + t * e) + 2 * (t * e + t * m) + rel * 2 * (t * q + maps),
            "mem_attn": 2 * maps + 2 * maps + rel * (2 * maps + 3 * maps),
            "mem_elem": 2 * 2 * t * e + 11 * t * m + 2 * 3 * t * e
            + 2 * (bias * 3 * t * q + 2 * t * e + t * m) + rel * (3 * t * q + 14 * pairs),
        }


@dataclass(frozen=True)
class _TokenShape:
    """Per-row token count ``T`` (patches plus the class token) and embedding dimension."""

    tokens: np.ndarray
    embed: np.ndarray

    @classmethod
    def of(cls, layout: ViTLayout, space: SearchSpace, X: np.ndarray) -> _TokenShape:
        resolution = np.asarray(space.resolutions, dtype=np.int64)[X[:, 0]]
        tokens = (resolution // layout.patch_size) ** 2 + 1
        embed = np.asarray(space.widths, dtype=np.float64)[X[:, -1]]
        return cls(tokens.astype(np.float64), embed)


@dataclass(frozen=True)
class _LayerShape:
    """Broadcastable per-slot sizes: tokens, embedding, query width, heads, MLP hidden units."""

    t: np.ndarray
    e: np.ndarray
    q: np.ndarray
    h: np.ndarray
    m: np.ndarray


def mlp_hidden(embed: float, ratio: float) -> int:
    """Hidden units of a layer's MLP, truncated as AutoFormer does: ``int(embed * ratio)``."""
    return int(embed * ratio)


def _per_layer(value: Any, name: str, depth: int, max_depth: int) -> list[Any]:
    """A per-layer list of AutoFormer's config cut to ``depth``; a scalar is broadcast.

    A 1-D numpy array counts as a list (AutoFormer's own sampler builds them
    with numpy); it was refused as "must be a list" while the same list passed.
    """
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = list(value)
    if isinstance(value, (list, tuple)) and len(value) == max_depth != depth:
        value = list(value)[:depth]
    return native_list(value, name, depth)


# --------------------------------------------------------------------------- spaces


def vit_space(
    name: str,
    *,
    resolution: int,
    patch_size: int,
    depths: Sequence[int],
    embed_dims: Sequence[int],
    heads: Sequence[int],
    mlp_ratios: Sequence[float],
    n_classes: int = 1000,
    in_channels: int = 3,
    **layout_options: Any,
) -> SearchSpace:
    """A ViT search space; ``layout_options`` are further :class:`ViTLayout` fields.

    The stored widths default to the smallest that hold every subnet:
    ``super_embed_dim = max(max(embed_dims), max(heads) * head_dim)`` and
    ``super_mlp_ratio = max(mlp_ratios)``, which reproduces AutoFormer's
    published supernets.
    """
    positive_int(resolution, "resolution")  # the space would name it resolutions[0], which is not ours
    head_dim = layout_options.get("head_dim", ViTLayout.head_dim)
    layout_options.setdefault("super_embed_dim", max(max(embed_dims), max(heads) * head_dim))
    layout_options.setdefault("super_mlp_ratio", max(mlp_ratios))
    layout = ViTLayout(patch_size=patch_size, n_classes=n_classes, in_channels=in_channels,
                       **layout_options)
    return SearchSpace(
        name=name,
        resolutions=(resolution,),
        stages=(StageSpec(tuple(sorted(depths))),),
        kernels=tuple(sorted(heads)),
        expands=tuple(sorted(mlp_ratios)),
        widths=tuple(sorted(embed_dims)),
        n_width_slots=1,
        layout=layout,
    )


@dataclass(frozen=True)
class AutoFormerSize:
    """One published AutoFormer supernet: its ``SUPERNET`` and ``SEARCH_SPACE`` settings."""

    super_embed_dim: int
    super_mlp_ratio: float
    depths: tuple[int, ...]
    embed_dims: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]


AUTOFORMER_SIZES: dict[str, AutoFormerSize] = {
    # experiments/supernet/supernet-{T,S,B}.yaml of AutoFormer (microsoft/Cream)
    "tiny": AutoFormerSize(256, 4.0, (12, 13, 14), (192, 216, 240), (3, 4), (3.5, 4.0)),
    "small": AutoFormerSize(448, 4.0, (12, 13, 14), (320, 384, 448), (5, 6, 7),
                            (3.0, 3.5, 4.0)),
    "base": AutoFormerSize(640, 4.0, (14, 15, 16), (528, 576, 624), (9, 10), (3.0, 3.5, 4.0)),
}


def autoformer_space(size: str, n_classes: int = 1000) -> SearchSpace:
    """AutoFormer's published search space ``size`` (tiny, small, base): 224 px, patch 16."""
    try:
        spec = AUTOFORMER_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown AutoFormer size {size!r}; choose from "
                         f"{sorted(AUTOFORMER_SIZES)}") from None
    return vit_space(f"autoformer_{size}", resolution=224, patch_size=16, depths=spec.depths,
                     embed_dims=spec.embed_dims, heads=spec.heads, mlp_ratios=spec.mlp_ratios,
                     n_classes=n_classes, super_embed_dim=spec.super_embed_dim,
                     super_mlp_ratio=spec.super_mlp_ratio)
