"""Export benchmark: extract, export and verify sampled subnets of an OFA supernet.

For each of ``--n`` subnets sampled with ``--seed`` (at ``--resolution``, batch 1)
it reports extraction time, ONNX export time (trace + metadata + serialise),
check time (onnx.checker + onnxruntime vs torch), ONNX size, MACs and params,
then the min / median / max of each.  Random weights: timings and sizes do not
depend on the values.

Usage::

    OMP_NUM_THREADS=1 python bench/export.py --n 20 --resolution 224
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SUPERNET = "ofa_mbv3_d234_e346_k357_w1.0"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default=SUPERNET)
    parser.add_argument("--n", type=int, default=20, help="number of sampled subnets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=224)
    return parser.parse_args()


def _summary(label: str, values: list[float], unit: str, scale: float = 1.0) -> str:
    low, mid, high = (v / scale for v in (min(values), statistics.median(values), max(values)))
    return f"{label:<12} min {low:9.2f}  median {mid:9.2f}  max {high:9.2f}  {unit}"


def main() -> None:
    import dataclasses

    import torch

    from hwsearch.export import export_subnet
    from hwsearch.supernets import create_supernet

    args = _parse()
    net = create_supernet(args.supernet)
    archs = [dataclasses.replace(a, resolution=args.resolution)
             for a in net.space.sample(args.seed, args.n)]
    print(f"{args.supernet}: {args.n} subnets at {args.resolution} px, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'#':>3} {'MMACs':>8} {'Mparams':>8} {'extract s':>9} {'export s':>9} "
          f"{'check s':>8} {'MiB':>6} {'max|diff|':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwsearch-bench-export-") as tmp:
        for i, arch in enumerate(archs):
            start = time.perf_counter()
            net.extract(arch)
            extract_seconds = time.perf_counter() - start
            report = export_subnet(net, arch, Path(tmp) / f"{i}.onnx")
            rows.append((report, extract_seconds))
            print(f"{i:>3} {report.macs / 1e6:8.1f} {report.params / 1e6:8.2f} "
                  f"{extract_seconds:9.3f} {report.seconds:9.2f} {report.check_seconds:8.2f} "
                  f"{report.bytes / 2**20:6.1f} "
                  f"{report.max_abs_diff:10.2e}", flush=True)
    reports = [r for r, _ in rows]
    print()
    print(_summary("MACs", [r.macs for r in reports], "M (OFA 'FLOPs')", 1e6))
    print(_summary("params", [r.params for r in reports], "M", 1e6))
    print(_summary("extract", [s for _, s in rows], "s"))
    print(_summary("export", [r.seconds for r in reports], "s"))
    print(_summary("check", [r.check_seconds for r in reports], "s"))
    print(_summary("ONNX size", [r.bytes for r in reports], "MiB", 2**20))


if __name__ == "__main__":
    main()
