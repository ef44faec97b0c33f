"""Accuracy of quantized subnets, measured on the file that ships: the INT8 ONNX model in onnxruntime.

Simulating quantization in torch (fake-quant modules) estimates what a
runtime will do; it misses the runtime's own fusions and rounding, and a
front built on it can rank subnets differently from what the device gets.
So an INT8 subnet's accuracy here is the top-1 of the quantized ONNX model
run by onnxruntime on the validation images, after exactly the FP32 recipe
(:mod:`hwsearch.accuracy_eval`): the user's data is split the same way, the
extracted subnet's batch norm is re-estimated on the calibration part, and
the same calibration part calibrates the quantizer, so no validation image
ever tunes anything.

Accuracies go into the store under the dataset id with the precision's
suffix (:func:`hwsearch.quantize.precision_key`), beside the FP32 ones and
never mixed with them.  Like FP32 evaluation, subnets are spread over Ray
workers in chunks and each subnet is one unit of compute on the host lock,
and a caller that evaluates again and again hands every call the same
:class:`~hwsearch.accuracy_eval.EvalRefs` instead of having each put the
supernet and the data into Ray's object store anew.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwsearch.accuracy_eval import EvalRefs, EvalSettings
from hwsearch.quantize import QuantizeSettings, check_precision, precision_key
from hwsearch.space import ArchConfig
from hwsearch.store import Store

__all__ = ["EVAL_BATCH", "evaluate_precision", "file_top1", "quantized_accuracy"]

# The evaluated model's static batch.  Accuracy does not depend on it; latency rows come from
# the device's own batch.  32 keeps onnxruntime's per-call overhead out of evaluation time.
EVAL_BATCH = 32


def quantized_accuracy(supernet: Any, arch: ArchConfig, calibration: Any, validation: Any,
                       quantize: QuantizeSettings = QuantizeSettings()) -> float:
    """Top-1 of ``arch`` quantized to INT8 and run by onnxruntime on ``validation``.

    ``calibration`` (either kind of :data:`hwsearch.data.Images`) re-estimates
    batch norm and calibrates the quantizer; see the module docstring.
    """
    from devices.hostlock import compute_unit
    from hwsearch.export import export_subnet
    from hwsearch.quantize import images_at, session
    from hwsearch.tempdirs import owned_temp_dir

    with compute_unit(), owned_temp_dir("int8-eval") as tmp:
        report = export_subnet(supernet, arch, Path(tmp) / "int8.onnx", batch=EVAL_BATCH,
                               precision="int8", calibration=calibration, bn_data=calibration,
                               quantize=quantize)
        logits = _all_logits(session(report.path), images_at(validation, arch.resolution), EVAL_BATCH)
    labels = np.asarray(validation.y, dtype=np.int64)
    return float((logits.argmax(axis=1) == labels).mean())


def file_top1(path: str | Path, data: Any, resolution: int) -> float:
    """Top-1 of an exported ONNX file on ``data`` (either kind of Images), at the file's own batch and dtype.

    What a user gets from a shipped file, scored as they would score it:
    the export check compares the file with the torch module it came from,
    so it cannot see weights or batch-norm statistics that were never the
    measured network's.
    """
    from hwsearch.quantize import images_at, session

    sess = session(path)
    given = sess.get_inputs()[0]
    images = images_at(data, resolution).astype(np.float16 if given.type == "tensor(float16)" else np.float32)
    logits = _all_logits(sess, images, int(given.shape[0]))
    return float((logits.argmax(axis=1) == np.asarray(data.y, dtype=np.int64)).mean())


def _all_logits(sess: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """Logits of every image: the last, partial batch is padded with zeros and the padding dropped."""
    from hwsearch.quantize import run_logits

    pad = (-len(images)) % batch
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    return run_logits(sess, padded, batch)[:len(images)]


def _evaluate_chunk(supernet: Any, calibration: Any, validation: Any,
                    arch_dicts: list[dict[str, Any]], settings: EvalSettings,
                    quantize: QuantizeSettings) -> list[float]:
    """One Ray task: the INT8 files' accuracies of a chunk of subnets."""
    import torch

    from hwsearch.ray_session import refuse_foreign_code

    refuse_foreign_code()
    torch.set_num_threads(settings.torch_threads)
    space = supernet.space
    return [quantized_accuracy(supernet, space.from_dict(d), calibration, validation, quantize)
            for d in arch_dicts]


def evaluate_precision(
    supernet: Any,
    archs: Sequence[ArchConfig],
    data: Any,
    *,
    store: Store,
    dataset_id: str,
    precision: str,
    settings: EvalSettings = EvalSettings(),
    quantize: QuantizeSettings = QuantizeSettings(),
    progress: Callable[[int, int], None] | None = None,
    refs: EvalRefs | None = None,
) -> dict[str, float]:
    """Accuracies of ``archs`` (by key) at ``precision``; stored ones are not evaluated again.

    ``data`` is what :func:`~hwsearch.accuracy_eval.evaluate_subnets` takes
    (an :class:`~hwsearch.evaldata.EvalSplit`, or one dataset split here).

    ``fp32`` is :func:`hwsearch.accuracy_eval.evaluate_subnets` (torch,
    filed under ``dataset_id``); ``int8`` evaluates the quantized ONNX model
    (filed under ``dataset_id@int8``).  Starts a local Ray runtime unless one
    is already initialised.  ``refs`` (:func:`~hwsearch.accuracy_eval.put_eval`
    of this supernet and ``data``, with ``settings``) are used instead of
    putting them into Ray's object store again: a job puts them once for all
    its evaluations.
    """
    from hwsearch.accuracy_eval import evaluate_subnets, refs_for

    if check_precision(precision) == "fp32":
        return evaluate_subnets(supernet, archs, data, store=store, dataset_id=dataset_id,
                                settings=settings, progress=progress, refs=refs)
    key = precision_key(dataset_id, precision)
    done = store.get_accuracies(supernet.name, key)
    todo = [a for a in archs if a.key() not in done]
    if todo:
        _evaluate_on_ray(supernet, todo, refs_for(supernet, data, settings, refs), store, key, settings,
                         quantize, progress)
    stored = store.get_accuracies(supernet.name, key)
    return {a.key(): stored[a.key()] for a in archs}


def _evaluate_on_ray(supernet: Any, todo: Sequence[ArchConfig], refs: EvalRefs, store: Store, key: str,
                     settings: EvalSettings, quantize: QuantizeSettings,
                     progress: Callable[[int, int], None] | None) -> None:
    """Evaluate ``todo`` in chunks on Ray; each chunk's accuracies are stored as it returns.

    The calibration and validation parts are exactly FP32 evaluation's
    (:func:`~hwsearch.accuracy_eval.put_eval` splits plain data with the
    same size and seed), so no validation image ever tunes anything.
    """
    import ray

    remote = ray.remote(num_cpus=settings.torch_threads)(_evaluate_chunk)
    chunks = [todo[i:i + settings.chunk] for i in range(0, len(todo), settings.chunk)]
    pending = {remote.remote(refs.supernet, refs.calibration, refs.validation, [a.to_dict() for a in chunk],
                             settings, quantize): chunk for chunk in chunks}
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        chunk = pending.pop(ready[0])
        for arch, accuracy in zip(chunk, ray.get(ready[0])):
            store.put_accuracy(supernet.name, key, arch.key(), accuracy)
        finished += len(chunk)
        if progress:
            progress(finished, len(todo))
