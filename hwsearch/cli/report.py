"""``hwsearch report``: Pareto plots per device and one self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["register"]


def report(
    job: Annotated[str, typer.Argument(
        help="A job id in --store, or the --out folder of `hwsearch search` or `hwsearch demo` "
             "(or any folder of front JSON files).")],
    out: Annotated[Path, typer.Option(help="Directory for the PNGs and report.html.")] = Path(
        "hwsearch-report"),
    store: Annotated[Optional[str], typer.Option(
        envvar="HWSEARCH_STORE",
        help="The store holding the job (needed for a job id): a SQLite file, or scheme://... for a store "
             "package's backend (one holding a password in $HWSEARCH_STORE, not on the command line).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the written paths as JSON.")] = False,
) -> None:
    """Write a Pareto plot per device (PNG) and one self-contained report.html.

    The page shows the fronts across devices, the predictors' quality on
    held-out subnets and the measurements behind them.
    """
    from devices.plain import printable
    from hwsearch.cli._errors import OptionError, reading
    from hwsearch.cli._inputs import open_store_option, prepare_folder
    from hwsearch.report import build_report, from_dir, from_store
    from hwsearch.store_urls import shown_store

    if Path(job).is_dir():
        with reading("JOB"):
            data = from_dir(job)
    elif store is None:
        raise typer.BadParameter(f"{job!r} is not a directory; give --store to read a job id",
                                 param_hint="JOB")
    else:
        opened = open_store_option(store, must_exist=True)  # no empty store made to find no job in
        try:
            data = from_store(opened, job)
        except KeyError:
            raise OptionError("JOB", f"no job {job!r} in {shown_store(store)}") from None
        except Exception as error:
            raise _reading_failed(error) from None
    prepare_folder(out, "--out")  # after the job is read (nothing is made for a bad one), before any plot
    written = build_report(data, out)
    if as_json:
        typer.echo(json.dumps({name: str(path) for name, path in written.items()}))
    else:
        for name, path in written.items():  # a device's name, from a front file: printed, not obeyed
            typer.echo(f"{printable(name):>12}  {path}")


def _reading_failed(error: Exception) -> Exception:
    """What to say when reading the job failed: a ``ValueError`` of ours (no such job, not a succeeded search
    job, a damaged record) names JOB; a plug-in store's own failure is said as it is.

    A plug-in's failure has already become a :class:`~hwsearch.store.StoreFailed`
    that never quotes its URL's credentials (:class:`~hwsearch.store_urls.ScreenedStore`):
    Y5's plug-in printed its password in a ``ValueError``, a ``ConnectionError``
    and a traceback.
    """
    from hwsearch.cli._errors import OptionError

    if isinstance(error, ValueError):
        return OptionError("JOB", str(error))
    return error


def register(app: typer.Typer) -> None:
    app.command("report")(report)
