"""``hwsearch demo``: the whole job on a built-in MNIST supernet (OFA-MobileNetV3 or ViT), offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hwsearch.cli._inputs import MAX_SUBNETS, seed_option
from hwsearch.demo import DEMO_SUPERNET, DEMO_SUPERNETS


def _demo_supernet(name: str) -> str:
    if name not in DEMO_SUPERNETS:
        raise typer.BadParameter(f"{name!r} is not a demo supernet; choose from {', '.join(DEMO_SUPERNETS)}")
    return name


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the store, ONNX files and report.")] = Path("runs/demo"),
    supernet: Annotated[str, typer.Option(
        callback=_demo_supernet,
        help=f"Which demo: {' or '.join(DEMO_SUPERNETS)} (an elastic ViT).")] = DEMO_SUPERNET,
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Your own checkpoint of the chosen demo supernet (default: the shipped one).")] = None,
    device: Annotated[Optional[list[Path]], typer.Option(
        help="Device profile (YAML/JSON); repeat for several. Default: this CPU with 1 and 2 threads.")] = None,
    n_profile: Annotated[int, typer.Option(
        min=4, max=MAX_SUBNETS, help="Subnets profiled per device to train predictors.")] = 40,
    budget: Annotated[int, typer.Option(
        min=0, max=MAX_SUBNETS, help="Extra real measurements per device for refinement.")] = 20,
    seed: Annotated[int, seed_option("Seed for sampling and search.")] = 0,
    ray_address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of tables.")] = False,
) -> None:
    """Profile, measure accuracy, train predictors, search on Ray, export and re-profile the knees, report."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from devices.plain import dumps
    from hwsearch.cli._errors import exit_on_sigterm
    from hwsearch.cli._fronts import front_table, shown
    from hwsearch.cli._inputs import check_ray_address_option
    from hwsearch.demo.run import DemoSettings, run_demo, summarise

    exit_on_sigterm()  # before Ray starts: its own handler printed a native stack dump on SIGTERM
    check_ray_address_option(ray_address)  # as `search` does: before the demo's store records a job (probe Z10)

    defaults = DemoSettings()
    settings = DemoSettings(
        out=out, supernet=supernet, checkpoint=checkpoint,
        devices=tuple(device) if device else defaults.devices,
        n_profile=n_profile, budget=budget, seed=seed, ray_address=ray_address,
    )
    console = Console(stderr=as_json)
    with Progress(TextColumn("[bold]{task.fields[step]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TextColumn("{task.description}", markup=False), console=console) as bar:
        task = bar.add_task("starting", total=1.0, step="demo")

        def show(step: str, fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, step=step, description=message)

        result = run_demo(settings, progress=show)
        bar.update(task, completed=1.0, step="done", description="")
    if as_json:
        typer.echo(dumps({
            "job_id": result.job_id, "seconds": round(result.seconds, 1),
            "fronts": {d: f.to_dict() for d, f in result.fronts.items()},
            "knees": [{**vars(k), "onnx_path": str(k.onnx_path)} for k in result.knees],
            "report": str(result.report["html"]),
        }, indent=2))
        return
    for device_name, front in result.fronts.items():
        console.print(front_table(device_name, front))
    for line in summarise(result):
        console.print(shown(line))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
