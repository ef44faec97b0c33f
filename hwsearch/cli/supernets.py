"""``hwsearch supernets list``: the supernets this installation can build."""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["register"]

supernets_app = typer.Typer(help="Registered once-for-all supernets.", no_args_is_help=True)


@supernets_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List registered supernet names with a one-line description of each."""
    from hwsearch.supernets import describe_supernet, list_supernets

    rows = [{"name": name, "description": describe_supernet(name)} for name in list_supernets()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        typer.echo(f"{row['name']:<{width}}  {row['description']}")


def register(app: typer.Typer) -> None:
    app.add_typer(supernets_app, name="supernets")
