"""The FastAPI application: routers, auth, request size and time limits, error shapes, start-up recovery.

:func:`create_app` is a factory over an already opened store, so the server
(``hwsearch serve``), ``uvicorn --factory`` and tests build the same app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import hwsearch
from devices.network import served_token_problem
from hwsearch.agents import AgentEndpoint
from hwsearch.api.bodies import FASTAPI_PARSE_FAILURE, unparsable_body
from hwsearch.api.host_folders import FolderNotOurs, prepare_host_folders
from hwsearch.api.catalog import (
    MAX_CHECKPOINT_BYTES,
    MAX_EXPORT_BYTES,
    MAX_REGISTRATIONS,
    MAX_SUPERNET_BYTES,
    Catalog,
    default_data_dir,
)
from hwsearch.api.connections import BodyBounds, TokenGate, bounded_h11
from hwsearch.api.files import DataRoots
from hwsearch.api.routes import api_router, public_router
from hwsearch.api.service import Busy, ServiceError, drop_unused_checkpoints, resume_at_start, upgrade_catalog
from hwsearch.dispatch import Admission, JobDispatcher
from hwsearch.store import SQLiteStore, Store, StoreError, open_store
from hwsearch.store_urls import is_store_url, mistyped_url_problem, open_store_url

__all__ = ["SettingError", "create_app", "create_app_from_env"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_UPLOAD_PATHS = ("/supernets/upload",)
#: How long a client may take over a request's headers, or stall its body or a response read.
READ_TIMEOUT_S = 30.0


#: The longest error message answered: a message may quote a client's value, and a 1 MB value came back whole.
MAX_MESSAGE_CHARS = 2000


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped.

    A lone surrogate (``"\\ud800"``) is valid JSON, so a client can send one,
    but it cannot be encoded as UTF-8: quoted back in a 422 (a profile's
    unknown key), Starlette's rendering raised and the 422 became a 500.
    Escaped, it goes back as the client wrote it.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters)"


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    message = _bounded(error.message)
    body: dict[str, Any]
    if error.status == 422:
        body = {"detail": [{"loc": list(error.field), "msg": message, "type": "value_error"}]}
    else:  # FastAPI's shape (a string detail), with the field beside it where one is at fault
        body = {"detail": message, **({"loc": list(error.field)} if error.field else {})}
    headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, Busy) else None
    return AsciiJSONResponse(body, status_code=error.status, headers=headers)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, without echoing the input back.

    The default answer repeats each bad value: a 100,000-character path comes
    back whole, and a NaN (which Python's JSON parser accepts) cannot be
    written as JSON at all, which turned a bad request into a 500.
    """
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    syntax = next((e for e in errors if e["type"] == "json_invalid"), None)
    if syntax is not None:  # not JSON at all: unparsable, as the cases :func:`_http_error` answers
        return AsciiJSONResponse({"detail": [_syntax_error(syntax)]}, status_code=400)
    detail = [{"loc": list(e["loc"]), "msg": _bounded(e["msg"]), "type": e["type"]} for e in errors]
    return AsciiJSONResponse({"detail": detail}, status_code=422)


def _syntax_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON syntax error as a 400 names it: ``body``, and where the parser stopped and why."""
    where = error["loc"][1] if len(error["loc"]) > 1 else "?"
    why = str((error.get("ctx") or {}).get("error", "not JSON"))
    return {"loc": ["body"], "msg": _bounded(f"the body is not JSON: {why} at character {where}"),
            "type": "json_invalid"}


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's answer, except for a body that could not be parsed: a 400 naming ``body`` and why."""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 400 and error.detail == FASTAPI_PARSE_FAILURE:
        detail = [{"loc": ["body"], "msg": unparsable_body(error.__cause__), "type": "json_invalid"}]
        return AsciiJSONResponse({"detail": detail}, status_code=400)
    return await http_exception_handler(request, error)


async def _store_failed(request: Request, error: Exception) -> JSONResponse:
    """The store failed (a plug-in's lost connection, say): the service cannot answer now, through no fault of the
    request.  The line is the store's screened one (:class:`~hwsearch.store_urls.ScreenedStore`), never its URL,
    with any other URL, path or address in it masked as in a job's error line."""
    from hwsearch.jobs.control import describe_error

    log.warning("the store failed on %s %s", request.method, request.url.path, exc_info=error)
    return AsciiJSONResponse({"detail": f"the store failed; try again later ({describe_error(error)})"},
                             status_code=503, headers={"Retry-After": "5"})


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    """A bug, not a bad request: the trace goes to the server log, the client gets one line."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    # Closed: Starlette re-raises the error after this answer and uvicorn drops the connection, so a client
    # reusing it for its next request met a reset instead of an answer.
    return AsciiJSONResponse({"detail": "internal error; the operator can find it in the server log"},
                             status_code=500, headers={"Connection": "close"})


def create_app(
    store: Store,
    *,
    token: str,
    data_dir: str | os.PathLike[str],
    data_roots: list[str | os.PathLike[str]] | None = None,
    agents: dict[str, AgentEndpoint] | None = None,
    admission: Admission = Admission(),
    max_body_bytes: int = 1 * MiB,
    max_upload_bytes: int = 512 * MiB,
    read_timeout_s: float = READ_TIMEOUT_S,
    max_export_bytes: int = MAX_EXPORT_BYTES,
    max_checkpoint_bytes: int = MAX_CHECKPOINT_BYTES,
    max_registrations: int = MAX_REGISTRATIONS,
    max_supernet_bytes: int = MAX_SUPERNET_BYTES,
    ray_address: str | None = None,
    resume: bool = False,
    on_stop: Callable[[], None] | None = None,
    public_url: str | None = None,
) -> FastAPI:
    """The hwsearch service over ``store``, with registrations and exports under ``data_dir``.

    Clients may name checkpoints and datasets only inside ``data_roots``
    (default: ``data_dir/files``) and reach only the operator's ``agents``;
    ``admission`` bounds the jobs it accepts.  On start-up, jobs a previous
    process left ``queued`` or ``running`` are marked ``interrupted`` (or,
    with ``resume``, queued again if ``POST /jobs/{id}/resume`` would queue
    them, else marked failed saying why); their measurements are in the store
    either way.  Jobs whose runner still lives (a ``hwsearch search`` on the
    same store) are left to it.  ``on_stop`` runs once jobs and Ray have stopped (``hwsearch
    serve`` removes its temp files there: uvicorn ends the process on SIGTERM
    by re-raising the signal, so code after ``uvicorn.run`` never runs).
    ``public_url`` is where clients reach the service (behind a proxy); the
    links in answers start with it, or else with the address the client's
    connection reached, never with the client's ``Host`` header.
    """
    check_token(token)
    public_url = None if public_url is None else check_public_url(public_url)
    # a table, never None: None would run a client's or stored profile as the operator's own (where.url included)
    dispatcher = JobDispatcher(store, admission=admission, agents=dict(agents or {}),
                               ray_address=ray_address)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        interrupted = dispatcher.start()
        if resume:  # each checked as a client's resume is: limits, data roots, declared agents
            resume_at_start(dispatcher=dispatcher, catalog=app.state.catalog, roots=app.state.roots,
                            job_ids=interrupted)
        yield
        dispatcher.stop()
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()  # Ray was started by a job; leave nothing running
        if on_stop is not None:
            on_stop()

    app = FastAPI(
        title="hwsearch",
        version=hwsearch.__version__,
        description="Pareto-optimal subnets of once-for-all supernets for your devices. "
                    "Every endpoint but /health and the OpenAPI schema needs "
                    "`Authorization: Bearer <token>`.",
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
        redirect_slashes=False,  # its 307 named the client's own Host header; the service's links never do
    )
    app.state.store = store
    app.state.catalog = Catalog(data_dir, max_export_bytes=max_export_bytes,
                                max_checkpoint_bytes=max_checkpoint_bytes, max_registrations=max_registrations,
                                max_supernet_bytes=max_supernet_bytes)
    _close_to_other_accounts(Path(data_dir), *_store_files(store))
    app.state.roots = DataRoots(data_roots or [Path(data_dir) / "files"],
                                max_file_bytes=max_upload_bytes)
    for change in upgrade_catalog(catalog=app.state.catalog, store=store, roots=app.state.roots,
                                  agents=agents or {}):
        log.warning("catalog upgrade: %s", change)
    for change in drop_unused_checkpoints(catalog=app.state.catalog, store=store):
        log.warning("catalog: %s", change)
    app.state.token = token
    app.state.public_url = public_url
    app.state.dispatcher = dispatcher
    app.include_router(public_router)
    app.include_router(api_router)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StoreError, _store_failed)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(BodyBounds, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes,
                       upload_paths=_UPLOAD_PATHS, read_timeout_s=read_timeout_s)
    app.add_middleware(TokenGate, token=token, public_paths=_public_paths(app))  # outermost: runs first
    return app


def check_token(token: str) -> str:
    """``token`` if clients can send it and strangers cannot guess it (:func:`~devices.network.served_token_problem`).

    A header carries it byte for byte: a non-ASCII token was accepted and
    then matched no client's header in any encoding, locking everyone out;
    a one-character token was served.
    """
    problem = served_token_problem(token)
    if problem is not None:
        raise ValueError(f"the token {problem}")
    return token


def check_public_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL with a host and nothing after its path."""
    from urllib.parse import urlsplit

    refused = ValueError(f"the public URL must be http(s)://HOST[:PORT][/PATH] (no query, fragment, user, "
                         f"spaces or control characters), got {url!r}")
    if not url.isascii() or not url.isprintable() or any(c in url for c in " ?#@"):
        raise refused
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused
    return url.rstrip("/")


def _close_to_other_accounts(*paths: Path) -> None:
    """Close what the service keeps (users' checkpoints, exported subnets, results) to other accounts.

    Made with the default umask, the data directory was 0755 and the store
    0644: every account on a shared host could read the weights users
    uploaded and the subnets exported for them, however the app was started
    (``hwsearch serve``, ``uvicorn --factory``, a library call).  Folders
    become 0700 (what lies inside is then out of reach, whatever its own
    mode) and files 0600; SQLite gives a new ``-wal`` or ``-shm`` file its
    database's mode.  Paths another user owns are the operator's arrangement
    and are left alone.
    """
    for path in paths:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        if info.st_uid == os.geteuid():
            os.chmod(path, 0o700 if stat.S_ISDIR(info.st_mode) else 0o600)


def _store_files(store: Store) -> list[Path]:
    """The files an embedded store keeps on this host: SQLite's database and its journal files."""
    if not isinstance(store, SQLiteStore):
        return []  # a served backend's access is its own to manage
    return [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]


def _public_paths(app: FastAPI) -> frozenset[str]:
    """/health and the OpenAPI schema and its pages: what a client without a token may ask for."""
    pages = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    return frozenset([route.path for route in public_router.routes] + [p for p in pages if p])


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory hwsearch.api.app:create_app_from_env``.

    Give uvicorn ``--http hwsearch.api.app:BoundedH11Protocol`` and
    ``--limit-concurrency`` too, for the connection bounds ``hwsearch serve``
    keeps (see :func:`__getattr__`), and ``--no-proxy-headers``, so that no
    client chooses the scheme of the links in answers.

    Reads ``HWSEARCH_STORE`` (a SQLite path, or a store plug-in's ``scheme://``
    URL, which needs ``HWSEARCH_DATA``), ``HWSEARCH_TOKEN``, and optionally
    ``HWSEARCH_DATA`` (defaults to ``<store>.data``), ``HWSEARCH_DATA_ROOTS``
    (``os.pathsep``-separated), ``HWSEARCH_AGENTS`` (comma-separated
    ``NAME=URL``, tokens as :func:`hwsearch.agents.load_agents` finds them),
    ``HWSEARCH_AGENT_SECRETS``, ``HWSEARCH_MAX_BODY``, ``HWSEARCH_MAX_UPLOAD``,
    ``HWSEARCH_READ_TIMEOUT_S``, ``HWSEARCH_MAX_EXPORT``, ``HWSEARCH_MAX_CHECKPOINTS`` and
    ``HWSEARCH_MAX_SUPERNET`` (bytes), ``HWSEARCH_MAX_REGISTRATIONS``,
    ``HWSEARCH_MAX_RUNNING_JOBS``, ``HWSEARCH_MAX_QUEUED_JOBS``, ``HWSEARCH_MAX_N_PROFILE``,
    ``HWSEARCH_MAX_BUDGET``, ``HWSEARCH_MAX_INPUT_PIXELS``, ``HWSEARCH_MAX_JOBS``, ``HWSEARCH_MAX_JOB_SECONDS``,
    ``HWSEARCH_RAY_ADDRESS``, ``HWSEARCH_PUBLIC_URL`` and
    ``HWSEARCH_RESUME`` (``true``/``false``).
    A missing or malformed setting stops the start (exit 3, uvicorn's code
    for a failed start) with one line naming the variable, as ``hwsearch
    serve`` names its option, and not a traceback; the bounds are those of
    ``hwsearch serve``'s options: a negative body limit would have served,
    refusing every request.
    """
    try:
        return _app_from_env()
    except SettingError as error:
        print(f"hwsearch: {error}", file=sys.stderr)
        raise SystemExit(3) from None


def _app_from_env() -> FastAPI:
    """Every setting read and checked first, so a bad one leaves no store or folder behind."""
    from hwsearch.agents import SecretsFileError, load_agents

    store_setting = _required_env("HWSEARCH_STORE")
    if (problem := mistyped_url_problem(store_setting)) is not None:  # not quoted: it may hold a password
        raise SettingError(f"HWSEARCH_STORE: {problem}")
    store_path = None if is_store_url(store_setting) else Path(store_setting)
    token = _required_env("HWSEARCH_TOKEN")
    public_url = os.environ.get("HWSEARCH_PUBLIC_URL") or None
    for name, check, value in (("HWSEARCH_TOKEN", check_token, token),
                               ("HWSEARCH_PUBLIC_URL", check_public_url, public_url)):
        try:
            if value is not None:
                check(value)
        except ValueError as error:
            raise SettingError(f"{name}: {error}") from None
    roots = os.environ.get("HWSEARCH_DATA_ROOTS", "")
    declared = os.environ.get("HWSEARCH_AGENTS", "")
    secrets = os.environ.get("HWSEARCH_AGENT_SECRETS")
    try:
        agents = load_agents([a for a in declared.split(",") if a],
                             secrets_file=Path(secrets) if secrets else None)
    except SecretsFileError as error:
        raise SettingError(f"HWSEARCH_AGENT_SECRETS: {error}") from None
    except (OSError, ValueError) as error:
        raise SettingError(f"HWSEARCH_AGENTS: {error}") from None
    limits = dict(
        max_body_bytes=int(_env_number("HWSEARCH_MAX_BODY", 1 * MiB, minimum=0.01 * MiB)),
        max_upload_bytes=int(_env_number("HWSEARCH_MAX_UPLOAD", 512 * MiB, minimum=0.01 * MiB)),
        read_timeout_s=_env_number("HWSEARCH_READ_TIMEOUT_S", READ_TIMEOUT_S, minimum=1.0),
        max_export_bytes=int(_env_number("HWSEARCH_MAX_EXPORT", MAX_EXPORT_BYTES, minimum=MiB)),
        max_checkpoint_bytes=int(_env_number("HWSEARCH_MAX_CHECKPOINTS", MAX_CHECKPOINT_BYTES, minimum=MiB)),
        max_registrations=_env_count("HWSEARCH_MAX_REGISTRATIONS", MAX_REGISTRATIONS, minimum=1),
        max_supernet_bytes=int(_env_number("HWSEARCH_MAX_SUPERNET", MAX_SUPERNET_BYTES, minimum=MiB)),
        admission=Admission(
            max_running=_env_count("HWSEARCH_MAX_RUNNING_JOBS", Admission.max_running, minimum=1),
            max_queued=_env_count("HWSEARCH_MAX_QUEUED_JOBS", Admission.max_queued, minimum=1),
            max_n_profile=_env_count("HWSEARCH_MAX_N_PROFILE", Admission.max_n_profile, minimum=4),
            max_budget=_env_count("HWSEARCH_MAX_BUDGET", Admission.max_budget, minimum=1),
            max_input_pixels=_env_count("HWSEARCH_MAX_INPUT_PIXELS", Admission.max_input_pixels, minimum=1024),
            max_jobs=_env_count("HWSEARCH_MAX_JOBS", Admission.max_jobs, minimum=1),
            max_job_seconds=_env_number("HWSEARCH_MAX_JOB_SECONDS", Admission.max_job_seconds, minimum=1.0)),
    )
    resume = _env_flag("HWSEARCH_RESUME")
    if store_path is None and not os.environ.get("HWSEARCH_DATA"):
        raise SettingError("HWSEARCH_DATA: a store given by URL (HWSEARCH_STORE) has no file to keep the data "
                           "directory beside: set it")
    url_store = None if store_path is not None else _opened_by_plugin(store_setting)  # before any folder is made
    data_dir = Path(os.environ.get("HWSEARCH_DATA") or default_data_dir(store_path))
    locks = _claim_service(store_path, data_dir)
    ray_address = os.environ.get("HWSEARCH_RAY_ADDRESS") or None
    try:
        folders = prepare_host_folders(data_dir, local_ray=ray_address is None)
    except FolderNotOurs as error:  # named by the data directory's path, whether set or the store's default
        raise SettingError(f"HWSEARCH_DATA ({data_dir}): {error}") from None
    for notice in folders.notices:
        print(f"hwsearch: {notice}", file=sys.stderr)
    try:
        store = url_store or open_store(store_path)
    except StoreError as error:  # a foreign, newer or unreadable file: its one line, not a traceback
        raise SettingError(f"HWSEARCH_STORE: {error}") from None
    app = create_app(
        store, token=token, data_dir=data_dir,
        data_roots=[r for r in roots.split(os.pathsep) if r] or None,
        agents=agents, **limits, ray_address=ray_address, resume=resume, public_url=public_url,
        on_stop=lambda: shutil.rmtree(folders.temp_files, ignore_errors=True),  # Ray's workers have ended
    )
    app.state.service_locks = locks  # held as long as the app is
    return app


def _opened_by_plugin(url: str) -> Store:
    """The store an installed plug-in opens for ``url`` (:mod:`hwsearch.store_urls`), or a line naming the variable."""
    try:
        return open_store_url(url)
    except StoreError as error:
        raise SettingError(f"HWSEARCH_STORE: {error}") from None


def _claim_service(store_path: Path | None, data_dir: Path) -> list[IO[str]]:
    """The store's and the data directory's service locks, as ``hwsearch serve`` takes them.

    Without them two factory services (or one beside a ``hwsearch serve``)
    served one store at once: each queued and recovered jobs of the other.
    A refusal leaves no runners folder it made, and a path that cannot hold
    a lock is one line naming its variable.  A plug-in's store (no
    ``store_path``) has no file to keep a lock beside: only the data
    directory's is taken.
    """
    from hwsearch.jobs.runners import claim_store, runners_folder

    if store_path is None:
        return [_claim_data_dir(data_dir)]
    made = not runners_folder(store_path).exists()
    try:
        store_lock = claim_store(store_path)
    except OSError as error:
        raise SettingError(f"HWSEARCH_STORE: no service lock beside {store_path}: {error.strerror}") from None
    if store_lock is None:
        raise SettingError(f"HWSEARCH_STORE: another hwsearch service is using {store_path}; stop it first")
    try:
        return [store_lock, _claim_data_dir(data_dir)]
    except SettingError:
        _let_go(store_lock, runners_folder(store_path) if made else None)
        raise


def _claim_data_dir(data_dir: Path) -> IO[str]:
    """The data directory's service lock, or one line naming ``HWSEARCH_DATA``."""
    from hwsearch.jobs.runners import claim

    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_lock = claim(data_dir / "serve.lock")
        problem = f"another hwsearch service is using {data_dir}; stop it first"
    except OSError as error:
        data_lock, problem = None, f"no service lock in {data_dir}: {error.strerror}"
    if data_lock is None:
        raise SettingError(f"HWSEARCH_DATA: {problem}")
    return data_lock


def _let_go(lock: IO[str], made: Path | None) -> None:
    """Release a refused start's store lock, and remove the runners folder it made (if nothing else came since)."""
    if made is not None:
        with contextlib.suppress(OSError):
            (made / "serve.lock").unlink()
            made.rmdir()
    lock.close()


def __getattr__(name: str) -> Any:
    """``BoundedH11Protocol``: ``hwsearch serve``'s connection bounds, for uvicorn's ``--http``.

    ``uvicorn --factory hwsearch.api.app:create_app_from_env --http
    hwsearch.api.app:BoundedH11Protocol --limit-concurrency 128`` serves
    with every bound ``hwsearch serve`` keeps (headers, idle keep-alive and
    stalled downloads within the read timeout; connections at once); with
    uvicorn's own protocol an idle connection stayed open.  The class is
    built when uvicorn asks for it, with ``HWSEARCH_READ_TIMEOUT_S``, the
    read timeout the factory gives the body bounds.
    """
    if name != "BoundedH11Protocol":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return bounded_h11(_env_number("HWSEARCH_READ_TIMEOUT_S", READ_TIMEOUT_S, minimum=1.0))
    except SettingError as error:
        print(f"hwsearch: {error}", file=sys.stderr)
        raise SystemExit(3) from None


class SettingError(ValueError):
    """An environment setting of :func:`create_app_from_env` is missing or malformed; the message names it."""


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SettingError(f"{name} must be set (and not empty)")
    return value


def _env_number(name: str, default: float, *, minimum: float) -> float:
    """A finite number of at least ``minimum``, or ``default`` if unset."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a number") from None
    if not minimum <= value < float("inf"):
        raise SettingError(f"{name}={raw!r} must be a finite number of at least {minimum:.10g}")
    return value


def _env_count(name: str, default: int, *, minimum: int) -> int:
    """A whole number of at least ``minimum``, or ``default`` if unset: ``2.5`` jobs ran as 2."""
    value = _env_number(name, default, minimum=minimum)
    if value != int(value):
        raise SettingError(f"{name}={os.environ[name]!r} must be a whole number")
    return int(value)


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "false").strip().lower()
    if raw not in {"true", "false", "1", "0"}:
        raise SettingError(f"{name}={raw!r} must be true or false")
    return raw in {"true", "1"}
