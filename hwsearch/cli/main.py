"""Entry point of the ``hwsearch`` command.

Each module in :mod:`hwsearch.cli` that defines ``register(app)`` adds its
commands, so adding a command never means editing this file.  Command modules
import their heavy dependencies (torch, ray, onnxruntime) inside the command
functions, which keeps ``hwsearch --help`` fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import hwsearch.cli as cli_package

app = typer.Typer(
    name="hwsearch",
    help=(
        "Find subnets of a once-for-all supernet that are accurate and fast on your devices.\n\n"
        "Start with `hwsearch demo`: it profiles, trains predictors, searches and reports "
        "on a small built-in supernet, offline."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda m: m.name):
        if module_info.name == "main" or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"hwsearch.cli.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
