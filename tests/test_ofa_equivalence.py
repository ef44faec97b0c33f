"""Equivalence with the reference Once-for-All implementation (PyPI ``ofa``).

The same random weights go into OFA's ``OFAMobileNetV3`` / ``OFAResNets`` and
into ours, by copying our ``state_dict`` into OFA's with ``strict=True``
(which proves the checkpoint layout is identical: every key, every shape).
Then, for sampled subnets, OFA's ``set_active_subnet(**space.to_native(arch))``
+ ``get_active_subnet()`` must give the same network as our pure
``extract(arch)``: the same state_dict, bit for bit, and the same outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _ofa_reference import assert_matches_reference, load_ofa, randomize_weights
from torch import nn

from hwsearch.space import ArchConfig
from hwsearch.supernets import create_supernet

OFA = load_ofa()
pytestmark = pytest.mark.skipif(OFA is None, reason="the reference package `ofa` is not installed")

MBV3_KWARGS = dict(dropout_rate=0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                   depth_list=[2, 3, 4])
RESNET_KWARGS = dict(dropout_rate=0, depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35],
                     width_mult_list=[0.65, 0.8, 1.0])


def _reference(name: str) -> nn.Module:
    if name == "ofa_resnet50":
        return OFA.OFAResNets(**RESNET_KWARGS)
    width = float(name.rsplit("_w", 1)[1])
    return OFA.OFAMobileNetV3(width_mult=width, **MBV3_KWARGS)


def _pair(name: str, seed: int) -> SimpleNamespace:
    ours = create_supernet(name)
    randomize_weights(ours.module, seed)
    reference = _reference(name)
    nn.Module.load_state_dict(reference, ours.module.state_dict(), strict=True)
    return SimpleNamespace(ours=ours, reference=reference.eval())


@pytest.fixture(scope="module")
def mbv3() -> SimpleNamespace:
    return _pair("ofa_mbv3_d234_e346_k357_w1.0", seed=10)


@pytest.fixture(scope="module")
def resnet() -> SimpleNamespace:
    return _pair("ofa_resnet50", seed=11)


def _assert_matches_reference(pair: SimpleNamespace, arch: ArchConfig, batch: int = 2) -> None:
    assert_matches_reference(pair, arch, batch)


@pytest.mark.parametrize("name", ["ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2",
                                  "ofa_resnet50"])
def test_state_dict_layout_is_ofas(name: str) -> None:
    ours = create_supernet(name).module.state_dict()
    reference = _reference(name).state_dict()
    assert list(ours) == list(reference)
    mismatched = [k for k in ours if ours[k].shape != reference[k].shape]
    assert not mismatched


def test_mbv3_subnets_match_ofa_at_224(mbv3: SimpleNamespace) -> None:
    space = mbv3.ours.space
    archs = space.sample(np.random.default_rng(0), 4) + [space.smallest(), space.largest()]
    for arch in archs:
        _assert_matches_reference(mbv3, dataclasses.replace(arch, resolution=224))


@pytest.mark.parametrize("resolution", [128, 172])
def test_mbv3_subnets_match_ofa_at_other_resolutions(mbv3: SimpleNamespace,
                                                     resolution: int) -> None:
    for arch in mbv3.ours.space.sample(np.random.default_rng(resolution), 2):
        _assert_matches_reference(mbv3, dataclasses.replace(arch, resolution=resolution))


def test_mbv3_w12_subnet_matches_ofa() -> None:
    pair = _pair("ofa_mbv3_d234_e346_k357_w1.2", seed=12)
    arch = pair.ours.space.sample(np.random.default_rng(3), 1)[0]
    _assert_matches_reference(pair, dataclasses.replace(arch, resolution=192), batch=1)


def test_resnet50_subnets_match_ofa(resnet: SimpleNamespace) -> None:
    space = resnet.ours.space
    archs = space.sample(np.random.default_rng(1), 3) + [space.smallest()]
    for arch, resolution in zip(archs, [128, 132, 160, 144]):
        _assert_matches_reference(resnet, dataclasses.replace(arch, resolution=resolution), batch=1)


def test_resnet50_largest_subnet_matches_ofa_at_224(resnet: SimpleNamespace) -> None:
    _assert_matches_reference(resnet, resnet.ours.space.largest(224), batch=1)


def test_ofa_checkpoint_file_loads(mbv3: SimpleNamespace, tmp_path: Path) -> None:
    """A file saved the way OFA publishes its supernets loads into a fresh supernet unchanged."""
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": mbv3.reference.state_dict()}, path)
    loaded = create_supernet("ofa_mbv3_d234_e346_k357_w1.0", checkpoint=path)
    _assert_matches_reference(SimpleNamespace(ours=loaded, reference=mbv3.reference),
                              mbv3.ours.space.largest(160), batch=1)
