"""A job spec read from plain data (the library's ``run_job`` input, a stored record) names what is wrong.

Read leniently, a misspelt ``n_profiles`` was dropped (40 subnets profiled
instead of 4), ``n_profile: 2.9`` became 2, a limit ``{"uper": 50}`` failed
the job 21.7 s in, at its fitting step, and ``devices: "cpu-1t"`` raised a
message about dictionary update sequences (Y15).
"""

from __future__ import annotations

from typing import Any

import pytest

from hwsearch.jobs import JobSpec, ProfileSpec, spec_from_dict
from hwsearch.jobs.reading import SpecError
from tests._jobs import SUPERNET, fast_device, tiny_spec

BASE = {"supernet": SUPERNET, "devices": [fast_device("cpu-1t")], "dataset": "/data/val.npz", "n_profile": 4}


@pytest.mark.parametrize("change, says", [
    ({"n_profiles": 4}, "job spec has no field 'n_profiles'"),
    ({"n_profile": 2.9}, "n_profile must be a whole number, got 2.9"),
    ({"n_profile": True}, "n_profile must be a whole number, got True"),
    ({"n_profile": -3}, "n_profile must be ≥ 1, got -3"),
    ({"budget": float("nan")}, "budget must be a whole number"),
    ({"seed": "7"}, "seed must be a whole number, got '7'"),
    ({"devices": "cpu-1t"}, "devices must be a list of mappings, got str"),
    ({"devices": fast_device("cpu-1t")}, "devices must be a list of mappings, got dict"),
    ({"devices": []}, "devices must hold at least 1"),
    ({"supernet": "tiny-mbv3"}, "supernet must be a mapping, got str"),
    ({"supernet": {**SUPERNET, "checkpont": "/w.pt"}}, "supernet has no field 'checkpont'"),
    ({"supernet": {**SUPERNET, "options": [1]}}, "supernet.options must be a mapping"),
    ({"limits": [{"metric": "latency_ms", "uper": 50}]}, "limits[0] has no field 'uper'"),
    ({"limits": [{"metric": "bogus", "upper": 5}]}, "limits[0].metric must be one of"),
    ({"limits": [{"metric": "latency_ms", "upper": float("nan")}]}, "limits[0]: Limit upper"),
    ({"limits": {"metric": "latency_ms", "upper": 5}}, "limits must be a list of mappings"),
    ({"targets": [1, 2]}, "targets must be a mapping, got list"),
    ({"targets": {"cpu-1t": {"budget_ms": [5.0]}}}, "targets['cpu-1t'] has no field 'budget_ms'"),
    ({"dataset": 5}, "dataset must be text or null, got int"),
    ({"kind": "bogus"}, "kind must be 'search'"),
])
def test_a_malformed_job_spec_is_refused_naming_its_field(change: dict[str, Any], says: str) -> None:
    with pytest.raises(SpecError) as refused:
        JobSpec.from_dict({**BASE, **change})
    assert says in str(refused.value)


@pytest.mark.parametrize("change, says", [
    ({"arch": [1, 2]}, "arch must be a mapping, got list"),
    ({"device": "cpu-1t"}, "device must be a mapping, got str"),
    ({"precision": None}, "precision None is not one of"),
    ({"archs": {}}, "profile spec has no field 'archs'"),
])
def test_a_malformed_profile_spec_is_refused_naming_its_field(change: dict[str, Any], says: str) -> None:
    data = {"kind": "profile", "supernet": SUPERNET, "device": fast_device("cpu-1t"), "arch": {}, **change}
    with pytest.raises(ValueError) as refused:
        spec_from_dict(data)
    assert says in str(refused.value)


def test_a_spec_reads_back_what_it_wrote(tmp_path: Any) -> None:
    spec = tiny_spec(tmp_path / "val.npz", [fast_device("cpu-1t")], n_profile=4, budget=2, seed=3)
    limited = JobSpec.from_dict({**spec.to_dict(), "limits": [{"metric": "latency_ms", "upper": 5.0}],
                                 "targets": {"cpu-1t": {"budgets_ms": [2.0], "band_ms": None}}})
    assert JobSpec.from_dict(limited.to_dict()) == limited
    profile = ProfileSpec(supernet=spec.supernet, device=fast_device("cpu-1t"), arch={"r": 32})
    assert spec_from_dict(profile.to_dict()) == profile
