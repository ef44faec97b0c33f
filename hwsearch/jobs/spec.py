"""What a job is: the supernet it uses, the devices, the data and the budget, as plain data.

A spec is complete in itself (device profiles are stored whole), so a job
can be re-run after a crash from its stored record alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hwsearch.digests import feed_file, file_sha256

if TYPE_CHECKING:
    from devices.hostlock import WaitFn

__all__ = ["CheckpointChanged", "JobSpec", "ProfileSpec", "SupernetOptionError", "SupernetRef", "build_supernet",
           "content_id", "spec_from_dict", "supernet_builders"]


class CheckpointChanged(ValueError):
    """A pinned checkpoint's file no longer holds the weights it held when the reference was made."""


@dataclass(frozen=True)
class SupernetRef:
    """Which supernet a job uses: a registry builder, its weights and its options.

    ``name`` is what users call it (several names may share one builder with
    different checkpoints or reduced spaces); ``options`` are builder keyword
    arguments beyond the checkpoint, e.g. ``n_classes`` or ``resolutions``.
    """

    name: str
    registry: str
    checkpoint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The checkpoint's SHA-256 when the reference was pinned; a build refuses other bytes.
    checkpoint_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "registry": self.registry, "checkpoint": self.checkpoint,
                "options": dict(self.options)}
        if self.checkpoint_sha256 is not None:
            data["checkpoint_sha256"] = self.checkpoint_sha256
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetRef:
        return cls(name=data["name"], registry=data["registry"], checkpoint=data.get("checkpoint"),
                   options=dict(data.get("options") or {}), checkpoint_sha256=data.get("checkpoint_sha256"))

    def pinned(self) -> SupernetRef:
        """This reference with its checkpoint's digest now.

        A job's spec keeps the reference, and its accuracies and fronts were
        measured with those weights: should the file change later (replaced
        on disk, or a path reused), resuming the job or exporting its front
        must fail rather than use other weights under the same name.
        """
        if self.checkpoint is None:
            return self
        return dataclasses.replace(self, checkpoint_sha256=file_sha256(self.checkpoint))

    def check_pinned(self, loaded_sha256: str | None) -> None:
        """CheckpointChanged if the bytes loaded (their digest, ``loaded_sha256``) are not the ones pinned.

        The digest is of the bytes the load read (:meth:`Supernet.load_checkpoint`): hashing the path
        and loading it again let a file replaced in between load other weights under the pin.
        """
        if self.checkpoint_sha256 is not None and loaded_sha256 != self.checkpoint_sha256:
            raise CheckpointChanged(
                f"supernet {self.name!r}: its checkpoint file changed since it was registered "
                f"(pinned SHA-256 {self.checkpoint_sha256[:12]}...), so its weights are not the ones "
                "this job or front was measured with; register the weights again under a name")


@dataclass(frozen=True)
class JobSpec:
    """A search job, complete in itself so that it can be re-run after a crash.

    Device profiles are stored whole (not by name) so that re-registering a
    device under the same name never changes what an existing job measured.
    The objectives are accuracy (maximised) and latency on each device
    (minimised); ``limits`` bound metrics (``accuracy``, ``latency_ms``,
    ``params``, ``macs``), each ``{"metric", "upper", "lower"}``.
    ``budget`` is the number of extra real measurements per device that
    refinement may spend on top of the ``n_profile`` initial ones.
    ``targets`` maps a device name to its latency targets
    (``{"budgets_ms": [...], "band_ms": [low, high] | None}``, see
    :class:`hwsearch.acquisition.LatencyTargets`); refinement aims that
    device's measurements at them.
    ``calibration``, ``n_calibration`` and ``subset`` choose the images that
    recalibrate BN and the validation images scored
    (:class:`hwsearch.evaldata.DataPlan`).
    """

    supernet: SupernetRef
    devices: tuple[Mapping[str, Any], ...]
    dataset: str | None = None
    calibration: str | None = None
    n_calibration: int = 500
    subset: int | None = None
    limits: tuple[Mapping[str, Any], ...] = ()
    budget: int = 0
    seed: int = 0
    n_profile: int = 40
    targets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    kind: Literal["search"] = "search"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["supernet"] = self.supernet.to_dict()
        out["devices"] = [dict(d) for d in self.devices]
        out["limits"] = [dict(lim) for lim in self.limits]
        out["targets"] = {name: dict(t) for name, t in self.targets.items()}
        return out

    def data_plan(self) -> Any:  # -> hwsearch.evaldata.DataPlan
        """The images this job measures accuracy on: its dataset, calibration part and subset."""
        from hwsearch.evaldata import DataPlan

        if self.dataset is None:
            raise ValueError("a search job needs validation data (dataset) to measure accuracy")
        return DataPlan(self.dataset, calibration=self.calibration,
                        n_calibration=self.n_calibration, subset=self.subset)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """The spec ``data`` describes, every field checked (:class:`~hwsearch.jobs.reading.SpecError` names one)."""
        from hwsearch.jobs import reading as read

        data = read.known_fields(data, [f.name for f in dataclasses.fields(cls)], "job spec")
        if data.get("kind", "search") != "search":
            raise read.SpecError(f"kind must be 'search' for a search job, got {data.get('kind')!r}")
        return cls(
            supernet=_supernet_of(data),
            devices=read.mappings(data.get("devices"), "devices", least=1),
            dataset=read.optional_text(data.get("dataset"), "dataset"),
            calibration=read.optional_text(data.get("calibration"), "calibration"),
            n_calibration=read.checked_count(data.get("n_calibration", 500), "n_calibration", 1),
            subset=None if data.get("subset") is None else read.checked_count(data["subset"], "subset", 1),
            limits=read.checked_limits(data.get("limits", ())),
            budget=read.checked_count(data.get("budget", 0), "budget", 0),
            seed=read.checked_count(data.get("seed", 0), "seed", 0),
            n_profile=read.checked_count(data.get("n_profile", 40), "n_profile", 1),
            targets=read.checked_targets(data.get("targets") or {}),
        )


@dataclass(frozen=True)
class ProfileSpec:
    """Profile one subnet on one device (local or through its agent), at one precision.

    An ``int8`` profile quantizes the export first, calibrating on the
    calibration part of ``dataset`` (the same part a search job uses).
    """

    supernet: SupernetRef
    device: Mapping[str, Any]
    arch: Mapping[str, Any]
    precision: str = "fp32"
    dataset: str | None = None
    kind: Literal["profile"] = "profile"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "supernet": self.supernet.to_dict(),
                "device": dict(self.device), "arch": dict(self.arch),
                "precision": self.precision, "dataset": self.dataset}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileSpec:
        """The spec ``data`` describes, every field checked (:class:`~hwsearch.jobs.reading.SpecError` names one)."""
        from hwsearch.jobs import reading as read
        from hwsearch.quantize import check_precision

        data = read.known_fields(data, [f.name for f in dataclasses.fields(cls)], "profile spec")
        return cls(supernet=_supernet_of(data), device=dict(read.mapping(data.get("device"), "device")),
                   arch=dict(read.mapping(data.get("arch"), "arch")),
                   precision=check_precision(data.get("precision", "fp32")),
                   dataset=read.optional_text(data.get("dataset"), "dataset"))


def _supernet_of(data: Mapping[str, Any]) -> SupernetRef:
    """A spec's ``supernet``, its keys and types checked: a misspelt ``checkpoint`` would build random weights."""
    from hwsearch.jobs import reading as read

    ref = read.known_fields(data.get("supernet"), [f.name for f in dataclasses.fields(SupernetRef)], "supernet")
    for name in ("name", "registry"):
        if not isinstance(ref.get(name), str):
            raise read.SpecError(f"supernet.{name} must be text, got {type(ref.get(name)).__name__}")
    for name in ("checkpoint", "checkpoint_sha256"):
        read.optional_text(ref.get(name), f"supernet.{name}")
    read.mapping(ref.get("options") or {}, "supernet.options")
    return SupernetRef.from_dict(ref)


def spec_from_dict(data: Mapping[str, Any]) -> JobSpec | ProfileSpec:
    """The spec a stored job record holds, by its ``kind``."""
    return ProfileSpec.from_dict(data) if data.get("kind") == "profile" else JobSpec.from_dict(data)


def supernet_builders() -> list[str]:
    """Every registered supernet, each family's and the built-in demos' included.

    The registry imports the family and demo plug-ins on first use, so a
    fresh service process or Ray worker sees them all.
    """
    from hwsearch.supernets import list_supernets

    return list_supernets()


class SupernetOptionError(ValueError):
    """Supernet options its family cannot build (unknown ones, input sizes it cannot take); no checkpoint was read."""


def build_supernet(ref: SupernetRef, *, on_wait: WaitFn | None = None) -> Any:
    """The :class:`~hwsearch.supernets.Supernet` a reference names, weights loaded (and checked if pinned).

    ``options["resolutions"]`` narrows the input sizes of the registered
    space; the weights do not depend on the input size, so the family's
    checkpoints still load.  It makes small, fast variants for trials and tests.

    Building is one unit of the host's compute
    (:func:`devices.hostlock.compute_unit`): it waits while a local
    measurement session runs (a ViT supernet at 512 px takes 9 s to build);
    ``on_wait`` hears that wait, as :func:`devices.hostlock.compute_unit`'s does.
    """
    from devices.hostlock import compute_unit

    supernet_builders()
    options = dict(ref.options)
    resolutions = options.pop("resolutions", None)
    n_classes = options.pop("n_classes", None)
    if options:
        raise SupernetOptionError(f"unknown supernet option(s) {sorted(options)}; "
                                  "allowed: n_classes, resolutions")
    with compute_unit(on_wait=on_wait):
        return _built(ref, n_classes, resolutions)


def _built(ref: SupernetRef, n_classes: Any, resolutions: Any) -> Any:
    """:func:`build_supernet`'s work, once the options are known."""
    from hwsearch.supernets import build_supernet as build, create_supernet

    net = create_supernet(ref.registry, n_classes=n_classes)
    if resolutions is not None:
        try:
            net = build(dataclasses.replace(net.space, resolutions=tuple(int(r) for r in resolutions)),
                        name=net.name)
        except ValueError as error:  # the family cannot take these input sizes; no weight was read yet
            raise SupernetOptionError(f"resolutions: {error}") from None
    if ref.checkpoint is not None:
        loaded = net.load_checkpoint(ref.checkpoint, digest=ref.checkpoint_sha256 is not None)
        ref.check_pinned(loaded)
    return net


def content_id(*paths: str | None, extra: Mapping[str, Any] | None = None) -> str:
    """A short digest of files' contents (folders: names, sizes, times) plus settings.

    Accuracies depend on the weights and the data, so they are stored under
    an id of both: re-registering other weights under the same supernet name
    never reuses accuracies measured with the old ones.  An image folder is
    identified by its listing rather than its bytes, which keeps this fast
    on large validation sets: the images a scan reads
    (:meth:`hwsearch.imagefolder.ImageFolder.scan`), links followed.  A walk
    that did not follow them saw a folder of linked class folders as its
    folder names alone, and a second such dataset reused the first one's
    accuracies.  Names are digested as the file system's bytes (a Latin-1
    name ended the digest in a ``UnicodeEncodeError``).
    """
    from hwsearch.imagefolder import class_folders, images_in

    digest = hashlib.sha256(json.dumps(dict(extra or {}), sort_keys=True).encode())
    for path in paths:
        digest.update(b"\0")
        if path is None:
            continue
        root = Path(path)
        if root.is_dir():
            for folder in class_folders(root):
                for file in images_in(folder):
                    stat = file.stat()
                    digest.update(os.fsencode(f"{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n"))
            continue
        feed_file(digest, root)
    return digest.hexdigest()[:16]
