"""Test helpers: the reference Once-for-All implementation, and realistic random weights.

:func:`load_ofa` imports the PyPI package ``ofa``.

``ofa.utils`` imports ``torchvision`` for its data-loading helpers, and
torchvision cannot be loaded beside the CPU build of torch this project pins.
The network code never touches those helpers, so a stand-in module holding
the few names ``ofa`` reads at import time is enough.  The stand-in is only
installed when torchvision is not importable, so a real one is never shadowed.

:func:`randomize_weights` gives a supernet weights under which equality
checks mean something: torch's default initialisation makes logits tiny,
and fresh batch-norm statistics (0, 1) and identity kernel transforms would
hide slicing mistakes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import torch
from torch import nn

__all__ = ["assert_matches_reference", "load_ofa", "randomize_weights", "reference_subnet"]

class _Unavailable:
    """Base for stand-in transform classes: ofa subclasses them but tests never call them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("torchvision stand-in: transforms are not available in tests")


def _install_torchvision_stand_in() -> None:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("RandomResizedCrop", "RandomCrop", "Resize", "Compose", "ToTensor", "Normalize"):
        setattr(transforms, name, type(name, (_Unavailable,), {}))
    for name in ("resize", "pad", "crop", "resized_crop"):
        setattr(functional, name, _Unavailable)
    datasets.ImageFolder = type("ImageFolder", (_Unavailable,), {})
    transforms.functional = functional
    torchvision.transforms = transforms
    torchvision.datasets = datasets
    sys.modules.update(
        {
            "torchvision": torchvision,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.datasets": datasets,
        }
    )


def load_ofa() -> types.SimpleNamespace | None:
    """The reference classes ``OFAMobileNetV3``, ``OFAResNets`` and ``OFAProxylessNASNets``.

    None when the package ``ofa`` is not installed.
    """
    if importlib.util.find_spec("ofa") is None:
        return None
    _install_torchvision_stand_in()
    networks = importlib.import_module("ofa.imagenet_classification.elastic_nn.networks")
    return types.SimpleNamespace(
        OFAMobileNetV3=networks.OFAMobileNetV3, OFAResNets=networks.OFAResNets,
        OFAProxylessNASNets=networks.OFAProxylessNASNets,
    )


def randomize_weights(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and BN statistic of ``module`` with varied, well-scaled values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("_matrix"):
                noise = torch.randn(tensor.shape, generator=generator)
                tensor.copy_(torch.eye(tensor.shape[0]) + 0.1 * noise)
            elif name.endswith("running_var") or (name.endswith("weight") and tensor.dim() == 1):
                tensor.copy_(0.75 + 0.5 * torch.rand(tensor.shape, generator=generator))
            elif tensor.dim() == 1:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
    return module


def reference_subnet(pair: types.SimpleNamespace, arch: Any) -> nn.Module:
    """OFA's own subnet for ``arch``: ``set_active_subnet`` on our native form, then extraction."""
    pair.reference.set_active_subnet(**pair.ours.space.to_native(arch))
    return pair.reference.get_active_subnet().eval()


def assert_matches_reference(pair: types.SimpleNamespace, arch: Any, batch: int) -> None:
    """Our extraction equals OFA's subnet (every tensor, outputs), and both forwards agree.

    ``pair`` holds ``ours`` (a :class:`~hwsearch.supernets.Supernet`) and
    ``reference`` (OFA's supernet with the same weights).
    """
    ours = pair.ours
    expected_subnet = reference_subnet(pair, arch)
    subnet = ours.extract(arch)

    expected_state, state = expected_subnet.state_dict(), subnet.state_dict()
    assert list(state) == list(expected_state)
    different = [k for k in state if not torch.equal(state[k], expected_state[k])]
    assert not different, f"{arch.key()}: tensors differ from OFA's subnet: {different[:5]}"

    x = torch.randn(batch, 3, arch.resolution, arch.resolution)
    with torch.no_grad():
        expected = expected_subnet(x)
        scale = float(expected.abs().max())
        tolerance = {"rtol": 1e-4, "atol": 1e-5 * max(scale, 1.0)}
        torch.testing.assert_close(subnet(x), expected, **tolerance)
        torch.testing.assert_close(ours.forward(x, arch), pair.reference(x), **tolerance)
        torch.testing.assert_close(ours.forward(x, arch), subnet(x), **tolerance)
    assert scale > 0.1, "weights too small for a meaningful comparison"
