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

__all__ = ["register"]

StoreOpt = Annotated[Path, typer.Option(help="SQLite store the rows go to (created if missing).")]
SupernetOpt = Annotated[str, typer.Option(help="Supernet name (see `hwsearch supernets`).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    help="Supernet weights (a local state_dict file).", exists=True, dir_okay=False)]


def _progress_bar(description: str, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not enabled, transient=False)


def profile(
    device: Annotated[Path, typer.Option(help="Device profile (YAML or JSON).", exists=True,
                                         dir_okay=False)],
    supernet: SupernetOpt = "ofa_mbv3_d234_e346_k357_w1.0",
    n: Annotated[int, typer.Option("--n", help="How many subnets to select.")] = 100,
    resolution: Annotated[Optional[int], typer.Option(
        help="Pin the input resolution (default: spread over the space's resolutions).")] = None,
    store: StoreOpt = Path("runs/hwsearch.db"),
    seed: Annotated[int, typer.Option(help="Selection seed; the same seed resumes the same run.")] = 0,
    chunk: Annotated[int, typer.Option(help="Subnets per interleaved measurement session.")] = 16,
    checkpoint: CheckpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
) -> None:
    """Select N subnets spread over MACs, export them to ONNX and measure them on DEVICE."""
    from devices import open_profiler
    from hwsearch.cli._inputs import load_profile, load_supernet
    from hwsearch.pipeline import profile_subnets, select_subnets
    from hwsearch.store import SQLiteStore

    device_profile = load_profile(device)
    net = load_supernet(supernet, checkpoint)
    archs = select_subnets(net.space, n, seed=seed, resolution=resolution)
    profiler = open_profiler(device_profile)
    with _progress_bar(f"profiling on {device_profile.name}", not as_json) as bar:
        task = bar.add_task(f"profiling on {device_profile.name}", total=len(archs))
        report = profile_subnets(
            net, archs, profiler, profiler.device_key(), SQLiteStore(store),
            chunk=chunk, progress=lambda event: bar.update(task, completed=event["done"]))
    if as_json:
        typer.echo(json.dumps(report.to_dict() | {"store": str(store)}, indent=2))
        return
    typer.echo(f"{report.measured} measured, {report.skipped} already in {store}, "
               f"{report.unstable} above the confidence target, {report.seconds:.0f} s "
               f"(device {device_profile.name} {report.device_hash})")


def profile_accuracy(
    data: Annotated[Path, typer.Option(help="Folder of class sub-folders of images, or a "
                                            ".npz/.pt file with arrays x and y.", exists=True)],
    supernet: SupernetOpt = "ofa_mbv3_d234_e346_k357_w1.0",
    checkpoint: CheckpointOpt = None,
    dataset_id: Annotated[Optional[str], typer.Option(
        help="Name the accuracies are stored under (default: the data path's name).")] = None,
    n: Annotated[int, typer.Option("--n", help="How many subnets to evaluate.")] = 50,
    n_calibration: Annotated[int, typer.Option(help="Images used only to recalibrate BN.")] = 500,
    store: StoreOpt = Path("runs/hwsearch.db"),
    seed: Annotated[int, typer.Option(help="Selection seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print accuracies as JSON.")] = False,
) -> None:
    """Evaluate N subnets on DATA (BN recalibrated first) over Ray workers; store accuracies."""
    from hwsearch.accuracy_eval import EvalSettings, evaluate_subnets
    from hwsearch.cli._errors import reading
    from hwsearch.cli._inputs import load_supernet
    from hwsearch.data import load_images
    from hwsearch.pipeline import select_subnets
    from hwsearch.store import SQLiteStore

    net = load_supernet(supernet, checkpoint)
    with reading("--data"):
        images = load_images(data, size=max(net.space.resolutions))
    archs = select_subnets(net.space, n, seed=seed)
    with _progress_bar("evaluating subnets", not as_json) as bar:
        task = bar.add_task("evaluating subnets", total=len(archs))
        accuracies = evaluate_subnets(
            net, archs, images, store=SQLiteStore(store), dataset_id=dataset_id or data.name,
            settings=EvalSettings(n_calibration=n_calibration, seed=seed),
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        typer.echo(json.dumps(accuracies, indent=2))
        return
    values = list(accuracies.values())
    typer.echo(f"{len(values)} subnets on {len(images)} images: accuracy "
               f"{min(values):.3f}..{max(values):.3f} (stored in {store})")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
    app.command("profile-accuracy")(profile_accuracy)
