"""Once-for-all supernets: a registry, elastic layers, and pure subnet extraction.

::

    from hwsearch.supernets import create_supernet
    net = create_supernet("ofa_mbv3_d234_e346_k357_w1.0", checkpoint="ofa_mbv3_w1.0.pth")
    arch = net.space.sample(0, 1)[0]
    subnet = net.extract(arch)          # static nn.Module, eval mode
    costs = net.count(arch)             # Costs(macs=..., params=...)

This package is family-free: each family (its layout, cost model, native
arch form and elastic network) lives in ``hwsearch/families/<family>/`` and
registers itself here.  A supernet for a custom space of a known layout is
``build_supernet(space)``; register it with :func:`register_supernet` to make
it available by name.
"""

from __future__ import annotations

from hwsearch.supernets.base import ArchLike, CheckpointError, ElasticNetwork, Supernet
from hwsearch.supernets.counting import Costs
from hwsearch.supernets.registry import (
    build_supernet,
    create_supernet,
    describe_supernet,
    failed_plugins,
    list_supernets,
    register_builder,
    register_supernet,
)

__all__ = [
    "ArchLike",
    "CheckpointError",
    "Costs",
    "ElasticNetwork",
    "Supernet",
    "build_supernet",
    "create_supernet",
    "describe_supernet",
    "failed_plugins",
    "list_supernets",
    "register_builder",
    "register_supernet",
]
