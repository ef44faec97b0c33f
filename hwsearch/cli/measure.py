"""``hwsearch measure --device P.yaml MODEL.onnx...``: profile ONNX files on one device."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def measure(
    models: Annotated[list[Path], typer.Argument(help="ONNX files, measured together in one session.",
                                                 exists=True, dir_okay=False)],
    device: Annotated[Path, typer.Option(help="Device profile (YAML or JSON).", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the Measurements as JSON.")] = False,
) -> None:
    """Measure MODELS interleaved with the device's reference model.

    All files share one session, so their latencies share one reference scale;
    a row marked unstable says why: its CI missed the profile's target (ci),
    other programs loaded the host (foreign_load), the reference ran slower
    than the host's fastest recent sessions (reference_slowdown), or the host
    lock was lost (lock_lost).
    A wait for the host (another session measuring) is said on stderr.  For a local device, loading the
    models to check them waits for another process's session too.
    """
    from devices import open_profiler
    from devices.hostlock import compute_unit
    from devices.plain import dumps
    from hwsearch.cli._errors import exit_on_sigterm
    from hwsearch.cli._inputs import check_onnx_files, load_profile
    from hwsearch.cli._waiting import waiting_printer

    exit_on_sigterm()  # the default action ended it at -15 with no word, its temp files left behind
    profile = load_profile(device)
    # Checking builds each model in onnxruntime (9.9 s of CPU for a large graph): beside a local session, it
    # waits for the host (Y18).  For an agent's device this host's lock is left alone: a host whose lock folder
    # belongs to another user refused a measurement that never touches this host's cores (Y19).
    with compute_unit(on_wait=waiting_printer()) if profile.where.kind == "local" else contextlib.nullcontext():
        check_onnx_files(models)
    measurements = open_profiler(profile).measure_many(models, progress=waiting_printer())
    if as_json:  # standard JSON: a latency or ratio that is null has none, a ratio_ci that is null no CI
        typer.echo(dumps([m.to_dict() for m in measurements], indent=2))
        return
    typer.echo(f"device {profile.name} ({measurements[0].device_hash})")
    typer.echo(f"{'model':40s} {'latency_ms':>10s} {'ratio':>7s} {'±ci':>6s} {'median_ms':>9s} {'p90_ms':>8s}  stable")
    for path, m in zip(models, measurements):
        typer.echo(
            f"{path.name[:40]:40s} {m.latency_ms:10.3f} {m.ratio:7.3f} {m.ratio_ci:6.1%} "
            f"{m.median_ms:9.3f} {m.p90_ms:8.3f}  {_stability(m)}"
        )


def _stability(measurement: Any) -> str:
    """``yes``, or ``NO`` and why (``env.unstable_reasons``; an agent's, made printable): a bare ``NO`` left the
    reason to ``--json``."""
    from devices.plain import printable

    if measurement.stable:
        return "yes"
    reasons = measurement.env.get("unstable_reasons") or []
    return "NO" + (f" ({', '.join(printable(str(reason)) for reason in reasons)})" if reasons else "")


def register(app: typer.Typer) -> None:
    app.command("measure")(measure)
