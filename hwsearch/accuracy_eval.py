"""Accuracy of subnets on the user's validation data, spread over Ray workers.

A subnet extracted from a supernet inherits batch-norm statistics gathered
over *all* subnets during training, which can be far off for any one of them;
OFA's recipe is to re-estimate them on a few thousand training images before
evaluating.  Here the user's data is split once into a calibration part (BN
statistics only) and a validation part (accuracy only), so the two never mix.

The supernet and the data are put into Ray's object store once; each task
evaluates a chunk of subnets and every accuracy is written to the store as
soon as its chunk returns, so a long evaluation can be resumed.

Each subnet's evaluation is one unit of compute on the host lock
(:func:`devices.hostlock.compute_unit`): it waits while a latency
measurement session runs on this host, and a waiting session keeps the next
subnet from starting, so measurements see a quiet machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hwsearch.space import ArchConfig
from hwsearch.store import Store

__all__ = ["EvalSettings", "evaluate_subnets", "subnet_accuracy"]


@dataclass(frozen=True)
class EvalSettings:
    """How many images calibrate BN, batch sizes, and how work is split."""

    n_calibration: int = 500
    batch_size: int = 64
    chunk: int = 4
    seed: int = 0
    torch_threads: int = 1


def subnet_accuracy(supernet: Any, arch: ArchConfig, calibration: Any, validation: Any,
                    settings: EvalSettings) -> float:
    """Extract ``arch``, recalibrate its BN on ``calibration``, return top-1 on ``validation``.

    Runs as one compute unit on the host lock (see the module docstring).
    """
    from devices.hostlock import compute_unit

    with compute_unit():
        return _accuracy(supernet, arch, calibration, validation, settings)


def _accuracy(supernet: Any, arch: ArchConfig, calibration: Any, validation: Any,
              settings: EvalSettings) -> float:
    import torch

    from hwsearch.bn import recalibrate_bn
    from hwsearch.data import batches

    module = supernet.extract(arch)
    calib = (x for x, _ in batches(calibration, arch.resolution, settings.batch_size))
    module = recalibrate_bn(module, calib)
    module.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in batches(validation, arch.resolution, settings.batch_size):
            correct += int((module(x).argmax(dim=1) == y).sum())
    return correct / len(validation)


def _evaluate_chunk(supernet: Any, calibration: Any, validation: Any,
                    arch_dicts: list[dict[str, Any]], settings: EvalSettings) -> list[float]:
    import torch

    torch.set_num_threads(settings.torch_threads)
    space = supernet.space
    return [subnet_accuracy(supernet, space.from_dict(d), calibration, validation, settings)
            for d in arch_dicts]


def evaluate_subnets(
    supernet: Any,
    archs: Sequence[ArchConfig],
    data: Any,
    *,
    store: Store,
    dataset_id: str,
    settings: EvalSettings = EvalSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Accuracies of ``archs`` (by key) on ``data`` (a :class:`hwsearch.data.LabelledImages`).

    Keys already stored for ``(supernet.name, dataset_id)`` are not evaluated
    again.  Starts a local Ray runtime unless one is already initialised.
    """
    import ray

    from hwsearch.ray_session import init_ray

    done = store.get_accuracies(supernet.name, dataset_id)
    todo = [a for a in archs if a.key() not in done]
    if todo:
        calibration, validation = data.split(min(settings.n_calibration, len(data) // 2),
                                             seed=settings.seed)
        init_ray()
        remote = ray.remote(num_cpus=settings.torch_threads)(_evaluate_chunk)
        net_ref, calib_ref, val_ref = (ray.put(supernet), ray.put(calibration),
                                       ray.put(validation))
        chunks = [todo[i:i + settings.chunk] for i in range(0, len(todo), settings.chunk)]
        pending = {remote.remote(net_ref, calib_ref, val_ref, [a.to_dict() for a in chunk],
                                 settings): chunk for chunk in chunks}
        finished = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(ready[0])
            for arch, accuracy in zip(chunk, ray.get(ready[0])):
                store.put_accuracy(supernet.name, dataset_id, arch.key(), accuracy)
            finished += len(chunk)
            if progress:
                progress(finished, len(todo))
    stored = store.get_accuracies(supernet.name, dataset_id)
    return {a.key(): stored[a.key()] for a in archs}
