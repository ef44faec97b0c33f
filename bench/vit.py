"""ViT benchmark (issue 17): latency predictor quality on the ViT family, and the ViT demo's front.

(a) The demo ViT (``demo_vit_mnist``: 28 px, 3-5 layers, 2/4 heads, MLP 2/3,
    embedding 48/64) on the demo's one-thread local device (onnxruntime, one
    intra-op thread, thread CPU clock, batch 1): real ONNX exports profiled
    through :mod:`devices`, a train pool, a held-out test set and the test
    set's re-measurement in separate sessions, all kept in one SQLite store
    (a second run resumes).  The predictors are fitted on 50/100/300 train
    subnets spread over the MACs range and scored against the
    re-measurement; the first pass vs the re-measurement is the noise floor.
    The measuring and scoring code is ``bench/predictors.py``'s, imported.
(b) ``hwsearch demo --supernet demo_vit_mnist`` run in-process: its fronts
    (accuracy, latency, arch) and its wall time.
(c) Why the ViT demo searches FP32 only: a shortened demo job on the
    one-thread device with INT8 turned on, and the summary's INT8 vs FP32
    line (latency ratio and accuracy change over the subnets measured at both).

Run the parts one after the other, on a quiet machine (two cores: no training
beside it)::

    python bench/vit.py measure --n-train 300 --n-test 60
    python bench/vit.py report
    python bench/vit.py demo --out runs/bench_vit_demo
    python bench/vit.py int8 --out runs/bench_vit_int8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

# Run as a script, this file's folder comes first on sys.path and bench/predictors.py
# would shadow the ``predictors`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

VIT_DEVICE = "vit-1t"
REPO = Path(__file__).resolve().parents[1]


def _predictors_bench() -> ModuleType:
    """``bench/predictors.py`` as a module, with the ViT device added to its devices.

    It is loaded by path: ``bench`` is not a package, and the file's name
    would otherwise shadow the ``predictors`` package.
    """
    spec = importlib.util.spec_from_file_location("bench_predictors", REPO / "bench" / "predictors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    module.DEVICES[VIT_DEVICE] = module.BenchDevice(
        VIT_DEVICE, "demo_vit_mnist", {"intra_op_threads": 1, "clock": "thread_cpu"},
        note="demo ViT, ORT 1 thread, batch 1 (the demo's cpu-1thread device)")
    return module


def measure(args: argparse.Namespace, bench: ModuleType) -> None:
    """Test set, train pool and the test set's re-measurement on the ViT device."""
    bench.measure(argparse.Namespace(store=args.store, devices=[VIT_DEVICE], pool=args.pool,
                                     n_train=args.n_train, n_test=args.n_test, remeasure=True,
                                     chunk=args.chunk))


def _bootstrap_within_10(bench: ModuleType, data: Any, sizes: list[int],
                         draws: int) -> dict[int, list[float]]:
    """The hwsearch predictor's ±10% share over bootstrap resamples of the test set (its spread)."""
    from predictors.features import ArchFeaturizer
    from predictors.latency import LatencyPredictor

    truth = data.y_again if data.y_again is not None else data.y_test
    kept = np.isfinite(truth)
    macs = ArchFeaturizer(data.space).macs(data.X_pool)
    rng = np.random.default_rng(0)
    out: dict[int, list[float]] = {}
    for n in sorted({min(n, len(data.y_pool)) for n in sizes}):
        idx = bench._spread_subset(macs, n)
        model = LatencyPredictor(data.space, cv_folds=0, n_members=0).fit(data.X_pool[idx],
                                                                           data.y_pool[idx])
        hit = np.abs(model.predict(data.X_test[kept]) / truth[kept] - 1) <= 0.10
        shares = [float(hit[rng.integers(0, len(hit), len(hit))].mean()) for _ in range(draws)]
        out[n] = [float(np.percentile(shares, 5)), float(np.percentile(shares, 95))]
    return out


def report(args: argparse.Namespace, bench: ModuleType) -> None:
    """The latency table at each training size, with bootstrap 90% intervals of ±10% shares."""
    from hwsearch.store import SQLiteStore

    data = bench._load(SQLiteStore(args.store), VIT_DEVICE, args.pool, args.n_test)
    if data is None or len(data.y_test) < 20:
        raise SystemExit(f"too few ViT measurements in {args.store}: run `measure` first")
    table = bench.latency_table(data, args.n_train)
    table["within_10_bootstrap_90"] = _bootstrap_within_10(bench, data, args.n_train,
                                                             draws=1000)
    truth = data.y_again if data.y_again is not None else data.y_test
    kept = np.isfinite(truth)
    table["remeasure_ratio"] = _spread_of(truth[kept] / data.y_test[kept])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2))
    bench._print_latency(table)
    print("\nhwsearch predictor, ±10% share, bootstrap 90% interval over the test set: "
          + "; ".join(f"n={n}: {100 * lo:.0f}-{100 * hi:.0f}%"
                      for n, (lo, hi) in table["within_10_bootstrap_90"].items()))
    r = table["remeasure_ratio"]
    print(f"re-measurement / first pass per test subnet: median {r['median']:.3f}, "
          f"5-95% {r['p5']:.3f}-{r['p95']:.3f}")


def _spread_of(values: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(values)), "p5": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95))}


def demo(args: argparse.Namespace) -> None:
    """The ViT demo job in-process: fronts, knees and wall time."""
    from rich.console import Console

    from hwsearch.cli._fronts import front_table
    from hwsearch.demo.run import DemoSettings, run_demo, summarise

    started = time.perf_counter()
    result = run_demo(DemoSettings(out=args.out, supernet="demo_vit_mnist",
                                   n_profile=args.n_profile, budget=args.budget, seed=args.seed))
    wall = time.perf_counter() - started
    console = Console(width=160)
    for device, front in result.fronts.items():
        console.print(front_table(device, front))
        print(f"\n{device} front (markdown):\n")
        print("| latency ms | accuracy | precision | MMACs | arch |")
        print("|---:|---:|---|---:|---|")
        for point in sorted(front.points, key=lambda p: p.measured["latency_ms"]):
            macs = "" if point.macs is None else f"{point.macs / 1e6:.2f}"
            print(f"| {point.measured['latency_ms']:.3f} | {point.measured['accuracy']:.3f} | "
                  f"{point.precision} | {macs} | {point.arch.key()} |")
    for line in summarise(result):
        print(line)
    print(f"\ndemo job wall time: {wall:.0f} s (n_profile={args.n_profile}, budget={args.budget})")


def int8(args: argparse.Namespace) -> None:
    """A shortened ViT demo job at FP32 and INT8 on the one-thread device; the INT8 comparison."""
    from hwsearch.demo.run import DemoSettings, default_devices, run_demo, summarise

    [one_thread] = [p for p in default_devices() if p.name == "cpu-1thread.yaml"]
    result = run_demo(DemoSettings(out=args.out, supernet="demo_vit_mnist", devices=(one_thread,),
                                   n_profile=args.n_profile, budget=args.budget, seed=args.seed,
                                   precisions=("fp32", "int8")))
    for line in summarise(result):
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("runs/bench_vit.db"))
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure the train pool, test set and re-measurement")
    m.add_argument("--pool", type=int, default=300)
    m.add_argument("--n-train", type=int, default=300)
    m.add_argument("--n-test", type=int, default=60)
    m.add_argument("--chunk", type=int, default=16, help="subnets per measurement session")
    r = sub.add_parser("report", help="score the latency predictors; print the table")
    r.add_argument("--pool", type=int, default=300)
    r.add_argument("--n-test", type=int, default=60)
    r.add_argument("--n-train", type=int, nargs="+", default=[50, 100, 300])
    r.add_argument("--out", type=Path, default=Path("runs/bench_vit.json"))
    d = sub.add_parser("demo", help="run the ViT demo job; print its fronts and wall time")
    d.add_argument("--out", type=Path, default=Path("runs/bench_vit_demo"))
    d.add_argument("--n-profile", type=int, default=40)
    d.add_argument("--budget", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("int8", help="a shortened ViT demo job with INT8 on; the INT8 comparison")
    q.add_argument("--out", type=Path, default=Path("runs/bench_vit_int8"))
    q.add_argument("--n-profile", type=int, default=16)
    q.add_argument("--budget", type=int, default=4)
    q.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.store.parent.mkdir(parents=True, exist_ok=True)
    if args.command in ("demo", "int8"):
        {"demo": demo, "int8": int8}[args.command](args)
        return
    bench = _predictors_bench()
    {"measure": measure, "report": report}[args.command](args, bench)


if __name__ == "__main__":
    main()
