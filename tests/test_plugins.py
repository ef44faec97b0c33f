"""A supernet family kept in a package of its own, found through its ``hwsearch.supernets`` entry point.

Probe Z9 found that a family registered from outside the package worked in
the process that imported it, but a service's job failed after its 202: the
Ray workers rebuild supernets by name and had never imported it.  A family
package now names its registering module as an entry point, and every
process loads it.  These tests install a real (if minimal) distribution: a
package and the ``.dist-info`` folder pip writes for it, on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import pytest

from tests._jobs import random_dataset
from tests._server import Server
from tests.test_api_job import run_one_device_job
from tests.test_cli_errors import run_cli

PLUGIN_SUPERNET = textwrap.dedent('''
    """A family of its own: the demo's MobileNetV3 layout under another family name, built outside hwsearch."""
    from __future__ import annotations

    import dataclasses
    from dataclasses import dataclass
    from typing import ClassVar

    from hwsearch.demo import demo_space
    from hwsearch.families.ofa_mbv3.layout import MBv3Layout
    from hwsearch.families.ofa_mbv3.supernet import OFAMobileNetV3
    from hwsearch.supernets import Supernet, build_supernet, register_builder, register_supernet


    @dataclass(frozen=True)
    class OutsideLayout(MBv3Layout):
        family: ClassVar[str] = "outside_mbv3"


    @register_builder(OutsideLayout.family)
    def build(space, dropout_rate=0.0):
        return OFAMobileNetV3(space, dropout_rate)


    @register_supernet("outside_tiny")
    def outside_tiny(n_classes=None):
        """A demo-sized MobileNetV3 from a plug-in package."""
        base = demo_space()
        fields = {f.name: getattr(base.layout, f.name) for f in dataclasses.fields(base.layout)}
        if n_classes is not None:
            fields["n_classes"] = n_classes
        space = dataclasses.replace(base, name="outside_tiny", layout=OutsideLayout(**fields))
        return build_supernet(space, name="outside_tiny")
''')


def install_plugin(root: Path, module_source: str, *, package: str = "outside_family") -> Path:
    """Write ``package`` and its ``.dist-info`` (as pip would) under ``root``; return ``root`` for PYTHONPATH."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "supernet.py").write_text(module_source)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hwsearch.supernets]\n{package} = {package}.supernet\n")
    return root


@pytest.fixture()
def plugin(tmp_path: Path) -> Path:
    return install_plugin(tmp_path / "site", PLUGIN_SUPERNET)


def test_an_installed_family_is_listed_without_being_imported(plugin: Path, tmp_path: Path) -> None:
    result = run_cli("supernets", "list", "--json", cwd=tmp_path, extra_env={"PYTHONPATH": str(plugin)})
    assert result.returncode == 0, result.stderr
    names = {row["name"]: row["description"] for row in json.loads(result.stdout)}
    assert names["outside_tiny"] == "A demo-sized MobileNetV3 from a plug-in package."
    assert "demo_mbv3_mnist" in names


def test_a_broken_plugin_is_named_and_leaves_the_built_in_families_working(tmp_path: Path) -> None:
    broken = install_plugin(tmp_path / "site", "import a_module_that_is_not_installed\n", package="broken_family")
    env = {"PYTHONPATH": str(broken)}
    listed = run_cli("supernets", "list", "--json", cwd=tmp_path, extra_env=env)
    assert listed.returncode == 0, listed.stderr
    assert "demo_mbv3_mnist" in {row["name"] for row in json.loads(listed.stdout)}
    assert "broken_family = broken_family.supernet" in listed.stderr
    assert "a_module_that_is_not_installed" in listed.stderr and "Traceback" not in listed.stderr

    asked = run_cli("export", "--supernet", "outside_tiny", "--out", str(tmp_path / "x.onnx"), cwd=tmp_path,
                    extra_env=env)
    assert asked.returncode == 2, asked.stderr
    assert "unknown supernet 'outside_tiny'" in asked.stderr
    assert "plug-in 'broken_family = broken_family.supernet' failed to load" in asked.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_a_plugin_family_searches_in_the_services_ray_workers(plugin: Path, tmp_path: Path) -> None:
    """The whole job runs in Ray workers that import nothing of the user's: the entry point is all they have.

    (``hwsearch search``'s workers rebuild the supernet by name the same way; one service job keeps the suite short.)
    """
    dataset = random_dataset(tmp_path / "val.npz")
    server = Server(tmp_path / "store.sqlite", env={"PYTHONPATH": str(plugin)}).start()
    try:
        with server.client() as client:
            job = run_one_device_job(client, "outside_tiny", dataset, budget=1)
            assert job["state"] == "succeeded", job
            assert job["result"]["space_name"] == "outside_tiny"
            assert _front_points(client, job["id"]) >= 1
    finally:
        server.stop()


def _front_points(client: httpx.Client, job_id: str) -> int:
    """How many points the job's front for device ``cpu`` holds, read over HTTP."""
    response = client.get(f"/jobs/{job_id}/fronts/cpu")
    assert response.status_code == 200, response.text
    return len(response.json()["points"])
