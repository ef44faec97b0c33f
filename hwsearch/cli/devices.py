"""``hwsearch devices check|show|calibrate|reset PROFILE``: a device profile and its ruler.

PROFILE is a profile file, or, with ``--store`` (a SQLite store, its
catalog beside it) or ``--data-dir`` (the service's data folder, whatever
its store), the name of a device registered with ``hwsearch serve`` (the
service's catalog is read, never written).

Every latency hwsearch reports is a ratio to a reference model times the
device's *ruler*, the reference's latency kept from the device's first
session on this host (or pinned in the profile as ``reference_ms``).
``show`` makes that visible: the ruler, its source and age, how recent
sessions drifted against it, and what plain onnxruntime timing of the
reference gives right now.  ``calibrate`` takes a new ruler now; ``reset``
forgets it so the next session sets one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hwsearch.cli._errors import OptionError

__all__ = ["register"]

devices_app = typer.Typer(help="Device profiles: validate them, see what a device reports, manage its ruler.",
                          no_args_is_help=True)

ProfileArg = Annotated[str, typer.Argument(
    help="Device profile file (YAML or JSON), or with --store or --data-dir a device registered with the service.")]
StoreOption = Annotated[Optional[str], typer.Option(
    help="The SQLite store of a `hwsearch serve`: PROFILE names one of its registered devices.")]
DataDirOption = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="The data folder of a `hwsearch serve` (its --data-dir, as for a store given by URL): "
                       "PROFILE names one of its registered devices.")]


@devices_app.command("check")
def check(
    profile: Annotated[Path, typer.Argument(help="Device profile (YAML or JSON).", exists=True, dir_okay=False)],
) -> None:
    """Validate PROFILE, print its hash and what the device reports (runtimes, providers, CPU, cores).

    For an agent profile this contacts the agent, so it also proves the URL
    and token work; a local one must name a runtime and first provider this
    machine has.
    """
    from devices import open_profiler
    from devices.ort import require_runtime_here
    from hwsearch.cli._inputs import load_profile

    loaded = load_profile(profile, "PROFILE")
    if loaded.where.kind == "local":
        require_runtime_here(loaded)
    facts = open_profiler(loaded).describe()
    typer.echo(json.dumps({"profile": loaded.to_dict(), "hash": loaded.hash(), "device": facts}, indent=2))


def _catalog_devices(store: str | None, data_dir: Path | None) -> tuple[Path, str] | None:
    """The service's folder of registered devices, and how to name the option that led to it; None for neither."""
    from hwsearch.api.catalog import default_data_dir
    from hwsearch.cli._inputs import refuse_a_mistyped_store_url
    from hwsearch.store_urls import is_store_url

    if data_dir is not None and store is not None:
        raise OptionError("--data-dir", "give --store or --data-dir, not both: either finds the service's catalog")
    if data_dir is not None:
        return data_dir / "devices", "--data-dir"
    if store is None:
        return None
    refuse_a_mistyped_store_url(store)
    if is_store_url(store):
        raise OptionError("--store", "a service on a store given by URL keeps its devices in its --data-dir: "
                                     "give that folder as --data-dir")
    return default_data_dir(store) / "devices", "--store"


def _registered(name: str, devices_dir: Path, option: str):  # -> devices.profile.DeviceProfile
    """The profile the service registered as ``name`` in its catalog's ``devices_dir``."""
    from devices.profile import DeviceProfile
    from hwsearch.cli._errors import reading

    if not devices_dir.is_dir():
        raise OptionError(option, f"no service catalog there ({devices_dir} is missing)")
    registered = sorted(p.stem for p in devices_dir.glob("*.json"))
    if name not in registered:
        raise OptionError("PROFILE", f"no device {name!r} is registered with the service at "
                                     f"{devices_dir.parent}; registered: {', '.join(registered) or 'none'}")
    with reading("PROFILE"):
        record = json.loads((devices_dir / f"{name}.json").read_text())
        if not isinstance(record, dict) or not isinstance(record.get("profile"), dict):
            raise OptionError("PROFILE", f"the service's record of {name!r} ({devices_dir / name}.json) holds no "
                                         "profile: not a catalog the service wrote, or a damaged one")
        return DeviceProfile.from_dict(record["profile"])


def _local(profile: str, store: str | None = None,
           data_dir: Path | None = None):  # -> devices.profile.DeviceProfile
    from hwsearch.cli._inputs import load_profile

    catalog = _catalog_devices(store, data_dir)
    if catalog is not None:
        loaded = _registered(profile, *catalog)
    elif not Path(profile).is_file():
        raise OptionError("PROFILE", f"{profile} is not a file (to name a device registered "
                                     "with the service, also give --store or --data-dir)")
    else:
        loaded = load_profile(Path(profile), "PROFILE")
    if loaded.where.kind != "local":
        raise OptionError("PROFILE", f"{loaded.name} is measured by an agent, whose ruler lives on the agent's "
                                     "host: run this command there with a local copy of the profile")
    return loaded


def _hosts(loaded: Any) -> tuple[str, str]:
    """This host's fingerprint (or the pinned one) and the host as the device's ruler knows it (with its runtime)."""
    from devices.local import host_fingerprint, runtime_version

    host = loaded.host_fingerprint or host_fingerprint()
    return host, loaded.measured_host(host, runtime_version(loaded.runtime))


def ruler_report(loaded: Any, *, plain_runs: int) -> dict[str, Any]:
    """The device's ruler on this host, its recent drift and plain onnxruntime's figure now."""
    import time

    import numpy as np

    from devices.calibration import calibration
    from devices.local import plain_median_ms, runtime_version
    from hwsearch.anchor import host_spreads
    from hwsearch.cli._waiting import waiting_printer

    host, measured_host = _hosts(loaded)
    device_key = loaded.identity(host, runtime_version(loaded.runtime))
    kept = calibration(loaded.hash(), measured_host)
    if loaded.reference_ms is not None:
        ruler, source, age = float(loaded.reference_ms), "profile (reference_ms)", None
    elif "reference_ms" in kept:
        ruler, age = float(kept["reference_ms"]), time.time() - kept["created"]
        source = f"{kept.get('origin', 'first session')} on this host"
    else:
        ruler, source, age = None, "none yet: the next session sets it", None
    sessions = [r["session_ms"] for r in kept.get("recent", [])]
    drift = ({"sessions": len(sessions), "median": float(np.median(sessions)) / ruler - 1,
              "min": min(sessions) / ruler - 1, "max": max(sessions) / ruler - 1}
             if ruler and sessions else {"sessions": len(sessions)})
    limit = loaded.reference_slowdown_limit()
    drift["slowed"] = sum(s / min(sessions) - 1 > limit for s in sessions)
    drift["max_reference_slowdown"] = limit
    plain = plain_median_ms(loaded, loaded.reference_bytes(), runs=plain_runs, on_wait=waiting_printer())
    return {"device": loaded.name, "settings_hash": loaded.hash(), "host_fingerprint": host,
            "device_key": device_key, "clock": loaded.clock, "reference_ms": ruler,
            "reference_source": source, "reference_age_s": age, "session_drift": drift,
            "between_sessions": host_spreads(device_key),
            "plain_onnxruntime_ms": plain, "plain_over_ruler": plain / ruler if ruler else None}


def _print_ruler(report: dict[str, Any]) -> None:
    ruler = report["reference_ms"]
    typer.echo(f"{report['device']}  (device {report['device_key']} = settings {report['settings_hash']} "
               f"on host {report['host_fingerprint']}, clock {report['clock']})")
    if ruler is None:
        typer.echo(f"  ruler: {report['reference_source']}")
    else:
        age = report["reference_age_s"]
        typer.echo(f"  ruler: reference = {ruler:.3f} ms, from {report['reference_source']}"
                   + (f", {age / 3600:.1f} h old" if age is not None else ""))
    drift = report["session_drift"]
    if "median" in drift:
        typer.echo(f"  last {drift['sessions']} sessions' reference vs ruler: median {drift['median']:+.1%}, "
                   f"range {drift['min']:+.1%} .. {drift['max']:+.1%}; {drift['slowed']} ran more than "
                   f"{drift['max_reference_slowdown']:.0%} slower than the fastest of them "
                   f"(protocol.max_reference_slowdown: a session slower than that is not stable)")
    for spread in report["between_sessions"]:
        figure = ("not yet known" if spread["session_spread"] is None
                  else f"SD {spread['session_spread']:.1%} of one subnet's corrected ratio")
        typer.echo(f"  between sessions, network {spread['network_id']} at {spread['precision']}: {figure} "
                   f"({spread['undisturbed_sessions']} of the host's last {spread['sessions']} sessions of "
                   f"its {spread['anchor_subnets']} anchor subnets; rows' latency_ci includes it); "
                   f"a session's shift leans by {spread['offset_slope']:+.2f} per unit of log MACs "
                   f"(from {spread['slope_pairs']} pairs of sessions that measured the same subnet)"
                   + "".join(f"; at {other}, against its own files' offsets, by {at['offset_slope']:+.2f} "
                             f"(from {at['slope_pairs']} pairs)" for other, at in spread["offset_slopes_at"].items()))
    typer.echo(f"  plain onnxruntime now (median of back-to-back runs, no reference): "
               f"{report['plain_onnxruntime_ms']:.3f} ms"
               + (f" = {report['plain_over_ruler']:.2f} x the ruler" if ruler else ""))
    typer.echo("  reported latency_ms = the model's ratio to the reference x the ruler")


@devices_app.command("show")
def show(
    profile: ProfileArg,
    plain_runs: Annotated[int, typer.Option(min=5, max=10_000, help="Runs of the plain timing.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    store: StoreOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show the device's ruler on this host: reference ms, its source and age, drift, the spread between
    sessions, plain timing."""
    report = ruler_report(_local(profile, store, data_dir), plain_runs=plain_runs)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_ruler(report)


@devices_app.command("calibrate")
def calibrate(
    profile: ProfileArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    store: StoreOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Take a new ruler now: a session whose reference replaces the old ruler, if the host was quiet.

    The replacement is written while the session still holds the host, so
    no other session's reference can become the ruler instead; a session
    that other programs disturbed leaves the old ruler (exit code 1).  Rows
    measured under the old ruler keep their numbers; measure again what you
    want on the new scale.
    """
    from devices.local import measure_model_bytes
    from hwsearch.cli._waiting import waiting_printer

    loaded = _local(profile, store, data_dir)
    if loaded.reference_ms is not None:
        raise OptionError("PROFILE", f"{loaded.name} pins reference_ms; remove it to calibrate")
    reference = loaded.reference_bytes()
    [measurement] = measure_model_bytes(loaded, [reference], reference, progress=waiting_printer(),
                                        recalibrate=True)
    if "foreign_load" in measurement.env["unstable_reasons"]:
        typer.echo(f"error: other programs kept {measurement.env['foreign_cpu_cores']} cores busy during the "
                   f"calibration session, so its reference ({measurement.env['session_reference_ms']:.3f} ms) "
                   "did not replace the ruler (where there was none it is kept as provisional, until a quiet "
                   "session); calibrate again when the host is quiet", err=True)
        raise typer.Exit(1)
    report = ruler_report(loaded, plain_runs=20)
    if as_json:
        typer.echo(json.dumps(report | {"session": measurement.to_dict()}, indent=2))
        return
    _print_ruler(report)


@devices_app.command("reset")
def reset(profile: ProfileArg, store: StoreOption = None, data_dir: DataDirOption = None) -> None:
    """Forget the device's ruler on this host; the next session on a quiet host sets a new one."""
    from devices.calibration import reset_calibration

    loaded = _local(profile, store, data_dir)
    existed = reset_calibration(loaded.hash(), _hosts(loaded)[1])
    typer.echo(f"{loaded.name}: ruler {'forgotten' if existed else 'was not set'} on this host")


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")
