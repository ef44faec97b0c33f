"""The AutoFormer-style ViT family: extraction, export, counting, checkpoints, codecs, predictors.

Most tests use small ViT spaces built with ``vit_space`` (32 px, and the
28 px digit-sized demo shape), so they run in seconds; AutoFormer-T itself
is built where its weights matter: loading a state dict with AutoFormer's
key names and shapes, and computing what AutoFormer computes from it.
"""

from __future__ import annotations

import argparse
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwsearch.export import export_subnet
from hwsearch.families.vit.layout import AUTOFORMER_SIZES, ViTLayout, autoformer_space, vit_space
from hwsearch.families.vit.supernet import ElasticViT
from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace
from hwsearch.supernets import CheckpointError, Supernet, build_supernet, create_supernet
from hwsearch.supernets.counting import measure
from predictors.features import ArchFeaturizer
from predictors.latency import LatencyPredictor
from predictors.metrics import regression_report

# Modules an extracted subnet may contain: ordinary layers, and the family's static containers.
STATIC_LEAVES = (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.GELU)
ELASTIC_PREFIX = "Elastic"


def _small_space() -> SearchSpace:
    return vit_space("test_vit", resolution=32, patch_size=8, depths=(2, 3, 4),
                     embed_dims=(32, 48), heads=(2, 3), mlp_ratios=(2.0, 3.0), n_classes=10,
                     head_dim=16)


def _digits_space() -> SearchSpace:
    """The demo's shape: 28x28 digits, patch 4, AutoFormer's default head width."""
    return vit_space("test_vit_digits", resolution=28, patch_size=4, depths=(3, 4, 5),
                     embed_dims=(48, 64), heads=(2, 4), mlp_ratios=(2, 3), n_classes=10)


def _randomize(module: nn.Module, seed: int) -> None:
    """Every parameter random (biases and layer-norm scales too), so no slice hides behind a 0/1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.fixture(scope="module")
def small() -> Supernet:
    net = build_supernet(_small_space())
    _randomize(net.module, seed=1)
    return net


@pytest.fixture(scope="module")
def digits() -> Supernet:
    net = build_supernet(_digits_space())
    _randomize(net.module, seed=2)
    return net


def _archs(space: SearchSpace, n: int = 4) -> list[ArchConfig]:
    return space.sample(7, n) + [space.smallest(), space.largest()]


def _images(net: Supernet, batch: int = 2, seed: int = 0) -> torch.Tensor:
    shape = net.input_shape(net.space.largest(), batch)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("name", ["small", "digits"])
def test_extracted_subnet_equals_supernet_forward(name: str,
                                                  request: pytest.FixtureRequest) -> None:
    net: Supernet = request.getfixturevalue(name)
    x = _images(net)
    for arch in _archs(net.space):
        subnet = net.extract(arch)
        with torch.no_grad():
            expected = net.forward(x, arch)
            actual = subnet(x)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=arch.key())
        assert not subnet.training


def test_extracted_subnet_has_no_elastic_parts(small: Supernet) -> None:
    arch = small.space.arch(resolution=32, depths=[3], kernel=[2, 3, 2], expand=[3.0, 2.0, 3.0],
                            width=[32])
    subnet = small.extract(arch)
    names = {type(m).__name__ for m in subnet.modules()}
    assert not any(name.startswith(ELASTIC_PREFIX) for name in names)
    leaves = [m for m in subnet.modules() if not list(m.children())]
    assert all(isinstance(m, STATIC_LEAVES) or type(m).__name__ == "RelativePosition2D"
               for m in leaves)
    state = subnet.state_dict()
    # Every tensor has the subnet's own size: 32 channels, 2/3/2 heads of 16, hidden 96/64/96.
    assert state["patch_embed_super.proj.weight"].shape == (32, 3, 8, 8)
    assert state["pos_embed"].shape == (1, 17, 32)
    assert state["blocks.1.attn.qkv.weight"].shape == (3 * 3 * 16, 32)
    assert state["blocks.1.attn.proj.weight"].shape == (32, 48)
    assert state["blocks.1.fc1.weight"].shape == (64, 32)
    assert state["blocks.2.fc2.weight"].shape == (32, 96)
    assert state["head.weight"].shape == (10, 32)
    assert len(subnet.blocks) == 3


def test_extraction_is_reentrant(small: Supernet) -> None:
    """Two threads extracting different archs at once get what serial extraction gets."""
    archs = small.space.sample(3, 2)
    x = _images(small)
    before = {k: v.clone() for k, v in small.module.state_dict().items()}

    def run(arch: ArchConfig) -> list[torch.Tensor]:
        outputs = []
        for _ in range(5):
            with torch.no_grad():
                outputs.append(small.extract(arch)(x))
        return outputs

    with torch.no_grad():
        serial = [small.extract(arch)(x) for arch in archs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        concurrent = list(pool.map(run, archs))
    for expected, outputs in zip(serial, concurrent):
        for output in outputs:
            torch.testing.assert_close(output, expected, rtol=0, atol=0)
    after = small.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- export and counting


@pytest.mark.parametrize("pick", ["smallest", "largest", "sampled"])
def test_onnx_export_matches_torch(digits: Supernet, pick: str, tmp_path: Path) -> None:
    space = digits.space
    arch = space.sample(11, 1)[0] if pick == "sampled" else getattr(space, pick)()
    report = export_subnet(digits, arch, tmp_path / "vit.onnx")
    with torch.no_grad():
        scale = float(digits.extract(arch)(_images(digits, batch=1)).abs().max())
    assert report.max_abs_diff is not None
    assert report.max_abs_diff <= 1e-4 * max(1.0, scale)
    assert report.macs == digits.count(arch).macs and report.params == digits.count(arch).params
    assert (tmp_path / "vit.onnx").stat().st_size == report.bytes


@pytest.mark.parametrize("name", ["small", "digits"])
def test_count_equals_hook_measure(name: str, request: pytest.FixtureRequest) -> None:
    net: Supernet = request.getfixturevalue(name)
    for arch in _archs(net.space, n=6):
        _, measured = measure(net.extract(arch), _images(net, batch=3))
        assert net.count(arch) == measured, arch.key()


def test_attention_products_are_counted(small: Supernet) -> None:
    """The hook counter includes QK^T, attn V and the relative terms: 4 * T * T * q per layer."""
    arch = small.space.smallest()
    subnet = small.extract(arch)
    _, with_attention = measure(subnet, _images(small, batch=1))
    weights = sum(m.weight.numel() for m in subnet.modules() if isinstance(m, nn.Linear))
    linear_only = weights * 17 - 10 * 32 * 16  # every token but in the head, which runs once
    patches = 16 * 32 * 3 * 8 * 8
    tokens, query = 17, 2 * 16
    assert with_attention.macs == linear_only + patches + 2 * 4 * tokens * tokens * query


# --------------------------------------------------------------------------- AutoFormer


def autoformer_tiny_shapes() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of AutoFormer-T's supernet state dict (``supernet-T.yaml``:
    EMBED_DIM 256, NUM_HEADS 4, MLP_RATIO 4, DEPTH 14; ``--change_qkv --relative_position``,
    ``max_relative_position`` 14, ``qkv_bias=True``, 1000 classes, 224 px, patch 16)."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, 256),
        "pos_embed": (1, 197, 256),
        "patch_embed_super.proj.weight": (256, 3, 16, 16),
        "patch_embed_super.proj.bias": (256,),
        "norm.weight": (256,),
        "norm.bias": (256,),
        "head.weight": (1000, 256),
        "head.bias": (1000,),
    }
    for i in range(14):
        block = f"blocks.{i}."
        shapes |= {
            block + "attn.qkv.weight": (768, 256),
            block + "attn.qkv.bias": (768,),
            block + "attn.proj.weight": (256, 256),
            block + "attn.proj.bias": (256,),
            block + "attn_layer_norm.weight": (256,),
            block + "attn_layer_norm.bias": (256,),
            block + "ffn_layer_norm.weight": (256,),
            block + "ffn_layer_norm.bias": (256,),
            block + "fc1.weight": (1024, 256),
            block + "fc1.bias": (1024,),
            block + "fc2.weight": (256, 1024),
            block + "fc2.bias": (256,),
        }
        for table in ("k", "v"):
            for axis in ("v", "h"):
                shapes[f"{block}attn.rel_pos_embed_{table}.embeddings_table_{axis}"] = (30, 64)
    return shapes


def _autoformer_tiny_state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in autoformer_tiny_shapes().items():
        value = torch.randn(shape, generator=generator) * 0.05
        state[key] = value + 1.0 if "norm.weight" in key else value
    return state


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return _autoformer_tiny_state(seed=3)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_state: dict[str, torch.Tensor],
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("autoformer") / "supernet-tiny.pth"
    torch.save(tiny_state, path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Supernet:
    return create_supernet("autoformer_tiny", checkpoint=tiny_checkpoint)


def test_autoformer_state_dict_loads_bare_and_wrapped(tiny: Supernet, tiny_state: dict,
                                                      tmp_path: Path) -> None:
    loaded = tiny.module.state_dict()
    assert loaded.keys() == tiny_state.keys()
    assert all(torch.equal(loaded[k], tiny_state[k]) for k in tiny_state)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": _autoformer_tiny_state(seed=4)}, wrapped)
    other = create_supernet("autoformer_tiny", checkpoint=wrapped)
    assert not torch.equal(other.module.state_dict()["blocks.3.fc1.weight"],
                           loaded["blocks.3.fc1.weight"])


def test_autoformer_training_checkpoint_loads(tmp_path: Path) -> None:
    """AutoFormer's own files: weights under ``model``, the run's argparse Namespace beside them."""
    state = _autoformer_tiny_state(seed=6)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 499, "args": argparse.Namespace(lr=5e-4, mode="super")},
               path)
    net = create_supernet("autoformer_tiny", checkpoint=path)
    assert torch.equal(net.module.state_dict()["blocks.3.fc1.weight"], state["blocks.3.fc1.weight"])


def test_autoformer_state_dict_with_a_wrong_shape_is_refused(tmp_path: Path) -> None:
    state = _autoformer_tiny_state(seed=5)
    state["blocks.7.attn.qkv.weight"] = torch.zeros(576, 256)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"blocks\.7\.attn\.qkv\.weight \(checkpoint "
                                              r"\(576, 256\), supernet \(768, 256\)\)"):
        create_supernet("autoformer_tiny", checkpoint=path)
    del state["blocks.7.attn.qkv.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.7\.attn\.qkv\.weight"):
        create_supernet("autoformer_tiny", checkpoint=path)


def _relative_indices(tokens: int, side: int, max_distance: int) -> tuple[torch.Tensor, ...]:
    """AutoFormer's ``RelativePosition2D`` indices, pair by pair (index 0 for the class token)."""

    def index(a: int, b: int, axis: int) -> int:
        if a == 0 or b == 0:
            return 0
        pa, pb = divmod(a - 1, side), divmod(b - 1, side)
        return max(-max_distance, min(max_distance, pb[axis] - pa[axis])) + max_distance + 1

    return tuple(torch.tensor([[index(a, b, axis) for b in range(tokens)] for a in range(tokens)])
                 for axis in (0, 1))


def _autoformer_reference(state: dict, config: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """What AutoFormer's supernet computes for ``config`` (``change_qkv``, relative positions,
    mean-pooled patch tokens), written from the raw state dict, independent of our modules."""
    embed, head_dim, side = config["embed_dim"][0], 64, 14
    batch = x.shape[0]
    t = F.conv2d(x, state["patch_embed_super.proj.weight"][:embed],
                 state["patch_embed_super.proj.bias"][:embed], stride=16).flatten(2).transpose(1, 2)
    t = torch.cat([state["cls_token"][..., :embed].expand(batch, -1, -1), t], dim=1)
    t = t + state["pos_embed"][..., :embed]
    tokens = t.shape[1]
    rows, cols = _relative_indices(tokens, side, max_distance=14)

    def table(prefix: str) -> torch.Tensor:
        return (state[prefix + "embeddings_table_v"][rows]
                + state[prefix + "embeddings_table_h"][cols])

    def norm(name: str, value: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(value, (embed,), state[name + ".weight"][:embed],
                            state[name + ".bias"][:embed])

    for i in range(config["layer_num"]):
        p = f"blocks.{i}."
        heads, width = config["num_heads"][i], config["num_heads"][i] * head_dim
        hidden = int(embed * config["mlp_ratio"][i])
        weight = state[p + "attn.qkv.weight"][:, :embed]
        weight = torch.cat([weight[j:3 * width:3, :] for j in range(3)], dim=0)
        qkv = F.linear(norm(p + "attn_layer_norm", t), weight,
                       state[p + "attn.qkv.bias"][:3 * width])
        q, k, v = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        rel_k, rel_v = table(p + "attn.rel_pos_embed_k."), table(p + "attn.rel_pos_embed_v.")
        scores = (q @ k.transpose(-2, -1) + torch.einsum("bhnd,nmd->bhnm", q, rel_k)) / 8.0
        attn = scores.softmax(dim=-1)
        out = attn @ v + torch.einsum("bhnm,nmd->bhnd", attn, rel_v)
        out = out.transpose(1, 2).reshape(batch, tokens, width)
        t = t + F.linear(out, state[p + "attn.proj.weight"][:embed, :width],
                         state[p + "attn.proj.bias"][:embed])
        y = F.linear(norm(p + "ffn_layer_norm", t), state[p + "fc1.weight"][:hidden, :embed],
                     state[p + "fc1.bias"][:hidden])
        t = t + F.linear(F.gelu(y), state[p + "fc2.weight"][:embed, :hidden],
                         state[p + "fc2.bias"][:embed])
    pooled = norm("norm", t)[:, 1:].mean(dim=1)
    return F.linear(pooled, state["head.weight"][:, :embed], state["head.bias"])


def test_autoformer_tiny_computes_what_autoformer_computes(tiny: Supernet, tiny_state: dict
                                                           ) -> None:
    config = {"layer_num": 13, "embed_dim": [216] * 13,
              "num_heads": [3, 4, 3, 3, 4, 4, 3, 3, 3, 4, 4, 3, 4],
              "mlp_ratio": [3.5, 4.0, 4.0, 3.5, 3.5, 4.0, 3.5, 3.5, 4.0, 4.0, 3.5, 4.0, 3.5]}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    subnet = tiny.extract(config)
    with torch.no_grad():
        expected = _autoformer_reference(tiny_state, config, x)
        ours = tiny.forward(x, config)
    extracted, measured = measure(subnet, x)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(extracted, expected, rtol=1e-4, atol=1e-4)
    assert tiny.count(config) == measured


def test_autoformer_sizes_match_the_published_spaces() -> None:
    """The stored widths of the three sizes follow from their choices (max embed vs heads x 64)."""
    expected = {"tiny": (256, 1024, 14), "small": (448, 1792, 14), "base": (640, 2560, 16)}
    for size, (dim, hidden, depth) in expected.items():
        space = autoformer_space(size)
        spec = AUTOFORMER_SIZES[size]
        derived = vit_space("x", resolution=224, patch_size=16, depths=spec.depths,
                            embed_dims=spec.embed_dims, heads=spec.heads,
                            mlp_ratios=spec.mlp_ratios).layout
        layout = space.layout
        assert isinstance(layout, ViTLayout) and layout == derived
        assert (layout.super_embed_dim, layout.super_mlp_hidden) == (dim, hidden)
        assert space.stages[0].max_depth == depth and space.resolutions == (224,)
        assert space.widths == spec.embed_dims and space.kernels == spec.heads
    assert autoformer_space("tiny", n_classes=10).layout.n_classes == 10
    with pytest.raises(ValueError, match="unknown AutoFormer size 'huge'"):
        autoformer_space("huge")


# --------------------------------------------------------------------------- native form and space


def test_native_form_round_trip(small: Supernet) -> None:
    space = small.space
    for arch in _archs(space, n=8):
        native = space.to_native(arch)
        assert native["layer_num"] == arch.depths[0] == len(native["num_heads"])
        assert native["embed_dim"] == [arch.width[0]] * arch.depths[0]
        assert space.from_native(native) == arch
        assert small.arch(native) == arch


def test_native_form_reads_autoformer_configs(small: Supernet) -> None:
    space = small.space
    arch = space.arch(resolution=32, depths=[2], kernel=[3, 2], expand=[2.0, 3.0], width=[48])
    padded = {"layer_num": 2, "embed_dim": [48] * 4, "num_heads": [3, 2, 2, 2],
              "mlp_ratio": [2, 3, 2, 2]}
    assert space.from_native(padded) == arch
    assert space.from_native({**padded, "embed_dim": 48}) == arch
    bad = {
        "embed_dim must be the same": {**padded, "embed_dim": [48, 32]},
        r"layer_num=5 is not allowed": {**padded, "layer_num": 5},
        "layer_num must be an int": {**padded, "layer_num": "2"},
        "num_heads must be a list of 2": {**padded, "num_heads": [3, 2, 2]},
        r"num_heads\[1\]=5 is not allowed": {**padded, "num_heads": [3, 5]},
        r"unknown field\(s\) \['depth'\]": {**padded, "depth": 2},
    }
    for message, data in bad.items():
        with pytest.raises(ArchValidationError, match=message):
            space.from_native(data)


def test_native_form_reads_numpy_arrays_as_lists(small: Supernet) -> None:
    """A per-layer numpy array was refused as "must be a list" while the same list passed."""
    space = small.space
    arch = space.arch(resolution=32, depths=[2], kernel=[3, 2], expand=[2.0, 3.0], width=[48])
    padded = {"layer_num": np.int64(2), "embed_dim": np.full(4, 48), "num_heads": np.array([3, 2, 2, 2]),
              "mlp_ratio": np.array([2.0, 3.0, 2.0, 2.0])}

    assert space.from_native(padded) == arch
    assert space.from_native({**padded, "num_heads": np.array([3, 2])}) == arch
    with pytest.raises(ArchValidationError, match="num_heads must be a list"):
        space.from_native({**padded, "num_heads": np.array([[3, 2], [2, 2]])})


@pytest.mark.parametrize("change, message", [
    ({"resolution": 30}, "not a multiple of the patch size 8"),
    ({"super_embed_dim": 40}, "smaller than the largest embedding dimension, 48"),
    ({"head_dim": 32}, r"smaller than the largest query width \(heads x head_dim\), 96"),
    ({"super_mlp_ratio": 2.0}, "the stored MLP has 96 hidden units; a subnet needs 144"),
])
def test_space_checks_what_the_supernet_can_build(change: dict, message: str) -> None:
    options: dict[str, Any] = {"resolution": 32, "patch_size": 8, "depths": (2, 3),
                               "embed_dims": (32, 48), "heads": (2, 3), "mlp_ratios": (2.0, 3.0),
                               "head_dim": 16, "super_embed_dim": 48} | change
    with pytest.raises(ValueError, match=message):
        vit_space("bad", **options)


# --------------------------------------------------------------------------- predictors


def test_featurizer_costs_equal_supernet_counts(small: Supernet) -> None:
    space = small.space
    archs = _archs(space, n=10)
    X = space.encode_many(archs)
    featurizer = ArchFeaturizer(space)
    features = featurizer.transform(X)
    assert features.shape == (len(archs), len(featurizer.names)) and np.isfinite(features).all()
    macs = featurizer.macs(X)
    assert [int(m) for m in macs] == [small.count(a).macs for a in archs]
    names = set(featurizer.cost_names)
    assert {"s0_macs_attn", "s0_macs_relpos", "s0_ops_matmul", "s0_mem_attn"} <= names


def test_latency_predictor_fits_vit_costs() -> None:
    """Synthetic latencies with a per-operator overhead and a MAC rate, as an edge CPU shows."""
    space = autoformer_space("tiny")
    rng = np.random.default_rng(0)
    X = space.encode_many(space.sample(1, 120))
    costs = ArchFeaturizer(space).costs(X)
    ops = sum(v for k, v in costs.columns.items() if "_ops_" in k)
    y = (0.02 * ops + 4e-9 * costs.macs) * rng.lognormal(0.0, 0.02, len(X))
    model = LatencyPredictor(space, n_members=0, cv_folds=3).fit(X[:80], y[:80])
    report = regression_report(y[80:], model.predict(X[80:]))
    assert report["mape"] < 5 and math.isfinite(report["tau"]) and report["tau"] > 0.8


def test_a_fresh_supernet_is_fully_initialised() -> None:
    """Built on meta and initialised once: nothing may be left uninitialised."""
    from hwsearch.families.vit.supernet import RelativePosition2D, relative_indices

    net = build_supernet(_small_space())
    state = net.module.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert torch.equal(state["norm.weight"], torch.ones(48))
    assert torch.equal(state["blocks.0.fc1.bias"], torch.zeros(144))
    assert 0.01 < float(state["blocks.0.fc1.weight"].std()) < 0.03
    tables = [m for m in net.module.modules() if isinstance(m, RelativePosition2D)]
    assert len(tables) == 2 * 4
    rows, cols = relative_indices(side=4, max_distance=14)
    assert all(torch.equal(t.index_v, rows) and torch.equal(t.index_h, cols) for t in tables)
    # One pair for the whole supernet: per table, AutoFormer-B at 1024 px held 8.9 GB of indices.
    assert len({t.index_v.data_ptr() for t in tables}) == len({t.index_h.data_ptr() for t in tables}) == 1
    # ... and an extracted subnet's tables keep that pair (a deep copy made one per table).
    extracted = [m for m in net.extract(net.space.largest()).modules() if isinstance(m, RelativePosition2D)]
    assert extracted and all(t.index_v.data_ptr() == tables[0].index_v.data_ptr() for t in extracted)
    assert all(t.embeddings_table_v.data_ptr() != tables[0].embeddings_table_v.data_ptr() for t in extracted)
    assert torch.isfinite(net.forward(_images(net), net.space.largest())).all()


def test_wrong_layout_is_refused() -> None:
    from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space

    with pytest.raises(ValueError, match="needs a ViTLayout, got MBv3Layout"):
        ElasticViT(ofa_mbv3_space(resolutions=(224,)))


def test_bn_recalibration_leaves_a_layer_normalised_subnet_alone(small: Supernet) -> None:
    """No running statistics to refresh, so no calibration batch is run (a wrong shape would fail)."""
    from hwsearch.bn import recalibrate_bn

    subnet = small.extract(small.space.largest())
    before = {k: v.clone() for k, v in subnet.state_dict().items()}
    assert recalibrate_bn(subnet, [torch.zeros(1, 1, 3, 3)]) is subnet
    assert all(torch.equal(before[k], v) for k, v in subnet.state_dict().items())


def test_cli_exports_an_autoformer_subnet_given_in_autoformer_form(tmp_path: Path) -> None:
    """The generic CLI serves the new family unchanged: an AutoFormer config in, checked ONNX out."""
    import json
    import subprocess
    import sys

    import onnx

    config = {"layer_num": 12, "embed_dim": [192] * 12, "num_heads": [3, 4] * 6,
              "mlp_ratio": [3.5] * 6 + [4.0] * 6}
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(config))
    out = tmp_path / "vit.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "hwsearch.cli.main", "export", "--supernet", "autoformer_tiny",
         "--arch", str(arch_file), "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    space = autoformer_space("tiny")
    arch = space.from_dict(config)
    assert printed["macs"] == create_supernet("autoformer_tiny").count(arch).macs
    assert printed["max_abs_diff"] <= 1e-4 * 10
    onnx.checker.check_model(onnx.load(str(out)))
