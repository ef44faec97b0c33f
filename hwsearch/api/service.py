"""What the HTTP service does, as plain keyword-only functions.

Nothing here knows about FastAPI: functions take a store, a catalog and
plain values, return plain values, and raise :class:`ServiceError` subclasses
that say which HTTP status fits and which request field was wrong.  The
routes translate; tests and scripts can call these functions directly.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from hwsearch.api.catalog import Catalog, valid_name
from hwsearch.jobs import (
    JobSpec,
    ProfileSpec,
    SupernetRef,
    build_supernet,
    cancel_job,
    resume_job,
    submit_job,
    supernet_builders,
)
from hwsearch.space import ArchConfig, ArchValidationError
from hwsearch.store import Store

__all__ = [
    "Conflict",
    "Invalid",
    "NotFound",
    "ServiceError",
    "cancel",
    "export_file",
    "export_subnet",
    "front_view",
    "get_job",
    "job_fronts",
    "job_view",
    "list_devices",
    "list_jobs",
    "list_supernets",
    "register_device",
    "register_supernet",
    "registry_names",
    "resume",
    "submit_profile",
    "submit_search",
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


# --------------------------------------------------------------------------- supernets


def registry_names() -> list[str]:
    """The supernet builders this installation offers."""
    return sorted(supernet_builders())


@functools.lru_cache(maxsize=4)
def _load(ref_json: str, checkpoint_version: int) -> Any:
    """Supernets are costly to build and pure to use, so each is built once per process."""
    return build_supernet(SupernetRef.from_dict(json.loads(ref_json)))


def _supernet(ref: SupernetRef) -> Any:
    """The built supernet; a checkpoint replaced on disk (a new upload) is loaded anew."""
    version = Path(ref.checkpoint).stat().st_mtime_ns if ref.checkpoint else 0
    return _load(json.dumps(ref.to_dict(), sort_keys=True), version)


def _describe(ref: SupernetRef) -> dict[str, Any]:
    space = _supernet(ref).space
    return {**ref.to_dict(), "space_name": space.name, "n_var": space.n_var, "size": space.size()}


def register_supernet(
    *,
    catalog: Catalog,
    name: str,
    registry: str,
    checkpoint: str | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Register a supernet under ``name``; it is built once here, so a bad checkpoint fails now."""
    if registry not in registry_names():
        raise Invalid(f"unknown supernet builder {registry!r}; choose from {registry_names()}",
                      field=("body", "registry"))
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise Invalid(f"checkpoint {checkpoint!r} is not a file on the server",
                      field=("body", "checkpoint"))
    ref = SupernetRef(name=name, registry=registry, checkpoint=checkpoint,
                      options={k: v for k, v in options.items() if v is not None})
    try:
        described = _describe(ref)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise Invalid(f"cannot build {registry!r} from this checkpoint/options: {error}",
                      field=("body", "checkpoint")) from error
    catalog.put_supernet(ref)
    return described


def upload_supernet(
    *,
    catalog: Catalog,
    name: str,
    registry: str,
    options: Mapping[str, Any],
    content: IO[bytes],
) -> dict[str, Any]:
    """Register a supernet whose checkpoint comes in the request; it is kept in the catalog."""
    if not valid_name(name):
        raise Invalid(f"name {name!r} must be letters, digits, '.', '_' or '-'",
                      field=("body", "name"))
    path = catalog.checkpoints / f"{name}.pt"
    with tempfile.NamedTemporaryFile(dir=catalog.checkpoints, suffix=".part", delete=False) as tmp:
        shutil.copyfileobj(content, tmp)
    try:
        described = register_supernet(catalog=catalog, name=name, registry=registry,
                                      checkpoint=tmp.name, options=options)
    except ServiceError:
        os.unlink(tmp.name)
        raise
    os.replace(tmp.name, path)
    ref = SupernetRef(name=name, registry=registry, checkpoint=str(path),
                      options=described["options"])
    catalog.put_supernet(ref)
    return {**described, "checkpoint": str(path)}


def list_supernets(*, catalog: Catalog) -> list[dict[str, Any]]:
    return [_describe(ref) for ref in catalog.list_supernets()]


def get_supernet(*, catalog: Catalog, name: str, field: Sequence[str] = ()) -> SupernetRef:
    """A registered supernet; 404 for a path parameter, 422 (with ``field``) for a body field."""
    ref = catalog.get_supernet(name)
    if ref is None:
        known = [r.name for r in catalog.list_supernets()]
        message = f"supernet {name!r} is not registered; registered: {known}"
        raise Invalid(message, field=field) if field else NotFound(message)
    return ref


# --------------------------------------------------------------------------- devices


def _profile(data: Mapping[str, Any], field: Sequence[str]) -> Any:
    from devices.profile import DeviceProfile

    try:
        return DeviceProfile.from_dict(dict(data))
    except ValueError as error:  # ProfileError names the field in its message
        raise Invalid(f"bad device profile: {error}", field=field) from error


def register_device(*, catalog: Catalog, profile: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a device profile and register it under its own name."""
    parsed = _profile(profile, ("body", "profile"))
    if not valid_name(parsed.name):
        raise Invalid(f"device name {parsed.name!r} must be letters, digits, '.', '_' or '-'",
                      field=("body", "profile", "name"))
    catalog.put_device(parsed.name, parsed.to_dict())
    return {"name": parsed.name, "hash": parsed.hash(), "profile": parsed.to_dict()}


def list_devices(*, catalog: Catalog) -> list[dict[str, Any]]:
    out = []
    for data in catalog.list_devices():
        parsed = _profile(data, ("catalog",))
        out.append({"name": parsed.name, "hash": parsed.hash(), "profile": parsed.to_dict()})
    return out


def _device(catalog: Catalog, name: str, field: Sequence[str | int]) -> dict[str, Any]:
    data = catalog.get_device(name)
    if data is None:
        known = [d["name"] for d in catalog.list_devices()]
        raise Invalid(f"device {name!r} is not registered; registered: {known}", field=field)
    return data


# --------------------------------------------------------------------------- jobs


def job_view(record: Any) -> dict[str, Any]:
    """A job as the API shows it: the result summary without the (large) fronts."""
    result = record.result
    if isinstance(result, Mapping):
        result = {k: v for k, v in result.items() if k != "fronts"}
    return {"id": record.job_id, "kind": record.spec.get("kind", "search"), "state": record.state,
            "progress": record.progress, "error": record.error, "result": result}


def submit_search(
    *,
    store: Store,
    catalog: Catalog,
    supernet: str,
    devices: Sequence[str],
    dataset: str | None,
    limits: Sequence[Mapping[str, Any]],
    budget: int,
    seed: int,
    n_profile: int,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Check every reference of a search job, then queue it on Ray."""
    ref = get_supernet(catalog=catalog, name=supernet, field=("body", "supernet"))
    if len(set(devices)) != len(devices):
        raise Invalid("a device is listed twice", field=("body", "devices"))
    profiles = tuple(_device(catalog, name, ("body", "devices", i))
                     for i, name in enumerate(devices))
    if dataset is not None and not Path(dataset).exists():
        raise Invalid(f"dataset {dataset!r} does not exist on the server",
                      field=("body", "dataset"))
    spec = JobSpec(supernet=ref, devices=profiles, dataset=dataset,
                   limits=tuple(dict(lim) for lim in limits), budget=budget, seed=seed,
                   n_profile=n_profile)
    job_id = submit_job(spec, store=store, ray_address=ray_address)
    return job_view(store.get_job(job_id))


def get_job(*, store: Store, job_id: str) -> Any:
    try:
        return store.get_job(job_id)
    except KeyError as error:
        raise NotFound(f"job {job_id!r} does not exist") from error


def list_jobs(*, store: Store) -> list[dict[str, Any]]:
    return [job_view(record) for record in store.list_jobs()]


def cancel(*, store: Store, job_id: str) -> dict[str, Any]:
    get_job(store=store, job_id=job_id)
    return job_view(cancel_job(store=store, job_id=job_id))


def resume(*, store: Store, job_id: str, ray_address: str | None = None) -> dict[str, Any]:
    """Run a stopped job again; it continues from the measurements in the store."""
    record = get_job(store=store, job_id=job_id)
    if record.state == "succeeded":
        raise Conflict(f"job {job_id!r} already succeeded")
    return job_view(resume_job(store=store, job_id=job_id, ray_address=ray_address))


def job_fronts(*, store: Store, job_id: str) -> dict[str, dict[str, Any]]:
    """The Pareto front of every device of a finished search job, in JSON form."""
    record = get_job(store=store, job_id=job_id)
    if record.spec.get("kind", "search") != "search":
        raise Conflict(f"job {job_id!r} is a {record.spec.get('kind')} job; it has no fronts")
    if record.state != "succeeded":
        raise Conflict(f"job {job_id!r} is {record.state}; fronts exist once it has succeeded")
    return dict(record.result["fronts"])


def front_view(front: Mapping[str, Any]) -> dict[str, Any]:
    """A front in JSON form with each point's index, which exports and profiles refer to."""
    return {**front, "points": [{**p, "index": i} for i, p in enumerate(front["points"])]}


# --------------------------------------------------------------------------- subnets


def _resolve(
    *,
    store: Store,
    catalog: Catalog,
    supernet: str | None,
    arch: Mapping[str, Any] | None,
    job_id: str | None,
    device: str | None,
    point: int | None,
) -> tuple[SupernetRef, ArchConfig]:
    """The supernet and validated arch a request means: given directly, or a front's point."""
    if arch is not None:
        ref = get_supernet(catalog=catalog, name=str(supernet), field=("body", "supernet"))
        return ref, _arch(ref, arch)
    fronts = job_fronts(store=store, job_id=str(job_id))
    if device not in fronts:
        raise Invalid(f"job {job_id!r} has no front for device {device!r}; it has {sorted(fronts)}",
                      field=("body", "device"))
    points = fronts[device]["points"]
    if not 0 <= int(point or 0) < len(points):
        raise Invalid(f"point {point} is outside the front (0..{len(points) - 1})",
                      field=("body", "point"))
    ref = SupernetRef.from_dict(get_job(store=store, job_id=str(job_id)).spec["supernet"])
    return ref, _arch(ref, points[int(point or 0)]["arch"])


def _arch(ref: SupernetRef, data: Mapping[str, Any]) -> ArchConfig:
    try:
        return _supernet(ref).space.from_dict(data)
    except ArchValidationError as error:
        raise Invalid(f"arch is outside the space of {ref.name!r}: {error}",
                      field=("body", "arch")) from error


def export_subnet(
    *,
    store: Store,
    catalog: Catalog,
    batch: int = 1,
    **subnet: Any,
) -> dict[str, Any]:
    """Export a subnet to ONNX (checked against torch) in the catalog; exports are cached."""
    from hwsearch.export import export_subnet as export

    ref, arch = _resolve(store=store, catalog=catalog, **subnet)
    export_id = f"{ref.name}-{arch.digest()}-b{batch}"
    path = catalog.exports / f"{export_id}.onnx"
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        tmp = catalog.exports / f"{export_id}.{os.getpid()}.{id(arch)}.part.onnx"
        report = export(_supernet(ref), arch, tmp, batch=batch)
        os.replace(tmp, path)
        info = {
            "id": export_id, "supernet": ref.name, "arch": arch.to_dict(), "arch_key": arch.key(),
            "bytes": path.stat().st_size, "macs": report.macs, "params": report.params,
            "input_shape": list(report.input_shape), "max_abs_diff": report.max_abs_diff,
        }
        sidecar.write_text(json.dumps(info))
    return json.loads(sidecar.read_text())


def export_file(*, catalog: Catalog, export_id: str) -> Path:
    path = catalog.exports / f"{export_id}.onnx"
    if not valid_name(export_id) or not path.is_file():
        raise NotFound(f"export {export_id!r} does not exist; create it with POST /exports")
    return path


def submit_profile(
    *,
    store: Store,
    catalog: Catalog,
    on: str,
    ray_address: str | None = None,
    **subnet: Any,
) -> dict[str, Any]:
    """Queue a measurement of one subnet on one registered device (local or through its agent)."""
    profile = _device(catalog, on, ("body", "on"))
    ref, arch = _resolve(store=store, catalog=catalog, **subnet)
    spec = ProfileSpec(supernet=ref, device=profile, arch=arch.to_dict())
    job_id = submit_job(spec, store=store, ray_address=ray_address)
    return job_view(store.get_job(job_id))
