"""Supernets: registry, pure and thread-safe extraction, counting, checkpoints, BN recalibration.

Everything runs on real OFA-sized supernets (MobileNetV3 w1.0 at 224 px,
ResNet50 at small resolutions to keep the suite fast on two cores) with
random weights; layout compatibility with OFA itself is in
``test_ofa_equivalence.py``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from _ofa_reference import randomize_weights
from torch import nn

from hwsearch.bn import recalibrate_bn
from hwsearch.families.ofa_mbv3.layout import MBv3Layout, ofa_mbv3_space
from hwsearch.families.ofa_mbv3.supernet import OFAMobileNetV3
from hwsearch.space import ArchConfig, SearchSpace, StageSpec
from hwsearch.supernets import (
    CheckpointError,
    Costs,
    Supernet,
    build_supernet,
    create_supernet,
    describe_supernet,
    list_supernets,
    register_supernet,
)
from hwsearch.supernets.base import load_state
from hwsearch.supernets.counting import measure

MBV3 = "ofa_mbv3_d234_e346_k357_w1.0"
RESNET = "ofa_resnet50"

# Leaves an extracted subnet may contain: ordinary torch layers only.
ORDINARY_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.Hardswish, nn.Hardsigmoid,
                   nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


@pytest.fixture(scope="module")
def mbv3() -> Supernet:
    net = create_supernet(MBV3)
    randomize_weights(net.module, seed=1)
    return net


@pytest.fixture(scope="module")
def resnet() -> Supernet:
    net = create_supernet(RESNET)
    randomize_weights(net.module, seed=2)
    return net


@dataclasses.dataclass
class TrainingConfig:
    """An object a careless checkpoint might pickle next to its weights."""

    lr: float = 0.1


def _at(arch: ArchConfig, resolution: int) -> ArchConfig:
    return dataclasses.replace(arch, resolution=resolution)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert state.keys() == snapshot.keys()
    changed = [k for k in state if not torch.equal(state[k], snapshot[k])]
    assert not changed, f"supernet tensors changed: {changed[:5]}"


# --------------------------------------------------------------------------- registry


def test_registry_lists_builtin_supernets() -> None:
    names = list_supernets()
    assert {MBV3, "ofa_mbv3_d234_e346_k357_w1.2", RESNET} <= set(names)
    assert "width 1.2" in describe_supernet("ofa_mbv3_d234_e346_k357_w1.2")
    with pytest.raises(ValueError, match="unknown supernet 'nope'.*ofa_resnet50"):
        create_supernet("nope")


def test_register_supernet_from_another_module() -> None:
    space = _tiny_space()

    @register_supernet("test_tiny_mbv3")
    def tiny(n_classes: int | None = None) -> Supernet:
        """A tiny test supernet."""
        return build_supernet(space)

    assert "test_tiny_mbv3" in list_supernets()
    assert describe_supernet("test_tiny_mbv3") == "A tiny test supernet."
    assert create_supernet("test_tiny_mbv3").space is space
    with pytest.raises(ValueError, match="already registered"):
        register_supernet("test_tiny_mbv3")(lambda n_classes=None: build_supernet(space))


def test_a_second_builder_for_a_family_is_refused_not_put_in_the_first_ones_place() -> None:
    """A layout subclass inherits its parent's ``family``: its builder, registered for it, silently replaced
    MobileNetV3's, and the service's tiny-mbv3 was built as another network."""
    from dataclasses import dataclass

    from hwsearch.families.ofa_mbv3.layout import MBv3Layout
    from hwsearch.supernets import register_builder

    @dataclass(frozen=True)
    class MyMBv3Layout(MBv3Layout):
        pass

    def my_builder(space, dropout_rate=0.0):  # never called: refused
        raise AssertionError("built by the second builder")

    with pytest.raises(ValueError, match=r"layout family 'mbv3' is built by hwsearch\.families\.ofa_mbv3\.supernet\."
                                         r".* already: give your layout a family of its own"):
        register_builder(MyMBv3Layout.family)(my_builder)
    net = create_supernet(MBV3, n_classes=10)
    assert net.extract(net.space.smallest())(torch.zeros(1, 3, 128, 128)).shape == (1, 10)


def test_a_supernet_without_a_checkpoint_is_the_same_network_in_every_process() -> None:
    """Random initial weights differed per process: two exports of one subnet wrote different files, and a
    second search reused accuracies of another random network. The caller's random stream is left alone."""
    import hashlib
    import subprocess
    import sys

    digest = ("import hashlib, torch\n"
              "from hwsearch.supernets import create_supernet\n"
              "net = create_supernet('ofa_mbv3_d234_e346_k357_w1.0', n_classes=10)\n"
              "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in net.module.state_dict().values()))"
              ".hexdigest())")
    elsewhere = subprocess.run([sys.executable, "-c", digest], capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    net = create_supernet(MBV3, n_classes=10)
    assert torch.equal(torch.rand(3), expected_next), "building drew nothing from the caller's stream"
    here = hashlib.sha256(b"".join(t.numpy().tobytes() for t in net.module.state_dict().values())).hexdigest()
    assert here == elsewhere.stdout.strip()
    other = create_supernet(MBV3, n_classes=100).module.state_dict()
    assert not torch.equal(other["first_conv.conv.weight"], net.module.state_dict()["first_conv.conv.weight"]), \
        "another network draws from another seed"


def test_n_classes_changes_only_the_head() -> None:
    net = create_supernet(MBV3, n_classes=10)
    assert net.module.classifier.linear.out_features == 10
    assert net.extract(net.space.smallest())(torch.zeros(1, 3, 128, 128)).shape == (1, 10)


@pytest.mark.parametrize("name", ["demo_mbv3_mnist", "demo_vit_mnist"])
@pytest.mark.parametrize("n_classes", [0, -1, 2.5, "10", True])
def test_create_supernet_refuses_a_head_size_that_is_not_a_positive_whole_number(name: str,
                                                                                 n_classes: object) -> None:
    """-1, 2.5 and "10" failed inside torch; 0 built a network whose output had no column."""
    with pytest.raises(ValueError, match="n_classes"):
        create_supernet(name, n_classes=n_classes)


def test_create_supernet_takes_a_numpy_head_size_as_an_int() -> None:
    net = create_supernet("demo_mbv3_mnist", n_classes=np.int64(3))
    assert net.space.layout.n_classes == 3 and type(net.space.layout.n_classes) is int


# --------------------------------------------------------------------------- extraction


def test_extract_builds_ordinary_layers_in_eval_mode(mbv3: Supernet) -> None:
    subnet = mbv3.extract(mbv3.space.largest())
    assert not subnet.training
    leaves = [m for m in subnet.modules() if not list(m.children())]
    odd = {type(m).__name__ for m in leaves if not isinstance(m, ORDINARY_LEAVES)}
    assert not odd, f"extracted subnet holds non-standard layers: {odd}"
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7) for m in leaves) == 20


def test_extracted_weights_are_copies(mbv3: Supernet) -> None:
    arch = mbv3.space.largest()
    subnet = mbv3.extract(arch)
    with torch.no_grad():
        subnet.first_conv.conv.weight.add_(1.0)
    fresh = mbv3.extract(arch)
    assert not torch.equal(fresh.first_conv.conv.weight, subnet.first_conv.conv.weight)
    shared = {p.data_ptr() for p in mbv3.module.parameters()}
    assert not shared & {p.data_ptr() for p in fresh.parameters()}


def test_mbv3_supernet_forward_equals_extracted_subnet(mbv3: Supernet) -> None:
    space = mbv3.space
    archs = space.sample(np.random.default_rng(0), 3) + [space.smallest(), space.largest()]
    x = torch.randn(2, 3, 224, 224)
    for arch in (_at(a, 224) for a in archs):
        subnet = mbv3.extract(arch)
        with torch.no_grad():
            expected = mbv3.forward(x, arch)
            actual = subnet(x)
        assert expected.shape == (2, 1000)
        assert expected.abs().max() > 0.1, "weights too small for a meaningful comparison"
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_resnet_supernet_forward_equals_extracted_subnet(resnet: Supernet) -> None:
    space = resnet.space
    archs = space.sample(np.random.default_rng(1), 2) + [space.smallest(), space.largest()]
    before = _snapshot(resnet.module)
    for arch in (_at(a, 132) for a in archs):  # 132: odd feature maps exercise ceil-mode pooling
        x = torch.randn(1, 3, 132, 132)
        with torch.no_grad():
            expected = resnet.forward(x, arch)
            actual = resnet.extract(arch)(x)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    _assert_same_state(resnet.module, before)


def test_arch_forms_are_interchangeable(mbv3: Supernet, resnet: Supernet) -> None:
    for net in (mbv3, resnet):
        arch = _at(net.space.sample(np.random.default_rng(5), 1)[0], 128)
        x = torch.randn(1, 3, 128, 128)
        with torch.no_grad():
            outputs = [net.extract(form)(x) for form in
                       (arch, arch.to_dict(), net.space.to_native(arch))]
        for output in outputs[1:]:
            torch.testing.assert_close(output, outputs[0], rtol=0, atol=0)
        assert net.input_shape(net.space.to_native(arch), batch=4) == (4, 3, 128, 128)


def test_extract_and_forward_are_pure_and_thread_safe(mbv3: Supernet) -> None:
    """Concurrent extracts and forwards match sequential ones and leave the supernet as it was."""
    archs = mbv3.space.sample(np.random.default_rng(2), 6)
    x = torch.randn(1, 3, 224, 224)
    before = _snapshot(mbv3.module)
    attributes = dict(vars(mbv3.module))

    def run(arch: ArchConfig) -> tuple[torch.Tensor, torch.Tensor]:
        arch = _at(arch, 224)
        with torch.no_grad():
            return mbv3.extract(arch)(x), mbv3.forward(x, arch)

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, archs * 2))
    sequential = [run(arch) for arch in archs]
    for (extracted, forward), (extracted_seq, forward_seq) in zip(concurrent, sequential * 2):
        torch.testing.assert_close(extracted, extracted_seq, rtol=0, atol=0)
        torch.testing.assert_close(forward, forward_seq, rtol=0, atol=0)
        torch.testing.assert_close(forward, extracted, rtol=1e-5, atol=1e-5)
    _assert_same_state(mbv3.module, before)
    assert vars(mbv3.module).keys() == attributes.keys()
    assert not any(name.startswith("active") for m in mbv3.module.modules() for name in vars(m))


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("name, resolution", [(MBV3, 224), ("ofa_mbv3_d234_e346_k357_w1.2", 160),
                                              (RESNET, 128)])
def test_count_matches_hooks_on_the_extracted_subnet(name: str, resolution: int) -> None:
    net = create_supernet(name)
    space = net.space
    archs = space.sample(np.random.default_rng(3), 4) + [space.smallest(), space.largest()]
    for arch in (_at(a, resolution) for a in archs):
        subnet = net.extract(arch)
        _, hooked = measure(subnet, torch.zeros(net.input_shape(arch)))
        assert net.count(arch) == hooked
        assert hooked.params == sum(p.numel() for p in subnet.parameters())


def test_count_known_values() -> None:
    """Sanity anchors: OFA reports ~ 0.6 GMACs for its largest MobileNetV3 subnet at 224 px."""
    mbv3 = create_supernet(MBV3)
    largest = mbv3.count(mbv3.space.largest(224))
    smallest = mbv3.count(mbv3.space.smallest(224))
    assert 500e6 < largest.macs < 700e6 and 6e6 < largest.params < 9e6
    assert smallest.macs < largest.macs / 3
    assert isinstance(largest, Costs) and largest.to_dict() == {"macs": largest.macs,
                                                                 "params": largest.params}


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_bare_and_wrapped(mbv3: Supernet, tmp_path: Path) -> None:
    arch = _at(mbv3.space.sample(np.random.default_rng(4), 1)[0], 160)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        expected = mbv3.extract(arch)(x)
    bare, wrapped = tmp_path / "bare.pth", tmp_path / "wrapped.pth"
    torch.save(mbv3.module.state_dict(), bare)
    torch.save({"state_dict": mbv3.module.state_dict(), "epoch": 180}, wrapped)
    for path in (bare, wrapped):
        loaded = create_supernet(MBV3, checkpoint=path)
        with torch.no_grad():
            torch.testing.assert_close(loaded.extract(arch)(x), expected, rtol=0, atol=0)


def test_checkpoint_with_legacy_ofa_key_names_loads(mbv3: Supernet, tmp_path: Path) -> None:
    legacy = OrderedDict((k.replace(".conv.", ".mobile_inverted_conv.", 1)
                          if k.startswith("blocks.") else k, v)
                         for k, v in mbv3.module.state_dict().items())
    assert any(".mobile_inverted_conv." in k for k in legacy)
    torch.save({"state_dict": legacy}, tmp_path / "legacy.pth")
    loaded = create_supernet(MBV3, checkpoint=tmp_path / "legacy.pth")
    _assert_same_state(loaded.module, _snapshot(mbv3.module))


def test_checkpoint_errors_name_the_keys(mbv3: Supernet, tmp_path: Path) -> None:
    net = create_supernet(MBV3)
    state = mbv3.module.state_dict()
    missing = dict(state)
    del missing["blocks.5.conv.depth_conv.conv.7to5_matrix"]
    unexpected = {**state, "blocks.99.conv.weight": torch.zeros(1)}
    mismatched = {**state, "classifier.linear.weight": torch.zeros(10, 1280)}
    cases = [
        (missing, r"1 missing keys: blocks\.5\.conv\.depth_conv\.conv\.7to5_matrix"),
        (unexpected, r"1 unexpected keys: blocks\.99\.conv\.weight"),
        (mismatched,
         r"classifier\.linear\.weight \(checkpoint \(10, 1280\), supernet \(1000, 1280\)\)"),
    ]
    for i, (state_dict, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.pth"
        torch.save(state_dict, path)
        with pytest.raises(CheckpointError, match=message):
            net.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        net.load_checkpoint(tmp_path / "absent.pth")


def test_checkpoint_keys_that_are_not_strings_are_refused(tmp_path: Path) -> None:
    """``{1: t, "a": t}`` loads weights-only, and its int key broke the legacy-key renaming."""
    net = create_supernet(MBV3)
    path = tmp_path / "intkey.pth"
    torch.save({"state_dict": {1: torch.zeros(1), (2, 3): torch.zeros(1), "a": torch.zeros(1)}}, path)
    refused = r"intkey\.pth: state dict keys must be strings .* 2 other keys: 1, \(2, 3\)"
    with pytest.raises(CheckpointError, match=refused):
        net.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="given: state dict keys must be strings"):
        load_state(net.module, {**net.module.state_dict(), 7: torch.zeros(1)}, source="given")


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "config": TrainingConfig()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        create_supernet(MBV3, checkpoint=path)


# --------------------------------------------------------------------------- custom spaces


def _tiny_space() -> SearchSpace:
    """A MobileNetV3 space for 28x28 grey digits: 3 stages, smaller choice sets."""
    layout = MBv3Layout(stem=8, first_block=8, stage_widths=(16, 24, 32),
                        stage_strides=(2, 2, 1), stage_acts=("relu", "h_swish", "h_swish"),
                        stage_se=(False, True, True), final_expand=64, feature=128,
                        n_classes=10, in_channels=1, stem_stride=1)
    return SearchSpace(name="tiny_digits", resolutions=(28,),
                       stages=tuple(StageSpec((1, 2)) for _ in range(3)),
                       kernels=(3, 5), expands=(2, 3), layout=layout)


def test_custom_mbv3_space_builds_extracts_and_trains() -> None:
    space = _tiny_space()
    module = OFAMobileNetV3(space)
    net = Supernet(space.name, module)
    assert "blocks.1.conv.depth_conv.conv.5to3_matrix" in module.state_dict()
    archs = space.sample(np.random.default_rng(6), 4)
    x = torch.randn(3, 1, 28, 28)
    for arch in archs:
        subnet = net.extract(arch)
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), net.forward(x, arch), rtol=1e-5, atol=1e-5)
        _, hooked = measure(subnet, x)
        assert net.count(arch) == hooked
    module.train()
    arch = space.arch(resolution=28, depths=[2, 1, 1], kernel=[3, 5, 3, 3], expand=[2, 3, 3, 2])
    loss = nn.functional.cross_entropy(module(x, arch), torch.tensor([0, 1, 2]))
    loss.backward()
    assert module.blocks[1].conv.depth_conv.conv.get_parameter("5to3_matrix").grad.abs().sum() > 0
    assert module.blocks[2].conv.depth_conv.conv.conv.weight.grad is not None
    module.eval()


def test_wrong_layout_is_rejected() -> None:
    space = dataclasses.replace(ofa_mbv3_space(), layout=None)
    with pytest.raises(ValueError, match="needs an MBv3Layout"):
        OFAMobileNetV3(space)
    with pytest.raises(ValueError, match="no supernet family"):
        build_supernet(space)


# --------------------------------------------------------------------------- BN recalibration


def test_recalibrate_bn_sets_statistics_from_the_batches(mbv3: Supernet) -> None:
    arch = mbv3.space.smallest(128)
    subnet = mbv3.extract(arch)
    batches = [torch.randn(4, 3, 128, 128) * 2 + 1 for _ in range(3)]
    first_bn = subnet.first_conv.bn
    with torch.no_grad():
        conv_out = [subnet.first_conv.conv(b) for b in batches]
    expected_mean = torch.stack([c.mean((0, 2, 3)) for c in conv_out]).mean(0)
    expected_var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in conv_out]).mean(0)
    momentum = first_bn.momentum

    returned = recalibrate_bn(subnet, ((b, torch.zeros(4)) for b in batches))

    assert returned is subnet and not subnet.training and first_bn.momentum == momentum
    torch.testing.assert_close(first_bn.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first_bn.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert int(first_bn.num_batches_tracked) == 3
    deeper = subnet.blocks[-1].conv.point_linear.bn
    inherited = mbv3.extract(arch).blocks[-1].conv.point_linear.bn
    assert not torch.equal(deeper.running_var, inherited.running_var)


def test_a_last_batch_of_one_image_joins_the_batch_before_it() -> None:
    """At 32 px the smallest subnet's last feature map is 1x1: a lone last image failed batch norm.

    130 images in batches of 64 left a batch of one; now the last two batches are one of 65, so the
    statistics are the average over two batches, the second taken over all 65 images.
    """
    from hwsearch.jobs import SupernetRef, build_supernet

    tiny = build_supernet(SupernetRef(name="tiny", registry="ofa_mbv3_d234_e346_k357_w1.0",
                                      options={"n_classes": 10, "resolutions": [32]}))
    subnet = tiny.extract(tiny.space.smallest(32))
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, 32, 32, generator=generator) for n in (64, 64, 1)]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        for batch in batches:
            subnet.train()(batch)
    returned = recalibrate_bn(subnet, batches)
    first_bn = returned.first_conv.bn
    with torch.no_grad():
        conv_out = [subnet.first_conv.conv(b) for b in (batches[0], torch.cat(batches[1:]))]
    expected_mean = torch.stack([c.mean((0, 2, 3)) for c in conv_out]).mean(0)
    torch.testing.assert_close(first_bn.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    assert int(first_bn.num_batches_tracked) == 2


def test_recalibrate_bn_refuses_no_batches_and_keeps_stats(mbv3: Supernet) -> None:
    subnet = mbv3.extract(mbv3.space.smallest(128))
    before = _snapshot(subnet)
    with pytest.raises(ValueError, match="at least one calibration batch"):
        recalibrate_bn(subnet, [])
    _assert_same_state(subnet, before)
