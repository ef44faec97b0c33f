"""The :class:`Supernet` handle every supernet family is used through, and checkpoint loading.

A family provides an *elastic network*: an ``nn.Module`` with a ``space``
and pure ``forward(x, arch)`` and ``extract(arch)``.  :class:`Supernet` adds
a name, counts subnets with the family's cost model, accepts architectures
in any form the space reads (``ArchConfig``, hwsearch JSON dicts, the
family's native dicts) and loads checkpoints safely (``weights_only=True``,
strict key and shape checks).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol, TypeVar, Union, runtime_checkable

import torch
from torch import Tensor, nn

from hwsearch.archives import UnpackedTooLarge, check_unpacked_size
from hwsearch.space import ArchConfig, SearchSpace
from hwsearch.supernets.counting import Costs, count_arch
from hwsearch.tempdirs import owned_temp_dir

__all__ = [
    "ArchLike",
    "CheckpointError",
    "ElasticNetwork",
    "LoadedCheckpoint",
    "Supernet",
    "check_keys",
    "load_failure_reason",
    "load_state",
    "read_checkpoint",
    "require_layout",
]

ArchLike = Union[ArchConfig, Mapping[str, Any]]
L = TypeVar("L")

# Keys renamed by OFA since its checkpoints were published; OFA's own
# ``load_state_dict`` maps them the same way.
_LEGACY_KEY_PARTS = ((".mobile_inverted_conv.", ".conv."),)
_WRAPPER_KEYS = ("state_dict", "model")  # OFA's and AutoFormer's checkpoint dicts
_MAX_LISTED = 10
_MAX_REASON_CHARS = 200


class CheckpointError(ValueError):
    """A checkpoint does not fit the supernet; the message names the offending keys."""


@runtime_checkable
class ElasticNetwork(Protocol):
    """What a supernet family's ``nn.Module`` offers (see :class:`OFAMobileNetV3`)."""

    space: SearchSpace

    def forward(self, x: Tensor, arch: ArchConfig) -> Tensor: ...

    def extract(self, arch: ArchConfig) -> nn.Module: ...


def require_layout(space: SearchSpace, layout_type: type[L], network: str) -> L:
    """``space.layout`` if it is a ``layout_type``; a family's network is built from no other."""
    if not isinstance(space.layout, layout_type):
        article = "an" if layout_type.__name__[0] in "AEIMOU" else "a"
        raise ValueError(f"{space.name}: {network} needs {article} {layout_type.__name__}, "
                         f"got {type(space.layout).__name__}")
    return space.layout


class Supernet:
    """A named elastic network: extract, count and run subnets; load checkpoints.

    ``extract``, ``count`` and ``forward`` never change the supernet and may
    run concurrently; ``load_checkpoint`` writes the weights and must not
    overlap with them.
    """

    def __init__(self, name: str, module: nn.Module) -> None:
        if not isinstance(module, ElasticNetwork):
            raise TypeError(f"{type(module).__name__} is not an elastic network "
                            "(needs space, forward(x, arch), extract(arch))")
        self.name = name
        self.module = module.eval()

    def __repr__(self) -> str:
        return f"Supernet({self.name!r}, {type(self.module).__name__})"

    @property
    def space(self) -> SearchSpace:
        return self.module.space

    def arch(self, arch: ArchLike) -> ArchConfig:
        """``arch`` validated against the space; dicts may be hwsearch JSON or the native form."""
        if isinstance(arch, ArchConfig):
            return self.space.validate(arch)
        return self.space.from_dict(arch)

    def extract(self, arch: ArchLike) -> nn.Module:
        """The subnet as a static module of ordinary layers with copied weights, in eval mode."""
        return self.module.extract(self.arch(arch))

    def count(self, arch: ArchLike) -> Costs:
        """Exact MACs (batch 1) and parameters of the extracted subnet, from the cost model."""
        return count_arch(self.space, self.arch(arch))

    def forward(self, x: Tensor, arch: ArchLike) -> Tensor:
        """The subnet's output computed on the supernet's shared weights."""
        return self.module(x, self.arch(arch))

    def input_shape(self, arch: ArchLike, batch: int = 1) -> tuple[int, int, int, int]:
        """The NCHW shape of a batch of images for ``arch``."""
        resolution = self.arch(arch).resolution
        return (batch, self.space.layout.in_channels, resolution, resolution)

    def load_checkpoint(self, path: str | Path, *, digest: bool = False) -> str | None:
        """Load weights from a bare state_dict, OFA's ``{"state_dict": ...}`` or AutoFormer's file; with
        ``digest``, return the SHA-256 of the bytes loaded (for a caller that pins the weights).

        Only tensors and plain containers are unpickled (``weights_only=True``);
        nothing is ever downloaded.
        """
        checkpoint = read_checkpoint(path, digest=digest)
        load_state(self.module, checkpoint.state, source=str(path))
        return checkpoint.sha256


class LoadedCheckpoint(NamedTuple):
    """A checkpoint's state dict and, when asked for, the SHA-256 of the bytes it was read from."""

    state: Mapping[str, Any]
    sha256: str | None


def read_checkpoint(path: str | Path, *, digest: bool = False) -> LoadedCheckpoint:
    """The state dict stored in ``path`` (bare, under ``"state_dict"`` (OFA) or ``"model"``), and with
    ``digest`` the SHA-256 of the bytes it was loaded from.

    AutoFormer's training checkpoints keep the weights under ``"model"`` beside
    an ``argparse.Namespace`` of the run's arguments; a Namespace is a plain
    attribute bag, so it is the one class allowed through the weights-only
    unpickler besides tensors and containers.  A zip checkpoint that unpacks
    to more than :func:`hwsearch.archives.default_bound` (16 times its size,
    at least 256 MiB) is refused before anything is inflated.

    With ``digest`` the file is copied once into a private temp folder while
    it is hashed, and that copy is loaded (memory-mapped), so the digest is of
    the weights loaded whatever happens to the file meanwhile: hashing the
    path and then loading it again had loaded other weights under a pinned
    digest.  Reading the file into memory to hash and load it held its bytes
    twice at the peak (raw and as tensors).  Without, it is sized and loaded
    through one handle, and a file written to while it is read (its size or
    modification time moves) is a :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.exists():  # the host named: a Ray worker on another node of a cluster may not see the file
        raise FileNotFoundError(f"checkpoint {path} does not exist on {socket.gethostname()} (hwsearch never "
                                "downloads weights; a cluster's nodes must see it at the same path)")
    if not path.is_file():  # a FIFO or a folder: "does not exist" had sent the user looking for a missing file
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    data, sha256 = _read_pinned(path) if digest else (_read_as_it_is(path), None)
    for key in _WRAPPER_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of tensors), "
                              f"got {type(data).__name__}")
    check_keys(data, source=str(path))
    return LoadedCheckpoint(data, sha256)


def _read_as_it_is(path: Path) -> Any:
    """Size and load ``path`` through one handle; refused if it was written to meanwhile."""
    with path.open("rb") as file:  # opened here so only unreadable *content* is caught below
        before = _file_version(file)
        try:
            return _unpickle(file, path, mmap_from=None)
        finally:
            if _file_version(file) != before:
                raise CheckpointError(f"checkpoint {path} was written to while it was read; load it again "
                                      "once it is written")


def _read_pinned(path: Path) -> tuple[Any, str]:
    """Copy ``path`` to a private file while hashing it, load the copy; the data and the copy's SHA-256.

    Nobody else writes the copy, so what is hashed is what is loaded.  A zip
    checkpoint (``torch.save``'s format) is memory-mapped, so its bytes are
    not held in memory beside the tensors; the mapping outlives the copy's
    removal.  A killed process's copy is cleared by the next run
    (:func:`~hwsearch.tempdirs.remove_dead_owners_folders`).
    """
    with path.open("rb") as file, owned_temp_dir("checkpoint") as folder:
        private = folder / "weights.pt"
        digest = hashlib.sha256()
        with private.open("wb") as out:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        with private.open("rb") as copy:
            mappable = zipfile.is_zipfile(copy)
            copy.seek(0)
            return _unpickle(copy, path, mmap_from=private if mappable else None), digest.hexdigest()


def _unpickle(source: BinaryIO, path: Path, *, mmap_from: Path | None) -> Any:
    """``torch.load`` of a sized checkpoint, weights only; from ``mmap_from`` memory-mapped when given.

    ``path`` is the name errors give: the file the user named, not a copy.
    """
    try:
        check_unpacked_size(source)
    except UnpackedTooLarge as error:
        raise CheckpointError(f"checkpoint {path} {error}") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            if mmap_from is not None:
                return torch.load(mmap_from, weights_only=True, map_location="cpu", mmap=True)
            return torch.load(source, weights_only=True, map_location="cpu")
    except Exception as exc:  # a hostile or corrupt file makes the unpickler raise anything
        raise CheckpointError(
            f"{path} is not a loadable weights-only checkpoint ({load_failure_reason(exc)}); "
            "hwsearch reads only tensors and plain containers from checkpoints"
        ) from exc


def _file_version(file: BinaryIO) -> tuple[int, int]:
    """The open file's size and modification time: both move when it is written."""
    info = os.fstat(file.fileno())
    return info.st_size, info.st_mtime_ns


def load_failure_reason(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in one short line.

    torch's own message for a rejected pickle advises retrying with
    ``weights_only=False``, which runs arbitrary code from the file; only the
    unpickler's diagnosis (e.g. ``Unsupported global: GLOBAL x.Y ...``) is kept.
    """
    text = str(error)
    diagnosis = re.search(r"WeightsUnpickler error:\s*(.*)", text, re.DOTALL)
    if diagnosis is not None:
        text = diagnosis.group(1)
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first_line = first_line.split(" Please use ")[0][:_MAX_REASON_CHARS]
    if "weights_only" in first_line:  # an unforeseen wording of the unsafe advice: drop it all
        first_line = ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def check_keys(state: Mapping[Any, Any], *, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless every key of ``state`` is a string (a parameter's name).

    ``torch.save({1: t, "a": t})`` is a weights-only file like any other, and
    its int key failed deep in the key matching (``'int' object has no
    attribute 'replace'``): a traceback in the CLI, an internal error's text over HTTP.
    """
    odd = [key for key in state if not isinstance(key, str)]
    if odd:
        listed = ", ".join(repr(key)[:40] for key in odd[:_MAX_LISTED])
        more = f" and {len(odd) - _MAX_LISTED} more" if len(odd) > _MAX_LISTED else ""
        raise CheckpointError(f"{source}: state dict keys must be strings (parameter names), "
                              f"got {len(odd)} other keys: {listed}{more}")


def load_state(module: nn.Module, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
    """Copy ``state`` into ``module`` after checking keys and shapes; raise naming every problem."""
    check_keys(state, source=source)
    expected = module.state_dict()
    state = _rename_legacy(state, expected)
    problems = []
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(
        f"{key} (checkpoint {tuple(state[key].shape)}, supernet {tuple(expected[key].shape)})"
        for key in expected.keys() & state.keys()
        if isinstance(state[key], Tensor) and state[key].shape != expected[key].shape
    )
    for label, keys in (("values that are not tensors", not_tensors), ("missing keys", missing),
                        ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            listed = ", ".join(keys[:_MAX_LISTED])
            more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
            problems.append(f"{len(keys)} {label}: {listed}{more}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _rename_legacy(state: Mapping[str, Any], expected: Mapping[str, Tensor]) -> dict[str, Any]:
    """Map keys of older OFA releases to current names, only where that yields a known key."""
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        new_key = key
        if key not in expected:
            for old, new in _LEGACY_KEY_PARTS:
                candidate = key.replace(old, new)
                if candidate in expected and candidate not in state:
                    new_key = candidate
        renamed[new_key] = value
    return renamed
