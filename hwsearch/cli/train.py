"""``hwsearch train``: fit a latency or accuracy predictor from the store, report, save."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from hwsearch.cli._errors import reading
from hwsearch.cli._inputs import STORE_HELP, seed_option

__all__ = ["register"]

MIN_ROWS = 10  # fewer labelled subnets than this give no predictor worth saving


def train(
    out: Annotated[Path, typer.Option(help="Directory the predictor is saved to.")],
    target: Annotated[str, typer.Option(help="'latency' or 'accuracy'.")] = "latency",
    supernet: Annotated[str, typer.Option(help="Supernet whose space the rows belong to.")]
    = "ofa_mbv3_d234_e346_k357_w1.0",
    device: Annotated[Optional[Path], typer.Option(
        help="Device profile (latency): selects the rows by its hash.", exists=True,
        dir_okay=False)] = None,
    dataset_id: Annotated[Optional[str], typer.Option(help="Dataset id (accuracy).")] = None,
    store: Annotated[str, typer.Option(help=f"The store with the rows: {STORE_HELP}.", envvar="HWSEARCH_STORE",
                                       show_envvar=True)] = "runs/hwsearch.db",
    test_fraction: Annotated[float, typer.Option(
        help="Share of subnets held out (by key) and scored after fitting.")] = 0.2,
    seed: Annotated[int, seed_option("Split and model seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Fit a predictor on stored rows; print held-out and cross-validated quality; save it.

    Rows that cannot be right (keys of no subnet of the space, a latency,
    ratio or reference that is no time) are left out and reported on stderr,
    by reason with a few keys, instead of failing the command or the model.
    """
    from rich.console import Console

    from hwsearch.cli._errors import OptionError, exit_on_sigterm
    from hwsearch.cli._inputs import load_profile, load_supernet, open_store_option, refuse_file_in_the_way

    exit_on_sigterm()  # the default action ended it at -15 with no word

    # Before any work: a bad fraction ended in a traceback, and a file as --out failed only after fitting.
    if not (math.isfinite(test_fraction) and 0 < test_fraction < 1):
        raise OptionError("--test-fraction", f"must lie strictly between 0 and 1, got {test_fraction}")
    refuse_file_in_the_way(out, "--out")  # made only once there is a predictor to save
    from hwsearch.anchor import in_current_norm, norm_problem
    from hwsearch.store_urls import shown_store
    from predictors.accuracy import AccuracyPredictor
    from predictors.dataset import MeasurementSet, screen_accuracies, screen_latencies
    from predictors.latency import LatencyPredictor

    space = load_supernet(supernet).space
    rows = open_store_option(store, must_exist=True)
    if target == "latency":
        if device is None:
            raise typer.BadParameter("latency predictors need --device", param_hint="--device")
        from devices import open_profiler

        device_hash = open_profiler(load_profile(device)).device_key()  # the profile on its host
        screened = screen_latencies(space, rows.get_latencies(device_hash, space.network_id), also=norm_problem)
        data = MeasurementSet.from_latencies(space, in_current_norm(screened.rows, device_hash, space.network_id))
        model = LatencyPredictor(space, device_hash=device_hash, seed=seed)
    elif target == "accuracy":
        if dataset_id is None:
            raise typer.BadParameter("accuracy predictors need --dataset-id",
                                     param_hint="--dataset-id")
        screened = screen_accuracies(space, rows.get_accuracies(supernet, dataset_id))
        data = MeasurementSet.from_accuracies(space, screened.rows)
        model = AccuracyPredictor(space, seed=seed)
    else:
        raise typer.BadParameter("choose 'latency' or 'accuracy'", param_hint="--target")
    skipped = screened.summary()
    if len(data) < MIN_ROWS:
        typer.echo(f"only {len(data)} labelled subnets in {shown_store(store)}{f' ({skipped})' if skipped else ''}; "
                   f"profile at least {MIN_ROWS} first", err=True)
        raise typer.Exit(code=1)
    if skipped:
        typer.echo(f"warning: {skipped}", err=True)
    train_set, test_set = data.split(test_fraction, seed=seed)
    with Console(stderr=True).status(f"fitting on {len(train_set)} subnets", spinner="dots"), reading("--store"):
        model.fit(train_set.X, train_set.y, X_test=test_set.X if len(test_set) >= 2 else None,
                  y_test=test_set.y if len(test_set) >= 2 else None)
    model.save(out)
    if as_json:
        typer.echo(json.dumps(model.meta.to_dict() | {"saved_to": str(out)}, indent=2))
        return
    typer.echo(model.report())
    typer.echo(f"saved to {out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
