"""``hwsearch search``: Pareto fronts of one supernet on several devices, on Ray.

A device whose profile lists several precisions (``precisions: [fp32,
int8]``, or ``--precision`` for all) gets one front mixing them, each point
labelled with its precision.

The command runs the same job a service submission runs
(:func:`hwsearch.jobs.run_job`): profile subnets on each device, measure
their accuracy once for all devices, fit predictors, then refine one front
per device in parallel Ray tasks.  Everything measured lands in a SQLite
store under ``--out``, so a second run resumes instead of re-measuring.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hwsearch.cli._errors import OptionError, exit_on_sigterm, signals_held
from hwsearch.cli._inputs import MAX_SUBNETS, check_ray_address_option, seed_option

__all__ = ["register"]


def search(
    supernet: Annotated[str, typer.Option(help="Supernet name (see `hwsearch supernets list`).")],
    device: Annotated[list[Path], typer.Option(
        help="Device profile (YAML/JSON); repeat for several devices.", exists=True,
        dir_okay=False)],
    data: Annotated[Path, typer.Option(
        help="Validation data for accuracy: a folder of class sub-folders of images, "
             "or an array/tensor file.", exists=True)],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Supernet weights (state_dict); without it, a random initialisation (the demos' trained weights are "
             "hwsearch/demo/NAME.pt).", exists=True,
        dir_okay=False)] = None,
    budget_ms: Annotated[Optional[float], typer.Option(
        help="Latency limit in ms: every subnet of a front is at most this fast.")] = None,
    params_limit: Annotated[Optional[float], typer.Option(help="Parameter-count limit.")] = None,
    accuracy_floor: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Accuracy floor, a fraction in [0, 1].")] = None,
    n_profile: Annotated[int, typer.Option(
        min=4, max=MAX_SUBNETS, help="Subnets profiled per device (and evaluated once) to train predictors.")] = 40,
    budget: Annotated[int, typer.Option(
        min=0, max=MAX_SUBNETS, help="Extra real measurements per device that refinement may spend.")] = 20,
    seed: Annotated[int, seed_option("Seed for selection, predictors and search.")] = 0,
    targets_ms: Annotated[Optional[list[str]], typer.Option(
        help="Latency budgets in ms, e.g. 15,20,25: refinement spends its measurements on the "
             "best subnet under each, printed first. NAME=15,20 sets one device's; repeat "
             "for several.")] = None,
    band_ms: Annotated[Optional[list[str]], typer.Option(
        help="Latency band LOW:HIGH in ms the front matters in (refinement aims inside it); "
             "NAME=LOW:HIGH for one device.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(
        help="Search at this precision on every device (fp32, int8; repeat for both), instead "
             "of the precisions each profile lists. int8 subnets are quantized by onnxruntime "
             "and their accuracy measured on the quantized model.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Join this Ray cluster instead of starting a local one.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the store and the fronts' JSON.")] = Path(
        "runs/search"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the fronts as JSON.")] = False,
) -> None:
    """Find each device's accuracy/latency Pareto front of measured subnets."""
    from rich.console import Console

    from devices.plain import dumps
    from hwsearch.cli._fronts import front_table, shown, target_table
    from hwsearch.cli._inputs import prepare_folder
    from hwsearch.filenames import file_stem
    from hwsearch.jobs import JobSpec, SupernetRef, new_job
    from hwsearch.jobs.control import interrupt_job
    from hwsearch.jobs.executor import STOPPED_WHILE_RUNNING
    from hwsearch.results import ParetoFront
    from hwsearch.store import SQLiteStore

    _check_limits(budget_ms, params_limit)
    check_ray_address_option(ray_address)  # before any work, and before the job is recorded
    profiles = _absolute_references(_with_precisions(_check_inputs(supernet, checkpoint, device, data), precision))
    aims = _latency_targets([p.name for p in profiles], targets_ms or [], band_ms or [])
    prepare_folder(out, "--out")
    store = SQLiteStore(out / "store.db")
    limits = [lim for lim in (
        {"metric": "latency_ms", "upper": budget_ms} if budget_ms is not None else None,
        {"metric": "params", "upper": params_limit} if params_limit is not None else None,
        {"metric": "accuracy", "lower": accuracy_floor} if accuracy_floor is not None else None,
    ) if lim is not None]
    spec = JobSpec(
        supernet=SupernetRef(name=supernet, registry=supernet,
                             checkpoint=str(checkpoint.resolve()) if checkpoint else None),
        devices=tuple(profile.to_dict() for profile in profiles),
        dataset=str(data.resolve()), limits=tuple(limits), budget=budget, seed=seed,
        n_profile=n_profile,
        targets=aims,
    )
    console = Console(stderr=as_json)
    exit_on_sigterm()
    job_id = None
    try:
        with signals_held():  # the job's row and this guard come together
            job_id, runner = new_job(store, spec.to_dict())  # ours from its first write: a service leaves it to us
        result = _run_with_progress(spec, store, job_id, runner, ray_address, console)
    except (KeyboardInterrupt, SystemExit):
        if job_id is not None:  # run_job_watched marks it too, once it runs; marking twice changes nothing
            interrupt_job(store, job_id, STOPPED_WHILE_RUNNING)
        raise
    fronts = {name: ParetoFront.from_dict(front) for name, front in result["fronts"].items()}
    paths = {name: str(front.save(out / "fronts" / f"{file_stem(name)}.json"))
             for name, front in fronts.items()}
    if as_json:
        typer.echo(dumps({"job_id": job_id, "store": str(out / "store.db"), "files": paths,
                          "fronts": {n: f.to_dict() for n, f in fronts.items()}}, indent=2))
        return
    for name, front in fronts.items():
        picks = target_table(name, front)
        if picks is not None:
            console.print(picks)
        console.print(front_table(name, front))
        console.print(f"written to {shown(paths[name])}")


def _check_limits(budget_ms: float | None, params_limit: float | None) -> None:
    """Refuse upper limits no subnet can meet, before any work.

    ``nan`` passes every comparison, so a NaN limit used to profile for half
    a minute and then fail deep in the search with a Ray traceback; ``inf``
    limits nothing and is a typo for leaving the option out.
    (``--accuracy-floor`` is bounded to [0, 1] by typer, which refuses NaN.)
    """
    for option, limit in (("--budget-ms", budget_ms), ("--params-limit", params_limit)):
        if limit is not None and not math.isfinite(limit):
            raise OptionError(option, f"{limit} is not a finite number")
        if limit is not None and limit <= 0:
            raise OptionError(option, f"{limit:g} can never be met: a subnet's latency and parameter count "
                                      "are above 0")


def _check_inputs(supernet: str, checkpoint: Path | None, devices: list[Path],
                  data: Path) -> list[Any]:  # -> list[devices.profile.DeviceProfile]
    """Read every input once before Ray starts, so a bad one fails in seconds, naming its option.

    The job reads them again in its worker; loading the supernet and the
    data here costs seconds, a search minutes.
    """
    from hwsearch.accuracy_eval import check_eval_data
    from hwsearch.cli._errors import reading
    from hwsearch.cli._inputs import load_profile, load_supernet, warn_if_untrained
    from hwsearch.data import open_images

    profiles = [load_profile(path) for path in devices]
    names = [p.name for p in profiles]
    if len(set(names)) < len(names):  # found after profiling and accuracy before, at refinement
        raise OptionError("--device", f"device names must be unique, got {names}")
    net = load_supernet(supernet, checkpoint)
    with reading("--data"):  # a folder is only listed here: memory stays flat in its size
        check_eval_data(net, open_images(data, size=max(net.space.resolutions)))
    warn_if_untrained(supernet, checkpoint)
    return profiles


def _absolute_references(profiles: list[Any]) -> list[Any]:
    """The profiles with their ``reference_model`` paths made absolute.

    The profiles travel in the job's spec to Ray workers, which on a cluster
    run in another working folder: a relative path would name another file or none.
    (The device's key holds the reference's digest, not its path, so it is unchanged.)
    """
    import dataclasses
    import os

    return [dataclasses.replace(p, reference_model=os.path.abspath(p.reference_model))
            if p.reference_model is not None else p for p in profiles]


def _latency_targets(devices: list[str], budgets: list[str],
                     bands: list[str]) -> dict[str, dict[str, Any]]:
    """Each device's targets from ``--targets-ms``/``--band-ms`` (``[NAME=]VALUE``), checked."""
    from hwsearch.acquisition import LatencyTargets
    from hwsearch.cli._errors import reading

    chosen: dict[str, dict[str, str]] = {name: {} for name in devices}
    for option, kind, values in (("--targets-ms", "budgets", budgets), ("--band-ms", "band", bands)):
        for value in sorted(values, key=lambda v: "=" in v):  # a device's own value wins
            name, _, text = value.rpartition("=")
            if name and name not in chosen:
                raise OptionError(option, f"{name!r} is not one of the devices {devices}")
            for device in [name] if name else devices:
                chosen[device][kind] = text
    out = {}
    for device, given in chosen.items():
        with reading("--targets-ms"):
            budgets_ms = LatencyTargets.parse(given.get("budgets")).budgets_ms
        with reading("--band-ms"):
            band = LatencyTargets.parse(band=given.get("band")).band_ms
        if budgets_ms or band:
            out[device] = LatencyTargets(budgets_ms, band).to_dict()
    return out


def _with_precisions(profiles: list[Any], precisions: list[str] | None) -> list[Any]:
    """The profiles, each set to search ``precisions`` when given (checked like a profile field)."""
    import dataclasses

    from hwsearch.cli._errors import reading

    if not precisions:
        return profiles
    with reading("--precision"):
        return [dataclasses.replace(p, precisions=tuple(precisions)) for p in profiles]


def _run_with_progress(spec: Any, store: Any, job_id: str, runner: str | None, ray_address: str | None,
                       console: Any) -> dict[str, Any]:
    """Run the job under ``runner``'s claim; show the progress it records in the store as a bar.

    A job another process stops (a service's cancel) ends the command with
    one line (:class:`~hwsearch.jobs.JobCancelled`, in :mod:`hwsearch.cli._errors`).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hwsearch.jobs import run_job_watched

    with Progress(TextColumn("[bold]{task.fields[step]}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  TextColumn("{task.description}", markup=False),  # messages name devices: text, not markup
                  console=console) as bar:
        task = bar.add_task("starting", total=1.0, step="search")
        return run_job_watched(
            spec, store=store, job_id=job_id, ray_address=ray_address, runner=runner,
            progress=lambda step, fraction, message: bar.update(
                task, completed=fraction, step=step, description=message))


def register(app: typer.Typer) -> None:
    app.command("search")(search)
