"""``hwsearch agent --port ... --token ...``: run the edge agent (same as ``python -m devices.agent``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["register"]


def agent(
    token: Annotated[str, typer.Option(
        help="Shared secret clients send as a Bearer token; prefer the variable, which ps does not show.",
        envvar="DEVICES_AGENT_TOKEN")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8765,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 to accept remote clients.")] = "127.0.0.1",
    state_dir: Annotated[Optional[Path], typer.Option(
        help="Where uploads and results persist across restarts.")] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest ONNX upload.")] = 64.0,
    max_models: Annotated[int, typer.Option(
        min=2, help="Stored models kept; least recently used are pruned first.")] = 256,
    max_model_mb: Annotated[float, typer.Option(min=0.01, help="Stored models' total size kept.")] = 2048.0,
    max_results: Annotated[int, typer.Option(min=1, help="Stored measurement results kept.")] = 1024,
    max_connections: Annotated[int, typer.Option(
        min=1, help="Connections served at once; past it the oldest that never showed the token is closed "
                    "first, and only when token holders hold them all do more get 503 with Retry-After.")] = 16,
    read_timeout_s: Annotated[float, typer.Option(
        min=0.1, help="Seconds a client may take to send a request before it is closed.")] = 30.0,
    max_session_mb: Annotated[Optional[float], typer.Option(
        min=1.0, help="What onnxruntime may allocate for a measurement; past it the model gets 400 "
                      "(default: 3/4 of this box's memory).")] = None,
    ssl_certfile: Annotated[Optional[Path], typer.Option(
        help="Serve HTTPS with this certificate (PEM), so the token and models never cross the network "
             "in clear; with --ssl-keyfile.")] = None,
    ssl_keyfile: Annotated[Optional[Path], typer.Option(help="The certificate's private key (PEM).")] = None,
) -> None:
    """Serve this machine as a measurement device over HTTP.

    Needs only onnxruntime and numpy; on a box without hwsearch, copy the
    devices/ folder there and run `python -m devices.agent` from the folder
    that holds it, with the same options.
    """
    from devices.agent import check_agent_token, serve
    from hwsearch.cli._inputs import prepare_folder

    # Up front, naming the option: a file as --state-dir failed as "afile/models: Not a directory".  The agent
    # checks its certificate and key itself (a FIFO waited forever), in one line (AgentSettingError).  The
    # token first: a refused one left a new --state-dir folder behind.
    check_agent_token(token)
    if state_dir is not None:
        prepare_folder(state_dir, "--state-dir")
    serve(host, port, token, state_dir, max_upload_mb, max_models=max_models,
          max_model_mb=max_model_mb, max_results=max_results, max_connections=max_connections,
          read_timeout_s=read_timeout_s, max_session_mb=max_session_mb, ssl_certfile=ssl_certfile,
          ssl_keyfile=ssl_keyfile)


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
