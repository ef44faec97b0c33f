"""``hwsearch serve``: the HTTP service over a SQLite job store.

The operator decides here what clients can make the server do: which
directories they may name files in (``--data-root``), which edge agents exist
(``--agent NAME=URL``, tokens from a secrets file or the environment), and
how much work is admitted.  One service owns its store and its data directory
(lock files say so); on start it ends whatever Ray processes a killed predecessor on the
same directory left behind, and the temp files (exported subnets) it could
not remove, and says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import IO, Annotated, Any, Optional

import typer

__all__ = ["register"]

#: Upper bound of the size options (16 TiB): infinity passed ``min=`` and crashed the start with a traceback.
_MAX_MB = 16.0 * 1024 * 1024


def serve(
    store: Annotated[str, typer.Option(
        help="Jobs and measurements: a SQLite file, or a scheme://... URL that an installed store plug-in "
             "opens (hwsearch.stores; then give --data-dir; one that holds a password in the environment, "
             "not on the command line, where every user's ps shows it).",
        envvar="HWSEARCH_STORE", show_envvar=True)] = "hwsearch.sqlite",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        help="Bearer token clients must send; defaults to $HWSEARCH_TOKEN.",
        envvar="HWSEARCH_TOKEN", show_envvar=True)] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        help="Registered supernets/devices, uploads and exports (default: STORE.data).")] = None,
    data_root: Annotated[Optional[list[Path]], typer.Option(
        help="A directory clients may name checkpoints and datasets in (repeatable; "
             "default: DATA_DIR/files). Nothing outside these is ever read for a client.")] = None,
    agent: Annotated[Optional[list[str]], typer.Option(
        help="An edge agent clients may measure on, as NAME=URL (repeatable); NAME=URL#sha256=HEX "
             "trusts only the certificate the agent prints. Its token comes "
             "from --agent-secrets or $HWSEARCH_AGENT_TOKEN_<NAME>.")] = None,
    agent_secrets: Annotated[Optional[Path], typer.Option(
        help="JSON file {\"NAME\": \"TOKEN\"} with the agents' tokens.")] = None,
    max_running_jobs: Annotated[int, typer.Option(min=1, help="Jobs running at once.")] = 2,
    max_queued_jobs: Annotated[int, typer.Option(
        min=1, help="Jobs waiting; beyond it submissions get 429 with Retry-After.")] = 16,
    max_n_profile: Annotated[int, typer.Option(min=4, help="Largest n_profile a job may ask.")] = 500,
    max_budget: Annotated[int, typer.Option(min=1, help="Largest budget a job may ask.")] = 200,
    max_input_pixels: Annotated[int, typer.Option(
        min=1024, help="Largest export input, batch x resolution^2 (a device's batch at a supernet's "
                       "largest size too).")] = 4 * 1024 * 1024,
    max_job_hours: Annotated[float, typer.Option(
        min=0.0003, max=24 * 365.0, help="Hours one job may run (its queued time not counted); past it the job "
                                         "fails, its tasks stop, and its measurements are kept for a resume.")] = 24.0,
    max_jobs: Annotated[int, typer.Option(
        min=1, help="Job records kept, finished ones included; beyond it submissions get 413 until "
                    "finished jobs are deleted (DELETE /jobs/{id}).")] = 10_000,
    max_body_mb: Annotated[float, typer.Option(min=0.01, max=1024.0, help="Largest JSON request body.")] = 1.0,
    max_upload_mb: Annotated[float, typer.Option(
        min=0.01, max=_MAX_MB, help="Largest checkpoint upload, and largest checkpoint or dataset file read.")] = 512.0,
    max_export_mb: Annotated[float, typer.Option(
        min=1.0, max=_MAX_MB,
        help="Exported ONNX files kept for download; the least recently used go first.")] = 2048.0,
    max_checkpoints_mb: Annotated[float, typer.Option(
        min=1.0, max=_MAX_MB, help="Uploaded checkpoints kept in all; an upload past it gets 413.")] = 8192.0,
    max_supernet_mb: Annotated[float, typer.Option(
        min=1.0, max=_MAX_MB, help="Largest supernet a registration may build (its weights and buffers); "
                                  "past it the registration gets 422 naming options.")] = 768.0,
    max_registrations: Annotated[int, typer.Option(
        min=1, help="Registered supernets kept, and registered devices; a new name past it gets 413.")] = 1000,
    read_timeout_s: Annotated[float, typer.Option(
        min=1.0, max=3600.0, help="Seconds a client may take over a request's headers, or stall its body (which must "
                      "also average 64 KiB/s) or reading a response; slower connections are closed.")] = 30.0,
    max_connections: Annotated[int, typer.Option(
        min=2, help="Connections at once; past it the oldest that never showed the token is closed first, and "
                    "requests get 503 only when token holders hold them all.")] = 128,
    ssl_certfile: Annotated[Optional[Path], typer.Option(
        help="Serve HTTPS with this certificate (PEM), so the token never crosses the network in "
             "clear; with --ssl-keyfile.")] = None,
    ssl_keyfile: Annotated[Optional[Path], typer.Option(help="The certificate's private key (PEM).")] = None,
    public_url: Annotated[Optional[str], typer.Option(
        help="Where clients reach the service, e.g. behind a proxy: links in answers (status_url, "
             "download_url) start with it. Default: the address each client's connection reached.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Join this Ray cluster instead of starting Ray locally.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Restart jobs a previous run left active instead of marking them "
             "interrupted.")] = False,
) -> None:
    """Serve the hwsearch HTTP API (OpenAPI schema at /docs).

    Register supernets and devices, submit search jobs, read Pareto fronts,
    export subnets to ONNX and profile them.  Every endpoint but /health and
    the schema needs the header `Authorization: Bearer TOKEN`.
    """
    import uvicorn

    from devices.network import is_loopback
    from devices.agent import server_tls_context
    from hwsearch.agents import SecretsFileError, load_agents
    from hwsearch.api.app import MiB, check_public_url, check_token, create_app
    from hwsearch.api.connections import bounded_h11
    from hwsearch.api.catalog import default_data_dir
    from hwsearch.cli._errors import OptionError
    from hwsearch.cli._inputs import check_ray_address_option, prepare_folder
    from hwsearch.dispatch import Admission
    from hwsearch.store import open_store

    if not token:
        raise typer.BadParameter("give --token or set HWSEARCH_TOKEN", param_hint="--token")
    for hint, check, value in (("--token", check_token, token), ("--public-url", check_public_url, public_url)):
        try:
            if value is not None:
                check(value)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint=hint) from None
    for root in data_root or []:  # a file there failed only once the app was built, as "File exists"
        prepare_folder(root, "--data-root")
    check_ray_address_option(ray_address)
    if ssl_certfile is not None or ssl_keyfile is not None:  # loaded as uvicorn will: one line, not its traceback
        server_tls_context(ssl_certfile, ssl_keyfile)
    elif not is_loopback(host):
        typer.echo(f"warning: serving plain HTTP on {host}: clients' token crosses the network in clear; "
                   "give --ssl-certfile and --ssl-keyfile", err=True)
    try:
        agents = load_agents(agent or [], secrets_file=agent_secrets)
    except SecretsFileError as error:  # not a regular file (a FIFO held the start), too large, not JSON
        raise OptionError("--agent-secrets", str(error)) from None
    except (OSError, ValueError) as error:
        raise OptionError("--agent", str(error)) from None
    rows, store_lock = _open_store(store, data_dir)  # both held until the process ends, as is the data directory's
    data_dir = data_dir or default_data_dir(Path(store))
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _own(data_dir)
    temp_files = _prepare_host(data_dir, local_ray=ray_address is None)
    app = create_app(
        rows or open_store(Path(store)), token=token, data_dir=data_dir, data_roots=data_root or None,
        agents=agents,
        admission=Admission(max_running=max_running_jobs, max_queued=max_queued_jobs,
                            max_n_profile=max_n_profile, max_budget=max_budget,
                            max_input_pixels=max_input_pixels, max_jobs=max_jobs,
                            max_job_seconds=max_job_hours * 3600),
        max_body_bytes=int(max_body_mb * MiB), max_upload_bytes=int(max_upload_mb * MiB),
        read_timeout_s=read_timeout_s, max_export_bytes=int(max_export_mb * MiB),
        max_checkpoint_bytes=int(max_checkpoints_mb * MiB), max_registrations=max_registrations,
        max_supernet_bytes=int(max_supernet_mb * MiB),
        ray_address=ray_address, resume=resume, public_url=public_url,
        on_stop=lambda: shutil.rmtree(temp_files, ignore_errors=True),  # Ray's workers have ended
    )
    try:
        # proxy_headers off: a local client's X-Forwarded-Proto would otherwise choose the scheme of the links
        uvicorn.run(app, host=host, port=port, log_level="info", http=bounded_h11(read_timeout_s), proxy_headers=False,
                    limit_concurrency=max_connections,
                    ssl_certfile=None if ssl_certfile is None else str(ssl_certfile),
                    ssl_keyfile=None if ssl_keyfile is None else str(ssl_keyfile))
    finally:
        lock.close()
        if store_lock is not None:
            store_lock.close()


def _open_store(store: str, data_dir: Path | None) -> tuple[Any, IO[str] | None]:
    """A plug-in's store, opened now; or, for a SQLite file, ``None`` and its service lock.

    A store given by URL is opened before any folder is made, so a wrong
    one leaves nothing behind.  It has no file beside which to keep the
    data directory (``--data-dir``, required) or a service lock: keeping two
    services off one such store is the operator's, or the plug-in's, care.
    """
    from hwsearch.cli._errors import OptionError
    from hwsearch.cli._inputs import open_store_option, refuse_a_mistyped_store_url
    from hwsearch.store_urls import is_store_url

    refuse_a_mistyped_store_url(store)
    if not is_store_url(store):
        return None, _own_store(Path(store))
    if data_dir is None:
        raise OptionError("--data-dir", "a store given by URL has no file to keep the data directory beside: "
                                        "give --data-dir")
    return open_store_option(store), None


def _own_store(store: Path) -> IO[str]:
    """Take the store's service lock (:func:`~hwsearch.jobs.runners.claim_store`), or stop with one line naming
    ``--store``: a second service's ``--data-dir`` lock is another file."""
    from hwsearch.cli._errors import OptionError
    from hwsearch.jobs.runners import claim_store

    handle = claim_store(store)
    if handle is None:
        raise OptionError("--store", f"another hwsearch serve is using {store}; stop it first, or serve "
                                     "another store")
    return handle


def _own(data_dir: Path) -> IO[str]:
    """Take the data directory's lock, or stop: two services on one directory would clash."""
    from hwsearch.jobs.runners import claim

    handle = claim(data_dir / "serve.lock")
    if handle is None:
        raise typer.BadParameter(f"another hwsearch serve is using {data_dir}", param_hint="--data-dir")
    return handle


def _prepare_host(data_dir: Path, *, local_ray: bool) -> Path:
    """Clear what a killed predecessor left in the host's temp folder, or stop naming ``--data-dir``;
    this service's temp-files folder.

    Also keeps Ray from ending this process on SIGTERM before the service has stopped.
    """
    from hwsearch.api.host_folders import FolderNotOurs, prepare_host_folders
    from hwsearch.ray_session import no_abort_on_sigterm

    no_abort_on_sigterm()
    try:
        folders = prepare_host_folders(data_dir, local_ray=local_ray)
    except FolderNotOurs as error:
        raise typer.BadParameter(str(error), param_hint="--data-dir") from None
    for notice in folders.notices:
        typer.echo(f"hwsearch serve: {notice}", err=True)
    return folders.temp_files


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
