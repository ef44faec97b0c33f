"""What the HTTP service does, as plain keyword-only functions.

Nothing here knows about FastAPI: functions take a store, a catalog and
plain values, return plain values, and raise :class:`ServiceError` subclasses
that say which HTTP status fits and which request field was wrong.  The
routes translate; tests and scripts can call these functions directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from devices.plain import finite_or_null
from hwsearch.agents import AgentEndpoint, UnknownAgent, operator_only_fields, resolve_profile
from hwsearch.api.built import BuildersBusy, BuiltSupernets
from hwsearch.api.catalog import Catalog, CatalogFull, absolute_path, valid_name
from hwsearch.api.files import DataRoots, PathRefused, check_unpacked_size
from hwsearch.checks import is_finite_real, is_real
from hwsearch.dispatch import Admission, JobDispatcher, QueueFull, StillStopping, StoreFull
from hwsearch.jobs import (
    CheckpointChanged,
    JobSpec,
    ProfileSpec,
    SupernetOptionError,
    SupernetRef,
    build_supernet,
    content_id,
    describe_error,
    spec_from_dict,
    supernet_builders,
)
from hwsearch.space import ArchConfig, ArchValidationError
from hwsearch.supernets import CheckpointError
from hwsearch.store import JobPlace, JobRecord, Store, StoreFailed, spec_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "Busy",
    "Conflict",
    "Invalid",
    "NotFound",
    "ServiceError",
    "cancel",
    "delete_job",
    "drop_unused_checkpoints",
    "export_subnet",
    "front_view",
    "get_job",
    "job_events",
    "job_fronts",
    "job_view",
    "list_devices",
    "list_jobs",
    "list_supernets",
    "open_export",
    "register_device",
    "register_supernet",
    "registry_names",
    "resume",
    "resume_at_start",
    "submit_profile",
    "submit_search",
    "upgrade_catalog",
    "upload_supernet",
]


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status that fits."""

    status = 400

    def __init__(self, message: str, *, field: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.field = tuple(field)


class NotFound(ServiceError):
    status = 404


class Invalid(ServiceError):
    """The request is well-formed but names something wrong; ``field`` says where."""

    status = 422


class Conflict(ServiceError):
    """The resource is not in a state that allows the request (a job not finished yet)."""

    status = 409


class NoRoom(ServiceError):
    """Storing the request's content would pass a bound on what the service keeps."""

    status = 413


class Busy(ServiceError):
    """The service is at a bound it keeps (queued jobs, exports at once); try again later."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --------------------------------------------------------------------------- supernets


def registry_names() -> list[str]:
    """The supernet builders this installation offers."""
    return sorted(supernet_builders())


#: Supernets are costly to build and pure to use: the last few built are kept (by content, not name).
_BUILT = BuiltSupernets(build_supernet)


def _supernet(ref: SupernetRef) -> Any:
    """The registered supernet ``ref``, built (see :func:`_built`).

    A checkpoint that loaded when it was registered and no longer does (replaced on disk by a folder, a
    truncated file or another network's weights) is the registration's state, not a server fault: a 409
    naming the supernet (Y17: a 500 from ``POST /jobs`` and ``POST /profiles``, where ``POST /exports``
    already answered 409).
    """
    try:
        return _built(ref)
    except (CheckpointError, FileNotFoundError) as error:  # not found: removed since :func:`_built` looked
        raise Conflict(f"supernet {ref.name!r}: its checkpoint cannot be loaded now: {error}",
                       field=("body", "supernet")) from None


def _built(ref: SupernetRef) -> Any:
    """The built supernet; a checkpoint changed on disk is read anew, and refused if it was pinned."""
    try:
        version = Path(ref.checkpoint).stat().st_mtime_ns if ref.checkpoint else 0
    except OSError as error:
        raise Conflict(f"supernet {ref.name!r}: its checkpoint is no longer readable on the "
                       "server; register it again") from error
    try:
        return _BUILT.get(ref, version)
    except BuildersBusy as busy:
        raise Busy(str(busy), retry_after_s=30) from None
    except CheckpointChanged as changed:
        raise _ChangedOnDisk(str(changed)) from None


_MIB = 1024 * 1024


def supernet_bytes(net: Any) -> int:
    """Bytes the supernet's tensors hold: parameters, buffers and tensors kept as attributes, each storage once."""
    import torch

    storages: dict[int, int] = {}
    for module in net.module.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                   *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _within_size(ref: SupernetRef, net: Any, max_bytes: int) -> None:
    """422 when a registration's supernet holds more than the service keeps; it leaves no copy in memory."""
    held = supernet_bytes(net)
    if held <= max_bytes:
        return
    _BUILT.drop(ref)  # the refused build must not stay in memory
    raise Invalid(f"supernet {ref.registry!r} with these options holds {held / _MIB:.0f} MiB of weights and buffers, "
                  f"above this service's limit of {max_bytes / _MIB:.0f} MiB (--max-supernet-mb); fewer classes "
                  "or smaller resolutions make it smaller",
                  field=("body", "options") if ref.options else ("body", "registry"))


class _ChangedOnDisk(Conflict):
    """A pinned checkpoint's file no longer holds the pinned bytes."""


def _build_checked(ref: SupernetRef, field: Sequence[str], max_bytes: int) -> dict[str, Any]:
    """Build ``ref`` once (so a bad checkpoint fails at registration), bound its size and describe its space.

    Anything that goes wrong while loading client-chosen weights is the
    client's input being wrong: a 422 with one line, the trace in the log.
    """
    try:
        net = _built(ref)
    except _ChangedOnDisk:  # pinned just before this build: the file was replaced while it was read
        raise Conflict("the checkpoint file changed while it was being registered; register it again once "
                       "it is written", field=field) from None
    except ServiceError:
        raise
    except SupernetOptionError as error:  # blamed on the checkpoint before, even when none was given
        raise Invalid(f"cannot build {ref.registry!r} with these options: {error}", field=("body", "options")) from None
    except Exception as error:
        log.info("supernet %r did not build", ref.name, exc_info=error)
        raise Invalid(f"cannot build {ref.registry!r} from this checkpoint and options: "
                      f"{describe_error(error)}", field=field) from None
    _within_size(ref, net, max_bytes)
    _numbers_only(net, field)
    space = net.space
    return {"space_name": space.name, "n_var": space.n_var, "size": space.size()}


def _numbers_only(net: Any, field: Sequence[str]) -> None:
    """422 if a weight is NaN or infinite, or a batch-norm variance negative: no subnet would give numbers.

    Such a checkpoint loads (the shapes fit) and was registered, and then
    every export of it failed its check against torch, as a 500.
    """
    import torch

    for name, tensor in net.module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise Invalid(f"checkpoint: {name} holds NaN or infinite values", field=field)
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise Invalid(f"checkpoint: {name} holds a negative variance", field=field)


def _check_registry(registry: object) -> None:
    if registry not in registry_names():
        raise Invalid(f"unknown supernet builder {registry!r}; choose from {registry_names()}",
                      field=("body", "registry"))


def register_supernet(
    *,
    catalog: Catalog,
    store: Store,
    roots: DataRoots,
    name: str,
    registry: str,
    checkpoint: str | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Register a supernet whose checkpoint is a file inside a data root (or none: random weights).

    The reference is pinned to the file's digest: if the file changes later,
    jobs and exports of this registration refuse it (409) rather than load
    other weights under the name.
    """
    _check_registry(registry)
    with _full_catalog_is_413(("body", "name")):  # before the build's seconds of CPU, as an upload checks (Y17)
        catalog.check_room("supernets", name)
    path = None
    if checkpoint is not None:
        try:
            path = str(roots.checkpoint(checkpoint))
        except PathRefused as error:
            raise Invalid(f"checkpoint {error}", field=("body", "checkpoint")) from None
    ref = SupernetRef(name=name, registry=registry, checkpoint=path, options=_options(options)).pinned()
    described = _described(ref, catalog.max_supernet_bytes)  # built before the lock: submissions do not wait
    with catalog.checkpoint_room():  # one registration of a name at a time with uploads, so none is lost
        replaced = _uploaded_checkpoint(catalog, catalog.get_supernet(name))
        _register(catalog, ref, described)
        if replaced is not None:
            _drop_if_unused(catalog, store, replaced)
    return described


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@contextmanager
def _full_catalog_is_413(field: Sequence[str]) -> Iterator[None]:
    """A registration past the catalog's bound, as the client hears it: 413 naming ``field``."""
    try:
        yield
    except CatalogFull as full:
        raise NoRoom(str(full), field=field) from None


def _described(ref: SupernetRef, max_bytes: int) -> dict[str, Any]:
    """``ref`` built and checked, and what its registration records: its space and its reference."""
    return {**_build_checked(ref, ("body", "checkpoint"), max_bytes), **ref.to_dict()}


def _register(catalog: Catalog, ref: SupernetRef, described: dict[str, Any]) -> None:
    with _full_catalog_is_413(("body", "name")):
        catalog.put_supernet(ref, described)


def upload_supernet(
    *,
    catalog: Catalog,
    store: Store,
    name: str,
    registry: str,
    options: Mapping[str, Any],
    content: IO[bytes],
    max_unpacked_bytes: int,
) -> dict[str, Any]:
    """Register a supernet whose checkpoint comes in the request; it is kept in the catalog.

    The upload is checked (its unpacked size, then built once) before it
    is kept, and the temporary file is removed whatever happens.  The copy
    and the build hold only the uploads' turn (:meth:`Catalog.upload_turn`);
    keeping and registering hold the checkpoint lock, briefly, so job and
    profile submissions and deletes wait for neither.  Checkpoints
    are kept by content (``checkpoints/<sha256>.pt``) and never overwritten:
    a job's spec names the file its accuracies were measured with, so
    uploading other weights under the same name must not change what that
    job's front exports or what its resume loads.  The name's previous
    checkpoint is removed only when no registration and no job names it.
    """
    if not valid_name(name):
        raise Invalid(f"name {name!r} must be letters, digits, '.', '_' or '-'",
                      field=("body", "name"))
    _check_registry(registry)
    with _full_catalog_is_413(("body", "name")):
        catalog.check_room("supernets", name)  # before the upload is stored, not after
    size = content.seek(0, os.SEEK_END)
    content.seek(0)
    with catalog.upload_turn():  # uploads one at a time; submissions and deletes do not wait for the copy
        with catalog.checkpoint_room() as room:
            _freed_for(catalog, store, name, size, room)  # refused before a byte is copied
        staged = _stage_upload(catalog, name, registry, options, content, max_unpacked_bytes)
        try:
            return _keep_upload(catalog, store, staged, size)
        finally:
            staged.part.unlink(missing_ok=True)


@dataclass(frozen=True)
class _StagedUpload:
    """An upload copied beside its final place and built once: everything but kept and registered."""

    part: Path
    ref: SupernetRef  # already naming the file it will be kept as
    described: dict[str, Any]


def _freed_for(catalog: Catalog, store: Store, name: str, size: int, room: int) -> Path | None:
    """The name's current upload, which keeping a new one frees; 413 when ``size`` would pass the bound anyway."""
    replaced = _uploaded_checkpoint(catalog, catalog.get_supernet(name))
    in_use = _checkpoints_in_use(catalog, store, ignoring=name)
    freed = replaced if replaced is not None and replaced not in in_use else None
    if freed is not None:
        room += freed.stat().st_size if freed.is_file() else 0
    if size > room:
        raise NoRoom(f"the service keeps at most {catalog.max_checkpoint_bytes} bytes of uploaded "
                     f"checkpoints and has room for {room} more; this one is {size}. Uploading "
                     "under a registered name frees its checkpoint unless a job used it",
                     field=("body", "checkpoint"))
    return freed


def _stage_upload(catalog: Catalog, name: str, registry: str, options: Mapping[str, Any],
                  content: IO[bytes], max_unpacked_bytes: int) -> _StagedUpload:
    """Copy the upload beside its final place and check that it unpacks within bounds and builds.

    The copy is a ``.part`` file, which :meth:`Catalog.checkpoint_room` does
    not count and a restart removes; the caller removes it whatever happens.
    """
    with tempfile.NamedTemporaryFile(dir=catalog.checkpoints, suffix=".part", delete=False) as tmp:
        part = Path(tmp.name)
    try:
        digest = _copy_hashed(content, part)
        try:
            check_unpacked_size(part, max_unpacked_bytes)
        except PathRefused as refused:
            raise Invalid(f"checkpoint {refused}", field=("body", "checkpoint")) from None
        built = _build_checked(SupernetRef(name=name, registry=registry, checkpoint=str(part),
                                           options=_options(options)), ("body", "checkpoint"),
                               catalog.max_supernet_bytes)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    ref = SupernetRef(name=name, registry=registry, checkpoint=str(catalog.checkpoints / f"{digest.hexdigest()}.pt"),
                      options=_options(options), checkpoint_sha256=digest.hexdigest())
    return _StagedUpload(part=part, ref=ref, described={**built, **ref.to_dict()})


def _copy_hashed(content: IO[bytes], path: Path) -> Any:
    """Write ``content`` to ``path`` in 1 MiB blocks; its SHA-256 on the way."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest


def _keep_upload(catalog: Catalog, store: Store, staged: _StagedUpload, size: int) -> dict[str, Any]:
    """Keep a staged upload under its digest and register it, with the room and what is in use read again now.

    Registrations and jobs changed while the upload copied and built, so the
    name's previous checkpoint is freed only if nothing names it now.
    """
    with catalog.checkpoint_room() as room:
        freed = _freed_for(catalog, store, staged.ref.name, size, room)
        path = Path(staged.ref.checkpoint)
        os.replace(staged.part, path)  # the same bytes if the file exists: nothing a reader sees changes
        catalog.kept_again(path)
        try:
            _register(catalog, staged.ref, staged.described)
        except NoRoom:  # another request took the last registration meanwhile: keep nothing
            _drop_if_unused(catalog, store, path)
            raise
        if freed is not None and path != freed:  # the same bytes again: the same file
            catalog.remove_unread(freed)
        return staged.described


_KEPT_BY_DIGEST = re.compile(r"[0-9a-f]{64}\.pt")


def _uploaded_checkpoint(catalog: Catalog, ref: SupernetRef | None) -> Path | None:
    """The catalog's own file that ``ref`` loads, if any (a data-root file is the operator's, never removed)."""
    if ref is None or ref.checkpoint is None:
        return None
    path = absolute_path(ref.checkpoint)
    return path if path.parent == catalog.checkpoints else None


def _checkpoints_in_use(catalog: Catalog, store: Store, *, ignoring: str | None = None) -> set[Path]:
    """Checkpoint files some registration (but ``ignoring``'s) or some job's spec names."""
    refs = [SupernetRef.from_dict(r) for r in catalog.list_supernets() if r.get("name") != ignoring]
    paths = {absolute_path(r.checkpoint) for r in refs if r.checkpoint}
    return paths | {absolute_path(checkpoint) for checkpoint in store.job_checkpoints()}


def _drop_if_unused(catalog: Catalog, store: Store, path: Path) -> None:
    """Remove an uploaded checkpoint nothing names any more, so it stops holding room.

    Only files kept by digest: an earlier version's ``<name>.pt`` stays for the operator (its
    registration may have been set aside at start-up, so "nothing names it" does not mean unwanted).
    """
    if path.parent == catalog.checkpoints and _KEPT_BY_DIGEST.fullmatch(path.name) \
            and path not in _checkpoints_in_use(catalog, store):
        catalog.remove_unread(path)


def drop_unused_checkpoints(*, catalog: Catalog, store: Store) -> list[str]:
    """At start-up: remove kept uploads no registration or job names (a crash between keeping and registering).

    Only files kept by digest are candidates; an earlier version's
    ``<name>.pt`` stays for the operator, as its set-aside registration does.
    """
    in_use = _checkpoints_in_use(catalog, store)
    dropped = [p for p in catalog.checkpoints.glob("*.pt") if _KEPT_BY_DIGEST.fullmatch(p.name) and p not in in_use]
    for path in dropped:
        path.unlink(missing_ok=True)
    return [f"checkpoint {p.name} removed: nothing names it" for p in dropped]


def list_supernets(*, catalog: Catalog) -> list[dict[str, Any]]:
    """Registered supernets as stored at registration; nothing is built or read again."""
    return catalog.list_supernets()


def get_supernet(*, catalog: Catalog, name: str, field: Sequence[str] = ()) -> SupernetRef:
    """A registered supernet; 404 for a path parameter, 422 (with ``field``) for a body field."""
    ref = catalog.get_supernet(name)
    if ref is None:
        known = [r["name"] for r in catalog.list_supernets()]
        message = f"supernet {name!r} is not registered; registered: {known}"
        raise Invalid(message, field=field) if field else NotFound(message)
    return ref


# --------------------------------------------------------------------------- devices

_CLIENT_WHERE_FIELDS = {"kind", "name", "timeout_s", "retries"}


def _client_where(where: object) -> dict[str, Any]:
    """A client's ``where``: local, or an operator-declared agent by name; never a URL or secret."""
    field = ("body", "profile", "where")
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise Invalid("where must be an object", field=field)
    for forbidden in ("url", "token_env", "cert_sha256"):
        if forbidden in where:
            raise Invalid(f"where.{forbidden} is not accepted over the API: name an agent the "
                          "operator declared with where.name (GET /agents)",
                          field=(*field, forbidden))
    unknown = sorted(set(where) - _CLIENT_WHERE_FIELDS)
    if unknown:
        raise Invalid(f"unknown field where.{unknown[0]}; allowed: {sorted(_CLIENT_WHERE_FIELDS)}",
                      field=(*field, unknown[0]))
    if where.get("kind", "local") == "agent" and not isinstance(where.get("name"), str):
        raise Invalid("where.kind agent needs where.name, an agent the operator declared",
                      field=(*field, "name"))
    if where.get("kind", "local") not in ("local", "agent"):
        raise Invalid("where.kind must be 'local' or 'agent'", field=(*field, "kind"))
    if where.get("kind", "local") == "local" and "name" in where:
        raise Invalid("where.name needs where.kind agent", field=(*field, "name"))
    return dict(where)


def register_device(*, catalog: Catalog, agents: Mapping[str, AgentEndpoint],
                    profile: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a client's device profile fully, then register it under its own name.

    The profile may not name a reference model file or an agent URL or
    token variable: what the server reads and whom it talks to is the
    operator's decision (see :mod:`hwsearch.agents`).
    """
    if not valid_name(profile.get("name")):
        raise Invalid("name must be 1-100 of letters, digits, '.', '_' or '-', starting with a "
                      "letter or digit", field=("body", "profile", "name"))
    if profile.get("reference_model") is not None:
        raise Invalid("reference_model is not accepted over the API; profiles registered here "
                      "use the built-in reference", field=("body", "profile", "reference_model"))
    data = {**profile, "where": _client_where(profile.get("where"))}
    try:
        parsed, _ = resolve_profile(data, agents)
    except UnknownAgent as error:
        raise Invalid(str(error), field=("body", "profile", "where", "name")) from None
    except ValueError as error:  # ProfileError names the field in its message
        raise Invalid(f"bad device profile: {error}", field=("body", "profile")) from None
    if parsed.where.kind == "local":
        _runs_here(parsed)
    record = {"name": parsed.name, "hash": parsed.hash(), "profile": data}
    with _full_catalog_is_413(("body", "profile", "name")):
        catalog.put_device(parsed.name, record)
    return record


def _runs_here(profile: Any) -> None:
    """A local device's runtime and first provider exist on this host, or its rows would time other hardware."""
    from devices.ort import require_runtime_here

    try:
        require_runtime_here(profile)
    except ValueError as error:
        raise Invalid(f"this host cannot measure the device: {error}", field=("body", "profile")) from None


def list_devices(*, catalog: Catalog) -> list[dict[str, Any]]:
    """Registered devices as stored at registration; no profile or file is read again."""
    return catalog.list_devices()


def _device(catalog: Catalog, name: str, field: Sequence[str | int]) -> dict[str, Any]:
    record = catalog.get_device(name)
    if record is None:
        known = [d["name"] for d in catalog.list_devices()]
        raise Invalid(f"device {name!r} is not registered; registered: {known}", field=field)
    return record["profile"]


# --------------------------------------------------------------------------- upgrades


def upgrade_catalog(*, catalog: Catalog, store: Store, roots: DataRoots,
                    agents: Mapping[str, AgentEndpoint]) -> list[str]:
    """Bring registrations an earlier version wrote to today's checked form, once, at start-up.

    Earlier versions stored a device profile as it came (an agent URL, a
    token variable or a reference model path included) and described a
    supernet by building it on every listing.  Each such record is checked
    now as if it were registered today: kept (in the new form) when it
    passes, set aside as ``*.json.rejected`` when it does not, so listing
    never fails on it and nothing it names is reached.  A supernet registered
    before checkpoints were pinned is pinned to its file as it is now.
    Returns one line per record touched.
    """
    changes = []
    for record in catalog.list_devices():
        if "profile" not in record:
            changes.append(_upgrade_device(catalog, agents, record))
        elif (rehashed := _rehash_device(catalog, agents, record)) is not None:
            changes.append(rehashed)
    for record in catalog.list_supernets():
        if "space_name" not in record:
            changes.append(_upgrade_supernet(catalog, store, roots, record))
        elif record.get("checkpoint") and "checkpoint_sha256" not in record:
            changes.append(_pin_supernet(catalog, record))
    return changes


def _pin_supernet(catalog: Catalog, record: Mapping[str, Any]) -> str:
    ref = SupernetRef.from_dict(record)
    try:
        pinned = ref.pinned()
    except OSError as error:
        return f"supernet {ref.name!r} left unpinned: its checkpoint cannot be read ({error.strerror})"
    catalog.put_supernet(pinned, dict(record))
    return f"supernet {ref.name!r} pinned to its checkpoint's SHA-256 {pinned.checkpoint_sha256}"


def _upgrade_device(catalog: Catalog, agents: Mapping[str, AgentEndpoint],
                    record: Mapping[str, Any]) -> str:
    name = str(record.get("name"))
    try:
        register_device(catalog=catalog, agents=agents, profile=record)
    except ServiceError as error:
        catalog.set_aside("devices", name)
        return f"device {name!r} set aside: {error.message}"
    return f"device {name!r} upgraded"


def _rehash_device(catalog: Catalog, agents: Mapping[str, AgentEndpoint], record: Mapping[str, Any]) -> str | None:
    """Store a device's hash anew where its profile hashes otherwise now; ``None`` where nothing changed.

    A default of the measurement settings can change (``timing`` became
    ``warm``): the profile kept as registered is then another device, and
    jobs measure and file it under the new hash, but ``GET /devices`` kept
    showing the old one, which matched no new row (probe Y4).
    """
    try:
        parsed, _ = resolve_profile(record["profile"], agents)
    except (UnknownAgent, ValueError, TypeError):  # not this check's to judge: jobs naming it say what is wrong
        return None
    if parsed.hash() == record.get("hash"):
        return None
    catalog.put_device(parsed.name, {**record, "hash": parsed.hash()})
    return (f"device {parsed.name!r} is measured under {parsed.hash()} now, not {record.get('hash')}: a default "
            "of its measurement settings changed, so its latencies are measured again")


def _upgrade_supernet(catalog: Catalog, store: Store, roots: DataRoots, record: Mapping[str, Any]) -> str:
    ref = SupernetRef.from_dict(record)
    try:
        register_supernet(catalog=catalog, store=store, roots=roots, name=ref.name, registry=ref.registry,
                          checkpoint=ref.checkpoint, options=ref.options)
    except ServiceError as error:
        catalog.set_aside("supernets", ref.name)
        return f"supernet {ref.name!r} set aside: {error.message}"
    return f"supernet {ref.name!r} upgraded"


# --------------------------------------------------------------------------- jobs


def job_view(record: Any) -> dict[str, Any]:
    """A job as the API shows it: the result summary without the (large) fronts.

    A field of a damaged row (one the store could not read, or that does not
    have the shape the API shows) reads as null (``kind`` as ``unknown``, a
    state as :data:`~hwsearch.store.UNREADABLE_STATE`) and is named in
    ``unreadable``: one such row answered every listing that reached it, and
    its own reads, with a 500.
    """
    unreadable = list(record.unreadable)
    progress = record.progress if _fits_progress(record.progress) and "progress" not in unreadable else None
    result = record.result
    if isinstance(result, Mapping):  # a NaN or inf (a measurement with no latency or CI) is null, as documented
        result = finite_or_null({k: v for k, v in result.items() if k != "fronts"})
    if not (result is None or isinstance(result, Mapping) and _is_plain_json(result)):
        result = None
    unreadable += [name for name, shown in (("progress", progress), ("result", result))
                   if shown is None and getattr(record, name) is not None and name not in unreadable]
    kind = record.spec.get("kind", "search")
    if "spec" in unreadable or not isinstance(kind, str):
        kind = "unknown"
    return {"id": record.job_id, "kind": kind, "state": record.state, "progress": progress,
            "error": record.error, "result": result, "unreadable": unreadable}


def _fits_progress(progress: Any) -> bool:
    """Whether a stored progress dict or event reads as the API shows one (texts, finite numbers)."""
    if not isinstance(progress, Mapping):
        return False
    texts = all(isinstance(progress.get(name, ""), str) for name in ("step", "message"))
    fraction, at = progress.get("fraction", 0.0), progress.get("at")
    return texts and _finite(fraction) and (at is None or _finite(at))


def _finite(value: Any) -> bool:
    """A finite Python number, as the response's JSON encoder takes it (a plug-in store's numpy float32 is not)."""
    return isinstance(value, (int, float)) and is_finite_real(value)  # 10**400: an OverflowError before (Y19)


def _is_plain_json(value: Any) -> bool:
    """Whether ``value`` renders as strict JSON (a stored NaN or Infinity would fail the response with a 500)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def _queue(dispatcher: JobDispatcher, spec: JobSpec | ProfileSpec) -> dict[str, Any]:
    try:
        job_id = dispatcher.submit(spec)
    except QueueFull as full:
        raise Busy(str(full), retry_after_s=full.retry_after_s) from None
    except StoreFull as full:
        raise NoRoom(str(full)) from None
    return job_view(dispatcher.store.get_job(job_id))


def _input_fits(batch: int, resolution: int, max_pixels: int, field: Sequence[str | int]) -> None:
    """422 naming ``field`` unless an export's input, ``batch`` x ``resolution``^2 pixels, is within the bound.

    An export holds the input and every activation for it at once (about
    240 MiB per million input pixels for the largest OFA MobileNetV3), so one
    in-bounds request at 1024 px and batch 256 would have asked for ~60 GB.
    """
    too_many = _too_many_pixels(batch, resolution, max_pixels)
    if too_many is not None:
        raise Invalid(f"{too_many} (GET /limits)", field=field)


def _too_many_pixels(batch: int, resolution: int, max_pixels: int) -> str | None:
    """Why ``batch`` x ``resolution``^2 input pixels are past the bound, or None if they are within it."""
    pixels = batch * resolution * resolution
    if pixels <= max_pixels:
        return None
    return f"batch {batch} at {resolution} px is {pixels:,} input pixels, above this service's limit of {max_pixels:,}"


def _at_most(value: int, cap: int, name: str) -> None:
    if value > cap:
        raise Invalid(f"{name}={value} is above this service's limit of {cap}",
                      field=("body", name))


def submit_search(
    *,
    dispatcher: JobDispatcher,
    catalog: Catalog,
    roots: DataRoots,
    supernet: str,
    devices: Sequence[str],
    dataset: str | None,
    limits: Sequence[Mapping[str, Any]],
    budget: int,
    seed: int,
    n_profile: int,
    targets: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Check every field and reference of a search job, then queue it (or 429 when full).

    From reading the supernet's registration to writing the job's record,
    uploads wait (:meth:`Catalog.checkpoints_named`): an upload under the
    same name would otherwise remove the checkpoint this job is about to name.
    The supernet is built (or found in the cache) before that: a build that
    had left the cache, 9 s for a ViT, held every other submission and upload.
    """
    _at_most(n_profile, dispatcher.admission.max_n_profile, "n_profile")
    _at_most(budget, dispatcher.admission.max_budget, "budget")
    _supernet(get_supernet(catalog=catalog, name=supernet, field=("body", "supernet")))  # built before the lock
    with catalog.checkpoints_named():
        ref = get_supernet(catalog=catalog, name=supernet, field=("body", "supernet"))
        if len(set(devices)) != len(devices):
            raise Invalid("a device is listed twice", field=("body", "devices"))
        profiles = tuple(_device(catalog, name, ("body", "devices", i))
                         for i, name in enumerate(devices))
        largest = max(_supernet(ref).space.resolutions)
        for i, profile in enumerate(profiles):
            _input_fits(int(profile.get("batch", 1)), largest, dispatcher.admission.max_input_pixels,
                        ("body", "devices", i))
        aims = _targets(targets or {}, devices)
        if dataset is None:
            raise Invalid("a search job needs validation data to measure accuracy",
                          field=("body", "dataset"))
        try:
            dataset_path = str(roots.dataset(dataset))
        except PathRefused as error:
            raise Invalid(f"dataset {error}", field=("body", "dataset")) from None
        return _queue(dispatcher, JobSpec(supernet=ref, devices=profiles, dataset=dataset_path,
                                          limits=tuple(dict(lim) for lim in limits), budget=budget, seed=seed,
                                          n_profile=n_profile, targets=aims))


def _targets(targets: Mapping[str, Mapping[str, Any]],
             devices: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each device's latency targets, checked; a name that is not one of the job's devices is a 422."""
    from hwsearch.acquisition import LatencyTargets

    out = {}
    for name, value in targets.items():
        if name not in devices:
            raise Invalid(f"targets name device {name!r}, which is not one of the job's devices "
                          f"{list(devices)}", field=("body", "targets", name))
        try:
            out[name] = LatencyTargets.from_dict(value).to_dict()
        except ValueError as error:
            raise Invalid(str(error), field=("body", "targets", name)) from None
    return out


def get_job(*, store: Store, job_id: str) -> Any:
    try:
        return store.get_job(job_id)
    except KeyError as error:
        raise NotFound(f"job {job_id!r} does not exist") from error


def job_events(*, store: Store, job_id: str, after: int, limit: int) -> list[dict[str, Any]]:
    """The job's progress events after ``after``, in order (none is ever skipped), at most ``limit``.

    An event whose stored data cannot be shown (damaged) keeps its place as ``{"seq", "unreadable": true}``.
    """
    with _gone_is_404(job_id):  # a DELETE may land between the two reads
        get_job(store=store, job_id=job_id)
        events = store.job_events(job_id, after=after, limit=limit)
    return [event if _fits_progress(event) and not event.get("unreadable") else
            {"seq": event["seq"], "unreadable": True} for event in events]


def list_jobs(*, store: Store, limit: int,
              before: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """A page of jobs, newest first, and the ``before`` of the next page (None on the last).

    Paged in the store, so a listing reads ``limit`` jobs however many the
    store holds (all 3,000 of a store took 2.4 s to read and shape).  The
    next page's ``before`` is the last job's place, not its id: a job
    deleted meanwhile does not end the paging (Y15: a 422).
    """
    place = None if before is None else _job_place(store, before)
    try:
        records = store.recent_jobs(limit + 1, before=place)  # one more tells whether a next page exists
    except KeyError:  # a plug-in store that looks the place up as a job's id (Y16: a 500)
        raise StoreFailed("the store's recent_jobs refused a JobPlace: a plug-in store written for an earlier "
                          "hwsearch, whose recent_jobs took a job's id") from None
    page = records[:limit]
    return [job_view(record) for record in page], _place_text(page[-1]) if len(records) > limit else None


def _place_text(record: JobRecord) -> str:
    """A job's place as a listing's ``before``: its id, ``~``, and its creation time as Python writes a float
    (which reads back to the same float); the id alone where the time is no number (a damaged row, Y16: its
    place read back as a 422), to be looked up again."""
    created = record.created
    if is_real(created) and not math.isnan(created):
        return f"{record.job_id}~{float(created)!r}"
    return record.job_id


def _job_place(store: Store, before: str) -> JobPlace:
    """The place ``before`` names: a job's id (the jobs created before it), else a listing's ``next_before``
    (:func:`_place_text`; a plug-in store's id may hold a ``~`` too)."""
    try:
        return JobPlace.of(store.get_job(before))
    except KeyError:
        pass
    job_id, marked, created = before.rpartition("~")
    try:
        instant = float(created) if marked and job_id else math.nan
    except ValueError:
        instant = math.nan
    if math.isnan(instant):
        raise Invalid(f"before={before!r} names no job, and is no listing's next_before", field=("query", "before"))
    return JobPlace(instant, job_id)


def cancel(*, dispatcher: JobDispatcher, job_id: str) -> dict[str, Any]:
    """Stop a job now: its task and everything it started end; its measurements stay."""
    with _gone_is_404(job_id):  # a DELETE may land between any two of these reads
        get_job(store=dispatcher.store, job_id=job_id)
        dispatcher.cancel(job_id)
        return job_view(dispatcher.store.get_job(job_id))


@contextmanager
def _gone_is_404(job_id: str) -> Iterator[None]:
    """A job deleted while a request about it was being answered is a 404, as if it had never been."""
    try:
        yield
    except KeyError:
        raise NotFound(f"job {job_id!r} does not exist") from None


def resume(*, dispatcher: JobDispatcher, catalog: Catalog, roots: DataRoots, job_id: str) -> dict[str, Any]:
    """Queue a stopped job again; it continues from the measurements in the store.

    The job must still pass what a new submission must pass today: an
    operator who restarted the service with tighter limits, other data roots
    or fewer agents has not agreed to run what those settings refuse.
    """
    with _gone_is_404(job_id):
        record = get_job(store=dispatcher.store, job_id=job_id)
        if record.state == "succeeded":
            raise Conflict(f"job {job_id!r} already succeeded")
        if "state" in record.unreadable:  # the store would not move it anyway: say why instead of doing nothing
            raise Conflict(f"job {job_id!r} cannot be resumed: its stored state cannot be read (a damaged record); "
                           "delete it and submit a new job")
        refused = _checked_now(record, dispatcher, catalog, roots)
        if refused:
            raise Conflict(f"job {job_id!r} is refused by this service's settings now: {'; '.join(refused)}; "
                           "submit a new job within them")
        try:
            dispatcher.resume(job_id)
        except StillStopping as error:
            raise Conflict(str(error)) from None
        except QueueFull as full:
            raise Busy(str(full), retry_after_s=full.retry_after_s) from None
        return job_view(dispatcher.store.get_job(job_id))


def _checked_now(record: Any, dispatcher: JobDispatcher, catalog: Catalog, roots: DataRoots) -> list[str]:
    """:func:`_refused_now` of a stored job; a spec it cannot read or build is refused too (409, not 500).

    A job stored by an earlier version, or whose supernet's builder or weights are gone or changed,
    cannot be checked, and a job that cannot be checked is not run.
    """
    try:
        return _refused_now(spec_from_dict(record.spec), dispatcher, catalog, roots)
    except ServiceError:
        raise
    except Exception as error:
        log.info("job %s cannot be checked for a resume", record.job_id, exc_info=error)
        raise Conflict(f"job {record.job_id!r} cannot be resumed: its stored spec no longer reads or builds "
                       f"({describe_error(error)}); submit a new job") from None


def _refused_now(spec: JobSpec | ProfileSpec, dispatcher: JobDispatcher, catalog: Catalog,
                 roots: DataRoots) -> list[str]:
    """What in a stored job today's admission refuses: data roots, devices' reach, limits, input size.

    Files and reach come first: the supernet is built, its checkpoint read, only for a job whose
    checkpoint lies inside the data roots (a row an earlier version stored may name any file).
    """
    admission = dispatcher.admission
    profiles = list(spec.devices) if isinstance(spec, JobSpec) else [spec.device]
    refused = _files_refused(spec, catalog, roots)
    for profile in profiles:
        refused += _reach_refused(profile, dispatcher.agents)
    if isinstance(spec, JobSpec):
        refused += [f"{name}={value} is above the limit of {cap}" for name, value, cap in (
            ("n_profile", spec.n_profile, admission.max_n_profile), ("budget", spec.budget, admission.max_budget))
            if value > cap]
    if any(reason.startswith("its checkpoint") for reason in refused):
        return refused
    resolution = (max(_supernet(spec.supernet).space.resolutions) if isinstance(spec, JobSpec)
                  else int(spec.arch.get("resolution", 0)))
    for profile in profiles:
        too_many = _too_many_pixels(int(profile.get("batch", 1)), resolution, admission.max_input_pixels)
        if too_many is not None:
            refused.append(f"device {profile.get('name')!r}: {too_many}")
    return refused


def _files_refused(spec: JobSpec | ProfileSpec, catalog: Catalog, roots: DataRoots | None) -> list[str]:
    """Why a stored job's dataset and checkpoint may not be read today (outside the data roots); [] if they may."""
    refused = [_file_refused("dataset", spec.dataset, catalog, roots),
               _file_refused("checkpoint", spec.supernet.checkpoint, catalog, roots)]
    return [f"its {reason}" for reason in refused if reason is not None]


def _file_refused(what: str, path: str | None, catalog: Catalog, roots: DataRoots | None) -> str | None:
    """Why a stored job's ``what`` (dataset or checkpoint) at ``path`` may not be read today, or None."""
    if path is None or (what == "checkpoint" and Path(path).parent == catalog.checkpoints):
        return None  # an uploaded checkpoint is the service's own, not a data-root file
    if roots is None:
        return f"{what} cannot be checked: this service has no data roots"
    try:
        (roots.dataset if what == "dataset" else roots.checkpoint)(path)
    except PathRefused as error:
        return f"{what} {error}"
    return None


def _reach_refused(profile: Mapping[str, Any], agents: Mapping[str, AgentEndpoint]) -> list[str]:
    """Why a stored device would reach what the operator did not declare: a URL, token variable or file of
    its own (a row an earlier version stored as the client sent it), or an agent no longer declared."""
    name = profile.get("name")
    named = operator_only_fields(profile)
    if named:
        return [f"device {name!r} names {', '.join(named)}, which only the operator's own profile files may"]
    where = profile.get("where") or {}
    if where.get("kind") == "agent" and where.get("name") not in agents:
        return [f"device {name!r} measures on agent {where.get('name')!r}, which this service no longer declares"]
    return []


def resume_at_start(*, dispatcher: JobDispatcher, catalog: Catalog, roots: DataRoots,
                    job_ids: Sequence[str]) -> None:
    """``--resume``: queue again the jobs a dead service left, each only if :func:`resume` admits it.

    At start-up they were queued unchecked: a row an earlier version stored
    (its device's URL, token variable and reference file as the client sent
    them) sent the service's own token to that URL.  A job refused now is
    marked failed, saying why, and is not run; one the full queue has no room
    for stays ``interrupted`` for a client to resume later.
    """
    for job_id in job_ids:
        try:
            resume(dispatcher=dispatcher, catalog=catalog, roots=roots, job_id=job_id)
        except Busy as busy:
            log.warning("job %s stays interrupted: %s", job_id, busy.message)
        except (Conflict, NotFound) as refused:
            log.warning("job %s is not resumed: %s", job_id, refused.message)
            with suppress(KeyError):
                dispatcher.store.transition_job(job_id, ("interrupted",), "failed",
                                                error=" ".join(f"not resumed at start-up: {refused.message}".split()))


def delete_job(*, dispatcher: JobDispatcher, catalog: Catalog, job_id: str) -> None:
    """Remove a stopped job: its record, events and fronts; an uploaded checkpoint only it named goes too.

    Measurements stay: they are the device's and the supernet's, and later
    jobs reuse them.  A queued or running job must be cancelled first (409).
    """
    # no submission names the checkpoint between the check and the removal
    with _gone_is_404(job_id), catalog.checkpoints_named():
        checkpoint = spec_checkpoint(get_job(store=dispatcher.store, job_id=job_id).spec)
        try:
            dispatcher.delete(job_id)
        except (StillStopping, ValueError) as error:
            raise Conflict(str(error)) from None
        if checkpoint is not None:
            _drop_if_unused(catalog, dispatcher.store, absolute_path(checkpoint))


def job_fronts(*, store: Store, job_id: str) -> dict[str, dict[str, Any]]:
    """The Pareto front of every device of a finished search job, in JSON form."""
    return _fronts_of(get_job(store=store, job_id=job_id))


def _fronts_of(record: Any, field: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """A job record's fronts; a 409 for a job that has none (yet), naming ``field`` (a body's ``job_id``)."""
    job_id = record.job_id
    if record.spec.get("kind", "search") != "search":
        raise Conflict(f"job {job_id!r} is a {record.spec.get('kind')} job; it has no fronts", field=field)
    if record.state != "succeeded":
        raise Conflict(f"job {job_id!r} is {record.state}; fronts exist once it has succeeded", field=field)
    fronts = record.result.get("fronts") if isinstance(record.result, Mapping) else None
    if not isinstance(fronts, Mapping):
        raise Conflict(f"job {job_id!r} has succeeded but its stored result holds no readable fronts (a damaged "
                       "record); run the search again", field=field)
    for device, front in fronts.items():
        _check_stored_front(job_id, device, front)
    return dict(fronts)


def _check_stored_front(job_id: str, device: Any, front: Any) -> None:
    """A 409 naming the job and device unless a stored front reads as a front (as the API shows it).

    A damaged record (fronts of the wrong shape, NaN objectives) failed the
    request with a 500 deep in the response's validation.  A point's
    non-finite condition (``ratio_ci`` inf: its session made no CI) is no
    damage: it is shown as null.
    """
    from hwsearch.results import ParetoFront

    try:
        ParetoFront.from_dict(front)
        readable = isinstance(device, str) and _is_plain_json(finite_or_null(front))
    except (ValueError, TypeError, KeyError, AttributeError):
        readable = False
    if not readable:
        raise Conflict(f"job {job_id!r}: its stored front for device {device!r} cannot be read (a damaged record); "
                       "run the search again")


def front_view(front: Mapping[str, Any]) -> dict[str, Any]:
    """A front in JSON form with each point's index, which exports and profiles refer to (non-finite numbers null)."""
    return finite_or_null({**front, "points": [{**p, "index": i} for i, p in enumerate(front["points"])]})


# --------------------------------------------------------------------------- subnets


@dataclass(frozen=True)
class _Subnet:
    """What a request's subnet reference means, read once from the catalog or the job record.

    For a front's point: its own ``precision`` and the ``job`` spec it was
    measured under (whose data exports and profiles fall back to).
    """

    ref: SupernetRef
    arch: ArchConfig
    precision: str = "fp32"
    job: JobSpec | None = None


def _resolve(
    *,
    store: Store,
    catalog: Catalog,
    roots: DataRoots | None,
    supernet: str | None,
    arch: Mapping[str, Any] | None,
    job_id: str | None,
    device: str | None,
    point: int | None,
    budget_ms: float | None = None,
) -> _Subnet:
    """The subnet a request means: an arch given directly, or a point of a job's front.

    The point is named by its index or by a latency budget (``budget_ms``):
    the most accurate *measured* point within it, which for a budget the job
    was aimed at is its per-target pick.  A point's supernet is built with the
    checkpoint its job names, so that checkpoint must lie in today's data roots
    (or be an upload): a row an earlier version stored may name any file.
    """
    if arch is not None:
        ref = get_supernet(catalog=catalog, name=str(supernet), field=("body", "supernet"))
        return _Subnet(ref, _arch(ref, arch))
    try:  # named in the body, like the supernet and device it could have named: a 422 naming the field
        record = get_job(store=store, job_id=str(job_id))
    except NotFound as error:
        raise Invalid(error.message, field=("body", "job_id")) from None
    fronts = _fronts_of(record, ("body", "job_id"))
    if device not in fronts:
        raise Invalid(f"job {job_id!r} has no front for device {device!r}; it has {sorted(fronts)}",
                      field=("body", "device"))
    points = fronts[device]["points"]
    index = _point_index(fronts[device], point, budget_ms)
    chosen = points[index]
    try:
        job = JobSpec.from_dict(record.spec)
    except ValueError as error:  # a record an earlier version stored, or a damaged one
        raise Conflict(f"job {job_id!r}: its stored spec no longer reads ({describe_error(error)}); its fronts "
                       "cannot be exported or profiled", field=("body", "job_id")) from None
    refused = _file_refused("checkpoint", job.supernet.checkpoint, catalog, roots)
    if refused is not None:
        raise Conflict(f"job {job_id!r}: its supernet.{refused}; its fronts cannot be exported or profiled "
                       "on this service now", field=("body", "job_id"))
    return _Subnet(job.supernet, _arch(job.supernet, chosen["arch"]),
                   str(chosen.get("precision", "fp32")), job)


def _point_index(front: Mapping[str, Any], point: int | None, budget_ms: float | None) -> int:
    """The index a request names: ``point`` itself (checked), or the best point within ``budget_ms``.

    No point under the budget is a 422 naming ``budget_ms`` and the fastest point.
    """
    from hwsearch.results import ParetoFront

    n = len(front["points"])
    if n == 0:  # said as such: "outside the front (0..-1)" and "the fastest takes nan ms" before
        raise Invalid("this front has no points", field=("body", "budget_ms" if budget_ms is not None else "point"))
    if budget_ms is None:
        if not 0 <= int(point or 0) < n:
            raise Invalid(f"point {point} is outside the front (0..{n - 1})",
                          field=("body", "point"))
        return int(point or 0)
    parsed = ParetoFront.from_dict(front)
    best = parsed.best_under(float(budget_ms))
    if best is None:
        fastest = min((p.measured["latency_ms"] for p in parsed.points), default=float("nan"))
        raise Invalid(f"no measured point of this front runs within {budget_ms:g} ms; the fastest "
                      f"takes {fastest:.3g} ms", field=("body", "budget_ms"))
    return parsed.points.index(best)


def _arch(ref: SupernetRef, data: Mapping[str, Any]) -> ArchConfig:
    try:
        return _supernet(ref).space.from_dict(data)
    except ArchValidationError as error:
        raise Invalid(f"arch is outside the space of {ref.name!r}: {error}",
                      field=("body", "arch")) from error


# Exports run in the request's thread: bound how many build ONNX files at once, so a burst
# of export requests cannot occupy every core of the service, and how many may wait for a
# slot: a waiting export holds one of the worker threads every synchronous route shares
# (40), and 40 waiting exports held ``GET /devices`` back for 57 s.  Past them, 429 at once.
_EXPORT_SLOTS = threading.BoundedSemaphore(2)
_EXPORT_QUEUE = threading.BoundedSemaphore(2 + 4)
_EXPORT_WAIT_S = 60.0
# A request for an export another request is building waits for that build instead of building it
# again; such waits hold worker threads too, so they are bounded apart from the exports' queue.
_DUPLICATES = threading.BoundedSemaphore(16)
_DUPLICATE_WAIT_S = 2 * _EXPORT_WAIT_S


def export_subnet(
    *,
    store: Store,
    catalog: Catalog,
    roots: DataRoots | None = None,
    batch: int = 1,
    precision: str | None = None,
    dataset: str | None = None,
    max_input_pixels: int = Admission.max_input_pixels,
    **subnet: Any,
) -> dict[str, Any]:
    """Export a subnet to ONNX (checked against torch) in the catalog; exports are cached.

    ``precision`` defaults to the front point's own (a mixed front's INT8
    point exports as INT8) or ``fp32``.  With data (``dataset``, or a front
    point's job's), the subnet's batch norm is re-estimated on the data's
    calibration part first, as the job did before measuring accuracy, and
    INT8 calibrates on the same images; an INT8 export needs data.  The
    file's id covers the precision and the data, so they never share a cache entry.
    """
    reading = _count_registered_checkpoint(catalog, subnet)
    try:
        resolved = _resolve(store=store, catalog=catalog, roots=roots, **subnet)
        return _export_resolved(catalog, roots, resolved, batch, precision, dataset, max_input_pixels)
    except CheckpointError as error:  # registered and checked once, it no longer loads (written to as read)
        raise Conflict(f"supernet {subnet.get('supernet')!r}: its checkpoint cannot be loaded now: {error}",
                       field=("body", "supernet")) from None
    finally:
        catalog.done_reading(reading)


def _count_registered_checkpoint(catalog: Catalog, subnet: Mapping[str, Any]) -> Path | None:
    """Count the checkpoint of the supernet an export names as read (a front point's job names its own).

    The registration is read again after counting: an upload registers its
    new checkpoint before it removes the old one (:meth:`Catalog.remove_unread`),
    so a registration unchanged after the count was still current when the
    count was taken, and its file cannot go while the export reads it.
    """
    if subnet.get("arch") is None:
        return None
    name, field = str(subnet.get("supernet")), ("body", "supernet")
    ref = get_supernet(catalog=catalog, name=name, field=field)
    while True:
        reading = catalog.reading_checkpoint(ref.checkpoint)
        try:
            now = get_supernet(catalog=catalog, name=name, field=field)
        except BaseException:
            catalog.done_reading(reading)
            raise
        if now == ref:
            return reading
        catalog.done_reading(reading)
        ref = now


def _export_resolved(catalog: Catalog, roots: DataRoots | None, resolved: _Subnet, batch: int,
                     precision: str | None, dataset: str | None, max_input_pixels: int) -> dict[str, Any]:
    ref, arch = resolved.ref, resolved.arch
    _input_fits(batch, arch.resolution, max_input_pixels, ("body", "batch"))
    precision, plan = _precision_and_data(resolved, roots, precision, dataset, "export")
    export_id = _export_id(ref, arch, batch, precision, plan)
    cache = catalog.export_cache
    deadline = time.monotonic() + _DUPLICATE_WAIT_S
    while (info := cache.report(export_id)) is None:
        running = cache.claim_build(export_id)
        if running is None:
            try:
                return cache.report(export_id) or _build_export(cache, export_id, ref, arch, batch, precision, plan)
            finally:
                cache.build_done(export_id)
        _wait_for_build(running, deadline)
    return info


def _wait_for_build(running: threading.Event, deadline: float) -> None:
    """Wait for another request's build of the same export (then read the cache again), within bounds."""
    if not _DUPLICATES.acquire(blocking=False):
        raise Busy("the service is busy exporting", retry_after_s=30)
    try:
        ended = running.wait(max(0.0, deadline - time.monotonic()))
    finally:
        _DUPLICATES.release()
    if not ended:
        raise Busy("the service is still exporting this subnet for another request", retry_after_s=30)


def _build_export(cache: Any, export_id: str, ref: SupernetRef, arch: ArchConfig, batch: int, precision: str,
                  plan: Any) -> dict[str, Any]:
    """Build the export into the cache under ``export_id``; its report."""
    made = cache.making_path(export_id)
    try:
        report = _export_file(ref, arch, made, batch, precision, plan)
        return cache.put(export_id, made, {
            "id": export_id, "supernet": ref.name, "arch": arch.to_dict(), "arch_key": arch.key(),
            "bytes": made.stat().st_size, "macs": report.macs, "params": report.params,
            "input_shape": list(report.input_shape), "max_abs_diff": report.max_abs_diff,
            "precision": precision, "bn_statistics": report.bn_statistics,
            "quantization": None if report.quantization is None else {
                k: v for k, v in report.quantization.items() if k != "path"},
        })
    finally:
        made.unlink(missing_ok=True)


def _precision_and_data(resolved: _Subnet, roots: DataRoots | None, precision: str | None,
                        dataset: str | None, what: str) -> tuple[str, Any]:
    """``(precision, data plan or None)`` of an export or profile; an int8 one needs data.

    ``precision`` defaults to the front point's own (fp32 for an arch).  A
    front point's plan is its job's (same images, same calibration part); a
    ``dataset`` given in the request replaces it and must lie in a data root.
    """
    from hwsearch.evaldata import DataPlan

    plan = None
    if resolved.job is not None and resolved.job.dataset is not None:
        job_plan = resolved.job.data_plan()
        plan = replace(job_plan, dataset=_data_path(roots, job_plan.dataset))
    if dataset is not None:
        plan = DataPlan(_data_path(roots, dataset))
    precision = precision or resolved.precision
    if precision == "int8" and plan is None:
        raise Invalid(f"an int8 {what} calibrates on your images: give 'dataset' (a path inside "
                      "a data root)", field=("body", "dataset"))
    return precision, plan


def _data_path(roots: DataRoots | None, dataset: str) -> str:
    """``dataset`` checked against the operator's data roots (a 422 naming ``dataset`` if refused)."""
    if roots is None:
        raise Invalid("this service has no data roots, so it cannot read calibration images",
                      field=("body", "dataset"))
    try:
        return str(roots.dataset(dataset))
    except PathRefused as error:
        raise Invalid(f"dataset {error}", field=("body", "dataset")) from None


def _export_id(ref: SupernetRef, arch: ArchConfig, batch: int, precision: str, plan: Any) -> str:
    """An export's cache name: readable parts, then a digest of all that shapes the file.

    The registration (builder, options, pinned checkpoint) is in the digest:
    a name registered again with other weights or another head must not be
    served the file exported for the old one.  At most 100 characters, the
    longest name a download accepts.
    """
    shaped_by = {"supernet": ref.to_dict(), "arch": arch.key(), "batch": batch, "precision": precision,
                 "data": None if plan is None else _plan_digest(plan, ref)}
    digest = hashlib.sha256(json.dumps(shaped_by, sort_keys=True).encode()).hexdigest()[:20]
    return f"{ref.name[:50]}-{arch.digest()}-b{batch}-{precision}-{digest}"


def _plan_digest(plan: Any, ref: SupernetRef) -> str:
    """A short id of the data an export calibrates on (files, how they are read, choices), for its cache key.

    How files are read is in it because a new reading of the same files
    calibrates differently (int16 pixels were not divided by 255 before).
    """
    from hwsearch.evaldata import ARRAY_PREPROCESSING
    from hwsearch.preprocess import PREPROCESSING_ID

    return content_id(plan.dataset, plan.calibration,
                      extra={"n_calibration": plan.n_calibration, "checkpoint": ref.checkpoint,
                             "reading": [ARRAY_PREPROCESSING, PREPROCESSING_ID]})[:12]


def _export_file(ref: SupernetRef, arch: ArchConfig, made: Path, batch: int, precision: str,
                 plan: Any) -> Any:
    """Build the file at ``made`` under a bounded number of concurrent exports; returns the export report."""
    if not _EXPORT_QUEUE.acquire(blocking=False):
        raise Busy("the service is busy exporting", retry_after_s=30)
    try:
        if not _EXPORT_SLOTS.acquire(timeout=_EXPORT_WAIT_S):
            raise Busy("the service is busy exporting", retry_after_s=30)
        try:
            return _export_now(ref, arch, made, batch, precision, plan)
        finally:
            _EXPORT_SLOTS.release()
    finally:
        _EXPORT_QUEUE.release()


def _export_now(ref: SupernetRef, arch: ArchConfig, made: Path, batch: int, precision: str, plan: Any) -> Any:
    """The export itself; weights whose torch output is not finite are the request's fault (422), and so is an
    export onnxruntime does not run as torch does on the request's data (a 500 before)."""
    from hwsearch.export import CalibrationDataError, ExportCheckError, NonFiniteOutput
    from hwsearch.export import export_subnet as export

    net = _supernet(ref)
    data = None
    if plan is not None:
        try:
            data = plan.open(size=max(net.space.resolutions)).calibration
        except ValueError as error:
            raise Invalid(f"dataset cannot be read: {error}", field=("body", "dataset")) from None
    try:
        return export(net, arch, made, batch=batch, precision=precision, calibration=data, bn_data=data)
    except NonFiniteOutput as error:
        raise Invalid(f"supernet {ref.name!r}: {error}", field=("body",)) from None
    except CalibrationDataError as error:  # a streamed folder's file, read only now
        raise Invalid(f"dataset cannot be used: {error}", field=("body", "dataset")) from None
    except ExportCheckError as error:  # e.g. near-constant images: batch norms recalibrated on them blow up
        field = ("body",) if plan is None else ("body", "dataset")
        raise Invalid(f"this subnet cannot be exported faithfully{' on this dataset' if plan else ''}: {error}",
                      field=field) from None


def open_export(*, catalog: Catalog, export_id: str) -> IO[bytes]:
    """An export's ONNX file, open for download (which counts as a use: pruning spares it longest)."""
    handle = catalog.export_cache.open_file(export_id) if valid_name(export_id) else None
    if handle is None:
        raise NotFound(f"export {export_id!r} does not exist (or was pruned from the bounded cache); "
                       "create it with POST /exports")
    return handle


def submit_profile(
    *,
    dispatcher: JobDispatcher,
    catalog: Catalog,
    on: str,
    roots: DataRoots | None = None,
    precision: str | None = None,
    dataset: str | None = None,
    **subnet: Any,
) -> dict[str, Any]:
    """Queue a measurement of one subnet on one registered device (local or through its agent).

    ``precision`` defaults to the front point's own, or ``fp32``; an int8
    measurement quantizes the export on ``dataset`` (or the point's job's data).
    """
    profile = _device(catalog, on, ("body", "on"))
    _resolve(store=dispatcher.store, catalog=catalog, roots=roots, **subnet)  # as in submit_search: built first
    with catalog.checkpoints_named():  # as in submit_search: the checkpoint stays until the record names it
        resolved = _resolve(store=dispatcher.store, catalog=catalog, roots=roots, **subnet)
        _input_fits(int(profile.get("batch", 1)), resolved.arch.resolution, dispatcher.admission.max_input_pixels,
                    ("body", "on"))
        precision, plan = _precision_and_data(resolved, roots, precision, dataset, "profile")
        if precision == "int8" and profile.get("input_dtype", "float32") != "float32":
            raise Invalid(f"device {on!r} takes {profile['input_dtype']} inputs, and int8 models are quantized "
                          "from FP32 ones, which take float32: measure fp32 on it, or int8 on a float32 device",
                          field=("body", "precision"))
        return _queue(dispatcher, ProfileSpec(
            supernet=resolved.ref, device=profile, arch=resolved.arch.to_dict(), precision=precision,
            dataset=None if precision == "fp32" or plan is None else plan.dataset))
