"""The family plug-in design: families are found at run time and import in any order.

Each family lives in ``hwsearch/families/<family>/``; the generic layers
(``hwsearch.space``, ``hwsearch.costs``, ``hwsearch.supernets``) know none of
them.  These tests run fresh interpreters, because what is checked is what a
process imports, and in which order.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from hwsearch.families import family_packages
from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.families.ofa_resnet.layout import ofa_resnet50_space
from hwsearch.families.proxyless.layout import ofa_proxyless_space
from hwsearch.families.vit.layout import autoformer_space, vit_space
from hwsearch.space import ArchValidationError, SearchSpace, StageSpec
from hwsearch.supernets import build_supernet, create_supernet, list_supernets
from hwsearch.supernets.counting import check_cost_model
from tests._server import Server


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_supernet_package_loads_no_family_and_no_demo() -> None:
    out = _run("import sys, hwsearch.supernets\n"
               "print(sorted(m for m in sys.modules if m.startswith(('hwsearch.families.',"
               " 'hwsearch.demo'))))")
    assert out.strip() == "[]"


@pytest.mark.parametrize("first", ["hwsearch.demo.supernet", "hwsearch.supernets",
                                   "hwsearch.families.ofa_mbv3.supernet"])
def test_import_order_does_not_matter(first: str) -> None:
    out = _run(f"import {first}\n"
               "from hwsearch.supernets import list_supernets\n"
               "print(' '.join(list_supernets()))")
    assert {"demo_mbv3_mnist", "ofa_mbv3_d234_e346_k357_w1.0", "ofa_resnet50"} <= set(out.split())


def test_every_family_folder_registers_a_builder_and_its_supernets() -> None:
    names = list_supernets()
    for package in family_packages():
        registered = [n for n in names
                      if create_supernet(n).space.layout.__class__.__module__.startswith(package)]
        assert registered, f"{package} registers no supernet"


def test_a_family_layout_and_its_features_need_no_torch() -> None:
    out = _run("import sys\n"
               "from hwsearch.families.ofa_resnet.layout import ofa_resnet50_space\n"
               "from predictors.features import ArchFeaturizer\n"
               "s = ofa_resnet50_space()\n"
               "print(ArchFeaturizer(s).macs(s.encode_many(s.sample(0, 3))).shape,"
               " 'torch' in sys.modules)")
    assert out.split()[-1] == "False"


def test_count_and_features_share_the_family_cost_model() -> None:
    for space in (ofa_mbv3_space(resolutions=(160,)), ofa_resnet50_space(resolutions=(160,))):
        net = build_supernet(space)
        archs = space.sample(4, 3)
        table = space.layout.costs(space, space.encode_many(archs))
        assert [net.count(a).macs for a in archs] == [int(v) for v in np.round(table.macs)]
        assert [net.count(a).params for a in archs] == [int(v) for v in np.round(table.params)]


def test_a_space_without_a_layout_has_no_native_form_and_no_supernet() -> None:
    bare = SearchSpace(name="bare", resolutions=(32,), stages=(StageSpec((1, 2)),),
                       kernels=(3, 5))
    arch = bare.sample(0, 1)[0]
    with pytest.raises(ArchValidationError, match="native"):
        bare.to_native(arch)
    with pytest.raises(ArchValidationError, match="hwsearch's form"):
        bare.from_dict({"ks": [3, 3]})
    with pytest.raises(ValueError, match="no supernet family builds"):
        build_supernet(bare)


def test_a_layout_refuses_a_space_it_cannot_build() -> None:
    space = ofa_mbv3_space()
    with pytest.raises(ValueError, match="stage_widths"):
        SearchSpace(name="short", resolutions=(160,), stages=space.stages[:3],
                    kernels=space.kernels, expands=space.expands, layout=space.layout)


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("families") / "store.sqlite").start()
    yield srv
    srv.stop()


_AUTOFORMER_CONFIG = {"layer_num": 12, "embed_dim": [192] * 12, "num_heads": [4] * 12,
                      "mlp_ratio": [3.5] * 12}
_PROXYLESS_CONFIG = {"ks": [3] * 21, "e": [3] * 21, "d": [2, 2, 2, 2, 2, 1], "r": [128]}


@pytest.mark.parametrize(("registry", "options", "native"), [
    ("autoformer_tiny", {}, _AUTOFORMER_CONFIG),
    ("ofa_proxyless_d234_e346_k357_w1.3", {"resolutions": [128]}, _PROXYLESS_CONFIG),
])
def test_the_service_registers_and_exports_every_family(client: httpx.Client, registry: str,
                                                        options: dict[str, Any],
                                                        native: dict[str, Any]) -> None:
    """A new family needs no change in the service: register it, export an arch in its native form."""
    name = registry.replace("_", "-")[:40]
    registered = client.post("/supernets", json={"name": name, "registry": registry,
                                                 "options": options})
    assert registered.status_code == 201, registered.text
    export = client.post("/exports", json={"supernet": name, "arch": native})
    assert export.status_code == 201, export.text
    info = export.json()
    space = create_supernet(registry).space
    assert info["arch_key"] == space.from_dict(native).key()
    onnx.checker.check_model(onnx.load_from_string(client.get(info["download_url"]).content))
    wrong = dict(native, **{next(iter(native)): "x"})
    refused = client.post("/exports", json={"supernet": name, "arch": wrong})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "arch"]


def test_network_ids_are_those_stores_already_hold() -> None:
    """Latency rows are filed under ``network_id``; moving layouts into families must not orphan them.

    The digests are the ones every store written since device identities
    were introduced holds (computed by the code before the plug-in refactor).
    """
    from hwsearch.demo import demo_space

    assert demo_space().network_id == "demo_mbv3_mnist@714bf0f7"
    assert ofa_mbv3_space().network_id == "ofa_mbv3_d234_e346_k357_w1.0@f20ed1e6"
    assert ofa_mbv3_space(1.2).network_id == "ofa_mbv3_d234_e346_k357_w1.2@e73070c2"
    assert ofa_resnet50_space().network_id == "ofa_resnet50@9bce4e7b"


@pytest.mark.parametrize(("factory", "arguments", "named"), [
    (ofa_mbv3_space, {"n_classes": 0}, "n_classes"),
    (ofa_mbv3_space, {"n_classes": -5}, "n_classes"),
    (ofa_mbv3_space, {"n_classes": 2.5}, "n_classes"),
    (ofa_mbv3_space, {"resolutions": (0,)}, "resolutions"),
    (ofa_mbv3_space, {"resolutions": (224, 160.0)}, "resolutions"),
    (ofa_mbv3_space, {"width_mult": 0}, "width_mult"),
    (ofa_mbv3_space, {"width_mult": -1}, "width_mult"),
    (ofa_mbv3_space, {"width_mult": float("inf")}, "width_mult"),
    (ofa_mbv3_space, {"width_mult": "1.0"}, "width_mult"),
    (ofa_proxyless_space, {"width_mult": 0}, "width_mult"),
    (ofa_proxyless_space, {"n_classes": 0}, "n_classes"),
    (ofa_resnet50_space, {"resolutions": (-224,)}, "resolutions"),
    (ofa_resnet50_space, {"n_classes": -1}, "n_classes"),
    (autoformer_space, {"size": "tiny", "n_classes": 0}, "n_classes"),
])
def test_space_factories_refuse_sizes_below_one_by_name(factory: Any, arguments: dict[str, Any],
                                                        named: str) -> None:
    """Width 0 built stage widths of 8 named "w0", resolution 0 ran and 0 classes an empty head."""
    with pytest.raises(ValueError, match=named):
        factory(**arguments)


def test_vit_space_names_its_resolution() -> None:
    with pytest.raises(ValueError, match="resolution must be"):
        vit_space("v", resolution=0, patch_size=4, depths=(1,), embed_dims=(8,), heads=(1,), mlp_ratios=(2.0,))


@pytest.mark.parametrize("name", list_supernets())
def test_every_registered_family_counts_the_networks_it_builds(name: str) -> None:
    """Searches rank by the cost model and predictors read its columns; a family whose columns were named
    ``stem_flops`` left its stem out of every total, silently. New families are checked here too."""
    net = create_supernet(name)
    space = net.space
    low = min(space.resolutions)
    check_cost_model(net, [space.smallest(low), space.largest(low), *space.sample(5, 2)])


def test_a_cost_model_that_leaves_a_layer_out_is_named() -> None:
    """A family whose stem column is named ``stem_flops`` (no ``_macs``): the check names the difference, and a
    table with no MACs column at all says so."""
    import dataclasses

    from hwsearch.costs import CostTable
    from hwsearch.families.ofa_mbv3.layout import MBv3Layout

    @dataclasses.dataclass(frozen=True)
    class StemAsFlops(MBv3Layout):
        def costs(self, space: SearchSpace, X: np.ndarray) -> CostTable:
            table = super().costs(space, X)
            return CostTable({name.replace("stem_macs", "stem_flops"): v for name, v in table.columns.items()})

    demo = create_supernet("demo_mbv3_mnist").space
    layout = StemAsFlops(**{f.name: getattr(demo.layout, f.name) for f in dataclasses.fields(demo.layout)})
    net = build_supernet(dataclasses.replace(demo, layout=layout), name="stem-as-flops")
    with pytest.raises(ValueError, match=r"stem-as-flops: its family's cost model counts [\d,]+ MACs .* the "
                                         r"network it builds [\d,]+"):
        check_cost_model(net, [net.space.smallest()])
    with pytest.raises(ValueError, match=r"the cost table has no \*_macs\* column"):
        CostTable({"stem_flops": np.zeros(2)}).macs
