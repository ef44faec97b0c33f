"""A job puts its supernet and data into Ray's object store once, however many rounds refine its fronts.

What is put is read from Ray itself: the raylets' cumulative count of bytes
created in the object store, which counts every put, by the driver or by any
worker (a device task's evaluations included), and nothing of ours is
wrapped.  The ruler is one copy of the job's supernet put the same way.
Before the job's references were handed to every evaluation, each
refinement round put the supernet and both data parts again (as did each
precision's initial evaluation), so the store received one more copy per
round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwsearch.accuracy_eval import EvalSettings, evaluate_subnets
from hwsearch.evaldata import DataPlan
from hwsearch.jobs import run_job
from hwsearch.jobs.spec import SupernetRef, build_supernet
from hwsearch.ray_session import init_ray
from hwsearch.store import MemoryStore, SQLiteStore
from tests._jobs import SUPERNET, fast_device, random_dataset, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    import ray

    init_ray()
    yield
    ray.shutdown()


def created_bytes() -> int:
    """Bytes created in the object store of the whole (local) cluster since Ray started."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    return int(get_memory_info_reply(state).store_stats.cumulative_created_bytes)


def one_copy(obj: object) -> int:
    """What putting ``obj`` once adds to the object store."""
    import ray

    before = created_bytes()
    ref = ray.put(obj)
    size = created_bytes() - before
    del ref
    return size


def test_refinement_rounds_reuse_the_supernet_and_data_the_job_put_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    # 4 profiled, then 9 refined at most 8 a round: at least two rounds, each evaluating accuracy.
    spec = tiny_spec(random_dataset(tmp_path / "val.npz"), [fast_device("cpu-1t")], n_profile=4, budget=9)
    job_id = store.create_job(spec.to_dict())
    before = created_bytes()
    result = run_job(spec, store=store, job_id=job_id)
    during = created_bytes() - before
    net = one_copy(build_supernet(spec.supernet))
    assert result["devices"]["cpu-1t"]["rounds"] >= 2
    assert net <= during < 2 * net, (
        f"the job put {during / 1e6:.1f} MB into the object store; one supernet is {net / 1e6:.1f} MB")


def test_evaluations_handed_refs_put_nothing_again(tmp_path: Path) -> None:
    from hwsearch.accuracy_eval import put_eval  # here: the job's test above also runs on code without it
    from hwsearch.onnx_accuracy import evaluate_precision

    net = build_supernet(SupernetRef(**SUPERNET))
    data = DataPlan(str(random_dataset(tmp_path / "val.npz", n=80)), n_calibration=32).open(size=32)
    settings, store = EvalSettings(batch_size=8), MemoryStore()
    refs = put_eval(net, data, settings)
    before = created_bytes()
    for precision, arch in (("fp32", net.space.smallest()), ("int8", net.space.largest())):
        evaluate_precision(net, [arch], data, store=store, dataset_id="random", precision=precision,
                           settings=settings, refs=refs)
    assert created_bytes() - before < one_copy(net) / 10
    with pytest.raises(ValueError, match="put for supernet 'another'"):
        evaluate_subnets(net, [net.space.largest()], data, store=store, dataset_id="random",
                         refs=dataclasses.replace(refs, supernet_name="another"))
