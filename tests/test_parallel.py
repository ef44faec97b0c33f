"""Per-device searches on real Ray: placement, shared accuracies, surviving a dead worker.

Measurements come from the analytic oracle of ``tests/_search_oracle.py`` (a
deterministic roofline cost model and capacity-based accuracy proxy, not a
device) and predictors are hwsearch's real XGBoost predictors.  The store is
a real :class:`~hwsearch.store.SQLiteStore` shared by the Ray workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import _search_oracle
import pytest
from _search_oracle import OracleMeasurer, small_space, trained_predictors

from hwsearch.parallel import DeviceSearch, StoreMeasurer, search_devices
from hwsearch.refine import RefineSettings
from hwsearch.search import SearchSettings
from hwsearch.store import SQLiteStore

ray = pytest.importorskip("ray")

# Ray workers cannot import modules from tests/; ship the test helpers by value.
for _module in (sys.modules[__name__], _search_oracle):
    ray.cloudpickle.register_pickle_by_value(_module)

SETTINGS = RefineSettings(max_measurements=20, per_round=10, initial=10, seed=2,
                          search=SearchSettings(pop_size=24, n_gen=10))
RAY_ARGS = {"include_dashboard": False, "log_to_driver": False,
            "object_store_memory": 200 * 1024 * 1024}


@pytest.fixture(scope="module")
def space():
    return small_space(n_stages=2, resolutions=(224,), depths=(2, 3))


@pytest.fixture(scope="module")
def predictors(space):
    return trained_predictors(space, n=10, seed=4)


class LoggingMeasurer(OracleMeasurer):
    """Appends each latency measurement to a file, so counts survive worker processes.

    With ``die_after`` set, the first worker process to reach that many
    measurement calls kills itself (``os._exit``), as a crashed worker would.
    """

    def __init__(self, space, log: Path, die_after: int | None = None) -> None:
        super().__init__(space)
        self.log, self.die_after = log, die_after

    def measure_latency(self, archs):
        marker = self.log.with_suffix(".died")
        calls = self.log.read_text().count("\n") if self.log.exists() else 0
        if self.die_after is not None and calls >= self.die_after and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        with self.log.open("a") as f:
            f.writelines(a.key() + "\n" for a in archs)
        return super().measure_latency(archs)


class RoundLog:
    """An ``on_round`` callback that leaves one line per round in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, round_: int, observations) -> None:
        with self.path.open("a") as f:
            f.write(f"{round_} {len(observations)}\n")


def _devices(space, predictors, tmp_path, names, die_after=None):
    _, latency = predictors
    return [DeviceSearch(name=n, device_hash=f"hash-{n}", latency=latency,
                         measurer=LoggingMeasurer(space, tmp_path / f"{n}.log", die_after),
                         on_round=RoundLog(tmp_path / f"{n}.rounds"))
            for n in names]


def _logged(tmp_path, name):
    return (tmp_path / f"{name}.log").read_text().splitlines()


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, **RAY_ARGS)
    yield
    ray.shutdown()


def test_each_device_gets_a_measured_front_from_its_own_task(space, predictors, tmp_path,
                                                             local_ray):
    store = SQLiteStore(tmp_path / "store.db")
    runs = search_devices(space, predictors[0], _devices(space, predictors, tmp_path, ["a", "b"]),
                          store=store, supernet_id="net", dataset_id="val", settings=SETTINGS)
    assert set(runs) == {"a", "b"}
    for name, run in runs.items():
        logged = _logged(tmp_path, name)
        assert len(logged) == len(set(logged)) == 20
        assert set(store.get_latencies(f"hash-{name}", space.network_id)) == set(logged)
        assert run.result.front.points and run.result.front.device == name
        assert {p.arch.key() for p in run.result.front.points} <= set(logged)
        assert (tmp_path / f"{name}.rounds").read_text().splitlines() == ["1 10"]
    assert runs["a"].attempt_pid != os.getpid()


def test_a_store_the_workers_cannot_share_is_refused_before_ray_starts(space, predictors, tmp_path):
    """A MemoryStore was copied into each worker: the run 'succeeded' and the caller's store stayed empty."""
    import ray

    from hwsearch.store import MemoryStore

    assert not ray.is_initialized()
    with pytest.raises(ValueError, match=r"store: a MemoryStore is copied into each Ray worker"):
        search_devices(space, predictors[0], _devices(space, predictors, tmp_path, ["a"]), store=MemoryStore(),
                       supernet_id="net", dataset_id="val", settings=SETTINGS)
    with pytest.raises(ValueError, match="devices: give at least one device"):
        search_devices(space, predictors[0], [], store=SQLiteStore(tmp_path / "store.db"), supernet_id="net",
                       dataset_id="val", settings=SETTINGS)
    assert not ray.is_initialized() and not (tmp_path / "a.log").exists()


def test_a_dead_worker_is_retried_and_keeps_what_it_measured(space, predictors, tmp_path,
                                                             local_ray):
    store = SQLiteStore(tmp_path / "store.db")
    devices = _devices(space, predictors, tmp_path, ["a"], die_after=10)
    runs = search_devices(space, predictors[0], devices, store=store, supernet_id="net",
                          dataset_id="val", settings=SETTINGS, max_retries=2)
    died_pid = int((tmp_path / "a.died").read_text())
    logged = _logged(tmp_path, "a")
    assert runs["a"].attempt_pid != died_pid
    assert runs["a"].reused == 10  # the cold-start design survived in the store
    assert len(logged) == len(set(logged)) == 20  # nothing measured twice, budget kept
    assert len(runs["a"].result.observations) == 20


def test_accuracy_measured_for_one_device_serves_the_others(space, tmp_path):
    store = SQLiteStore(tmp_path / "store.db")
    archs = space.sample(3, 5)
    archs = list({a.key(): a for a in archs}.values())
    first, second = OracleMeasurer(space), OracleMeasurer(space)
    common = {"store": store, "space_name": space.name, "supernet_id": "net", "dataset_id": "val"}
    acc_a = StoreMeasurer(first, device_hash="a", **common).measure_accuracy(archs)
    counted = []
    second.measure_accuracy = lambda todo: counted.extend(todo) or []
    acc_b = StoreMeasurer(second, device_hash="b", **common).measure_accuracy(archs)
    assert acc_a == acc_b and counted == []


def test_on_a_multi_node_cluster_each_device_task_runs_on_its_devices_node(space, predictors,
                                                                           tmp_path):
    """Three raylets on this machine: a head without devices and one node per device."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {name: cluster.add_node(num_cpus=1, resources={f"device:{name}": 1})
             for name in ("a", "b")}
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        store = SQLiteStore(tmp_path / "store.db")
        runs = search_devices(space, predictors[0],
                              _devices(space, predictors, tmp_path, ["a", "b"]), store=store,
                              supernet_id="net", dataset_id="val", settings=SETTINGS)
        for name, node in nodes.items():
            assert runs[name].node_id == node.node_id
            assert len(set(_logged(tmp_path, name))) == 20
        assert runs["a"].node_id != runs["b"].node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_row_a_killed_run_left_pending_is_measured_again_not_reused(space, tmp_path):
    """It waited for an anchor's verdict that never came; refinement took it as measured, uncorrected."""
    store = SQLiteStore(tmp_path / "store.db")
    pending, finished = list({a.key(): a for a in space.sample(4, 6)}.values())[:2]
    for arch, extra in ((pending, {"anchor_pending": True, "stable": False}), (finished, {"stable": True})):
        store.put_latency("a", space.name, arch.key(),
                          {"latency_ms": 99.0, "median_ms": 99.0, "arch": arch.to_dict(), **extra})
        store.put_accuracy("net", "val", arch.key(), 0.5)
    oracle, measured = OracleMeasurer(space), []
    truth = oracle.measure_latency
    oracle.measure_latency = lambda todo: measured.extend(todo) or truth(todo)
    measurer = StoreMeasurer(oracle, store=store, device_hash="a", space_name=space.name,
                             supernet_id="net", dataset_id="val")
    assert [o.arch.key() for o in measurer.known(space)] == [finished.key()]
    assert measurer.measure_latency([pending, finished]) == [truth([pending])[0], 99.0]
    assert measured == [pending]
