"""The ONNX files a profiling run measures: each subnet's FP32 export and the files derived from it.

One run exports a chunk at a time (:func:`export_chunk`), one chunk ahead
of the one being measured when the device measures on another host
(:func:`exported_chunks`), and deletes each chunk's files once its rows are
stored (:func:`delete_exports`); runs of one process that need the same
file at once share it (:class:`SharedExports`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from devices.hostlock import WaitFn, compute_unit
from hwsearch.export_pool import Exporters
from hwsearch.quantize import DEFAULT_PRECISION, QuantizeSettings
from hwsearch.space import ArchConfig


@dataclass(frozen=True)
class Exported:
    """One subnet's ONNX file, its export report, and when (wall clock) the export ran."""

    path: Path
    report: Any  # hwsearch.export.ExportReport
    started_at: float
    ended_at: float


@dataclass(frozen=True)
class Derivation:
    """Which precisions' files a run derives from each FP32 export, and how INT8 is calibrated."""

    precisions: tuple[str, ...]
    calibration: Any
    quantize: QuantizeSettings

    def key(self, precision: str) -> tuple[Any, ...]:
        """What a derived file depends on beyond its FP32 source (for sharing it between runs)."""
        if precision == DEFAULT_PRECISION:
            return ()
        return (precision, id(self.calibration), self.quantize)

    def derive(self, source: Exported, precision: str, path: Path) -> Exported:
        """``source`` at ``precision`` in ``path``; its report holds the new file's own figures.

        INT8's ``seconds`` are the FP32 export's plus the quantization's: what
        producing the measured file cost.
        """
        from hwsearch.quantize import images_at, model_input_shape, quantize_onnx

        batch, *_, resolution = model_input_shape(source.path)
        n = max(self.quantize.n_images, batch)
        started_at = time.time()
        quantized = quantize_onnx(source.path, path, images_at(self.calibration, resolution, n),
                                  replace(self.quantize, n_images=n))
        report = replace(source.report, path=path, bytes=quantized.bytes, precision=precision,
                         seconds=source.report.seconds + quantized.seconds,
                         quantization={"quantize_seconds": quantized.seconds,
                                       "fp32_bytes": quantized.fp32_bytes,
                                       "method": quantized.method, "n_images": quantized.n_images,
                                       "top1_agreement": quantized.top1_agreement,
                                       "max_logit_diff": quantized.max_logit_diff,
                                       "agreement_on": quantized.agreement_on,
                                       "agreement_images": quantized.agreement_images})
        return Exported(path, report, started_at, time.time())


def export_chunk(supernet: Any, folder: Path, model_batch: int, input_dtype: str,
                 waiting: WaitFn | None, run: object, derivation: Derivation,
                 exporting: Exporters, batch: Sequence[ArchConfig]) -> list[dict[str, Exported]]:
    """Export ``batch`` to ``folder`` at every precision of ``derivation``, one dict per subnet.

    The one place the pipeline exports, whichever thread runs it.  Each
    export is one compute unit on the host lock, held here whether the
    export runs in this process or in a worker of ``exporting``'s pool
    (:mod:`hwsearch.export_pool`), which exports several subnets of the
    chunk at once; quantization takes its own unit, one file at a time.
    A subnet another run of this process is exporting (or has exported and
    not yet deleted) with the same settings is linked from it instead
    (:class:`SharedExports`); so is a derived (INT8) file of the same
    export with the same calibration.  The FP32 file is always made, since
    every other precision derives from it; it is measured only when FP32 is
    one of the run's precisions.
    """

    def export_one(arch: ArchConfig, path: Path) -> Exported:
        with compute_unit(on_wait=waiting):  # covers a pool worker; export_onnx's own hold nests in it
            started_at = time.time()
            report = exporting.export(arch, path, batch=model_batch, input_dtype=input_dtype, check=False)
            return Exported(path, report, started_at, time.time())

    def key_of(arch: ArchConfig) -> tuple[Any, ...]:
        # The key holds every setting the file depends on; one added to export_subnet goes here too.
        return id(supernet), arch.key(), model_batch, input_dtype

    def fp32_of(arch: ArchConfig) -> Exported:
        return SHARED_EXPORTS.export(key_of(arch), run, folder / f"{arch.digest()}.onnx",
                                      functools.partial(export_one, arch))

    out = []
    for arch, fp32 in zip(batch, exporting.map(fp32_of, batch)):
        files = {DEFAULT_PRECISION: fp32}
        for precision in derivation.precisions:
            if precision != DEFAULT_PRECISION:
                files[precision] = SHARED_EXPORTS.export(
                    key_of(arch) + derivation.key(precision), run,
                    folder / f"{arch.digest()}.{precision}.onnx",
                    functools.partial(derivation.derive, fp32, precision))
        out.append(files)
    return out


class SharedExports:
    """Exports shared by the profiling runs of one process that need the same file at once.

    A job profiles the same subnets on every device, one thread per device,
    in the same order (:func:`hwsearch.jobs.stages.profile_devices`), and
    devices measured at the same batch and input dtype need identical ONNX
    files.  Exporting each once for all of them halves a two-device job's
    export work (a process's exports run one at a time under the exporter
    lock anyway).  A run that finds a subnet exported, or being exported,
    by another run hard-links the file into its own folder, so each run
    still deletes only its own files; when the link fails (the owner has
    already measured and deleted it, or another filesystem) it exports the
    subnet itself.  An owner's entries end with its run (:meth:`owned_by`),
    so a key holding ``id(supernet)`` never outlives the supernet it names.
    Waiting for another run's export happens outside the host lock: a unit
    of compute waiting on one that cannot start (a session is queued) would
    deadlock the host.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[object, Future[Exported]]] = {}

    def export(self, key: tuple[Any, ...], run: object, path: Path,
               export: Callable[[Path], Exported]) -> Exported:
        """``export(path)``, or a link to the same export by another run."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                future: Future[Exported] = Future()
                self._entries[key] = (run, future)
        if found is None:
            try:
                exported = export(path)
            except BaseException as error:
                future.set_exception(error)
                raise
            future.set_result(exported)
            return exported
        shared = found[1].result()  # the owner's error, if its export failed
        try:
            os.link(shared.path, path)
        except OSError:
            return export(path)
        return replace(shared, path=path)

    @contextlib.contextmanager
    def owned_by(self, run: object) -> Iterator[None]:
        """Forget the entries ``run`` owns when it ends, however it ends."""
        try:
            yield
        finally:
            with self._lock:
                for key in [k for k, (owner, _) in self._entries.items() if owner is run]:
                    del self._entries[key]


SHARED_EXPORTS = SharedExports()


def exported_chunks(chunks: Sequence[list[ArchConfig]],
                    export: Callable[[Sequence[ArchConfig]], list[dict[str, Exported]]], overlap: bool
                    ) -> Iterator[tuple[list[ArchConfig], list[dict[str, Exported]]]]:
    """Each chunk with its exports; with ``overlap``, the next chunk exports while this one is used.

    One export thread at most, and at most one chunk exported ahead, so the
    ONNX files on disk stay within two chunks.
    """
    if not overlap:
        for batch in chunks:
            yield batch, export(batch)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hwsearch-export") as pool:
        ahead = pool.submit(export, chunks[0]) if chunks else None
        for index, batch in enumerate(chunks):
            exports = ahead.result()
            ahead = pool.submit(export, chunks[index + 1]) if index + 1 < len(chunks) else None
            yield batch, exports


def delete_exports(exports: Iterable[Mapping[str, Exported]]) -> None:
    """Delete the files of exported subnets (every precision's); one already gone is no error."""
    for files in exports:
        for exported in files.values():
            exported.path.unlink(missing_ok=True)
