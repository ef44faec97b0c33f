"""``hwsearch search`` is discovered, documents its options and rejects bad input before any work.

A whole search job through the CLI (profiling, accuracy, Ray) is exercised by
the demo and service end-to-end tests, which run the same ``run_job``.
"""

from __future__ import annotations

from typer.testing import CliRunner

from hwsearch.cli.main import app

runner = CliRunner()


def test_search_command_is_registered_with_its_options():
    result = runner.invoke(app, ["search", "--help"])
    assert result.exit_code == 0
    for option in ("--supernet", "--device", "--data", "--budget-ms", "--ray-address", "--out",
                   "--json"):
        assert option in result.output


def test_a_missing_device_profile_is_reported_by_name(tmp_path):
    result = runner.invoke(app, ["search", "--supernet", "ofa_mbv3_d234_e346_k357_w1.0",
                                 "--device", str(tmp_path / "nope.yaml"), "--data", str(tmp_path)])
    assert result.exit_code != 0
    assert "nope.yaml" in result.output
