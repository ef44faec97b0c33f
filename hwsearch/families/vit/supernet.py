"""AutoFormer-style ViT supernets, built from a :class:`~hwsearch.families.vit.layout.ViTLayout`.

The module tree (and so the ``state_dict``) has the names and shapes of
AutoFormer's ``Vision_TransformerSuper`` (``patch_embed_super.proj``,
``blocks.<i>.attn.qkv``, ``blocks.<i>.attn.rel_pos_embed_k.embeddings_table_v``,
``blocks.<i>.fc1``, ``norm``, ``head`` ...), so its published supernet weights
load without conversion, and a subnet takes the same slices AutoFormer takes:

* embeddings, layer norms, ``proj``/``fc2`` outputs and the head's inputs:
  the first ``embed`` channels;
* ``qkv`` (AutoFormer's ``change_qkv`` form): queries, keys and values of
  ``heads * head_dim`` channels, read from the stored rows interleaved
  (row ``3j`` is query channel ``j``, ``3j+1`` key channel ``j``, ``3j+2``
  value channel ``j``) over the first ``embed`` input columns, with the
  first ``3 * heads * head_dim`` entries of the bias *not* interleaved,
  which is how AutoFormer's ``qkv_super`` slices them;
* ``fc1``: the first ``int(embed * mlp_ratio)`` hidden units;
* relative position tables: whole (they are ``head_dim`` wide).

Unlike AutoFormer, the choice is an argument of ``forward``/``extract``, never
state set beforehand, so one supernet serves concurrent requests.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.families.vit.layout import ViTLayout, autoformer_space, mlp_hidden
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.supernets.base import Supernet, require_layout
from hwsearch.supernets.layers import layer_norm_from, linear_from, parameter_from
from hwsearch.supernets.registry import register_builder, register_supernet

__all__ = ["Attention", "ElasticAttention", "ElasticEncoderLayer", "ElasticViT", "EncoderLayer",
           "PatchEmbed", "RelativePosition2D", "ViTSubnet", "multihead_attention",
           "relative_indices"]

_INIT_STD = 0.02  # AutoFormer's (and timm's) truncated-normal init for ViT weights


def _sliced_layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm`` applied over the first ``x.shape[-1]`` channels of its weights."""
    channels = x.shape[-1]
    return F.layer_norm(x, (channels,), norm.weight[:channels], norm.bias[:channels], norm.eps)


# --------------------------------------------------------------------------- attention


def _per_query(a: Tensor, table: Tensor) -> Tensor:
    """``out[b, h, n] = a[b, h, n] @ table[n]``: a product with one matrix per query position.

    ``a`` is ``(B, heads, T, X)``, ``table`` ``(T, X, Y)``; written as one
    batched matmul over positions (as AutoFormer does), which exports to a
    plain ``MatMul``.
    """
    batch, heads, tokens, width = a.shape
    out = torch.matmul(a.permute(2, 0, 1, 3).reshape(tokens, batch * heads, width), table)
    return out.reshape(tokens, batch, heads, -1).permute(1, 2, 0, 3)


def multihead_attention(qkv: Tensor, heads: int, head_dim: int, rel_k: Tensor | None = None,
                        rel_v: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention of ``qkv`` = ``[q | k | v]`` (``(B, T, 3 * heads * head_dim)``).

    ``rel_k``/``rel_v`` (``(T, T, head_dim)``) are AutoFormer's relative
    position terms: ``q R_k`` is added to the (scaled) scores and
    ``attn R_v`` to the output.
    """
    batch, tokens, _ = qkv.shape
    qkv = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = head_dim**-0.5
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if rel_k is not None:
        scores = scores + _per_query(q, rel_k.transpose(1, 2)) * scale
    attn = scores.softmax(dim=-1)
    out = torch.matmul(attn, v)
    if rel_v is not None:
        out = out + _per_query(attn, rel_v)
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def relative_indices(side: int, max_distance: int) -> tuple[Tensor, Tensor]:
    """AutoFormer's ``(T, T)`` row (vertical) and column (horizontal) distance indices.

    Patches lie on a ``side x side`` grid; the distance between two patches
    along each axis is clipped to ``[-max_distance, max_distance]`` and
    shifted to ``1 .. 2 * max_distance + 1``; index 0 is for pairs with the
    class token (row and column 0).
    """
    position = torch.arange(side * side)
    rows, cols = position // side, position % side

    def index(coord: Tensor) -> Tensor:
        distance = (coord[None, :] - coord[:, None]).clamp(-max_distance, max_distance)
        return F.pad(distance + max_distance + 1, (1, 0, 1, 0), value=0)

    return index(rows), index(cols)


class RelativePosition2D(nn.Module):
    """Learned vertical and horizontal distance tables of one attention input (keys or values).

    Not elastic: the tables are ``head_dim`` wide, which every subnet uses
    whole, so the supernet's module is also the extracted one.  The index
    tensors (:func:`relative_indices`) depend on the resolution only, so one
    pair is computed per supernet and shared by every table: plain
    attributes, not buffers (not in checkpoints, like AutoFormer, which
    computes them per call).  As buffers of every layer's keys and values
    they took 513 MiB at 512 px, and an AutoFormer at 1024 px held 8.9 GB.
    """

    def __init__(self, head_dim: int, max_distance: int, indices: tuple[Tensor, Tensor]) -> None:
        super().__init__()
        rows = 2 * max_distance + 2
        self.max_distance = max_distance
        self.embeddings_table_v = nn.Parameter(torch.empty(rows, head_dim))
        self.embeddings_table_h = nn.Parameter(torch.empty(rows, head_dim))
        self.index_v, self.index_h = indices

    def copied(self) -> RelativePosition2D:
        """A copy with tables of its own and the same indices, which nothing writes.

        A plain deep copy duplicated the indices in every table of an
        extracted subnet: 56 tensors and 1,095 MiB for an AutoFormer-T at 640 px.
        """
        return copy.deepcopy(self, memo={id(self.index_v): self.index_v, id(self.index_h): self.index_h})

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random tables (truncated normal, as AutoFormer)."""
        nn.init.trunc_normal_(self.embeddings_table_v, std=_INIT_STD)
        nn.init.trunc_normal_(self.embeddings_table_h, std=_INIT_STD)

    def forward(self) -> Tensor:
        """The ``(T, T, head_dim)`` embedding of every (query, key) pair."""
        return self.embeddings_table_v[self.index_v] + self.embeddings_table_h[self.index_h]


class Attention(nn.Module):
    """Static multi-head self-attention of an extracted subnet (AutoFormer's module names).

    ``qkv`` holds the query, key and value rows one after another (the
    supernet's interleaved rows are reordered at extraction).
    """

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, heads: int, head_dim: int,
                 rel_pos_embed_k: RelativePosition2D | None,
                 rel_pos_embed_v: RelativePosition2D | None) -> None:
        super().__init__()
        self.qkv = qkv
        self.proj = proj
        self.heads = heads
        self.head_dim = head_dim
        self.rel_pos_embed_k = rel_pos_embed_k
        self.rel_pos_embed_v = rel_pos_embed_v

    def forward(self, x: Tensor) -> Tensor:
        rel_k = self.rel_pos_embed_k() if self.rel_pos_embed_k is not None else None
        rel_v = self.rel_pos_embed_v() if self.rel_pos_embed_v is not None else None
        return self.proj(multihead_attention(self.qkv(x), self.heads, self.head_dim,
                                             rel_k, rel_v))

    def extra_macs(self, inputs: tuple[Tensor, ...], output: Tensor) -> int:
        """MACs of the products between activations, for the whole batch (see ``measure``).

        ``QK^T`` and ``attn V`` are ``T * T * heads * head_dim`` each; the
        relative position terms ``q R_k`` and ``attn R_v`` as much again.
        """
        batch, tokens = inputs[0].shape[:2]
        products = 4 if self.rel_pos_embed_k is not None else 2
        return products * batch * tokens * tokens * self.heads * self.head_dim

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"


class ElasticAttention(nn.Module):
    """Attention with elastic width and head count over AutoFormer's ``change_qkv`` weights."""

    def __init__(self, layout: ViTLayout, indices: tuple[Tensor, Tensor] | None) -> None:
        """``indices``: the supernet's shared :func:`relative_indices`, or None without relative positions."""
        super().__init__()
        dim = layout.super_embed_dim
        self.head_dim = layout.head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=layout.qkv_bias)
        self.rel_pos_embed_k: RelativePosition2D | None = None
        self.rel_pos_embed_v: RelativePosition2D | None = None
        if indices is not None:
            self.rel_pos_embed_k = RelativePosition2D(layout.head_dim, layout.max_relative_position, indices)
            self.rel_pos_embed_v = RelativePosition2D(layout.head_dim, layout.max_relative_position, indices)
        self.proj = nn.Linear(dim, dim)

    def qkv_slices(self, embed: int, heads: int) -> tuple[Tensor, Tensor | None]:
        """The ``(3 * heads * head_dim, embed)`` weight and bias a subnet's qkv uses.

        Rows are interleaved q, k, v in storage; the bias is the plain prefix
        (AutoFormer's ``qkv_super`` slices the two differently).
        """
        rows = 3 * heads * self.head_dim
        weight = self.qkv.weight[:rows, :embed]
        weight = torch.cat([weight[part::3] for part in range(3)], dim=0)
        bias = self.qkv.bias[:rows] if self.qkv.bias is not None else None
        return weight, bias

    def _relative(self) -> tuple[Tensor | None, Tensor | None]:
        if self.rel_pos_embed_k is None or self.rel_pos_embed_v is None:
            return None, None
        return self.rel_pos_embed_k(), self.rel_pos_embed_v()

    def forward(self, x: Tensor, heads: int) -> Tensor:
        embed = x.shape[-1]
        weight, bias = self.qkv_slices(embed, heads)
        out = multihead_attention(F.linear(x, weight, bias), heads, self.head_dim,
                                  *self._relative())
        width = heads * self.head_dim
        return F.linear(out, self.proj.weight[:embed, :width], self.proj.bias[:embed])

    def extract(self, embed: int, heads: int) -> Attention:
        width = heads * self.head_dim
        qkv = linear_from(*self.qkv_slices(embed, heads))
        proj = linear_from(self.proj.weight[:embed, :width], self.proj.bias[:embed])
        return Attention(qkv, proj, heads, self.head_dim, _copied(self.rel_pos_embed_k), _copied(self.rel_pos_embed_v))


def _copied(table: RelativePosition2D | None) -> RelativePosition2D | None:
    return None if table is None else table.copied()


# --------------------------------------------------------------------------- layers


class EncoderLayer(nn.Module):
    """Static pre-norm encoder layer: ``x + attn(ln(x))``, then ``x + fc2(gelu(fc1(ln(x))))``."""

    def __init__(self, attn: Attention, attn_layer_norm: nn.LayerNorm,
                 ffn_layer_norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear) -> None:
        super().__init__()
        self.attn = attn
        self.attn_layer_norm = attn_layer_norm
        self.ffn_layer_norm = ffn_layer_norm
        self.fc1 = fc1
        self.act = nn.GELU()
        self.fc2 = fc2

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_layer_norm(x))
        return x + self.fc2(self.act(self.fc1(self.ffn_layer_norm(x))))


class ElasticEncoderLayer(nn.Module):
    """An encoder layer with elastic embedding width, head count and MLP ratio."""

    def __init__(self, layout: ViTLayout, indices: tuple[Tensor, Tensor] | None) -> None:
        super().__init__()
        dim, hidden = layout.super_embed_dim, layout.super_mlp_hidden
        self.attn = ElasticAttention(layout, indices)
        self.attn_layer_norm = nn.LayerNorm(dim)
        self.ffn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, heads: int, mlp_ratio: float) -> Tensor:
        embed = x.shape[-1]
        hidden = mlp_hidden(embed, mlp_ratio)
        x = x + self.attn(_sliced_layer_norm(x, self.attn_layer_norm), heads)
        y = F.linear(_sliced_layer_norm(x, self.ffn_layer_norm), self.fc1.weight[:hidden, :embed],
                     self.fc1.bias[:hidden])
        y = F.linear(F.gelu(y), self.fc2.weight[:embed, :hidden], self.fc2.bias[:embed])
        return x + y

    def extract(self, embed: int, heads: int, mlp_ratio: float) -> EncoderLayer:
        hidden = mlp_hidden(embed, mlp_ratio)
        return EncoderLayer(
            self.attn.extract(embed, heads),
            layer_norm_from(self.attn_layer_norm, embed),
            layer_norm_from(self.ffn_layer_norm, embed),
            linear_from(self.fc1.weight[:hidden, :embed], self.fc1.bias[:hidden]),
            linear_from(self.fc2.weight[:embed, :hidden], self.fc2.bias[:embed]),
        )


class PatchEmbed(nn.Module):
    """A ``patch x patch`` convolution of stride ``patch``, flattened to ``(B, patches, embed)``."""

    def __init__(self, proj: nn.Conv2d) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _patch_conv(in_channels: int, weight: Tensor, bias: Tensor, patch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, weight.shape[0], patch, patch, device="meta")
    conv.weight = parameter_from(weight)
    conv.bias = parameter_from(bias)
    return conv


# --------------------------------------------------------------------------- networks


class ViTSubnet(nn.Module):
    """A static ViT subnet of ordinary layers, named as AutoFormer's ``Vision_TransformerSuper``."""

    def __init__(self, patch_embed_super: PatchEmbed, cls_token: nn.Parameter,
                 pos_embed: nn.Parameter | None, blocks: list[EncoderLayer], norm: nn.LayerNorm,
                 head: nn.Linear, global_pool: bool) -> None:
        super().__init__()
        self.patch_embed_super = patch_embed_super
        self.cls_token = cls_token
        self.pos_embed = pos_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.head = head
        self.global_pool = global_pool

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed_super(x)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 1:].mean(dim=1) if self.global_pool else x[:, 0])


class ElasticViT(nn.Module):
    """The elastic ViT supernet of ``space`` (AutoFormer's parameter names and shapes).

    ``forward(x, arch)`` runs a subnet by slicing the shared weights;
    ``extract(arch)`` copies it out as a :class:`ViTSubnet`.  Neither changes
    the supernet, so both are safe to call from several threads.
    """

    def __init__(self, space: SearchSpace, dropout_rate: float = 0.0) -> None:
        super().__init__()
        layout = require_layout(space, ViTLayout, "a ViT supernet")
        self.space = space
        self.layout = layout
        self.dropout_rate = dropout_rate
        dim, patch = layout.super_embed_dim, layout.patch_size
        side = space.resolutions[0] // patch
        indices = relative_indices(side, layout.max_relative_position) if layout.relative_position else None
        # Built on meta and initialised once: torch's default init would be overwritten anyway.
        with torch.device("meta"):
            self.patch_embed_super = PatchEmbed(nn.Conv2d(layout.in_channels, dim, patch, patch))
            self.blocks = nn.ModuleList(ElasticEncoderLayer(layout, indices)
                                        for _ in range(space.stages[0].max_depth))
            self.pos_embed = nn.Parameter(torch.empty(1, side * side + 1, dim)) \
                if layout.abs_pos else None
            self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, layout.n_classes)
        self.to_empty(device="cpu")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """AutoFormer's initialisation: truncated normal (std 0.02) for linear weights,
        embeddings and tables; zero linear biases; torch's defaults for layer norms and
        the patch convolution."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=_INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.Conv2d, RelativePosition2D)):
                module.reset_parameters()
        for parameter in (self.pos_embed, self.cls_token):
            if parameter is not None:
                nn.init.trunc_normal_(parameter, std=_INIT_STD)

    def _embed(self, x: Tensor, embed: int) -> Tensor:
        """Patch tokens, class token and position embedding over the first ``embed`` channels."""
        conv = self.patch_embed_super.proj
        tokens = F.conv2d(x, conv.weight[:embed], conv.bias[:embed], stride=conv.stride)
        tokens = tokens.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token[..., :embed].expand(x.shape[0], -1, -1), tokens], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed[..., :embed]
        return x

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor:
        arch = self.space.validate(arch)
        embed = int(arch.width[0])
        x = F.dropout(self._embed(x, embed), self.dropout_rate, self.training)
        for block, heads, ratio in zip(self.blocks, arch.kernel, arch.expand):
            x = block(x, heads, ratio)
        x = _sliced_layer_norm(x, self.norm)
        x = x[:, 1:].mean(dim=1) if self.layout.global_pool else x[:, 0]
        return F.linear(x, self.head.weight[:, :embed], self.head.bias)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> ViTSubnet:
        arch = self.space.validate(arch)
        embed = int(arch.width[0])
        conv = self.patch_embed_super.proj
        patch = PatchEmbed(_patch_conv(self.layout.in_channels, conv.weight[:embed],
                                       conv.bias[:embed], self.layout.patch_size))
        pos_embed = parameter_from(self.pos_embed[..., :embed]) if self.pos_embed is not None else None
        blocks = [block.extract(embed, heads, ratio)
                  for block, heads, ratio in zip(self.blocks, arch.kernel, arch.expand)]
        head = linear_from(self.head.weight[:, :embed], self.head.bias)
        subnet = ViTSubnet(patch, parameter_from(self.cls_token[..., :embed]), pos_embed, blocks,
                           layer_norm_from(self.norm, embed), head, self.layout.global_pool)
        return subnet.eval()


# --------------------------------------------------------------------------- registry


@register_builder(ViTLayout.family)
def build(space: SearchSpace, dropout_rate: float = 0.0) -> ElasticViT:
    """The elastic network of any space with a ``ViTLayout``."""
    return ElasticViT(space, dropout_rate)


def _autoformer(size: str, n_classes: int | None) -> Supernet:
    space = autoformer_space(size, n_classes=1000 if n_classes is None else n_classes)
    return Supernet(space.name, ElasticViT(space))


@register_supernet("autoformer_tiny")
def autoformer_tiny(n_classes: int | None = None) -> Supernet:
    """AutoFormer-T: embed {192,216,240}, heads {3,4}, MLP ratio {3.5,4}, 12-14 layers."""
    return _autoformer("tiny", n_classes)


@register_supernet("autoformer_small")
def autoformer_small(n_classes: int | None = None) -> Supernet:
    """AutoFormer-S: embed {320,384,448}, heads {5,6,7}, MLP ratio {3,3.5,4}, 12-14 layers."""
    return _autoformer("small", n_classes)


@register_supernet("autoformer_base")
def autoformer_base(n_classes: int | None = None) -> Supernet:
    """AutoFormer-B: embed {528,576,624}, heads {9,10}, MLP ratio {3,3.5,4}, 14-16 layers."""
    return _autoformer("base", n_classes)
