"""``hwsearch export``: extract one subnet of a supernet and write it as a verified ONNX file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["register"]


def export(
    supernet: Annotated[str, typer.Option(
        help="Registered supernet name (see `hwsearch supernets list`).")],
    out: Annotated[Path, typer.Option(help="Where to write the ONNX file.", dir_okay=False)],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Local weights: a bare state_dict or OFA's {'state_dict': ...} file.",
        exists=True, dir_okay=False)] = None,
    arch: Annotated[Optional[Path], typer.Option(
        help="Subnet as JSON: hwsearch's form or OFA's native {ks, e, d, r} / {d, e, w, r}.",
        exists=True, dir_okay=False)] = None,
    seed: Annotated[int, typer.Option(
        help="Without --arch: sample the subnet with this seed.")] = 0,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the static input shape.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Extract a subnet, export it to ONNX (opset 17) and check it against torch with onnxruntime.

    Prints the subnet's MACs (what OFA calls FLOPs), parameters, export time
    and the check result.  The file is written only if the check passes.
    """
    from hwsearch.cli._errors import reading
    from hwsearch.cli._inputs import load_supernet, prepare_folder
    from hwsearch.export import export_subnet

    net = load_supernet(supernet, checkpoint)
    if arch is None:
        chosen = net.space.sample(seed, 1)[0]
    else:
        with reading("--arch"):
            chosen = net.space.from_json(arch.read_text())
    prepare_folder(out.parent, "--out")
    report = export_subnet(net, chosen, out, batch=batch)
    result = {"supernet": net.name, "arch": chosen.to_dict(), "arch_key": chosen.key(),
              **report.to_dict(), "check": "passed"}
    typer.echo(json.dumps(result, indent=2) if as_json else _summary(result))


def _summary(result: dict[str, Any]) -> str:
    return "\n".join([
        f"subnet   {result['arch_key']}",
        f"MACs     {result['macs'] / 1e6:.1f} M (OFA's 'FLOPs')",
        f"params   {result['params'] / 1e6:.2f} M",
        f"export   {result['seconds']:.2f} s -> {result['path']} "
        f"({result['bytes'] / 2**20:.1f} MiB)",
        f"check    passed: onnx.checker ok, onnxruntime vs torch max abs diff "
        f"{result['max_abs_diff']:.2g} ({result['check_seconds']:.2f} s)",
    ])


def register(app: typer.Typer) -> None:
    app.command("export")(export)
