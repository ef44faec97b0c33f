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
(d) The search on the ViT family: the demo ViT space (2,688 subnets) is small
    enough to enumerate, so hwsearch's NSGA-II front is compared with the
    exhaustive front under the same predictors (hypervolume ratio), and with
    random sampling at the same number of evaluations.  The latency predictor
    is fitted on (a)'s measured pool, the accuracy predictor on subnets
    evaluated on the held-out digits (stored, so a second run reuses them).

Run the parts one after the other, on a quiet machine (two cores: no training
beside it)::

    python bench/vit.py measure --n-train 300 --n-test 60
    python bench/vit.py report
    python bench/vit.py demo --out runs/bench_vit_demo
    python bench/vit.py int8 --out runs/bench_vit_int8
    python bench/vit.py search
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


def _vit_predictors(args: argparse.Namespace, bench: ModuleType) -> tuple[Any, Any]:
    """Latency predictor on (a)'s measured pool; accuracy predictor on evaluated subnets."""
    from hwsearch.accuracy_eval import evaluate_subnets
    from hwsearch.demo import DEMO_VIT_CHECKPOINT
    from hwsearch.demo.data import load_digits
    from hwsearch.store import SQLiteStore
    from hwsearch.supernets import create_supernet
    from predictors.accuracy import AccuracyPredictor
    from predictors.latency import LatencyPredictor

    store = SQLiteStore(args.store)
    data = bench._load(store, VIT_DEVICE, args.pool, 20)
    if data is None:
        raise SystemExit(f"no ViT latencies in {args.store}: run `measure` first")
    latency = LatencyPredictor(data.space, seed=0).fit(data.X_pool, data.y_pool)
    net = create_supernet("demo_vit_mnist", checkpoint=DEMO_VIT_CHECKPOINT)
    _, heldout = load_digits(args.data)
    archs = net.space.sample(1, args.n_accuracy)
    found = evaluate_subnets(net, archs, heldout, store=store, dataset_id="digits-heldout")
    X = net.space.encode_many(archs)
    accuracy = AccuracyPredictor(net.space, seed=0).fit(X, np.array([found[a.key()]
                                                                      for a in archs]))
    print(f"(d) predictors: latency on {len(data.y_pool)} measured subnets, accuracy on "
          f"{len(archs)} subnets evaluated on {len(heldout)} held-out digits "
          f"({min(found.values()):.3f}-{max(found.values()):.3f})")
    return accuracy, latency


def search_bench(args: argparse.Namespace, bench: ModuleType) -> None:
    """NSGA-II vs the exhaustive front and vs random sampling on the demo ViT space."""
    from hwsearch.problem import SubnetProblem
    from hwsearch.results import hypervolume, non_dominated
    from hwsearch.search import SearchSettings, search

    accuracy, latency = _vit_predictors(args, bench)
    space = accuracy.space
    problem = SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency})
    every = space.encode_many(list(space.enumerate()))
    values = problem.predict(every)
    F_all = np.column_stack([-values["accuracy"], values["latency_ms"]])
    ref = F_all.max(axis=0) + 0.01 * np.ptp(F_all, axis=0)
    hv_all = hypervolume(F_all[non_dominated(F_all)], ref)
    print(f"    {space.name}: {len(every):,} subnets, exhaustive front "
          f"{len(non_dominated(F_all))} points")
    print("    | evaluations | NSGA-II HV / exhaustive (mean, min) | random sampling (mean) |")
    print("    |---:|---|---:|")
    rng = np.random.default_rng(0)
    for pop, n_gen in ((20, 10), (40, 10), (40, 25)):
        nsga, rand, evals = [], [], []
        for seed in range(args.seeds):
            result = search(problem, SearchSettings(pop_size=pop, n_gen=n_gen, seed=seed))
            F = np.column_stack([-result.values["accuracy"], result.values["latency_ms"]])
            nsga.append(hypervolume(F, ref) / hv_all)
            evals.append(result.n_evals)
            picked = F_all[rng.choice(len(F_all), size=min(result.n_evals, len(F_all)),
                                      replace=False)]
            rand.append(hypervolume(picked, ref) / hv_all)
        print(f"    | {np.mean(evals):,.0f} ({100 * np.mean(evals) / len(every):.0f}% of the "
              f"space) | {np.mean(nsga):.4f}, {np.min(nsga):.4f} | {np.mean(rand):.4f} |")
    print(f"    ({args.seeds} seeds; HV reference: the worst predicted accuracy and latency + 1%)")


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
    f = sub.add_parser("search", help="NSGA-II vs exhaustive and random on the demo ViT space")
    f.add_argument("--pool", type=int, default=300)
    f.add_argument("--n-accuracy", type=int, default=150, help="subnets evaluated for accuracy")
    f.add_argument("--data", type=Path, default=Path("runs/digits"))
    f.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    args.store.parent.mkdir(parents=True, exist_ok=True)
    if args.command in ("demo", "int8"):
        {"demo": demo, "int8": int8}[args.command](args)
        return
    bench = _predictors_bench()
    {"measure": measure, "report": report, "search": search_bench}[args.command](args, bench)


if __name__ == "__main__":
    main()
