"""Once-for-all supernets: a registry, elastic networks, and pure subnet extraction.

::

    from hwsearch.supernets import create_supernet
    net = create_supernet("ofa_mbv3_d234_e346_k357_w1.0", checkpoint="ofa_mbv3_w1.0.pth")
    arch = net.space.sample(0, 1)[0]
    subnet = net.extract(arch)          # static nn.Module, eval mode
    costs = net.count(arch)             # Costs(macs=..., params=...)

A supernet for a custom space (one with an ``MBv3Layout`` or ``ResNetLayout``)
is ``build_supernet(space)``; register it with :func:`register_supernet` to
make it available by name.
"""

from __future__ import annotations

from hwsearch.space import MBv3Layout, ResNetLayout, SearchSpace
from hwsearch.supernets.base import ArchLike, CheckpointError, ElasticNetwork, Supernet
from hwsearch.supernets.counting import Costs
from hwsearch.supernets.ofa_mbv3 import MobileNetV3Subnet, OFAMobileNetV3
from hwsearch.supernets.ofa_resnet import OFAResNets, ResNetSubnet
from hwsearch.supernets.registry import (
    create_supernet,
    describe_supernet,
    list_supernets,
    register_supernet,
)

__all__ = [
    "ArchLike",
    "CheckpointError",
    "Costs",
    "ElasticNetwork",
    "MobileNetV3Subnet",
    "OFAMobileNetV3",
    "OFAResNets",
    "ResNetSubnet",
    "Supernet",
    "build_supernet",
    "create_supernet",
    "describe_supernet",
    "list_supernets",
    "register_supernet",
]


def build_supernet(space: SearchSpace, *, name: str | None = None,
                   dropout_rate: float = 0.0) -> Supernet:
    """A freshly initialised supernet for ``space``, chosen by the type of ``space.layout``."""
    if isinstance(space.layout, MBv3Layout):
        module: OFAMobileNetV3 | OFAResNets = OFAMobileNetV3(space, dropout_rate)
    elif isinstance(space.layout, ResNetLayout):
        module = OFAResNets(space, dropout_rate)
    else:
        raise ValueError(f"{space.name}: no supernet family for layout "
                         f"{type(space.layout).__name__}; expected MBv3Layout or ResNetLayout")
    return Supernet(name or space.name, module)


# The built-in demo supernet registers itself; imported last because it uses the names above.
from hwsearch.demo import supernet as _demo_supernet  # noqa: E402,F401
