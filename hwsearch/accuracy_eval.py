"""Accuracy of subnets on the user's validation data, spread over Ray workers.

A subnet extracted from a supernet inherits batch-norm statistics gathered
over *all* subnets during training, which can be far off for any one of them;
OFA's recipe is to re-estimate them on a few thousand training images before
evaluating.  Here the user's data is split once into a calibration part (BN
statistics only) and a validation part (accuracy only), so the two never mix.

The supernet and the data are put into Ray's object store once per call;
each task evaluates a chunk of subnets and every accuracy is written to the
store as soon as its chunk returns, so a long evaluation can be resumed.
A caller that evaluates again and again on the same supernet and data (a
job's stages and refinement rounds) puts them once with :func:`put_eval`
and hands the :class:`EvalRefs` to every call: a supernet of tens of MB
and a whole validation set are then not copied into the store once per call.

Each subnet's evaluation is one unit of compute on the host lock
(:func:`devices.hostlock.compute_unit`): it waits while a latency
measurement session runs on this host, and a waiting session keeps the next
subnet from starting, so measurements see a quiet machine.

Evaluation runs on a GPU when the Ray cluster has one (:func:`choose_placement`:
each task asks Ray for ``num_gpus``, scores with a larger batch and decodes a
streamed folder with several threads) and on CPU otherwise; a task given a GPU
that torch cannot use falls back to the CPU and says so in its report.  BN is
always recalibrated at ``batch_size``, whatever the device: its statistics are
averages of per-batch variances, so a larger calibration batch would change
the accuracy, while scoring in eval mode does not depend on the batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hwsearch.space import ArchConfig
from hwsearch.store import Store

__all__ = ["EvalRefs", "EvalSettings", "NonFiniteLogits", "Placement", "check_eval_data", "choose_placement",
           "cpu_placement", "evaluate_subnets", "put_eval", "refs_for", "subnet_accuracy", "torch_device"]

log = logging.getLogger(__name__)


class NonFiniteLogits(ValueError):
    """A subnet's outputs on the validation images are NaN or infinite: no accuracy can be read from them."""

ReportFn = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class EvalSettings:
    """How many images calibrate BN, batch sizes, where evaluation runs and how work is split.

    ``n_calibration`` and ``seed`` split plain data (an :class:`EvalSplit`
    comes split already).  ``device``: ``auto`` uses a GPU when the Ray
    cluster has one, ``cpu`` never does, ``cuda`` insists on one.  On a GPU,
    validation batches are ``gpu_batch_size`` images and a streamed folder
    is decoded by ``gpu_loader_threads`` threads (the task reserves as many
    CPUs, at most the cluster's).
    """

    n_calibration: int = 500
    batch_size: int = 64
    chunk: int = 4
    seed: int = 0
    torch_threads: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_batch_size: int = 256
    gpu_loader_threads: int = 4


@dataclass(frozen=True)
class Placement:
    """What each evaluation task asks Ray for, and how it feeds its device."""

    use_gpu: bool
    num_cpus: int
    num_gpus: float
    batch_size: int
    loader_threads: int


@dataclass(frozen=True)
class EvalRefs:
    """The supernet and the data's two parts, each put into Ray's object store once (:func:`put_eval`).

    Evaluation tasks take these references as they are, so every call that
    is handed them reuses the same objects instead of putting its own
    copies.  ``supernet_name`` is what accuracies are filed under: a call
    refuses references of another supernet rather than file one network's
    accuracies under another's name.  Picklable: a Ray task that receives
    them can hand them on to the evaluation tasks it starts.
    """

    supernet_name: str
    supernet: Any  # ray.ObjectRef of the Supernet
    calibration: Any  # ray.ObjectRef of the BN calibration images
    validation: Any  # ray.ObjectRef of the validation images
    n_images: int = 0  # calibration and validation images together: each subnet's forward passes

    def check(self, supernet: Any) -> None:
        """Refuse references that were put for another supernet than ``supernet``."""
        if self.supernet_name != supernet.name:
            raise ValueError(f"evaluation references were put for supernet '{self.supernet_name}', "
                             f"not '{supernet.name}'")


def put_eval(supernet: Any, data: Any, settings: EvalSettings = EvalSettings()) -> EvalRefs:
    """Put ``supernet`` and ``data``'s calibration and validation parts into Ray's object store once.

    ``data`` is split as :func:`evaluate_subnets` splits it with the same
    ``settings`` (an :class:`~hwsearch.evaldata.EvalSplit` comes split), so
    the references stand for exactly what a call without them would put.
    Starts a local Ray runtime unless one is already initialised; the objects
    live as long as the returned references do.
    """
    import ray

    from hwsearch.ray_session import init_ray

    calibration, validation = _split(data, settings)
    init_ray()
    return EvalRefs(supernet.name, ray.put(supernet), ray.put(calibration), ray.put(validation),
                    len(calibration) + len(validation))


def check_eval_data(supernet: Any, data: Any) -> None:
    """Refuse data no accuracy of ``supernet`` can be read from; call it before any work, as jobs and the CLI do.

    :func:`evaluate_subnets` calls it too (stored accuracies of such data are
    no better than new ones); :func:`put_eval` only puts what it is given.

    ``data`` is what :func:`evaluate_subnets` takes.  Refused, of the
    validation images (calibration's labels are never read): labels that
    reach past the classes the supernet's head predicts (a label it has no
    output for is never predicted: a job on labels up to 999 for a 10-class
    head succeeded), folders of fewer ImageNet
    WordNet ids than the head has classes (sorted, they are not the head's
    indices; :func:`hwsearch.imagefolder.is_wordnet_subset`), and a folder
    of one named class folder (a root holding one ``images/`` folder
    labelled every image 0, whatever its class); of the calibration images,
    in-memory ones of one value per channel (all zeros, say: batch norm
    recalibrated on them divides by its epsilon alone, and every subnet
    scored the same guess).  A streamed
    folder's images are read only as they are evaluated; its labels are
    checked here.
    """
    from hwsearch.bn import ONE_VALUE_PER_CHANNEL, one_value_per_channel
    from hwsearch.data import LabelledImages
    from hwsearch.evaldata import EvalSplit

    calibration, validation = (data.calibration, data.validation) if isinstance(data, EvalSplit) else (data, data)
    predicted = getattr(supernet.space.layout, "n_classes", None)  # a space without a layout states none
    if predicted is not None and len(validation):  # calibration's labels are never read: only its images
        _check_labels(supernet.name, validation, predicted)
    if isinstance(calibration, LabelledImages) and len(calibration) and one_value_per_channel(calibration.x):
        raise ValueError(ONE_VALUE_PER_CHANNEL)


def _check_labels(supernet: str, validation: Any, predicted: int) -> None:
    """Refuse validation labels no accuracy can be read from: past the head, or numbered by a guess.

    Only validation's: a calibration folder of one named sub-folder (a slice
    of the training set) re-estimates batch norm whatever its labels, and was
    refused as labelling every image 0.
    """
    from hwsearch.imagefolder import is_wordnet_subset

    labelled = int(np.max(np.asarray(validation.y))) + 1
    if labelled > predicted:
        raise ValueError(f"the dataset's labels reach class {labelled - 1} but supernet {supernet!r} "
                         f"predicts {predicted} classes: give data of its classes, or a supernet whose head "
                         f"has {labelled} (a service registers one with options.n_classes)")
    classes = validation.classes
    if is_wordnet_subset(classes, predicted):
        raise ValueError(f"{validation.source}: its {len(classes)} class folders are ImageNet WordNet ids, "
                         f"numbered 0..{len(classes) - 1} in sorted order, which are not their indices "
                         f"among the {predicted} classes supernet {supernet!r} predicts: name each "
                         "folder by its class index (e.g. 0, 17, 999), or give all of its classes")
    if predicted > 1 and len(classes) == 1 and not classes[0].isdecimal():
        raise ValueError(f"{validation.source}: its one class folder {classes[0]!r} labels every image class 0 of "
                         f"the {predicted} supernet {supernet!r} predicts: give the images of each class in "
                         "a folder of its own, or name the folder by its class index (e.g. 17)")


def choose_placement(settings: EvalSettings, cluster: Mapping[str, float]) -> Placement:
    """GPU tasks when the cluster (``ray.cluster_resources()``) has a GPU and settings allow, else CPU."""
    has_gpu = cluster.get("GPU", 0.0) >= 1.0
    if settings.device == "cuda" and not has_gpu:
        raise ValueError("device 'cuda' was asked for, but the Ray cluster has no GPU")
    if settings.device == "cpu" or not has_gpu:
        return cpu_placement(settings)
    threads = max(1, min(settings.gpu_loader_threads, int(cluster.get("CPU", 1.0))))
    return Placement(True, threads, 1.0, settings.gpu_batch_size, threads)


def cpu_placement(settings: EvalSettings) -> Placement:
    """A CPU task of ``torch_threads``, scoring at ``batch_size``, decoding on one thread."""
    return Placement(False, settings.torch_threads, 0.0, settings.batch_size, 1)


def torch_device(placement: Placement) -> str:
    """``cuda`` when the task was given a GPU and torch can use it; ``cpu`` otherwise.

    A GPU node whose torch lacks CUDA still evaluates (slowly, on its CPU)
    rather than failing the job; the chunk's report names the device used.
    """
    import torch

    return "cuda" if placement.use_gpu and torch.cuda.is_available() else "cpu"


def subnet_accuracy(supernet: Any, arch: ArchConfig, calibration: Any, validation: Any,
                    settings: EvalSettings, *, device: str = "cpu",
                    placement: Placement | None = None) -> float:
    """Extract ``arch``, recalibrate its BN on ``calibration``, return top-1 on ``validation``.

    ``device`` is a torch device; ``placement`` (default: CPU, ``settings``'
    batch) sets the scoring batch and decoding threads.  Runs as one compute
    unit on the host lock (see the module docstring).
    """
    from devices.hostlock import compute_unit

    placement = placement or cpu_placement(settings)
    with compute_unit():
        return _accuracy(supernet, arch, calibration, validation, settings, device, placement)


def _accuracy(supernet: Any, arch: ArchConfig, calibration: Any, validation: Any,
              settings: EvalSettings, device: str, placement: Placement) -> float:
    import torch

    from hwsearch.bn import recalibrate_bn
    from hwsearch.data import batches

    threads = placement.loader_threads
    module = supernet.extract(arch).to(device)
    calib = (x for x, _ in batches(calibration, arch.resolution, settings.batch_size,
                                   threads=threads))
    module = recalibrate_bn(module, calib)
    module.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in batches(validation, arch.resolution, placement.batch_size, threads=threads):
            logits = module(x.to(device, non_blocking=True))
            if not bool(torch.isfinite(logits).all()):  # argmax of NaN is class 0: a score, but a guess
                raise NonFiniteLogits(f"subnet {arch.key()} gives NaN or infinite outputs on the validation "
                                      "images: the supernet's weights (its checkpoint) are not finite, or the data "
                                      "overflows them")
            correct += int((logits.argmax(dim=1).cpu() == y).sum())
    return correct / len(validation)


def _evaluate_chunk(supernet: Any, calibration: Any, validation: Any,
                    arch_dicts: list[dict[str, Any]], settings: EvalSettings,
                    placement: Placement) -> dict[str, Any]:
    """One Ray task: the chunk's accuracies, and where and how fast they were computed."""
    import torch

    from hwsearch.ray_session import refuse_foreign_code

    refuse_foreign_code()
    torch.set_num_threads(settings.torch_threads)
    device = torch_device(placement)
    space = supernet.space
    start = time.perf_counter()
    accuracies = [subnet_accuracy(supernet, space.from_dict(d), calibration, validation, settings,
                                  device=device, placement=placement) for d in arch_dicts]
    seconds = time.perf_counter() - start
    images = len(arch_dicts) * (len(calibration) + len(validation))
    return {"accuracies": accuracies, "device": device, "gpu_requested": placement.use_gpu,
            "seconds": seconds, "images": images, "images_per_s": images / max(seconds, 1e-9)}


def evaluate_subnets(
    supernet: Any,
    archs: Sequence[ArchConfig],
    data: Any,
    *,
    store: Store,
    dataset_id: str,
    settings: EvalSettings = EvalSettings(),
    progress: Callable[[int, int], None] | None = None,
    report: ReportFn | None = None,
    refs: EvalRefs | None = None,
) -> dict[str, float]:
    """Accuracies of ``archs`` (by key) on ``data``; see the module docstring.

    ``data`` is an :class:`~hwsearch.evaldata.EvalSplit` (calibration and
    validation drawn already; its identity belongs in ``dataset_id``) or
    one dataset (:class:`~hwsearch.data.LabelledImages` or a streamed
    :class:`~hwsearch.imagefolder.ImageFolder`), split here by ``settings``.
    Keys already stored for ``(supernet.name, dataset_id)`` are not evaluated
    again.  Starts a local Ray runtime unless one is already initialised.
    ``report`` gets each chunk's device and images per second.  ``refs``
    (:func:`put_eval` of this supernet and ``data``) are used instead of
    putting them into Ray's object store again.
    """
    check_eval_data(supernet, data)  # stored accuracies of such data are no better than new ones
    done = store.get_accuracies(supernet.name, dataset_id)
    todo = [a for a in archs if a.key() not in done]
    if todo:
        _evaluate_on_ray(supernet, todo, refs_for(supernet, data, settings, refs), store=store,
                         dataset_id=dataset_id, settings=settings, progress=progress,
                         report=report)
    stored = store.get_accuracies(supernet.name, dataset_id)
    return {a.key(): stored[a.key()] for a in archs}


def _split(data: Any, settings: EvalSettings) -> tuple[Any, Any]:
    """``(calibration, validation)``: an EvalSplit's parts, or plain data split by ``settings``."""
    from hwsearch.evaldata import EvalSplit

    if isinstance(data, EvalSplit):
        return data.calibration, data.validation
    return data.split(min(settings.n_calibration, len(data) // 2), seed=settings.seed)


def refs_for(supernet: Any, data: Any, settings: EvalSettings, refs: EvalRefs | None) -> EvalRefs:
    """``refs`` checked against ``supernet``, or, without them, ``supernet`` and ``data`` put for this call."""
    if refs is None:
        return put_eval(supernet, data, settings)
    refs.check(supernet)
    return refs


#: The most multiply-accumulates (MACs per image x images) one evaluation task is given when it holds several
#: subnets: about 10 s on one core of this machine (8.5 images/s for a 251 MMAC subnet, docs/accuracy.md).
CHUNK_MACS = 2e10


def eval_chunks(todo: Sequence[Any], chunk: int, slots: int, work: Sequence[float] = ()) -> list[Sequence[Any]]:
    """``todo`` cut into chunks of at most ``chunk``, into at least ``slots`` where it has as many subnets, and
    of at most :data:`CHUNK_MACS` of ``work`` (each subnet's MACs times its images) unless a subnet alone has more.

    Chunks of 4 left a refinement round's 4 subnets (and any evaluation of
    4 or fewer) to one task on one core while the other sat idle: 33 s of
    one round's 54 at full scale.  A chunk's accuracies arrive, and the job's
    progress moves, only when the whole chunk is done: 4 full-size subnets
    on 200 images kept a job silent for 71 s (probe Z8), where the demo's
    take a second.
    """
    size = max(1, min(chunk, math.ceil(len(todo) / max(slots, 1))))
    if work:
        size = max(1, min(size, int(CHUNK_MACS // max(max(work), 1.0))))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _slots(placement: Placement, cluster: Mapping[str, float]) -> int:
    """How many evaluation tasks the cluster runs at once."""
    if placement.use_gpu:
        return max(1, int(cluster.get("GPU", 1.0) // max(placement.num_gpus, 1e-9)))
    return max(1, int(cluster.get("CPU", 1.0) // max(placement.num_cpus, 1e-9)))


def _evaluate_on_ray(supernet: Any, todo: Sequence[ArchConfig], refs: EvalRefs, *,
                     store: Store, dataset_id: str, settings: EvalSettings,
                     progress: Callable[[int, int], None] | None, report: ReportFn | None) -> None:
    """Chunks of ``todo`` as Ray tasks; each chunk's accuracies are stored as it returns."""
    import ray

    cluster = ray.cluster_resources()
    placement = choose_placement(settings, cluster)
    remote = ray.remote(_evaluate_chunk).options(num_cpus=placement.num_cpus,
                                                 num_gpus=placement.num_gpus)
    work = [float(supernet.count(arch).macs) * refs.n_images for arch in todo]
    chunks = eval_chunks(todo, settings.chunk, _slots(placement, cluster), work)
    pending = {remote.remote(refs.supernet, refs.calibration, refs.validation, [a.to_dict() for a in chunk],
                             settings, placement): chunk for chunk in chunks}
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        chunk = pending.pop(ready[0])
        outcome = ray.get(ready[0])
        for arch, accuracy in zip(chunk, outcome["accuracies"]):
            store.put_accuracy(supernet.name, dataset_id, arch.key(), accuracy)
        if outcome["gpu_requested"] and outcome["device"] == "cpu":
            log.warning("a GPU was assigned but torch cannot use CUDA there; evaluated on CPU")
        if report:
            report({k: v for k, v in outcome.items() if k != "accuracies"})
        finished += len(chunk)
        if progress:
            progress(finished, len(todo))
