"""``hwsearch profile`` / ``hwsearch profile-accuracy``: build predictor training data.

``profile`` picks subnets spread over MACs, exports them to ONNX and measures
them on a device; ``profile-accuracy`` evaluates subnets on the user's
labelled images.  Both write to a SQLite store and resume from it: rows
already stored are never measured again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hwsearch.cli._inputs import MAX_SUBNETS, STORE_HELP, seed_option

__all__ = ["register"]

StoreOpt = Annotated[str, typer.Option(help=f"Where the rows go: {STORE_HELP} (a file is created if missing).",
                                       envvar="HWSEARCH_STORE", show_envvar=True)]
SupernetOpt = Annotated[str, typer.Option(help="Supernet name (see `hwsearch supernets list`).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    help="Supernet weights (a local state_dict file); without it, a random initialisation.", exists=True,
    dir_okay=False)]


def _progress_bar(description: str, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not enabled, transient=False)


def profile(
    device: Annotated[Path, typer.Option(help="Device profile (YAML or JSON).", exists=True,
                                         dir_okay=False)],
    supernet: SupernetOpt = "ofa_mbv3_d234_e346_k357_w1.0",
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_SUBNETS, help="How many subnets to select.")] = 100,
    resolution: Annotated[Optional[int], typer.Option(
        help="Pin the input resolution (default: spread over the space's resolutions).")] = None,
    store: StoreOpt = "runs/hwsearch.db",
    seed: Annotated[int, seed_option("Selection seed; the same seed resumes the same run.")] = 0,
    chunk: Annotated[int, typer.Option(min=1, help="Most subnets per interleaved measurement session.")] = 16,
    checkpoint: CheckpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
) -> None:
    """Select N subnets spread over MACs, export them to ONNX and measure them on DEVICE."""
    from devices import open_profiler
    from hwsearch.cli._errors import exit_on_sigterm
    from hwsearch.cli._inputs import load_profile, load_supernet, open_store_option
    from hwsearch.cli._waiting import waiting_printer
    from hwsearch.pipeline import profile_subnets, select_subnets
    from hwsearch.store_urls import shown_store

    exit_on_sigterm()  # the default action ended it at -15 with no word, its temp files left behind
    device_profile = load_profile(device)
    if set(device_profile.precisions) != {"fp32"}:  # it said nothing, and stored FP32 rows only (probe Z11)
        typer.echo(f"note: this command measures FP32 exports only; {device.name} lists "
                   f"{', '.join(p for p in device_profile.precisions if p != 'fp32')}, which `hwsearch search` "
                   "measures (it quantizes on --data), as does `hwsearch measure` of a file from "
                   "`hwsearch export --precision int8`", err=True)
    net = load_supernet(supernet, checkpoint)
    archs = select_subnets(net.space, n, seed=seed, resolution=resolution)
    rows = open_store_option(store)  # opened (and checked) before anything is measured; after the inputs, not to
    # leave a new store behind for a misspelt supernet
    profiler = open_profiler(device_profile)
    with _progress_bar(f"profiling on {device_profile.name}", not as_json) as bar:
        task = bar.add_task(f"profiling on {device_profile.name}", total=len(archs))
        report = profile_subnets(
            net, archs, profiler, profiler.device_key(), rows,
            chunk=chunk, progress=waiting_printer(lambda event: bar.update(task, completed=event["done"])))
    if as_json:
        typer.echo(json.dumps(report.to_dict() | {"store": shown_store(store)}, indent=2))
        return
    typer.echo(f"{report.measured} measured, {report.skipped} already in {shown_store(store)}, "
               f"{report.unstable} above the confidence target, {report.seconds:.0f} s "
               f"(device {device_profile.name} {report.device_hash})")


def profile_accuracy(
    data: Annotated[Path, typer.Option(help="Folder of class sub-folders of images (streamed), or "
                                            "a .npz/.pt file with arrays x and y.", exists=True)],
    supernet: SupernetOpt = "ofa_mbv3_d234_e346_k357_w1.0",
    checkpoint: CheckpointOpt = None,
    dataset_id: Annotated[Optional[str], typer.Option(
        help="Name the accuracies are stored under, before the digest of the data, weights and "
             "choices below (default: the data path's name).")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_SUBNETS, help="How many subnets to evaluate.")] = 50,
    n_calibration: Annotated[int, typer.Option(min=1, help="Images used only to recalibrate BN.")] = 500,
    calibration: Annotated[Optional[Path], typer.Option(
        help="Separate images for BN recalibration (e.g. a slice of the training set); "
             "default: split off DATA.", exists=True)] = None,
    subset: Annotated[Optional[int], typer.Option(
        help="Score this many validation images (seeded random sample; default: all).",
        min=1)] = None,
    device: Annotated[str, typer.Option(
        help="auto: a GPU when the Ray cluster has one; cpu; cuda.")] = "auto",
    store: StoreOpt = "runs/hwsearch.db",
    seed: Annotated[int, seed_option("Selection seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print accuracies as JSON.")] = False,
) -> None:
    """Evaluate N subnets on DATA (BN recalibrated first) over Ray workers; store accuracies."""
    from hwsearch.accuracy_eval import EvalSettings, check_eval_data, evaluate_subnets
    from hwsearch.bn import has_batch_norm
    from hwsearch.cli._errors import exit_on_sigterm, reading
    from hwsearch.cli._inputs import load_supernet, open_store_option, warn_if_untrained
    from hwsearch.evaldata import DataPlan
    from hwsearch.pipeline import select_subnets
    from hwsearch.store_urls import shown_store

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("expected auto, cpu or cuda", param_hint="--device")
    exit_on_sigterm()  # before Ray starts
    net = load_supernet(supernet, checkpoint)
    plan = DataPlan(str(data), calibration=None if calibration is None else str(calibration),
                    n_calibration=n_calibration, subset=subset)
    with reading("--data"):
        split = plan.open(size=max(net.space.resolutions))
        check_eval_data(net, split)
    rows = open_store_option(store)  # opened (and checked) before anything is evaluated, once the inputs are
    warn_if_untrained(supernet, checkpoint)
    stored_as = f"{dataset_id or data.name}-" + plan.dataset_id(
        split, checkpoint=None if checkpoint is None else str(checkpoint))
    archs = select_subnets(net.space, n, seed=seed)
    with _progress_bar("evaluating subnets", not as_json) as bar:
        task = bar.add_task("evaluating subnets", total=len(archs))
        accuracies = evaluate_subnets(
            net, archs, split, store=rows, dataset_id=stored_as,
            settings=EvalSettings(device=device),  # type: ignore[arg-type]  (checked above)
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        typer.echo(json.dumps({"dataset_id": stored_as, "data": dict(split.identity),
                               "accuracies": {key: {"accuracy": value,
                                                    "ci95": list(split.interval(value))}
                                              for key, value in accuracies.items()}}, indent=2))
        return
    values = list(accuracies.values())
    low, high = split.interval(min(values))[0], split.interval(max(values))[1]
    recalibrated = f" (BN on {len(split.calibration)})" if has_batch_norm(net.module) else ""  # a ViT has none
    typer.echo(f"{len(values)} subnets on {len(split.validation)} validation images"
               f"{recalibrated}: accuracy {min(values):.3f}..{max(values):.3f}, "
               f"95% Wilson bounds {low:.3f}..{high:.3f}; stored in {shown_store(store)} as dataset id "
               f"{stored_as}")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
    app.command("profile-accuracy")(profile_accuracy)
