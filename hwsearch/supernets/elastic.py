"""Elastic layers: max-size weights, sliced per call; never any "active" state.

Each layer stores the weights of its largest configuration, under exactly
the names OFA's ``Dynamic*`` layers use (``conv.conv.weight``,
``bn.bn.running_mean``, ``7to5_matrix`` ...), so OFA checkpoints load as they
are.  Unlike OFA, the choice (channels, kernel size, expand ratio) is an
argument of ``forward`` and ``extract`` instead of an ``active_*`` attribute
set beforehand: the supernet is never mutated to select a subnet, so one
supernet serves concurrent requests.

``forward(x, ...)`` computes the subnet's output from slices of the shared
weights (differentiable, so supernets can be trained with it).
``extract(...)`` returns the equivalent static layer with copies of those
slices.  In eval mode the two give the same output.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.space import ArchConfig, SearchSpace, make_divisible
from hwsearch.supernets.layers import (
    Bottleneck,
    MBConv,
    ResidualBlock,
    SqueezeExcite,
    batchnorm_from,
    build_act,
    conv2d_from,
    conv_bn_act,
    linear_from,
    same_padding,
)

__all__ = [
    "ElasticMobileNetBody",
    "active_mbconv_blocks",
    "elastic_mbconv_stages",
    "ElasticBatchNorm2d",
    "ElasticBottleneck",
    "ElasticConv2d",
    "ElasticConvLayer",
    "ElasticLinear",
    "ElasticMBConv",
    "ElasticResidual",
    "ElasticSE",
    "ElasticSeparableConv2d",
    "se_channels",
]

SE_REDUCTION = 4


def se_channels(channels: int) -> int:
    """Hidden width of the SE block on ``channels`` channels: ``make_divisible(c // 4, 8)``."""
    return make_divisible(channels // SE_REDUCTION, 8)


# --------------------------------------------------------------------------- operators


class ElasticConv2d(nn.Module):
    """A dense conv whose subnets use the first ``out`` filters over the first ``in`` channels."""

    def __init__(self, max_in: int, max_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(max_in, max_out, kernel, stride, same_padding(kernel), bias=False)

    def weight(self, out_channels: int, in_channels: int) -> Tensor:
        return self.conv.weight[:out_channels, :in_channels]

    def forward(self, x: Tensor, out_channels: int) -> Tensor:
        weight = self.weight(out_channels, x.shape[1])
        return F.conv2d(x, weight, None, self.stride, self.conv.padding)

    def extract(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        return conv2d_from(self.weight(out_channels, in_channels), stride=self.stride)


class ElasticSeparableConv2d(nn.Module):
    """A depthwise conv with elastic width and kernel size.

    A smaller kernel is the centre crop of the next larger one passed through
    a learned ``(k*k, k*k)`` transform (``7to5_matrix``, ``5to3_matrix``),
    applied step by step from the largest kernel down, as in OFA.
    """

    def __init__(self, max_channels: int, kernels: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels)))
        self.stride = stride
        max_kernel = self.kernels[-1]
        self.conv = nn.Conv2d(max_channels, max_channels, max_kernel, stride,
                              same_padding(max_kernel), groups=max_channels, bias=False)
        for small, large in zip(self.kernels, self.kernels[1:]):
            self.register_parameter(self._matrix_name(large, small),
                                    nn.Parameter(torch.eye(small * small)))

    @staticmethod
    def _matrix_name(large: int, small: int) -> str:
        return f"{large}to{small}_matrix"

    def weight(self, channels: int, kernel: int) -> Tensor:
        if kernel not in self.kernels:
            raise ValueError(f"kernel size {kernel} is not one of {list(self.kernels)}")
        weight = self.conv.weight[:channels]
        steps = list(zip(self.kernels[1:], self.kernels[:-1]))
        for large, small in reversed(steps):
            if large <= kernel:
                break
            start = (large - small) // 2
            crop = weight[:, :, start:start + small, start:start + small]
            matrix = getattr(self, self._matrix_name(large, small))
            weight = F.linear(crop.reshape(-1, small * small), matrix)
            weight = weight.view(channels, 1, small, small)
        return weight

    def forward(self, x: Tensor, kernel: int) -> Tensor:
        channels = x.shape[1]
        weight = self.weight(channels, kernel)
        return F.conv2d(x, weight, None, self.stride, same_padding(kernel), 1, channels)

    def extract(self, channels: int, kernel: int) -> nn.Conv2d:
        return conv2d_from(self.weight(channels, kernel), stride=self.stride, groups=channels)


class ElasticBatchNorm2d(nn.Module):
    """Batch norm over the first ``C`` channels of a max-size ``BatchNorm2d``.

    In training mode the running statistics of those channels are updated in
    place, as ``nn.BatchNorm2d`` would for a network of that width.
    """

    def __init__(self, max_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: Tensor) -> Tensor:
        bn, n = self.bn, x.shape[1]
        factor = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(
            x,
            bn.running_mean[:n] if bn.running_mean is not None else None,
            bn.running_var[:n] if bn.running_var is not None else None,
            bn.weight[:n],
            bn.bias[:n],
            bn.training or not bn.track_running_stats,
            factor,
            bn.eps,
        )

    def extract(self, channels: int) -> nn.BatchNorm2d:
        return batchnorm_from(self.bn, channels)


class ElasticSE(nn.Module):
    """Squeeze-and-excitation whose width follows its input; hidden width ``se_channels(C)``."""

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        hidden = se_channels(max_channels)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(max_channels, hidden, 1, bias=True)),
            ("relu", nn.ReLU()),
            ("expand", nn.Conv2d(hidden, max_channels, 1, bias=True)),
            ("h_sigmoid", nn.Hardsigmoid()),
        ]))

    def _slices(self, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        hidden = se_channels(channels)
        reduce, expand = self.fc.reduce, self.fc.expand
        return (reduce.weight[:hidden, :channels], reduce.bias[:hidden],
                expand.weight[:channels, :hidden], expand.bias[:channels])

    def forward(self, x: Tensor) -> Tensor:
        w_reduce, b_reduce, w_expand, b_expand = self._slices(x.shape[1])
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, w_reduce, b_reduce))
        y = F.hardsigmoid(F.conv2d(y, w_expand, b_expand))
        return x * y

    def extract(self, channels: int) -> SqueezeExcite:
        w_reduce, b_reduce, w_expand, b_expand = self._slices(channels)
        return SqueezeExcite(conv2d_from(w_reduce, bias=b_reduce),
                             conv2d_from(w_expand, bias=b_expand))


class ElasticLinear(nn.Module):
    """A linear layer over the first ``in`` features (a classifier after an elastic body)."""

    def __init__(self, max_in: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(max_in, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.linear.weight[:, :x.shape[1]], self.linear.bias)

    def extract(self, in_features: int) -> nn.Linear:
        return linear_from(self.linear.weight[:, :in_features], self.linear.bias)


# --------------------------------------------------------------------------- blocks


class ElasticResidual(nn.Module):
    """Wraps an elastic body; adds the input when the block has an identity shortcut."""

    def __init__(self, conv: nn.Module, residual: bool) -> None:
        super().__init__()
        self.conv = conv
        self.residual = residual

    def forward(self, x: Tensor, *choice: int | float) -> Tensor:
        y = self.conv(x, *choice)
        return x + y if self.residual else y

    def extract(self, *choice: int | float) -> ResidualBlock:
        return ResidualBlock(self.conv.extract(*choice), self.residual)


class ElasticConvLayer(nn.Module):
    """Conv + BN + activation with elastic output width (OFA ResNet's input stem)."""

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int, act: str) -> None:
        super().__init__()
        self.act_name = act
        self.kernel = kernel
        self.stride = stride
        self.conv = ElasticConv2d(max_in, max_out, kernel, stride)
        self.bn = ElasticBatchNorm2d(max_out)
        self.act = build_act(act)

    def forward(self, x: Tensor, out_channels: int) -> Tensor:
        return self.act(self.bn(self.conv(x, out_channels)))

    def extract(self, in_channels: int, out_channels: int) -> nn.Sequential:
        return conv_bn_act(self.conv.extract(in_channels, out_channels),
                           self.bn.extract(out_channels), build_act(self.act_name))


class ElasticMBConv(nn.Module):
    """MobileNetV3 inverted residual body with elastic kernel size and expand ratio.

    The hidden width is ``make_divisible(round(in_channels * expand), 8)``.
    The expansion conv exists when the largest expand ratio is not 1 (as in OFA).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernels: Sequence[int],
        expands: Sequence[float],
        stride: int,
        act: str,
        use_se: bool,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.act_name, self.use_se = stride, act, use_se
        max_mid = self.mid_channels(max(expands))
        self.inverted_bottleneck: nn.Sequential | None = None
        if max(expands) != 1:
            self.inverted_bottleneck = nn.Sequential(OrderedDict([
                ("conv", ElasticConv2d(in_channels, max_mid)),
                ("bn", ElasticBatchNorm2d(max_mid)),
                ("act", build_act(act)),
            ]))
        self.depth_conv = nn.Sequential(OrderedDict([
            ("conv", ElasticSeparableConv2d(max_mid, kernels, stride)),
            ("bn", ElasticBatchNorm2d(max_mid)),
            ("act", build_act(act)),
        ]))
        if use_se:
            self.depth_conv.add_module("se", ElasticSE(max_mid))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", ElasticConv2d(max_mid, out_channels)),
            ("bn", ElasticBatchNorm2d(out_channels)),
        ]))

    def mid_channels(self, expand: float) -> int:
        return make_divisible(round(self.in_channels * expand), 8)

    def forward(self, x: Tensor, kernel: int, expand: float) -> Tensor:
        mid = self.mid_channels(expand)
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        if ib is not None:
            x = ib.act(ib.bn(ib.conv(x, mid)))
        x = dc.act(dc.bn(dc.conv(x, kernel)))
        if self.use_se:
            x = dc.se(x)
        return pl.bn(pl.conv(x, self.out_channels))

    def extract(self, kernel: int, expand: float) -> MBConv:
        mid = self.mid_channels(expand)
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        expansion = None
        if ib is not None:
            expansion = conv_bn_act(ib.conv.extract(self.in_channels, mid), ib.bn.extract(mid),
                                    build_act(self.act_name))
        depthwise = conv_bn_act(dc.conv.extract(mid, kernel), dc.bn.extract(mid),
                                build_act(self.act_name))
        if self.use_se:
            depthwise.add_module("se", dc.se.extract(mid))
        projection = conv_bn_act(pl.conv.extract(mid, self.out_channels),
                                 pl.bn.extract(self.out_channels), None)
        return MBConv(expansion, depthwise, projection)


class ElasticBottleneck(nn.Module):
    """ResNet bottleneck with elastic input/output width and expand ratio.

    The hidden width is ``make_divisible(round(out_channels * expand), 8)``.
    Blocks that change width or stride project the shortcut with
    ``avg_pool`` (stride > 1 only) + 1x1 conv + BN, OFA's ``avgpool_conv`` mode.
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        expands: Sequence[float],
        stride: int,
        identity_shortcut: bool,
    ) -> None:
        super().__init__()
        self.stride = stride
        max_mid = make_divisible(round(max_out * max(expands)), 8)
        self.conv1 = self._conv_bn(max_in, max_mid, 1, 1, act=True)
        self.conv2 = self._conv_bn(max_mid, max_mid, 3, stride, act=True)
        self.conv3 = self._conv_bn(max_mid, max_out, 1, 1, act=False)
        self.downsample: nn.Sequential | None = None
        if not identity_shortcut:
            layers: list[tuple[str, nn.Module]] = []
            if stride > 1:
                layers.append(("avg_pool", self._avg_pool()))
            layers += [("conv", ElasticConv2d(max_in, max_out)),
                       ("bn", ElasticBatchNorm2d(max_out))]
            self.downsample = nn.Sequential(OrderedDict(layers))
        self.final_act = nn.ReLU()

    @staticmethod
    def _conv_bn(max_in: int, max_out: int, kernel: int, stride: int, act: bool) -> nn.Sequential:
        layers: list[tuple[str, nn.Module]] = [
            ("conv", ElasticConv2d(max_in, max_out, kernel, stride)),
            ("bn", ElasticBatchNorm2d(max_out)),
        ]
        if act:
            layers.append(("act", nn.ReLU()))
        return nn.Sequential(OrderedDict(layers))

    def _avg_pool(self) -> nn.AvgPool2d:
        return nn.AvgPool2d(self.stride, self.stride, 0, ceil_mode=True)

    @staticmethod
    def mid_channels(out_channels: int, expand: float) -> int:
        return make_divisible(round(out_channels * expand), 8)

    def forward(self, x: Tensor, out_channels: int, expand: float) -> Tensor:
        mid = self.mid_channels(out_channels, expand)
        if self.downsample is None:
            residual = x
        else:
            ds = self.downsample
            shortcut = ds.avg_pool(x) if self.stride > 1 else x
            residual = ds.bn(ds.conv(shortcut, out_channels))
        y = self.conv1.act(self.conv1.bn(self.conv1.conv(x, mid)))
        y = self.conv2.act(self.conv2.bn(self.conv2.conv(y, mid)))
        y = self.conv3.bn(self.conv3.conv(y, out_channels))
        return self.final_act(y + residual)

    def extract(self, in_channels: int, out_channels: int, expand: float) -> Bottleneck:
        mid = self.mid_channels(out_channels, expand)

        def static(part: nn.Sequential, cin: int, cout: int) -> nn.Sequential:
            act = nn.ReLU() if hasattr(part, "act") else None
            return conv_bn_act(part.conv.extract(cin, cout), part.bn.extract(cout), act)

        downsample = None
        if self.downsample is not None:
            downsample = static(self.downsample, in_channels, out_channels)
            if self.stride > 1:
                downsample = nn.Sequential(OrderedDict([("avg_pool", self._avg_pool()),
                                                        *downsample.named_children()]))
        return Bottleneck(static(self.conv1, in_channels, mid), static(self.conv2, mid, mid),
                          static(self.conv3, mid, out_channels), downsample)


# --------------------------------------------------------------------------- MBConv stages


def elastic_mbconv_stages(
    space: SearchSpace, in_channels: int, widths: Sequence[int], strides: Sequence[int],
    acts: Sequence[str], use_se: Sequence[bool], first_index: int,
) -> tuple[list[ElasticResidual], list[list[int]], int]:
    """The elastic MBConv blocks of every stage of ``space``, as MobileNet-like OFA nets hold them.

    Returns the blocks (``max(depth)`` per stage, a shortcut where stride is 1
    and width is kept), each stage's block indices counted from
    ``first_index`` (OFA's ``block_group_info``, which checkpoints' flat
    ``blocks.N`` keys follow), and the width after the last stage.
    """
    blocks: list[ElasticResidual] = []
    groups: list[list[int]] = []
    channels = in_channels
    for stage, width, stride, act, se in zip(space.stages, widths, strides, acts, use_se):
        start = first_index + len(blocks)
        groups.append(list(range(start, start + stage.max_depth)))
        for i in range(stage.max_depth):
            block_stride = stride if i == 0 else 1
            body = ElasticMBConv(channels, width, space.kernels, space.expands, block_stride,
                                 act, se)
            blocks.append(ElasticResidual(body, block_stride == 1 and channels == width))
            channels = width
    return blocks, groups, channels


def active_mbconv_blocks(
    blocks: nn.ModuleList, groups: Sequence[Sequence[int]], space: SearchSpace, arch: ArchConfig,
) -> Iterator[tuple[ElasticResidual, int, float]]:
    """The active elastic blocks of ``arch`` with their kernel size and expand ratio."""
    for group, active in zip(groups, space.block_ranges(arch.depths)):
        for block_index, i in zip(group, active):
            yield blocks[block_index], arch.kernel[i], arch.expand[i]


_STEM_KERNEL = 3
_FIRST_BLOCK_KERNEL = 3


class ElasticMobileNetBody(nn.Module):
    """The stem conv, OFA's fixed first block and the elastic MBConv stages of a MobileNet.

    OFA's MobileNetV3 and ProxylessNAS supernets share this body and differ
    in their activations, squeeze-excite and head; a family subclasses it,
    calls :meth:`_build_body` first (so ``first_conv`` and ``blocks`` lead the
    ``state_dict`` as in OFA's checkpoints) and adds its head.
    """

    space: SearchSpace
    block_group_info: list[list[int]]

    def _build_body(self, space: SearchSpace, in_channels: int, stem: int, stem_stride: int,
                    stem_act: str, first_block: int, first_block_act: str,
                    first_block_residual: bool, stage_widths: Sequence[int],
                    stage_strides: Sequence[int], stage_acts: Sequence[str],
                    stage_se: Sequence[bool]) -> int:
        """Create ``first_conv`` and ``blocks``; return the width after the last stage."""
        self.first_conv = conv_bn_act(
            nn.Conv2d(in_channels, stem, _STEM_KERNEL, stem_stride, _STEM_KERNEL // 2,
                      bias=False),
            nn.BatchNorm2d(stem), build_act(stem_act))
        depthwise = conv_bn_act(
            nn.Conv2d(stem, stem, _FIRST_BLOCK_KERNEL, 1, _FIRST_BLOCK_KERNEL // 2, groups=stem,
                      bias=False),
            nn.BatchNorm2d(stem), build_act(first_block_act))
        projection = conv_bn_act(nn.Conv2d(stem, first_block, 1, bias=False),
                                 nn.BatchNorm2d(first_block), None)
        first = ResidualBlock(MBConv(None, depthwise, projection), first_block_residual)
        stages, self.block_group_info, channels = elastic_mbconv_stages(
            space, first_block, stage_widths, stage_strides, stage_acts, stage_se, first_index=1)
        self.blocks = nn.ModuleList([first, *stages])
        return channels

    def _active_blocks(self, arch: ArchConfig) -> Iterator[tuple[ElasticResidual, int, float]]:
        return active_mbconv_blocks(self.blocks, self.block_group_info, self.space, arch)

    def _body(self, x: Tensor, arch: ArchConfig) -> Tensor:
        """The body's output for ``arch`` (already validated), on the shared weights."""
        x = self.blocks[0](self.first_conv(x))
        for block, kernel, expand in self._active_blocks(arch):
            x = block(x, kernel, expand)
        return x

    @torch.no_grad()
    def _extract_body(self, arch: ArchConfig) -> tuple[nn.Sequential, list[nn.Module]]:
        """The stem (a copy: it is not elastic) and ``arch``'s blocks as static modules."""
        first_conv, first_block = copy.deepcopy(nn.ModuleList([self.first_conv, self.blocks[0]]))
        blocks = [first_block] + [block.extract(kernel, expand)
                                  for block, kernel, expand in self._active_blocks(arch)]
        return first_conv, blocks
