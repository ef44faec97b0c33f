"""Import the reference Once-for-All implementation (PyPI package ``ofa``) for tests.

``ofa.utils`` imports ``torchvision`` for its data-loading helpers, and
torchvision cannot be loaded beside the CPU build of torch this project pins.
The network code never touches those helpers, so a stand-in module holding
the few names ``ofa`` reads at import time is enough.  The stand-in is only
installed when torchvision is not importable, so a real one is never shadowed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["load_ofa"]

_STUB_FLAG = "_hwsearch_stand_in"


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
    setattr(torchvision, _STUB_FLAG, True)
    sys.modules.update(
        {
            "torchvision": torchvision,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.datasets": datasets,
        }
    )


def load_ofa() -> types.SimpleNamespace | None:
    """The reference classes ``OFAMobileNetV3`` and ``OFAResNets``, or None without ``ofa``."""
    if importlib.util.find_spec("ofa") is None:
        return None
    _install_torchvision_stand_in()
    networks = importlib.import_module("ofa.imagenet_classification.elastic_nn.networks")
    return types.SimpleNamespace(
        OFAMobileNetV3=networks.OFAMobileNetV3, OFAResNets=networks.OFAResNets
    )
