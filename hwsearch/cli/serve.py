"""``hwsearch serve``: the HTTP service over a SQLite job store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["register"]


def serve(
    store: Annotated[Path, typer.Option(help="SQLite file holding jobs and measurements.")] = Path(
        "hwsearch.sqlite"),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        help="Bearer token clients must send; defaults to $HWSEARCH_TOKEN.",
        envvar="HWSEARCH_TOKEN", show_envvar=True)] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        help="Registered supernets/devices, uploads and exports (default: STORE.data).")] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest JSON request body.")] = 1.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest checkpoint upload.")] = 512.0,
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

    from hwsearch.api.app import MiB, create_app
    from hwsearch.store import open_store

    if not token:
        raise typer.BadParameter("give --token or set HWSEARCH_TOKEN", param_hint="--token")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    app = create_app(
        open_store(store), token=token, data_dir=data_dir or Path(f"{store}.data"),
        max_body_bytes=int(max_body_mb * MiB), max_upload_bytes=int(max_upload_mb * MiB),
        ray_address=ray_address, resume=resume,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
