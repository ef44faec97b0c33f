"""HTTP routes: parse the request, call :mod:`hwsearch.api.service`, shape the response.

Routes are plain ``def`` functions, so FastAPI runs them in its thread pool:
building a supernet or exporting a subnet never blocks the event loop, and
whole jobs run on Ray.  Errors come from the service as ``ServiceError`` and
are turned into responses in one place (:mod:`hwsearch.api.app`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from typing import IO, Annotated, Any

from fastapi import (APIRouter, Depends, File, Form, Header, HTTPException, Query, Request, Response, UploadFile,
                     status)
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

import hwsearch
from hwsearch.api import service
from devices.profile import unique_keys
from hwsearch.api.bodies import StrictJSONRoute
from hwsearch.api.catalog import Catalog
from hwsearch.api.files import DataRoots
from hwsearch.api.schemas import (
    AgentsRead,
    DataRootsRead,
    DeviceCreate,
    DeviceRead,
    ExportCreate,
    ExportRead,
    FrontRead,
    FrontsRead,
    HealthRead,
    JobAccepted,
    JobCreate,
    JobEvents,
    JobList,
    JobRead,
    LimitsRead,
    ProfileCreate,
    RegistryRead,
    SupernetCreate,
    SupernetOptions,
    SupernetRead,
)
from hwsearch.dispatch import JobDispatcher
from hwsearch.store import Store

__all__ = ["api_router", "public_router"]

_bearer = HTTPBearer(auto_error=False, description="the token given to `hwsearch serve --token`")


def _store(request: Request) -> Store:
    return request.app.state.store


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def _dispatcher(request: Request) -> JobDispatcher:
    return request.app.state.dispatcher


def _roots(request: Request) -> DataRoots:
    return request.app.state.roots


def _require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected: str = request.app.state.token
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(),
                                                         expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


StoreDep = Annotated[Store, Depends(_store)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
DispatcherDep = Annotated[JobDispatcher, Depends(_dispatcher)]
RootsDep = Annotated[DataRoots, Depends(_roots)]

public_router = APIRouter(route_class=StrictJSONRoute)
api_router = APIRouter(dependencies=[Depends(_require_token)], route_class=StrictJSONRoute)


def _accepted(request: Request, job: dict[str, Any]) -> JobAccepted:
    return JobAccepted(id=job["id"], state=job["state"], status_url=_link(request, "read_job", job_id=job["id"]))


def _link(request: Request, route: str, **params: str) -> str:
    """An absolute URL of one of this service's routes, for a client to follow with its token.

    It starts with the operator's ``--public-url`` or the address the
    client's connection reached, never with the ``Host`` header: a client,
    or a cache between, chooses that, and a link to another host would take
    the next client's token there.
    """
    path = request.app.url_path_for(route, **params)
    if request.app.state.public_url is not None:
        return f"{request.app.state.public_url}{path}"
    server = request.scope.get("server")
    if not server:  # a Unix socket: no address to name
        return str(path)
    host, port = server
    return f"{request.scope['scheme']}://{f'[{host}]' if ':' in host else host}:{port}{path}"


# --------------------------------------------------------------------------- health


@public_router.get("/health", response_model=HealthRead, tags=["service"])
def health() -> HealthRead:
    """Liveness: no token needed."""
    return HealthRead(status="ok", version=hwsearch.__version__)


# --------------------------------------------------------------------------- supernets


# --------------------------------------------------------------------------- what the operator allows


@api_router.get("/data-roots", response_model=DataRootsRead, tags=["service"])
def read_data_roots(roots: RootsDep) -> DataRootsRead:
    """The server directories checkpoints and datasets may be named in."""
    return DataRootsRead(roots=[str(r) for r in roots.roots], max_file_bytes=roots.max_file_bytes)


@api_router.get("/agents", response_model=AgentsRead, tags=["service"])
def read_agents(dispatcher: DispatcherDep) -> AgentsRead:
    """The edge agents the operator declared; a device profile names one in `where.name`."""
    return AgentsRead(agents=sorted(dispatcher.agents))


@api_router.get("/limits", response_model=LimitsRead, tags=["service"])
def read_limits(dispatcher: DispatcherDep) -> LimitsRead:
    """Jobs running and queued now, and the bounds the service keeps."""
    admission = dispatcher.admission
    return LimitsRead(**dispatcher.counts(), max_n_profile=admission.max_n_profile,
                      max_budget=admission.max_budget, max_input_pixels=admission.max_input_pixels,
                      max_job_seconds=admission.max_job_seconds)


# --------------------------------------------------------------------------- supernets


@api_router.get("/supernets/registry", response_model=RegistryRead, tags=["supernets"])
def read_registry() -> RegistryRead:
    """The builders a supernet can be registered with."""
    return RegistryRead(builders=service.registry_names())


@api_router.post("/supernets", response_model=SupernetRead, status_code=201, tags=["supernets"])
def create_supernet(body: SupernetCreate, catalog: CatalogDep, roots: RootsDep,
                    store: StoreDep) -> SupernetRead:
    """Register a supernet: a builder, a checkpoint inside a data root, and options."""
    return SupernetRead(**service.register_supernet(
        catalog=catalog, store=store, roots=roots, name=body.name, registry=body.registry, checkpoint=body.checkpoint,
        options=body.options.model_dump()))


#: The fields of ``POST /supernets/upload``'s form, each given once.
_UPLOAD_FIELDS = ("name", "registry", "checkpoint", "options")


async def _each_upload_field_once(request: Request) -> None:
    """Refuse a form that repeats a field or gives one the upload does not take, as a JSON body is refused.

    FastAPI takes a repeated form field's last value and ignores unknown ones:
    ``name`` given twice registered the second name (over a registration the
    client did not mean to replace), and a misspelt field was dropped without
    a word.  The form is parsed once, before dependencies run; this reads it.
    """
    form = await request.form()
    given: dict[str, int] = {}
    for key, _ in form.multi_items():
        given[key] = given.get(key, 0) + 1
    for key, count in given.items():
        shown = key[:100]  # a client's name, bounded where it is echoed
        if key not in _UPLOAD_FIELDS:
            raise service.Invalid(f"the upload form has no field {shown!r}; it takes {', '.join(_UPLOAD_FIELDS)}",
                                  field=("body", shown))
        if count > 1:
            raise service.Invalid(f"field {key!r} is given {count} times; give it once", field=("body", key))


@api_router.post("/supernets/upload", response_model=SupernetRead, status_code=201,
                 tags=["supernets"], dependencies=[Depends(_each_upload_field_once)])
def upload_supernet(
    catalog: CatalogDep,
    store: StoreDep,
    name: Annotated[str, Form()],
    registry: Annotated[str, Form()],
    checkpoint: Annotated[UploadFile, File(description="a state_dict saved with torch.save")],
    roots: RootsDep,
    options: Annotated[str, Form(description="SupernetOptions as JSON")] = "{}",
) -> SupernetRead:
    """Register a supernet whose checkpoint is uploaded (multipart form)."""
    try:  # parsed as JSON bodies are: a repeated key is refused, not its last value taken
        raw = json.loads(options, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as error:  # RepeatedKey, a decode error, a 5,000-digit number
        raise service.Invalid(f"options is not JSON without repeated keys: {str(error)[:200]}",
                              field=("body", "options")) from None
    try:
        parsed = SupernetOptions.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                             for e in error.errors())
        raise service.Invalid(f"options: {problems}", field=("body", "options")) from None
    return SupernetRead(**service.upload_supernet(
        catalog=catalog, store=store, name=name, registry=registry, options=parsed.model_dump(),
        content=checkpoint.file, max_unpacked_bytes=roots.max_file_bytes))


@api_router.get("/supernets", response_model=list[SupernetRead], tags=["supernets"])
def read_supernets(catalog: CatalogDep) -> list[SupernetRead]:
    return [SupernetRead(**s) for s in service.list_supernets(catalog=catalog)]


# --------------------------------------------------------------------------- devices


@api_router.post("/devices", response_model=DeviceRead, status_code=201, tags=["devices"])
def create_device(body: DeviceCreate, catalog: CatalogDep,
                  dispatcher: DispatcherDep) -> DeviceRead:
    """Register (or replace) a device profile; it is validated fully before it is stored."""
    return DeviceRead(**service.register_device(catalog=catalog, agents=dispatcher.agents,
                                                profile=body.profile))


@api_router.get("/devices", response_model=list[DeviceRead], tags=["devices"])
def read_devices(catalog: CatalogDep) -> list[DeviceRead]:
    return [DeviceRead(**d) for d in service.list_devices(catalog=catalog)]


# --------------------------------------------------------------------------- jobs


@api_router.post("/jobs", response_model=JobAccepted, status_code=202, tags=["jobs"])
def create_job(body: JobCreate, request: Request, catalog: CatalogDep, roots: RootsDep,
               dispatcher: DispatcherDep) -> JobAccepted:
    """Queue a search job; poll ``status_url`` for its progress.  429 when the queue is full."""
    job = service.submit_search(
        dispatcher=dispatcher, catalog=catalog, roots=roots, supernet=body.supernet,
        devices=body.devices, dataset=body.dataset,
        limits=[lim.model_dump(exclude_none=True) for lim in body.limits], budget=body.budget,
        seed=body.seed, n_profile=body.n_profile,
        targets={name: t.model_dump() for name, t in body.targets.items()})
    return _accepted(request, job)


@api_router.get("/jobs", response_model=JobList, tags=["jobs"])
def read_jobs(store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              before: Annotated[str | None, Query(max_length=300)] = None) -> JobList:
    """Jobs, newest first, a page at a time: pass ``next_before`` as ``before`` for the next page (or a job's id,
    for the jobs created before it)."""
    jobs, next_before = service.list_jobs(store=store, limit=limit, before=before)
    return JobList(jobs=[JobRead(**j) for j in jobs], next_before=next_before)


@api_router.get("/jobs/{job_id}", response_model=JobRead, tags=["jobs"])
def read_job(job_id: str, store: StoreDep) -> JobRead:
    return JobRead(**service.job_view(service.get_job(store=store, job_id=job_id)))


@api_router.get("/jobs/{job_id}/events", response_model=JobEvents, tags=["jobs"])
def read_job_events(job_id: str, store: StoreDep,
                    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> JobEvents:
    """Progress events after ``after``, in order, at most ``limit``: poll with the last ``seq`` to miss none."""
    return JobEvents(job_id=job_id, events=service.job_events(store=store, job_id=job_id,
                                                               after=after, limit=limit))


@api_router.post("/jobs/{job_id}/cancel", response_model=JobRead, tags=["jobs"])
def cancel_job(job_id: str, dispatcher: DispatcherDep) -> JobRead:
    """Stop a job now (its measurement and compute end within seconds); it keeps what it measured."""
    return JobRead(**service.cancel(dispatcher=dispatcher, job_id=job_id))


@api_router.delete("/jobs/{job_id}", status_code=204, response_class=Response, tags=["jobs"])
def delete_job(job_id: str, dispatcher: DispatcherDep, catalog: CatalogDep) -> Response:
    """Remove a stopped job (its record, events and fronts); 409 for a queued or running one.

    Measurements stay for later jobs.  The service keeps at most ``max_jobs`` jobs (GET /limits).
    """
    service.delete_job(dispatcher=dispatcher, catalog=catalog, job_id=job_id)
    return Response(status_code=204)


@api_router.post("/jobs/{job_id}/resume", response_model=JobAccepted, status_code=202,
                 tags=["jobs"])
def resume_job(job_id: str, request: Request, dispatcher: DispatcherDep, catalog: CatalogDep,
               roots: RootsDep) -> JobAccepted:
    """Queue an interrupted, failed or cancelled job again; it continues from its measurements.

    409 if the service's limits, data roots or agents would refuse the job if it were submitted today.
    """
    return _accepted(request, service.resume(dispatcher=dispatcher, catalog=catalog, roots=roots,
                                             job_id=job_id))


@api_router.get("/jobs/{job_id}/fronts", response_model=FrontsRead, tags=["fronts"])
def read_fronts(job_id: str, store: StoreDep) -> FrontsRead:
    fronts = service.job_fronts(store=store, job_id=job_id)
    return FrontsRead(job_id=job_id, fronts={
        device: FrontRead(**service.front_view(front)) for device, front in fronts.items()})


@api_router.get("/jobs/{job_id}/fronts/{device}", response_model=FrontRead, tags=["fronts"])
def read_front(job_id: str, device: str, store: StoreDep) -> FrontRead:
    fronts = service.job_fronts(store=store, job_id=job_id)
    if device not in fronts:
        raise service.NotFound(f"job {job_id!r} has no front for device {device!r}; "
                               f"it has {sorted(fronts)}")
    return FrontRead(**service.front_view(fronts[device]))


# --------------------------------------------------------------------------- subnets


@api_router.post("/exports", response_model=ExportRead, status_code=201, tags=["subnets"])
def create_export(body: ExportCreate, request: Request, store: StoreDep,
                  catalog: CatalogDep, roots: RootsDep, dispatcher: DispatcherDep) -> ExportRead:
    """Export a subnet (an arch, or a point of a front) to ONNX; fetch it from ``download_url``.

    ``precision: int8`` returns the onnxruntime-quantized file, calibrated on the data.
    """
    info = service.export_subnet(store=store, catalog=catalog, roots=roots,
                                 max_input_pixels=dispatcher.admission.max_input_pixels, **body.model_dump())
    return ExportRead(**info, download_url=_link(request, "download_export", export_id=info["id"]))


_DOWNLOAD_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a range"},
    416: {"description": "a range past the file's end"}}


# Two routes, not one of two methods: that gave both one operationId, GET's or HEAD's by the order of a set (Y16).
@api_router.get("/exports/{export_id}", response_class=StreamingResponse, tags=["subnets"],
                responses=_DOWNLOAD_ANSWERS)
@api_router.head("/exports/{export_id}", response_class=StreamingResponse, tags=["subnets"],
                 responses=_DOWNLOAD_ANSWERS, operation_id="head_export")
def download_export(export_id: str, catalog: CatalogDep, request: Request,
                    if_range: Annotated[str | None, Header(alias="If-Range")] = None) -> Response:
    """The export's ONNX file, or one ``Range`` of it (a resumed download); ``HEAD``: the same headers alone.

    Sent from a handle opened before answering, so pruning cannot cut it
    short, and closed when the answer ends, however it ends.  The answer
    carries no validator (ETag, Last-Modified), so an ``If-Range`` never
    matches one and, as RFC 9110 says, its request gets the whole file; so
    does a request with two ``Range`` headers.
    """
    handle = service.open_export(catalog=catalog, export_id=export_id)
    size = os.fstat(handle.fileno()).st_size
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{export_id}.onnx"'}
    ranges = request.headers.getlist("range")
    span = _byte_range(ranges[0] if len(ranges) == 1 and if_range is None else None, size)
    if span == _UNSATISFIABLE:
        handle.close()
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = (0, size - 1) if span is None else span
    status = 200 if span is None else 206
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":  # what a download manager asks first (it was a 405)
        handle.close()
        return Response(status_code=status, media_type="application/octet-stream",
                        headers={**headers, "Content-Length": str(end - start + 1)})
    return _FileAnswer(handle, start, end - start + 1, status_code=status, headers=headers)


_UNSATISFIABLE = (-1, -1)
#: At most 18 digits a side (past any file's size): Python refuses to read an int of over 4,300 digits,
#: so an unbounded one would have been a 500 from a 5,000-digit header.
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` byte of a single ``Range``; None to send it all; :data:`_UNSATISFIABLE` for a 416.

    A header this does not read (several ranges, another unit, garbage) is ignored, as RFC 9110
    allows: the whole file is sent.  So is an invalid range (``bytes=5-2``), as RFC 9110 requires:
    it was a 416.
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        return (max(0, size - int(last)), size - 1) if int(last) > 0 and size > 0 else _UNSATISFIABLE
    if last != "" and int(last) < int(first):
        return None
    if int(first) >= size:
        return _UNSATISFIABLE
    return int(first), min(size - 1, int(last)) if last != "" else size - 1


class _FileAnswer(StreamingResponse):
    """``length`` bytes of an open file from ``start``; the file is closed when the answer ends.

    A client that goes away mid-download ends the answer by cancellation or a disconnect error;
    left to the collector, 60 aborted downloads held 5 handles for about 40 s.
    """

    def __init__(self, handle: IO[bytes], start: int, length: int, *, status_code: int = 200,
                 headers: dict[str, str]) -> None:
        super().__init__(_blocks(handle, start, length), status_code=status_code,
                         media_type="application/octet-stream", headers={**headers, "Content-Length": str(length)})
        self.handle = handle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.close()  # no read is in flight: a cancelled thread read is waited for


def _blocks(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    handle.seek(start)
    while length > 0 and (block := handle.read(min(1 << 20, length))):
        length -= len(block)
        yield block


@api_router.post("/profiles", response_model=JobAccepted, status_code=202, tags=["subnets"])
def create_profile(body: ProfileCreate, request: Request, catalog: CatalogDep, roots: RootsDep,
                   dispatcher: DispatcherDep) -> JobAccepted:
    """Measure a subnet on a registered device; the result is the job's ``result``.

    ``precision: int8`` measures the onnxruntime-quantized file, calibrated on the data.
    """
    job = service.submit_profile(dispatcher=dispatcher, catalog=catalog, roots=roots,
                                 **body.model_dump())
    return _accepted(request, job)
