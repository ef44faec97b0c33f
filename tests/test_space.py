"""Search space and configuration: canonical form, encodings, validation, native OFA forms."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.families.ofa_resnet.layout import ofa_resnet50_space
from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace, StageSpec

SPACES = [ofa_mbv3_space(), ofa_mbv3_space(1.2), ofa_resnet50_space()]


@pytest.fixture(params=SPACES, ids=lambda s: s.name)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return request.param


def test_round_trips_through_every_form(space: SearchSpace) -> None:
    for arch in space.sample(np.random.default_rng(1), 300):
        assert space.decode(space.encode(arch)) == arch
        assert space.from_dict(arch.to_dict()) == arch
        assert space.from_json(arch.to_json()) == arch
        assert space.from_native(space.to_native(arch)) == arch
        assert space.from_dict(json.loads(json.dumps(space.to_native(arch)))) == arch


def test_inactive_block_genes_do_not_change_the_subnet(space: SearchSpace) -> None:
    """Two gene vectors differing only in switched-off blocks decode to one config and key."""
    rng = np.random.default_rng(2)
    xl, xu = space.bounds()
    X = rng.integers(xl, xu + 1, size=(400, space.n_var))
    active = space.active_block_mask(X)
    assert not active.all(), "sample must contain shallow subnets"
    noisy = X.copy()
    start = 1 + len(space.stages)
    for k in range(len(space.block_knobs)):
        cols = slice(start + k * space.n_blocks, start + (k + 1) * space.n_blocks)
        random_genes = rng.integers(xl[cols], xu[cols] + 1, size=noisy[:, cols].shape)
        noisy[:, cols] = np.where(active, noisy[:, cols], random_genes)
    for a, b in zip(X, noisy):
        assert space.decode(a) == space.decode(b)
        assert space.decode(a).key() == space.decode(b).key()
        assert hash(space.decode(a)) == hash(space.decode(b))
    np.testing.assert_array_equal(space.canonical_genes(X), space.canonical_genes(noisy))


def test_native_ofa_form_with_different_inactive_values_is_one_subnet() -> None:
    space = ofa_mbv3_space()
    native = {"ks": [7] * 20, "e": [6] * 20, "d": [2, 2, 2, 2, 2], "r": 224}
    other = dict(native, ks=[7, 7, 3, 5] * 5)  # differs only in blocks 3-4 of each stage
    assert space.from_dict(native) == space.from_dict(other)
    assert space.from_dict(native).kernel == (7,) * 10


def test_resnet_stem_depth_values_that_build_the_same_network_are_equal() -> None:
    """OFA ResNet skips the stem block for d[0] in {0, 1}: those are one network."""
    space = ofa_resnet50_space()
    base = {"d": [0, 2, 2, 2, 2], "e": 0.25, "w": [2] * 6, "r": [160]}
    assert space.from_native(base) == space.from_native(dict(base, d=[1, 2, 2, 2, 2]))
    assert space.from_native(base) != space.from_native(dict(base, d=[2, 2, 2, 2, 2]))


def test_a_native_form_is_refused_in_its_own_words() -> None:
    """Refused as ``kernel[1]=3`` for AutoFormer's ``num_heads``, and as ``kernel[2]`` for OFA's ``ks[4]`` (Z11)."""
    from hwsearch.demo import demo_vit_space

    vit = demo_vit_space()
    native = {"layer_num": 3, "embed_dim": [64] * 3, "num_heads": [2, 3, 2], "mlp_ratio": [2, 2, 2]}
    for change, says in (({}, "num_heads[1]=3 is not allowed"),
                         ({"num_heads": [2] * 3, "mlp_ratio": [2, 2, 4]}, "mlp_ratio[2]=4 is not allowed"),
                         ({"num_heads": [2] * 3, "embed_dim": [56] * 3}, "embed_dim[0]=56 is not allowed"),
                         ({"num_heads": [2.5, 2, 2]}, "num_heads[0]=2.5 must be an int")):
        with pytest.raises(ArchValidationError, match=re.escape(says)):
            vit.from_native({**native, **change})
    mbv3 = ofa_mbv3_space()
    ks = [3] * mbv3.n_blocks
    ks[4] = 4  # the first block of the second stage: active block 2 with depths of 2
    with pytest.raises(ArchValidationError, match=re.escape("ks[4]=4 is not allowed")):
        mbv3.from_native({"ks": ks, "e": [3] * mbv3.n_blocks, "d": [2] * len(mbv3.stages)})
    native = {"ks": [3] * mbv3.n_blocks, "e": [3] * mbv3.n_blocks, "d": [2] * len(mbv3.stages)}
    with pytest.raises(ArchValidationError, match=re.escape("d[4]=5 is not allowed")):
        mbv3.from_native({**native, "d": [2, 2, 2, 2, 5]})
    with pytest.raises(ArchValidationError, match=re.escape("r=300 is not allowed")):
        mbv3.from_native({**native, "r": 300})
    with pytest.raises(ArchValidationError, match="is not allowed"):  # not a list of 10**30 slots (a 500)
        mbv3.from_native({**native, "d": 10**30})
    resnet = ofa_resnet50_space()
    arch = resnet.to_native(resnet.sample(0, 1)[0])
    slot = resnet.block_slots(resnet.from_native(arch).depths)[-1]
    with pytest.raises(ArchValidationError, match=re.escape(f"e[{slot}]=0.3 is not allowed")):
        resnet.from_native({**arch, "e": [0.3 if i == slot else e for i, e in enumerate(arch["e"])]})


def test_resnet_native_form_reads_numpy_integers_and_arrays() -> None:
    """``w=[np.int64(2), ...]`` was refused as "must be an index 0..2"; other families took numpy ints."""
    space = ofa_resnet50_space()
    arch = space.sample(1, 1)[0]
    native = space.to_native(arch)

    assert space.from_native({**native, "w": [np.int64(w) for w in native["w"]]}) == arch
    as_arrays = {key: np.asarray(value) for key, value in native.items()}
    assert space.from_native(as_arrays) == arch
    with pytest.raises(ArchValidationError, match=r"w\[0\]=1.5"):
        space.from_native({**native, "w": [1.5] * len(native["w"])})
    with pytest.raises(ArchValidationError, match=r"w\[0\]=3 must be an index 0..2"):
        space.from_native({**native, "w": [3] * len(native["w"])})


def test_key_is_stable_and_readable() -> None:
    space = ofa_mbv3_space()
    arch = space.arch(resolution=160, depths=[2] * 5, kernel=[3, 5] * 5, expand=[3, 6] * 5)
    assert arch.key() == (
        "r160-d2,2,2,2,2-k3,5,3,5,3,5,3,5,3,5-e3,6,3,6,3,6,3,6,3,6"
    )
    assert len(arch.digest()) == 16
    assert pickle.loads(pickle.dumps(arch)) == arch


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resolution": 225}, "resolution"),
        ({"depths": [2, 2, 2, 2, 5]}, "depths[4]"),
        ({"depths": [2, 2, 2, 2]}, "depths"),
        ({"kernel": [3] * 9}, "kernel"),
        ({"kernel": [3] * 9 + [4]}, "kernel[9]"),
        ({"expand": [3] * 9 + [5]}, "expand[9]"),
    ],
)
def test_validation_names_the_bad_field(change: dict, field: str) -> None:
    space = ofa_mbv3_space()
    good = {"resolution": 224, "depths": [2] * 5, "kernel": [3] * 10, "expand": [3] * 10}
    with pytest.raises(ArchValidationError, match="^" + re.escape(field)):
        space.from_dict({**good, **change})


def test_unknown_and_missing_fields_are_reported() -> None:
    space = ofa_mbv3_space()
    with pytest.raises(ArchValidationError, match="unknown field"):
        space.from_dict({"resolution": 224, "depths": [2] * 5, "kernels": []})
    with pytest.raises(ArchValidationError, match="missing field"):
        space.from_dict({"ks": [3] * 20, "d": [2] * 5})
    with pytest.raises(ArchValidationError, match="not valid JSON"):
        space.from_json("{")
    with pytest.raises(ArchValidationError, match=r"w\[0\]"):
        ofa_resnet50_space().from_native({"d": 2, "e": 0.25, "w": [3] * 6})


def test_decode_rejects_genes_outside_bounds(space: SearchSpace) -> None:
    _, xu = space.bounds()
    with pytest.raises(ArchValidationError, match="outside"):
        space.decode(xu + 1)
    with pytest.raises(ArchValidationError, match="shape"):
        space.decode(np.zeros(space.n_var + 1, dtype=int))


def test_enumeration_matches_size_and_is_canonical() -> None:
    tiny = SearchSpace(
        name="tiny", resolutions=(32, 48), stages=(StageSpec((1, 2)), StageSpec((0, 1), elastic=False),
                                                   StageSpec((1, 2, 3))),
        kernels=(3, 5), expands=(2, 4),
    )
    archs = list(tiny.enumerate())
    assert len(archs) == tiny.size() == len(set(archs))
    assert {tiny.decode(tiny.encode(a)) for a in archs} == set(archs)
    rng = np.random.default_rng(0)
    xl, xu = tiny.bounds()
    decoded = {tiny.decode(x) for x in rng.integers(xl, xu + 1, size=(5000, tiny.n_var))}
    assert decoded <= set(archs)


def test_sampling_is_seeded_and_covers_depths(space: SearchSpace) -> None:
    a = space.sample(7, 50)
    assert a == space.sample(7, 50)
    assert a != space.sample(8, 50)
    depths = {d for arch in space.sample(0, 200) for d in arch.depths}
    assert depths == {d for stage in space.stages for d in stage.depths}


@pytest.mark.parametrize("n", [-1, 2.5, "3", True, None])
def test_sample_refuses_a_count_that_is_not_a_whole_number_from_zero(n: object) -> None:
    """-1 and 2.5 failed inside numpy's ``integers``; each is now refused naming ``n``."""
    with pytest.raises(ValueError, match="^n must be"):
        ofa_mbv3_space().sample(0, n)  # type: ignore[arg-type]


def test_sample_takes_zero_and_numpy_counts() -> None:
    space = ofa_mbv3_space()
    assert space.sample(0, 0) == []
    assert space.sample(0, np.int64(2)) == space.sample(0, 2)


def test_extremes_and_space_sizes() -> None:
    mbv3 = ofa_mbv3_space()
    assert mbv3.largest().kernel == (7,) * 20 and mbv3.smallest().depths == (2,) * 5
    # OFA paper: ~10^19 subnets per resolution for MobileNetV3 (2.19e19 with canonical counting).
    per_resolution = mbv3.size() // len(mbv3.resolutions)
    assert per_resolution == ((9**2 + 9**3 + 9**4) ** 5)
    assert ofa_resnet50_space().largest().depths == (1, 4, 4, 6, 4)


def test_arch_config_rejects_non_integer_resolution() -> None:
    with pytest.raises(ArchValidationError, match="resolution"):
        ArchConfig(resolution="224", depths=(2,))  # type: ignore[arg-type]


def test_arch_config_from_numpy_values_serialises_as_plain_json() -> None:
    """An unvalidated numpy ``expand`` kept its int32s, and ``to_json`` raised TypeError."""
    arch = ArchConfig(224, (2,) * 5, (3,) * 10, np.full(10, 3, np.int32), (np.float64(0.65),))

    assert json.loads(arch.to_json()) == {"resolution": 224, "depths": [2] * 5, "kernel": [3] * 10,
                                          "expand": [3] * 10, "width": [0.65]}
    assert all(type(v) is int for v in arch.expand) and type(arch.width[0]) is float


def test_equal_arch_configs_serialise_equally() -> None:
    """``3`` and ``3.0`` are equal and share a key; their JSON was "3" and "3.0"."""
    whole = ArchConfig(224, (2,) * 5, (3,) * 10, (3,) * 10, (1,))
    as_floats = ArchConfig(224, (2,) * 5, (3,) * 10, (3.0,) * 10, (np.float32(1.0),))

    assert as_floats == whole and as_floats.key() == whole.key()
    assert as_floats.to_json() == whole.to_json()
    assert as_floats.to_dict()["expand"] == [3] * 10  # the whole form, as the key prints it


# --------------------------------------------------------------------------- batch decode


def test_batch_decode_matches_row_by_row_decode(space: SearchSpace) -> None:
    rng = np.random.default_rng(5)
    xl, xu = space.bounds()
    X = rng.integers(xl, xu + 1, size=(300, space.n_var))
    batch = space.decode_batch(X)
    archs = [space.decode(x) for x in X]
    assert batch.archs() == archs
    assert batch.native() == [space.to_native(a) for a in archs]
    np.testing.assert_array_equal(batch.genes, space.canonical_genes(X))
    np.testing.assert_array_equal(batch.resolution, [a.resolution for a in archs])
    np.testing.assert_array_equal(batch.depths, [a.depths for a in archs])
    np.testing.assert_array_equal(batch.n_active, [len(a.kernel or a.expand) for a in archs])
    for knob in space.block_knobs:
        per_row = getattr(batch, knob)
        for row, active, arch in zip(per_row, batch.active, archs):
            assert tuple(row[active]) == getattr(arch, knob)
            assert (row[~active] == 0).all()


def test_batch_decode_names_the_row_and_gene_out_of_bounds() -> None:
    space = ofa_mbv3_space()
    X = space.encode_many(space.sample(0, 3))
    X[2, 0] = len(space.resolutions)
    with pytest.raises(ArchValidationError, match=r"row 2: gene 0="):
        space.decode_batch(X)
    with pytest.raises(ArchValidationError, match="shape"):
        space.decode_batch(X[:, :-1])


# --------------------------------------------------------------------------- sub-spaces


def test_restricted_space_is_named_after_what_it_keeps_and_maps_its_genes() -> None:
    full = ofa_mbv3_space()
    sub = full.restrict(resolutions=(224, 160, 192), kernels=(3, 5))
    assert sub.resolutions == (160, 192, 224)  # the full space's order, whatever was given
    assert sub.kernels == (3, 5)
    assert sub.name == f"{full.name}~r160.192.224_k3.5"
    assert sub.network_id != full.network_id and hash(sub) != hash(full) and sub != full
    assert sub.decode(np.zeros(sub.n_var, dtype=int)).resolution == 160
    assert full.decode(np.zeros(full.n_var, dtype=int)).resolution == 128
    archs = sub.sample(3, 300)
    mapped = sub.genes_in(full, sub.encode_many(archs))
    assert [full.decode(x) for x in mapped] == archs
    np.testing.assert_array_equal(mapped, full.encode_many(archs))
    assert full.restrict(resolutions=full.resolutions) is full


def test_genes_of_a_larger_space_are_refused_by_a_sub_space() -> None:
    full = ofa_mbv3_space()
    sub = full.restrict(resolutions=(160, 224))
    X = full.encode_many([full.largest(128)])
    with pytest.raises(ValueError, match="128"):
        full.genes_in(sub, X)
    with pytest.raises(ValueError, match="structure"):
        full.genes_in(ofa_resnet50_space(), X)


@pytest.mark.parametrize("kwargs, message", [
    ({"resolutions": (161,)}, "resolutions"),
    ({"kernels": ()}, "at least one"),
    ({"depths": (2, 3)}, "largest depth"),
    ({"depths": [(2, 4)] * 3}, "stages"),
])
def test_restrict_refuses_what_is_not_a_sub_space(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ofa_mbv3_space().restrict(**kwargs)


@pytest.mark.parametrize("resolutions", ["160", 160])
def test_restrict_refuses_choices_that_are_not_a_list(resolutions: object) -> None:
    """"160" was read as the choices '1', '6' and '0'."""
    with pytest.raises(TypeError, match=f"resolutions must be a list of choices, got {resolutions!r}"):
        ofa_mbv3_space().restrict(resolutions=resolutions)


def test_restricted_depths_and_widths_keep_native_forms_working() -> None:
    mbv3 = ofa_mbv3_space().restrict(depths=(3, 4))
    assert all(s.depths == (3, 4) for s in mbv3.stages)
    for arch in mbv3.sample(1, 100):
        assert min(arch.depths) >= 3
        assert mbv3.from_native(mbv3.to_native(arch)) == arch
    resnet = ofa_resnet50_space()
    sub = resnet.restrict(widths=(0.8, 1.0), expands=(0.35,))
    for arch in sub.sample(2, 50):
        assert sub.from_native(sub.to_native(arch)) == arch == resnet.decode(
            sub.genes_in(resnet, sub.encode(arch)[None])[0])
    with pytest.raises(ValueError, match="ResNet"):
        resnet.restrict(depths=[(0, 1), (4,), (4,), (6,), (4,)])


def test_choices_that_would_print_alike_in_keys_are_refused() -> None:
    """Keys print 6 significant digits: expand choices 0.1234567 and 0.12345671 gave two subnets one key."""
    stages = (StageSpec(depths=(1, 2)),)
    with pytest.raises(ValueError, match=r"alike in their first 6 significant digits"):
        SearchSpace("near", (32,), stages, kernels=(3,), expands=(0.1234567, 0.12345671))
    with pytest.raises(ValueError, match="duplicate choices"):
        SearchSpace("twice", (32, 32), stages, kernels=(3,), expands=(1,))
    space = SearchSpace("apart", (32,), stages, kernels=(3,), expands=(0.12345, 0.12346))
    assert len({arch.key() for arch in space.enumerate()}) == len(list(space.enumerate()))
