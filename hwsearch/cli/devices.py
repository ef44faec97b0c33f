"""``hwsearch devices check PROFILE``: validate a device profile and ask the device about itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

devices_app = typer.Typer(help="Device profiles: validate them and see what a device reports.", no_args_is_help=True)


@devices_app.command("check")
def check(
    profile: Annotated[Path, typer.Argument(help="Device profile (YAML or JSON).", exists=True, dir_okay=False)],
) -> None:
    """Validate PROFILE, print its hash and what the device reports (runtimes, providers, CPU, cores).

    For an agent profile this contacts the agent, so it also proves the URL
    and token work.
    """
    from devices import open_profiler
    from hwsearch.cli._inputs import load_profile

    loaded = load_profile(profile, "PROFILE")
    facts = open_profiler(loaded).describe()
    typer.echo(json.dumps({"profile": loaded.to_dict(), "hash": loaded.hash(), "device": facts}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")
