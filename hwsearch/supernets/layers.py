"""Static building blocks of extracted subnets, and constructors that fill them from tensors.

Extracted subnets are made of ordinary torch layers (``Conv2d``,
``BatchNorm2d``, ``Linear``, ``Hardswish`` ...) so they export to plain ONNX
and run anywhere.  Module names follow OFA's static networks
(``first_conv.conv``, ``blocks.3.conv.depth_conv.se.fc.reduce`` ...), so an
extracted subnet's ``state_dict`` has the same keys as the subnet OFA's
``get_active_subnet()`` builds.

The ``*_from`` constructors build layers on the ``meta`` device and then
assign the given tensors, which skips the random initialisation that would
otherwise dominate extraction time.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

__all__ = [
    "Bottleneck",
    "MBConv",
    "ResidualBlock",
    "SqueezeExcite",
    "batchnorm_from",
    "build_act",
    "conv2d_from",
    "conv_bn_act",
    "layer_norm_from",
    "linear_from",
    "parameter_from",
    "same_padding",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "h_swish": nn.Hardswish,
    "h_sigmoid": nn.Hardsigmoid,
}


def build_act(name: str) -> nn.Module:
    """An activation layer from OFA's activation names (``relu``, ``h_swish`` ...)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        choices = sorted(_ACTIVATIONS)
        raise ValueError(f"unknown activation {name!r}; choose from {choices}") from None


def same_padding(kernel: int) -> int:
    """Padding that keeps the spatial size at stride 1 (OFA only uses odd kernels)."""
    if kernel % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {kernel}")
    return kernel // 2


def parameter_from(tensor: Tensor) -> nn.Parameter:
    """A parameter holding a copy of ``tensor`` (a slice of a supernet's weight, detached)."""
    return nn.Parameter(tensor.detach().clone())


def conv2d_from(
    weight: Tensor, *, stride: int = 1, groups: int = 1, bias: Tensor | None = None
) -> nn.Conv2d:
    """A ``Conv2d`` with 'same' padding holding a copy of ``weight`` (and ``bias``)."""
    out_channels, in_per_group, kernel, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_channels, kernel, stride, same_padding(kernel),
                     groups=groups, bias=bias is not None, device="meta")
    conv.weight = parameter_from(weight)
    if bias is not None:
        conv.bias = parameter_from(bias)
    return conv


def batchnorm_from(source: nn.BatchNorm2d, channels: int) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` over the first ``channels`` channels of ``source`` (affine and stats)."""
    bn = nn.BatchNorm2d(channels, eps=source.eps, momentum=source.momentum, device="meta")
    bn.weight = parameter_from(source.weight[:channels])
    bn.bias = parameter_from(source.bias[:channels])
    bn.running_mean = source.running_mean[:channels].clone()
    bn.running_var = source.running_var[:channels].clone()
    bn.num_batches_tracked = source.num_batches_tracked.clone()
    return bn


def layer_norm_from(source: nn.LayerNorm, channels: int) -> nn.LayerNorm:
    """A ``LayerNorm`` over the first ``channels`` channels of ``source``."""
    norm = nn.LayerNorm(channels, eps=source.eps, device="meta")
    norm.weight = parameter_from(source.weight[:channels])
    norm.bias = parameter_from(source.bias[:channels])
    return norm


def linear_from(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A ``Linear`` holding a copy of ``weight`` (and ``bias``)."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = parameter_from(weight)
    if bias is not None:
        linear.bias = parameter_from(bias)
    return linear


def conv_bn_act(conv: nn.Module, bn: nn.Module | None, act: nn.Module | None) -> nn.Sequential:
    """OFA's ``ConvLayer`` layout: submodules ``conv``, ``bn``, ``act`` (absent ones omitted)."""
    parts = OrderedDict([("conv", conv), ("bn", bn), ("act", act)])
    return nn.Sequential(OrderedDict((k, v) for k, v in parts.items() if v is not None))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard sigmoid gate (OFA's ``SEModule``)."""

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d) -> None:
        super().__init__()
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", reduce),
            ("relu", nn.ReLU()),
            ("expand", expand),
            ("h_sigmoid", nn.Hardsigmoid()),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConv(nn.Module):
    """Inverted residual body: optional 1x1 expansion, depthwise conv (+ SE), 1x1 projection."""

    def __init__(
        self,
        inverted_bottleneck: nn.Sequential | None,
        depth_conv: nn.Sequential,
        point_linear: nn.Sequential,
    ) -> None:
        super().__init__()
        self.inverted_bottleneck = inverted_bottleneck
        self.depth_conv = depth_conv
        self.point_linear = point_linear

    def forward(self, x: Tensor) -> Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    """``conv(x)``, plus ``x`` when the block has an identity shortcut."""

    def __init__(self, conv: nn.Module, residual: bool) -> None:
        super().__init__()
        self.conv = conv
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1, 3x3 (strided), 1x1, plus an identity or projected shortcut."""

    def __init__(
        self,
        conv1: nn.Sequential,
        conv2: nn.Sequential,
        conv3: nn.Sequential,
        downsample: nn.Sequential | None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.conv3 = conv3
        self.downsample = downsample
        self.final_act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.final_act(self.conv3(self.conv2(self.conv1(x))) + residual)
