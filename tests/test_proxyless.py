"""OFA's ProxylessNAS supernet (w1.3) as a family plug-in, checked against the reference ``ofa``.

The same random weights go into OFA's ``OFAProxylessNASNets`` and into ours
(our ``state_dict`` copied in with ``strict=True``: same keys, same shapes);
then OFA's ``set_active_subnet(**space.to_native(arch))`` +
``get_active_subnet()`` must give the network our pure ``extract(arch)``
gives, tensor for tensor and output for output.  The cost model is checked
against forward hooks on extracted subnets and against OFA's own FLOP
counter.  Resolutions stay small (128-160 px) and batches at 1-2: the
largest subnet at 224 px is a GMAC.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _ofa_reference import assert_matches_reference, load_ofa, randomize_weights, reference_subnet
from torch import nn

from hwsearch.export import export_subnet
from hwsearch.families.proxyless.layout import ProxylessLayout
from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace, StageSpec
from hwsearch.supernets import Supernet, build_supernet, create_supernet
from hwsearch.supernets.counting import measure
from predictors.features import ArchFeaturizer

OFA = load_ofa()
pytestmark = pytest.mark.skipif(OFA is None, reason="the reference package `ofa` is not installed")

NAME = "ofa_proxyless_d234_e346_k357_w1.3"
OFA_KWARGS = {"dropout_rate": 0, "width_mult": 1.3, "ks_list": [3, 5, 7],
              "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}


def _reference() -> nn.Module:
    return OFA.OFAProxylessNASNets(**OFA_KWARGS)


@pytest.fixture(scope="module")
def pair() -> SimpleNamespace:
    ours = create_supernet(NAME)
    randomize_weights(ours.module, seed=20)
    reference = _reference()
    nn.Module.load_state_dict(reference, ours.module.state_dict(), strict=True)
    return SimpleNamespace(ours=ours, reference=reference.eval())


def _at(arch: ArchConfig, resolution: int) -> ArchConfig:
    return dataclasses.replace(arch, resolution=resolution)


def _archs(space: SearchSpace, seed: int, n: int, resolution: int) -> list[ArchConfig]:
    """``n`` sampled subnets plus the smallest and the largest, all at ``resolution``."""
    sampled = space.sample(np.random.default_rng(seed), n)
    return [_at(a, resolution) for a in sampled + [space.smallest(), space.largest()]]


def _assert_matches_reference(pair: SimpleNamespace, arch: ArchConfig, batch: int = 1) -> None:
    assert_matches_reference(pair, arch, batch)


# --------------------------------------------------------------------------- layout


def test_state_dict_and_bn_settings_are_ofas() -> None:
    ours, reference = create_supernet(NAME).module, _reference()
    state, expected = ours.state_dict(), reference.state_dict()
    assert list(state) == list(expected)
    assert not [k for k in state if state[k].shape != expected[k].shape]
    # OFA builds ProxylessNAS with eps 1e-3, which no checkpoint carries.
    eps = {m.eps for m in ours.modules() if isinstance(m, nn.BatchNorm2d)}
    assert eps == {m.eps for m in reference.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert ours.block_group_info == reference.block_group_info


def test_layout_is_proxylessnas_at_width_1_3() -> None:
    space = create_supernet(NAME).space
    layout = space.layout
    assert isinstance(layout, ProxylessLayout)
    assert (layout.stem, layout.first_block, layout.feature) == (40, 24, 1664)
    assert layout.stage_widths == (32, 56, 104, 128, 248, 416)
    assert [s.depths for s in space.stages] == [(2, 3, 4)] * 5 + [(1,)]
    assert space.n_blocks == 21  # OFA's ks and e lists: 5 stages of 4 slots, then 1


# --------------------------------------------------------------------------- equivalence


def test_subnets_match_ofa(pair: SimpleNamespace) -> None:
    for arch in _archs(pair.ours.space, seed=0, n=2, resolution=128):
        _assert_matches_reference(pair, arch)


def test_subnet_matches_ofa_at_another_resolution_and_batch(pair: SimpleNamespace) -> None:
    arch = _at(pair.ours.space.sample(np.random.default_rng(1), 1)[0], 160)
    _assert_matches_reference(pair, arch, batch=2)


def test_ofa_checkpoint_files_load(pair: SimpleNamespace, tmp_path: Path) -> None:
    """Files saved the way OFA publishes supernets (also with its older key names) load as is."""
    state = pair.reference.state_dict()
    legacy = OrderedDict((k.replace(".conv.", ".mobile_inverted_conv.", 1)
                          if k.startswith("blocks.") else k, v) for k, v in state.items())
    arch = _at(pair.ours.space.sample(np.random.default_rng(2), 1)[0], 128)
    for i, saved in enumerate((state, legacy)):
        path = tmp_path / f"{NAME}.{i}"
        torch.save({"state_dict": saved}, path)
        loaded = create_supernet(NAME, checkpoint=path)
        _assert_matches_reference(SimpleNamespace(ours=loaded, reference=pair.reference), arch)


# --------------------------------------------------------------------------- costs


def test_count_matches_hooks_and_ofas_flop_counter(pair: SimpleNamespace) -> None:
    from ofa.utils import count_net_flops

    net: Supernet = pair.ours
    # 132 px: 33x33, 17x17 and 9x9 maps exercise the cost model's ceil division.
    for arch in _archs(net.space, seed=3, n=2, resolution=132):
        subnet = net.extract(arch)
        _, hooked = measure(subnet, torch.zeros(net.input_shape(arch)))
        counted = net.count(arch)
        assert counted == hooked
        assert hooked.params == sum(p.numel() for p in subnet.parameters())
        ofa_flops = count_net_flops(reference_subnet(pair, arch), net.input_shape(arch))
        assert counted.macs == pytest.approx(ofa_flops, rel=1e-6)
    largest, smallest = (net.count(net.space.largest(224)), net.count(net.space.smallest(224)))
    assert smallest.macs < largest.macs / 3 and smallest.params < largest.params / 2


def test_featurizer_features_and_macs(pair: SimpleNamespace) -> None:
    net: Supernet = pair.ours
    archs = _archs(net.space, seed=4, n=3, resolution=160)
    featurizer = ArchFeaturizer(net.space)
    X = net.space.encode_many(archs)
    features = featurizer.transform(X)
    assert features.shape == (len(archs), len(featurizer.names))
    assert np.isfinite(features).all()
    assert "s5_macs_pw" in featurizer.cost_names and "head_macs_conv" in featurizer.cost_names
    np.testing.assert_array_equal(featurizer.macs(X), [net.count(a).macs for a in archs])


# --------------------------------------------------------------------------- native form


def test_native_form_round_trips(pair: SimpleNamespace) -> None:
    space = pair.ours.space
    archs = space.sample(np.random.default_rng(5), 8) + [space.smallest(), space.largest()]
    for arch in archs:
        native = space.to_native(arch)
        assert len(native["ks"]) == len(native["e"]) == 21 and native["d"][-1] == 1
        assert space.from_native(native) == arch
        assert space.from_dict(native) == arch
        assert space.from_dict(arch.to_dict()) == arch
    batch = space.decode_batch(space.encode_many(archs))
    assert batch.native() == [space.to_native(a) for a in archs]


def test_native_depths_are_read_as_ofa_runs_them(pair: SimpleNamespace) -> None:
    """OFA runs ``min(d, blocks)`` per stage: any last-stage depth >= 1 means its one block."""
    space = pair.ours.space
    arch = space.sample(np.random.default_rng(6), 1)[0]
    native = space.to_native(arch)
    # OFA's arch encoder writes 0 for switched-off slots and any depth for the last stage.
    encoder_style = {**native, "d": native["d"][:-1] + [3],
                     "ks": [k if on else 0 for k, on in zip(native["ks"], _active(space, arch))]}
    assert space.from_native(encoder_style) == arch
    scalar = space.from_native({"ks": 5, "e": 4, "d": 4, "r": 160})
    assert scalar.depths == (4, 4, 4, 4, 4, 1) and set(scalar.kernel) == {5}
    pair.reference.set_active_subnet(ks=5, e=4, d=4)
    assert pair.reference.runtime_depth == list(scalar.depths)
    for bad, message in (([2, 2, 2, 2, 2, 0], r"depths\[5\]=0"),
                         ([5, 2, 2, 2, 2, 1], r"depths\[0\]=5"),
                         ([2, 2, 2, 2, 2], r"d must be a list of 6 values")):
        with pytest.raises(ArchValidationError, match=message):
            space.from_native({**native, "d": bad})


def _active(space: SearchSpace, arch: ArchConfig) -> list[bool]:
    return space.active_block_mask(space.encode(arch)[None, :])[0].tolist()


# --------------------------------------------------------------------------- export, other spaces


def test_export_subnet_verifies_with_onnxruntime(pair: SimpleNamespace, tmp_path: Path) -> None:
    net: Supernet = pair.ours
    arch = _at(net.space.sample(np.random.default_rng(7), 1)[0], 128)
    report = export_subnet(net, arch, tmp_path / "proxyless.onnx", batch=2)
    with torch.no_grad():
        scale = float(net.forward(torch.randn(2, 3, 128, 128), arch).abs().max())
    assert scale > 0.1
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4 * max(1.0, scale)
    assert report.input_shape == (2, 3, 128, 128)
    assert (report.macs, report.params) == (net.count(arch).macs, net.count(arch).params)


def test_custom_proxyless_space_builds_counts_and_trains() -> None:
    """Any space of the layout builds through the registry: grey 32x32 images, 3 stages."""
    layout = ProxylessLayout(stem=8, first_block=8, stage_widths=(16, 24, 32),
                             stage_strides=(2, 2, 1), feature=64, n_classes=10, in_channels=1,
                             stem_stride=1)
    space = SearchSpace(name="tiny_proxyless", resolutions=(32,),
                        stages=(StageSpec((1, 2)), StageSpec((1, 2)), StageSpec((1,))),
                        kernels=(3, 5), expands=(2, 3), layout=layout)
    net = build_supernet(space)
    x = torch.randn(3, 1, 32, 32)
    for arch in space.sample(np.random.default_rng(8), 4):
        subnet = net.extract(arch)
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), net.forward(x, arch), rtol=1e-5, atol=1e-5)
        assert net.count(arch) == measure(subnet, x)[1]
    module = net.module.train()
    arch = space.arch(resolution=32, depths=[2, 2, 1], kernel=[3, 5, 5, 5, 3],
                      expand=[3, 2, 3, 2, 3])
    nn.functional.cross_entropy(module(x, arch), torch.tensor([0, 1, 2])).backward()
    for block in (1, 5):  # kernel 3 in the first stage and in the single-block last stage
        assert module.blocks[block].conv.depth_conv.conv.get_parameter("5to3_matrix").grad \
            .abs().sum() > 0
    assert module.blocks[2].conv.depth_conv.conv.conv.weight.grad is not None
    assert module.feature_mix_layer.conv.weight.grad.abs().sum() > 0
