"""``hwsearch export``: extract one subnet of a supernet and write it as a verified ONNX file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hwsearch.cli._inputs import seed_option

__all__ = ["MAX_ARCH_BYTES", "register"]

#: The largest ``--arch`` file read: an architecture is a few hundred bytes of JSON.
MAX_ARCH_BYTES = 2**20
#: Below this top-1 agreement with FP32 on held-out images, an INT8 export is warned about.
MIN_INT8_AGREEMENT = 0.9


def export(
    supernet: Annotated[str, typer.Option(
        help="Registered supernet name (see `hwsearch supernets list`).")],
    out: Annotated[Path, typer.Option(help="Where to write the ONNX file.", dir_okay=False)],
    checkpoint: Annotated[Path | None, typer.Option(
        help="Local weights: a bare state_dict, OFA's {'state_dict': ...} or AutoFormer's "
             "{'model': ...} file.",
        exists=True, dir_okay=False)] = None,
    arch: Annotated[Path | None, typer.Option(
        help="Subnet as JSON: hwsearch's form or the family's native form (OFA's {ks, e, d, r} "
             "/ {d, e, w, r}, AutoFormer's {layer_num, embed_dim, num_heads, mlp_ratio}).",
        exists=True, dir_okay=False)] = None,
    seed: Annotated[int, seed_option("Without --arch: sample the subnet with this seed.")] = 0,
    batch: Annotated[int, typer.Option(
        min=1, help="Batch size of the static input shape, at most a device profile's (1024).")] = 1,
    precision: Annotated[str, typer.Option(
        help="fp32, or int8: quantized statically by onnxruntime (QDQ, per-channel weights), "
             "calibrated on --data.")] = "fp32",
    data: Annotated[Path | None, typer.Option(
        help="Your labelled images (class folders or an x/y array file): their batch-norm "
             "calibration part re-estimates BN statistics (as search jobs do before measuring "
             "accuracy) and, for int8, calibrates the quantizer. Required for int8.",
        exists=True)] = None,
    calibration_method: Annotated[str, typer.Option(
        help="int8 calibration: minmax (observed ranges) or percentile (99.999th, clips "
             "outliers).")] = "minmax",
    calibration_images: Annotated[int, typer.Option(
        min=1, max=4096, help="int8: how many calibration images to use.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Extract a subnet, export it to ONNX (opset 17) and check it against torch with onnxruntime.

    Prints the subnet's MACs (what OFA calls FLOPs), parameters, export time
    and the check result.  The file is written only if the check passes.
    With ``--precision int8`` it also prints the quantized file's size and how
    often it agrees with the FP32 model on up to 256 images of ``--data``'s
    calibration part after the ones the quantizer calibrated on.
    """
    from hwsearch.cli._errors import OptionError, exit_on_sigterm, reading
    from hwsearch.cli._inputs import load_supernet, prepare_folder
    from hwsearch.export import CalibrationDataError, export_subnet
    from hwsearch.quantize import QuantizeSettings, check_precision

    exit_on_sigterm()  # the default action ended it at -15 with no word, its temp files left behind
    _check_batch(batch)
    with reading("--precision"):
        check_precision(precision)
    with reading("--calibration-method"):
        quantize = QuantizeSettings(method=calibration_method, n_images=calibration_images)
    if precision == "int8" and data is None:
        raise OptionError("--data", "an int8 export calibrates on your images: give --data")
    net = load_supernet(supernet, checkpoint)
    calibration = None if data is None else _calibration_part(data, max(net.space.resolutions))
    if arch is None:
        chosen = net.space.sample(seed, 1)[0]
    else:
        with reading("--arch"):
            chosen = net.space.from_json(_read_arch(arch))
    _check_input_size(batch, chosen.resolution)
    if precision == "int8":
        _check_calibration_batches(batch, min(calibration_images, len(calibration)))
    prepare_folder(out.parent, "--out")
    try:
        report = export_subnet(net, chosen, out, batch=batch, precision=precision,
                               calibration=calibration, bn_data=calibration, quantize=quantize)
    except CalibrationDataError as error:  # a folder's image, read only as the export streams it
        raise OptionError("--data", str(error)) from None
    result = {"supernet": net.name, "arch": chosen.to_dict(), "arch_key": chosen.key(),
              "weights": "random initialisation" if checkpoint is None else str(checkpoint),
              **report.to_dict(), "check": "passed"}
    for warning in _not_deployable(result):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(json.dumps(result, indent=2) if as_json else _summary(result))


def _check_input_size(batch: int, resolution: int) -> None:
    """Refuse an input past the service's default bound on batch x resolution^2, naming ``--batch``.

    An export holds its input and every activation at once: batch 1000 at
    224 px asked for 2.9 GB in one tensor and ended in an allocator traceback.
    """
    from hwsearch.cli._errors import OptionError
    from hwsearch.dispatch import Admission

    pixels, limit = batch * resolution**2, Admission.max_input_pixels
    if pixels > limit:
        raise OptionError("--batch", f"batch {batch} at {resolution} px is {pixels:,} input pixels, above the "
                                     f"limit of {limit:,} (batch {max(1, limit // resolution**2)} at this size)")


def _not_deployable(result: dict[str, Any]) -> list[str]:
    """Why the file, though it matches torch, does not predict as the subnet would: fine for latency only.

    The check compares onnxruntime with the same torch module, so it passes
    for random weights and for batch norm never re-estimated alike; five
    sampled demo subnets at 0.90-0.93 top-1 scored 0.31-0.79 exported without ``--data``.
    """
    reasons = []
    if result["weights"] == "random initialisation":
        reasons.append("no --checkpoint: the weights are a random initialisation")
    if result["bn_statistics"] == "inherited":
        reasons.append("no --data: batch norm keeps the supernet's running statistics, not this subnet's, "
                       "so its accuracy is far below what the subnet reaches (give --data, as search jobs do)")
    return reasons + _int8_doubts(result.get("quantization"))


def _int8_doubts(quantization: dict[str, Any] | None) -> list[str]:
    """Why the INT8 file may predict worse than its FP32 source, from its agreement check.

    Measured on the quantizer's own calibration images, agreement is
    optimistic: calibrated on one image, a demo subnet agreed on 100% of it
    and its file scored 0.170 top-1 against FP32's 0.687.
    """
    from hwsearch.quantize import IN_SAMPLE

    if not quantization:
        return []
    q = quantization
    if q["agreement_on"] == IN_SAMPLE:
        return [f"int8: the agreement with FP32 was measured on the {q['n_images']} images the quantizer "
                "calibrated on (--data's calibration part has not one batch of others), which says little of "
                "how the file predicts; give --data more images than --calibration-images"]
    if q["top1_agreement"] < MIN_INT8_AGREEMENT:
        return [f"int8: the file agrees with FP32 on only {100 * q['top1_agreement']:.1f}% of "
                f"{q['agreement_images']} images it was not calibrated on; calibrate on more images "
                "(--calibration-images) or try --calibration-method percentile"]
    return []


def _read_arch(path: Path) -> str:
    """The text of an ``--arch`` file, refused unread if it is not a regular file of at most MAX_ARCH_BYTES."""
    from devices.profile import RepeatedKey, unique_keys
    from hwsearch.cli._inputs import require_regular_file

    require_regular_file(path, "--arch")
    size = path.stat().st_size
    if size > MAX_ARCH_BYTES:
        raise ValueError(f"{path} is {size} bytes; an architecture file is at most {MAX_ARCH_BYTES}")
    text = path.read_text()
    try:  # json keeps the last of a repeated key silently: {"resolution": 16, "resolution": 32} exported 32
        json.loads(text, object_pairs_hook=unique_keys)
    except RepeatedKey as error:
        raise ValueError(f"{path}: {error}") from None
    except ValueError:
        pass  # not JSON: the space's reader says where
    return text


def _check_batch(batch: int) -> None:
    """Refuse a batch no device profile measures, before the export allocates its input.

    The bound is read here, not in the option, so ``hwsearch --help`` does
    not import the ``devices`` package.
    """
    from devices.profile import MAX_BATCH
    from hwsearch.cli._errors import OptionError

    if batch > MAX_BATCH:
        raise OptionError("--batch", f"{batch} is more than a device profile's largest batch, {MAX_BATCH}")


def _check_calibration_batches(batch: int, images: int) -> None:
    """Refuse, before the export, an int8 export whose calibration has not one whole batch of the file's input.

    The quantizer calibrates on whole batches of the static input shape; it
    said "calibration needs at least one batch of 300 images, got 256"
    after the export, naming no option.
    """
    from hwsearch.cli._errors import OptionError

    if images < batch:
        raise OptionError("--batch", f"an int8 export calibrates on whole batches of the input, and --batch {batch} "
                                     f"is more than the {images} calibration images it has (--calibration-images, "
                                     "and --data's calibration part): give a smaller --batch or more images")


def _calibration_part(data: Path, size: int) -> Any:  # -> hwsearch.data.Images
    """The images a search job with default data settings recalibrates BN on (and nothing else).

    Using the same part makes the exported file the network whose accuracy a
    job on this data measured, and keeps validation images out of calibration.
    """
    from hwsearch.cli._errors import reading
    from hwsearch.evaldata import DataPlan

    with reading("--data"):
        return DataPlan(str(data)).open(size=size).calibration


_BN_WORDS = {"recalibrated": "re-estimated on --data", "inherited": "the supernet's (not re-estimated)",
             "none": "none in this network"}


def _summary(result: dict[str, Any]) -> str:
    return "\n".join([
        f"subnet   {result['arch_key']}",
        f"MACs     {result['macs'] / 1e6:.1f} M (OFA's 'FLOPs')",
        f"params   {result['params'] / 1e6:.2f} M",
        f"export   {result['seconds']:.2f} s -> {result['path']} "
        f"({result['bytes'] / 2**20:.1f} MiB)",
        f"check    passed: onnx.checker ok, onnxruntime vs torch max abs diff "
        f"{result['max_abs_diff']:.2g} ({result['check_seconds']:.2f} s)",
        f"weights  {result['weights']}; batch norm {_BN_WORDS[result['bn_statistics']]}",
        *_quantization_lines(result.get("quantization")),
    ])


def _quantization_lines(quantization: dict[str, Any] | None) -> list[str]:
    if not quantization:
        return []
    q = quantization
    return [
        f"int8     QDQ, per-channel weights, {q['method']} calibration on {q['n_images']} "
        f"images: {q['bytes'] / 2**20:.2f} MiB ({q['bytes'] / q['fp32_bytes']:.2f}x FP32), "
        f"{q['seconds']:.2f} s",
        f"agrees   with FP32 on {100 * q['top1_agreement']:.1f}% of top-1 predictions; "
        f"max logit diff {q['max_logit_diff']:.3g} ({q['agreement_images']} {q['agreement_on']})",
    ]


def register(app: typer.Typer) -> None:
    app.command("export")(export)
