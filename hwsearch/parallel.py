"""Ray fan-out of per-device searches: one task per device, shared data sent once.

A job has one supernet and several devices; each device gets its own
refinement run (:func:`hwsearch.refine.refine`).  The runs are independent,
so they go out as one Ray task per device:

* The space and the accuracy predictor are ``ray.put`` once and shared by
  every task; each device's latency predictor and measurer travel with its
  task.  Nothing is sent per individual: a task evaluates whole populations
  locally (the grain pymoo's ``RayParallelization`` gets wrong).
* A device whose custom resource ``device:<name>`` lives on some node gets its
  task pinned to that node (node affinity; the resource itself stays free for
  the device's :class:`devices.ray_pool.DeviceActor`).  Without such a node the
  task goes wherever Ray puts it.
* Every measurement goes into the :class:`~hwsearch.store.Store` the moment it
  is made.  A task whose worker dies is retried (``max_retries``); the retry
  reads back what the store holds and measures only what is missing.
  Accuracies are keyed by supernet and dataset, not device, so one device's
  accuracy measurement serves every device of the job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from hwsearch.acquisition import LatencyTargets
from hwsearch.problem import Limit
from hwsearch.pipeline import finished_keys, finite_latencies
from hwsearch.ray_session import init_ray, refuse_foreign_code
from hwsearch.refine import (
    Measurer,
    Observation,
    RefineResult,
    RefineSettings,
    TrainablePredictor,
    refine,
)
from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace
from hwsearch.store import Store

__all__ = ["DeviceRun", "DeviceSearch", "StoreMeasurer", "check_store_for_refinement", "device_resource", "init_ray",
           "search_devices"]


def device_resource(name: str) -> str:
    """The custom resource that stands for a device (as :mod:`devices.ray_pool` declares it)."""
    return f"device:{name}"


@dataclass(frozen=True)
class DeviceSearch:
    """What one device's task needs besides the shared space and accuracy predictor.

    ``on_round`` (picklable) runs in the task after every refinement round:
    the place for progress reports and cancellation checks.  ``compute``
    (picklable) is the context each round's fitting and searching run in,
    e.g. the host's compute lock, so they pause while a session measures.
    ``targets`` are the latencies the user will pick from on this device.
    """

    name: str
    device_hash: str
    latency: TrainablePredictor
    measurer: Measurer
    limits: tuple[Limit, ...] = ()
    reference_point: tuple[float, ...] | None = None
    on_round: Callable[[int, Sequence[Observation]], None] | None = None
    compute: Callable[[], AbstractContextManager[Any]] = nullcontext
    targets: LatencyTargets = LatencyTargets()


@dataclass(frozen=True)
class DeviceRun:
    """A device's outcome: its refinement result and where and how it ran."""

    device: str
    result: RefineResult
    node_id: str
    attempt_pid: int
    seconds: float = 0.0
    reused: int = 0


class StoreMeasurer:
    """Puts every measurement into the store as it is made and reuses what is already there.

    Latencies are looked up by device; accuracies by supernet and dataset, so
    any device's earlier accuracy measurement of a subnet is reused.  A row an
    inner measurer already wrote (the profiling pipeline writes full
    ``Measurement`` rows) is never overwritten with a thinner one.  Latencies
    are read as predictors, front labels and reports read them
    (:func:`~hwsearch.pipeline.finite_latencies`: corrected against the
    anchor's norm of now, a raw median where no ratio could be made), so a
    front point's latency is the one its ``stable`` label judged.
    """

    def __init__(self, inner: Measurer, store: Store, *, device_hash: str, space_name: str,
                 supernet_id: str, dataset_id: str) -> None:
        self.inner, self.store = inner, store
        self.device_hash, self.space_name = device_hash, space_name
        self.supernet_id, self.dataset_id = supernet_id, dataset_id

    def measure_latency(self, archs: Sequence[ArchConfig]) -> list[float]:
        finished = finished_keys(self.store, self.device_hash, self.space_name)
        todo = [a for a in archs if a.key() not in finished]
        measured = self.inner.measure_latency(todo) if todo else []
        finished = finished_keys(self.store, self.device_hash, self.space_name)  # the rows the inner one wrote
        for arch, value in zip(todo, measured):
            if arch.key() not in finished:
                self.store.put_latency(self.device_hash, self.space_name, arch.key(),
                                       {"latency_ms": float(value), "arch": arch.to_dict()})
                finished.add(arch.key())
        # Every row, as it stands: one that another run is measuring again just now may be pending.
        have = finite_latencies(self.store, self.device_hash, self.space_name)
        return [float(have[a.key()]["latency_ms"]) for a in archs]

    def measure_accuracy(self, archs: Sequence[ArchConfig]) -> list[float]:
        have = self.store.get_accuracies(self.supernet_id, self.dataset_id)
        todo = [a for a in archs if a.key() not in have]
        for arch, value in zip(todo, self.inner.measure_accuracy(todo) if todo else []):
            self.store.put_accuracy(self.supernet_id, self.dataset_id, arch.key(), float(value))
        have = self.store.get_accuracies(self.supernet_id, self.dataset_id)
        return [float(have[a.key()]) for a in archs]

    def known(self, space: SearchSpace) -> list[Observation]:
        """Subnets with both a latency on this device and an accuracy: a retry's head start."""
        accuracies = self.store.get_accuracies(self.supernet_id, self.dataset_id)
        out = []
        rows = finite_latencies(self.store, self.device_hash, self.space_name)
        for key, row in sorted(rows.items()):
            if key not in accuracies or "arch" not in row or row.get("anchor_pending"):  # pending: measured again
                continue
            try:
                arch = space.from_dict(row["arch"])
            except ArchValidationError:
                continue
            out.append(Observation(arch, float(accuracies[key]), float(row["latency_ms"])))
        return out


def check_store_for_refinement(store: Store, budget: int) -> None:
    """Refuse a store Ray's workers cannot reach, or cannot write into when refinement will measure (``budget`` > 0).

    A :class:`~hwsearch.store.MemoryStore` is copied into each worker, and
    every measurement refinement made was lost with the copy; with no budget
    the workers write nothing, and such a store serves.  A store that cannot
    be pickled cannot reach the workers at all: it failed after profiling
    and accuracy, in an error that named a ``DeviceSearch``, not the store.
    """
    from ray import cloudpickle

    try:
        cloudpickle.dumps(store)
    except Exception as error:  # whatever the store's own pickling raises
        raise ValueError(f"store: a {type(store).__name__} cannot be sent to Ray's workers, which search and "
                         f"measure with it ({type(error).__name__}: {error}); give a store that pickles "
                         "(SQLiteStore pickles as its path)") from None
    if budget > 0 and not store.shared_across_processes:
        raise ValueError(f"store: a {type(store).__name__} is copied into each Ray worker, so what refinement "
                         f"measures (budget {budget}) would be lost; give a store that processes share "
                         "(SQLiteStore), or budget 0")


def search_devices(
    space: SearchSpace,
    accuracy: TrainablePredictor,
    devices: Sequence[DeviceSearch],
    *,
    store: Store,
    supernet_id: str,
    dataset_id: str,
    settings: RefineSettings = RefineSettings(),
    address: str | None = None,
    max_retries: int = 2,
    num_cpus: float = 1.0,
) -> dict[str, DeviceRun]:
    """Run every device's refinement as one Ray task and wait for all; runs by device name.

    The tasks write their measurements into ``store`` from Ray's workers, so
    it must be one that processes share (``SQLiteStore``) unless ``settings``
    allow no measurement (:func:`check_store_for_refinement`).
    """
    import ray

    check_store_for_refinement(store, settings.max_measurements)
    if not devices:
        raise ValueError("devices: give at least one device to search for")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError(f"device names must be unique, got {names}")
    init_ray(address)
    shared = ray.put({"space": space, "accuracy": accuracy})
    task = ray.remote(max_retries=max_retries, num_cpus=num_cpus)(_device_task)
    refs = {}
    for d in devices:
        # What the store held before this job: the budget counts only what is measured after.
        baseline = len(_store_measurer(d, store, space, supernet_id, dataset_id).known(space))
        refs[d.name] = task.options(scheduling_strategy=_placement(d.name)).remote(
            shared, d, store, supernet_id, dataset_id, settings, baseline)
    return {name: ray.get(ref) for name, ref in refs.items()}


def _placement(name: str) -> Any:
    """Pin to the (alive) node that declares ``device:<name>``; otherwise let Ray choose."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    resource = device_resource(name)
    for node in ray.nodes():
        if node.get("Alive") and resource in node.get("Resources", {}):
            return NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
    return "DEFAULT"


def _store_measurer(device: DeviceSearch, store: Store, space: SearchSpace, supernet_id: str,
                    dataset_id: str) -> StoreMeasurer:
    return StoreMeasurer(device.measurer, store, device_hash=device.device_hash,
                         space_name=space.network_id, supernet_id=supernet_id, dataset_id=dataset_id)


def _device_task(shared: Mapping[str, Any], device: DeviceSearch, store: Store,
                 supernet_id: str, dataset_id: str, settings: RefineSettings,
                 baseline: int) -> DeviceRun:
    """One device's search, inside a Ray worker: resume from the store, refine, report.

    ``baseline`` is how many observations the store held before the job; a
    retry charges what earlier attempts measured (the rest) to the same budget.
    """
    import ray

    refuse_foreign_code()
    start = time.perf_counter()
    space: SearchSpace = shared["space"]
    measurer = _store_measurer(device, store, space, supernet_id, dataset_id)
    known = measurer.known(space)
    budget = max(settings.max_measurements - (len(known) - baseline), 0)
    result = refine(space, shared["accuracy"], device.latency, measurer, device=device.name,
                    settings=replace(settings, max_measurements=budget), known=known,
                    limits=device.limits, reference_point=device.reference_point,
                    on_round=device.on_round, compute=device.compute, targets=device.targets)
    return DeviceRun(device=device.name, result=result,
                     node_id=ray.get_runtime_context().get_node_id(), attempt_pid=os.getpid(),
                     seconds=time.perf_counter() - start, reused=len(known))
