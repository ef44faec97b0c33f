"""Precision benchmark: what INT8 buys and costs, per subnet, and what it adds to a front.

Four parts (``--parts``, all by default), each printed and written to ``--out`` (JSON):

1. **Latency** on OFA-MobileNetV3 w1.0 (random weights: latency does not
   depend on them) at ``--resolution`` px: ``--n`` subnets spread over MACs
   are exported, quantized (onnxruntime static QDQ, per-channel weights) and
   measured, FP32 and INT8 files together in one interleaved session on the
   1-thread local device (thread CPU clock).  Reports the INT8/FP32 latency
   ratio (min / median / max), the file-size ratio, the quantization time and
   Kendall's tau between the FP32 and INT8 latencies (1 = same ranking).
2. **Accuracy** on the demo supernet (trained, real MNIST digits): ``--n``
   subnets, FP32 accuracy in torch and INT8 accuracy of the quantized ONNX
   model in onnxruntime, both after the same BN recalibration; the drop per subnet.
3. **Fronts** on the demo supernet: its ``--n`` subnets' latencies at both
   precisions on the demo's two devices (1 thread, 2 threads) and on a
   batch-8 one (where INT8's arithmetic weighs more against its per-op
   overhead), joined with part 2's accuracies.  At the same number of measurements ``--budget``, the
   FP32-only front is that many random subnets measured at FP32, the
   mixed-precision front half as many subnets measured at both precisions;
   hypervolumes (common reference point) are averaged over ``--draws`` random
   draws, beside the hypervolume of all ``--n`` subnets at one and at both precisions.
4. **Sessions** on the demo supernet and the demo's 2-thread device (wall
   clock, ``hwsearch/demo/devices/cpu-2threads.yaml``): the INT8/FP32
   ratio of ``--n`` subnets as the product stores it (a job's profiling,
   :func:`hwsearch.pipeline.profile_precisions`: a subnet's precisions in
   one session, 16 subnets a session), beside part 3's way (every file in
   one session) and the way jobs measured before (each precision in
   sessions of its own).

Usage::

    OMP_NUM_THREADS=1 python bench/precision.py --n 30 --out bench-precision.json
    python bench/precision.py --n 30 --parts sessions --out bench-sessions.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/predictors.py would shadow predictors

OFA = "ofa_mbv3_d234_e346_k357_w1.0"
PARTS = ("latency", "accuracy", "fronts", "sessions")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="subnets per part")
    parser.add_argument("--resolution", type=int, default=160, help="OFA input size (part 1)")
    parser.add_argument("--budget", type=int, default=20, help="measurements per front (part 3)")
    parser.add_argument("--draws", type=int, default=200, help="random draws per front (part 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to run")
    parser.add_argument("--out", type=Path, default=Path("bench-precision.json"))
    return parser.parse_args()


def _device(name: str, batch: int = 1, threads: int = 1) -> Any:
    """The demo's devices: 1 thread on the thread CPU clock, or 2 threads (wall clock, no spinning)."""
    from devices.profile import DeviceProfile

    clock = {"clock": "thread_cpu"} if threads == 1 else {"allow_spinning": False}
    return DeviceProfile.from_dict({
        "name": name, "intra_op_threads": threads, "inter_op_threads": 1, **clock,
        "batch": batch, "precisions": ["fp32", "int8"], "warmup": {"runs": 10, "seconds": 0.3},
        "protocol": {"min_rounds": 15, "max_rounds": 150, "max_seconds": 300, "ci_target": 0.02}})


# Part 3's devices: (label, batch, intra-op threads), the demo's two and a batch-8 one.
FRONT_DEVICES = (("1 thread, batch 1", 1, 1), ("1 thread, batch 8", 8, 1),
                 ("2 threads, batch 1", 1, 2))


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _line(label: str, values: list[float], fmt: str = ".3f") -> str:
    s = _spread(values)
    return (f"{label:<34} min {s['min']:{fmt}}  median {s['median']:{fmt}}  "
            f"max {s['max']:{fmt}}")


def _measure_pairs(net: Any, archs: list[Any], profile: Any, calibration: Any,
                   folder: Path) -> dict[str, list[float]]:
    """Export and quantize every subnet; measure all FP32 and INT8 files in one session."""
    from devices import open_profiler
    from hwsearch.export import export_subnet
    from hwsearch.quantize import QuantizeSettings, images_at, quantize_onnx

    fp32_paths, int8_paths, sizes, seconds = [], [], [], []
    for i, arch in enumerate(archs):
        fp32 = export_subnet(net, arch, folder / f"{i}.onnx", batch=profile.batch, check=False)
        images = images_at(calibration, arch.resolution, max(32, profile.batch))
        q = quantize_onnx(fp32.path, folder / f"{i}.int8.onnx", images,
                          QuantizeSettings(n_images=len(images)))
        fp32_paths.append(fp32.path)
        int8_paths.append(q.path)
        sizes.append(q.bytes / q.fp32_bytes)
        seconds.append(q.seconds)
    results = open_profiler(profile).measure_many(fp32_paths + int8_paths)
    latencies = [float(r.latency_ms if np.isfinite(r.latency_ms) else r.median_ms)
                 for r in results]
    n = len(archs)
    return {"fp32_ms": latencies[:n], "int8_ms": latencies[n:], "size_ratio": sizes,
            "quantize_s": seconds, "stable": [bool(r.stable) for r in results]}


def _kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def part_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: INT8/FP32 latency ratios and ranking change on OFA-MobileNetV3 w1.0."""
    import torch

    from hwsearch.data import LabelledImages
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    net = create_supernet(OFA)
    archs = select_subnets(net.space, args.n, seed=args.seed, resolution=args.resolution)
    # Random weights: the calibration images only set quantization ranges, not the graph.
    noise = torch.from_numpy(np.random.default_rng(args.seed).standard_normal(
        (32, 3, args.resolution, args.resolution)).astype(np.float32))
    calibration = LabelledImages(noise, torch.zeros(32, dtype=torch.int64), ("0",), "noise")
    with tempfile.TemporaryDirectory(prefix="hwsearch-bench-precision-") as tmp:
        m = _measure_pairs(net, archs, _device("ofa-1t"), calibration, Path(tmp))
    ratios = [q / f for q, f in zip(m["int8_ms"], m["fp32_ms"])]
    out = {"supernet": OFA, "resolution": args.resolution, "n": len(archs),
           "latency_ratio": _spread(ratios), "size_ratio": _spread(m["size_ratio"]),
           "quantize_s": _spread(m["quantize_s"]), "fp32_ms": _spread(m["fp32_ms"]),
           "int8_ms": _spread(m["int8_ms"]), "kendall_tau": _kendall(m["fp32_ms"], m["int8_ms"]),
           "int8_faster": sum(r < 1 for r in ratios), "unstable": m["stable"].count(False)}
    print(f"\n[1] {OFA} at {args.resolution} px, {len(archs)} subnets, 1 thread (thread CPU clock)")
    print(_line("INT8/FP32 latency", ratios))
    print(_line("INT8/FP32 file size", m["size_ratio"]))
    print(_line("quantization seconds", m["quantize_s"], ".2f"))
    print(f"{'Kendall tau FP32 vs INT8 latency':<34} {out['kendall_tau']:.3f}; INT8 faster on "
          f"{out['int8_faster']} of {len(archs)}; unstable rows {out['unstable']}")
    return out


def _demo(args: argparse.Namespace, folder: Path) -> tuple[Any, Any, list[Any]]:
    from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
    from hwsearch.demo.data import write_digits
    from hwsearch.evaldata import DataPlan
    from hwsearch.pipeline import select_subnets
    from hwsearch.supernets import create_supernet

    net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
    _, heldout = write_digits(folder)
    split = DataPlan(str(heldout)).open(size=max(net.space.resolutions))
    return net, split, select_subnets(net.space, args.n, seed=args.seed)


def part_accuracy(net: Any, split: Any, archs: list[Any]) -> dict[str, Any]:
    """Part 2: FP32 (torch) and INT8 (onnxruntime) accuracy of the same subnets."""
    import torch

    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.onnx_accuracy import quantized_accuracy

    torch.set_num_threads(1)
    fp32, int8 = [], []
    for arch in archs:
        fp32.append(subnet_accuracy(net, arch, split.calibration, split.validation, EvalSettings()))
        int8.append(quantized_accuracy(net, arch, split.calibration, split.validation))
    drops = [100 * (f - q) for f, q in zip(fp32, int8)]
    print(f"\n[2] demo supernet, {len(archs)} subnets, {len(split.validation)} validation digits")
    print(_line("FP32 accuracy", fp32, ".4f"))
    print(_line("INT8 accuracy (onnxruntime)", int8, ".4f"))
    print(_line("drop FP32 - INT8, points", drops, "+.2f"))
    print(f"{'Kendall tau FP32 vs INT8 accuracy':<34} {_kendall(fp32, int8):.3f}")
    return {"n": len(archs), "fp32": fp32, "int8": int8, "drop_points": _spread(drops),
            "kendall_tau": _kendall(fp32, int8)}


def _hypervolume(acc: np.ndarray, lat: np.ndarray, reference: np.ndarray) -> float:
    from hwsearch.results import hypervolume

    return hypervolume(np.column_stack([-acc, lat]), reference)


def _front_counts(acc: dict[str, np.ndarray], lat: dict[str, np.ndarray]) -> dict[str, int]:
    from hwsearch.results import non_dominated

    points = [(p, i) for p in ("fp32", "int8") for i in range(len(acc[p]))]
    F = np.array([[-acc[p][i], lat[p][i]] for p, i in points])
    keep = non_dominated(F)
    return {p: sum(points[k][0] == p for k in keep) for p in ("fp32", "int8")}


def part_fronts(args: argparse.Namespace, net: Any, split: Any, archs: list[Any],
                accuracy: dict[str, Any]) -> dict[str, Any]:
    """Part 3: hypervolume of mixed-precision against FP32-only fronts at the same budget."""
    rng = np.random.default_rng(args.seed)
    acc = {p: np.array(accuracy[p]) for p in ("fp32", "int8")}
    out = {}
    for label, batch, threads in FRONT_DEVICES:
        profile = _device(f"demo-{threads}t-b{batch}", batch, threads)
        with tempfile.TemporaryDirectory(prefix="hwsearch-bench-precision-") as tmp:
            m = _measure_pairs(net, archs, profile, split.calibration, Path(tmp))
        lat = {"fp32": np.array(m["fp32_ms"]), "int8": np.array(m["int8_ms"])}
        every = np.concatenate([np.column_stack([-acc[p], lat[p]]) for p in acc])
        reference = every.max(axis=0) + 0.1 * np.ptp(every, axis=0)
        n, half = len(archs), args.budget // 2
        fp32_only, mixed = [], []
        for _ in range(args.draws):
            pick = rng.choice(n, size=min(args.budget, n), replace=False)
            fp32_only.append(_hypervolume(acc["fp32"][pick], lat["fp32"][pick], reference))
            pick = rng.choice(n, size=min(half, n), replace=False)
            mixed.append(_hypervolume(np.concatenate([acc["fp32"][pick], acc["int8"][pick]]),
                                      np.concatenate([lat["fp32"][pick], lat["int8"][pick]]),
                                      reference))
        ratios = (lat["int8"] / lat["fp32"]).tolist()
        full = {"fp32": _hypervolume(acc["fp32"], lat["fp32"], reference),
                "mixed": _hypervolume(np.concatenate([acc["fp32"], acc["int8"]]),
                                      np.concatenate([lat["fp32"], lat["int8"]]), reference)}
        counts = _front_counts(acc, lat)
        out[label] = {
            "latency_ratio": _spread(ratios), "kendall_tau": _kendall(m["fp32_ms"], m["int8_ms"]),
            "int8_faster": int(sum(r < 1 for r in ratios)), "reference_point": reference.tolist(),
            "budget": args.budget, "draws": args.draws,
            "hv_fp32_only": float(np.mean(fp32_only)), "hv_mixed": float(np.mean(mixed)),
            "hv_mixed_wins": float(np.mean(np.array(mixed) > np.array(fp32_only))),
            "hv_all_fp32": full["fp32"], "hv_all_mixed": full["mixed"], "front_points": counts}
        r = out[label]
        print(f"\n[3] demo supernet on the device with {label}, {n} subnets")
        print(_line("INT8/FP32 latency", ratios))
        print(f"{'Kendall tau FP32 vs INT8 latency':<34} {r['kendall_tau']:.3f}; INT8 faster on "
              f"{r['int8_faster']} of {n}")
        print(f"{'budget ' + str(args.budget) + ' measurements, HV':<34} FP32-only "
              f"{r['hv_fp32_only']:.4f}  mixed {r['hv_mixed']:.4f}  (mixed higher in "
              f"{100 * r['hv_mixed_wins']:.0f}% of {args.draws} draws)")
        print(f"{'all ' + str(n) + ' subnets, HV':<34} FP32 {full['fp32']:.4f}  FP32+INT8 "
              f"{full['mixed']:.4f}; front points fp32 {counts['fp32']}, int8 {counts['int8']}")
    return out


def _stored_ratios(net: Any, archs: list[Any], profile: Any, calibration: Any,
                   together: bool) -> tuple[list[float], int]:
    """INT8/FP32 ratios as a job stores them, and how many sessions measured them.

    ``together``: the product's way, a subnet's precisions in one session;
    otherwise each precision in sessions of its own (how jobs measured before).
    """
    from devices import open_profiler
    from hwsearch.pipeline import finite_latencies, profile_precisions
    from hwsearch.store import MemoryStore

    store, key = MemoryStore(), open_profiler(profile).device_key()
    keys = {"fp32": key, "int8": f"{key}@int8"}
    runs = [keys] if together else [{p: k} for p, k in keys.items()]
    for run in runs:
        profile_precisions(net, archs, open_profiler(profile), run, store, calibration=calibration)
    rows = {p: finite_latencies(store, k, net.space.network_id) for p, k in keys.items()}
    sessions = {r["session_id"] for by_key in rows.values() for r in by_key.values()}
    return ([rows["int8"][a.key()]["latency_ms"] / rows["fp32"][a.key()]["latency_ms"]
             for a in archs], len(sessions))


def part_sessions(net: Any, split: Any, archs: list[Any]) -> dict[str, Any]:
    """Part 4: the product's stored INT8/FP32 ratio against one session's, on the 2-thread device."""
    from devices.profile import DeviceProfile
    from hwsearch.demo import DEMO_DEVICES_DIR

    profile = DeviceProfile.load(DEMO_DEVICES_DIR / "cpu-2threads.yaml")
    with tempfile.TemporaryDirectory(prefix="hwsearch-bench-precision-") as tmp:
        m = _measure_pairs(net, archs, profile, split.calibration, Path(tmp))
    one = [q / f for q, f in zip(m["int8_ms"], m["fp32_ms"])]
    ways = {"bench, one session": (one, 1)}
    ways["product, pairs together"] = _stored_ratios(
        net, archs, profile, split.calibration, together=True)
    ways["before, precisions apart"] = _stored_ratios(
        net, archs, profile, split.calibration, together=False)
    print(f"\n[4] demo supernet on {profile.name} (2 threads, wall clock), {len(archs)} subnets")
    out = {"device": profile.name, "n": len(archs), "ways": {}}
    for label, (ratios, sessions) in ways.items():
        gaps = [abs(r / b - 1) for r, b in zip(ratios, one)]
        out["ways"][label] = {"latency_ratio": _spread(ratios), "sessions": sessions,
                              "int8_faster": int(sum(r < 1 for r in ratios)),
                              "gap_to_bench": _spread(gaps), "ratios": ratios}
        print(_line(f"INT8/FP32, {label}", ratios)
              + f"  INT8 faster {out['ways'][label]['int8_faster']}, {sessions} session(s), "
              f"per-subnet gap to bench median {statistics.median(gaps):.3f}")
    return out


def main() -> None:
    args = _parse()
    started = time.perf_counter()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if "latency" in args.parts:
        results["latency"] = part_latency(args)
    with tempfile.TemporaryDirectory(prefix="hwsearch-bench-digits-") as tmp:
        net, split, archs = _demo(args, Path(tmp))
        if {"accuracy", "fronts"} & set(args.parts):
            results["accuracy"] = part_accuracy(net, split, archs)
        if "fronts" in args.parts:
            results["fronts"] = part_fronts(args, net, split, archs, results["accuracy"])
        if "sessions" in args.parts:
            results["sessions"] = part_sessions(net, split, archs)
    results["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\n{time.perf_counter() - started:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
