"""Latency-predictor benchmark on real onnxruntime measurements (issue 4).

OFA MobileNetV3 w1.0 subnets at one resolution are exported to ONNX and
measured with onnxruntime on the CPU, one thread, through the devices layer.
Three measurement passes, all kept in a SQLite store so the script resumes
where it stopped:

1. **train pool** - ``max(--n-train)`` subnets picked by :func:`select_subnets`;
2. **test** - ``--n-test`` *other* subnets, measured in their own sessions;
3. **few-shot** (``--fewshot``) - a second "device" (same CPU, onnxruntime
   with graph optimisations disabled: no conv/BN/activation fusion, so per-layer
   costs change shape) measured on 20 train-pool subnets and on the test subnets;
4. **re-measurement** (``--remeasure``) - the test subnets measured again,
   which bounds the best score any predictor can reach on this machine.

Each training size ``n`` takes ``n`` train-pool subnets evenly spread over
their MACs order, and every method is scored on the same test set:
the hwsearch predictor, its NNLS base alone, XGBoost on plain one-hot genes,
ridge on plain one-hot genes, and latency linear in MACs (FLOPs-only).

Usage::

    python bench/predictors.py --n-train 50 100 200 300 --n-test 200 --resolution 224 \
        --fewshot --remeasure --store runs/bench_predictors.db --out runs/bench_predictors.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its own name
# would shadow the ``predictors`` package it benchmarks.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SUPERNET = "ofa_mbv3_d234_e346_k357_w1.0"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _profiles(ci_target: float, max_rounds: int) -> tuple[Any, Any]:
    from devices.profile import DeviceProfile, Protocol

    # One onnxruntime thread runs on the timed thread, so its CPU clock is exact and does not
    # count time the scheduler gave to other work on this shared machine.
    protocol = Protocol(ci_target=ci_target, max_rounds=max_rounds, max_seconds=240.0)
    main = DeviceProfile(name="ort-cpu-1thread", intra_op_threads=1, clock="thread_cpu",
                         protocol=protocol)
    other = DeviceProfile(name="ort-cpu-1thread-noopt", intra_op_threads=1, clock="thread_cpu",
                          graph_optimization="disable", protocol=protocol)
    return main, other


def _measure(net: Any, archs: list, profile: Any, device_key: str, store: Any, what: str,
             chunk: int, stored_only: bool) -> dict[str, dict[str, Any]]:
    """Measure what is missing (or, with ``stored_only``, just read what is stored)."""
    from devices import open_profiler
    from hwsearch.pipeline import profile_subnets

    def progress(event: dict[str, Any]) -> None:
        _log(f"{what}: {event['done']}/{event['total']} measured")

    if stored_only:
        rows = store.get_latencies(device_key, net.space.network_id)
        _log(f"{what}: {sum(a.key() in rows for a in archs)}/{len(archs)} stored")
        return rows
    report = profile_subnets(net, archs, open_profiler(profile), device_key, store, chunk=chunk,
                             progress=progress)
    _log(f"{what}: {report.measured} new, {report.skipped} already stored, "
         f"{report.unstable} above the CI target, {report.seconds:.0f} s")
    return store.get_latencies(device_key, net.space.network_id)


def _labelled(rows: dict[str, dict[str, Any]], archs: list, scale: float
              ) -> tuple[list, np.ndarray]:
    """Stored archs with a finite reference ratio, and their ratios on one per-device ms scale."""
    kept = [a for a in archs if a.key() in rows and np.isfinite(float(rows[a.key()]["ratio"]))]
    if len(kept) < len(archs):
        _log(f"{len(archs) - len(kept)} subnets unmeasured or without a reference ratio left out")
    return kept, np.array([float(rows[a.key()]["ratio"]) * scale for a in kept])


def _scale(rows: dict[str, dict[str, Any]]) -> float:
    return float(np.median([r["env"]["reference_ms"] for r in rows.values()]))


def _available_sizes(requested: list[int], available: int) -> list[int]:
    return sorted({min(n, available) for n in requested})


def _spread_subset(X: np.ndarray, macs: np.ndarray, n: int) -> np.ndarray:
    """``n`` row indices evenly spaced along the MACs order (the pipeline's coverage idea)."""
    order = np.argsort(macs, kind="stable")
    return order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]


def _plain_onehot(space: Any, X: np.ndarray) -> np.ndarray:
    """Every gene one-hot, stale genes of switched-off blocks included (the naive encoding)."""
    _, xu = space.bounds()
    return np.hstack([np.eye(int(u) + 1)[X[:, i]] for i, u in enumerate(xu)])


def _methods(space: Any, device_hash: str) -> dict[str, Any]:
    """name -> fit(X, y) returning predict(X)."""
    import xgboost as xgb
    from sklearn.linear_model import RidgeCV

    from predictors.features import ArchFeaturizer
    from predictors.latency import LatencyPredictor

    featurizer = ArchFeaturizer(space)

    def hwsearch(X: np.ndarray, y: np.ndarray) -> Any:
        return LatencyPredictor(space, device_hash=device_hash, cv_folds=0).fit(X, y).predict

    def nnls_base(X: np.ndarray, y: np.ndarray) -> Any:
        model = LatencyPredictor(space, n_members=0, cv_folds=0).fit(X, y)
        return lambda Z: model._base.predict(model.featurizer.transform(Z)).astype(np.float64)

    def xgb_onehot(X: np.ndarray, y: np.ndarray) -> Any:
        model = xgb.XGBRegressor(n_estimators=500, max_depth=4, learning_rate=0.05,
                                 subsample=0.8, colsample_bytree=0.6, n_jobs=1)
        model.fit(_plain_onehot(space, X), y)
        return lambda Z: model.predict(_plain_onehot(space, Z)).astype(np.float64)

    def ridge_onehot(X: np.ndarray, y: np.ndarray) -> Any:
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(_plain_onehot(space, X), y)
        return lambda Z: model.predict(_plain_onehot(space, Z))

    def flops_only(X: np.ndarray, y: np.ndarray) -> Any:
        coef = np.polyfit(featurizer.macs(X), y, 1)
        return lambda Z: np.polyval(coef, featurizer.macs(Z))

    return {"hwsearch (NNLS base + XGB residual)": hwsearch, "hwsearch NNLS base only": nnls_base,
            "XGBoost plain one-hot": xgb_onehot, "ridge plain one-hot": ridge_onehot,
            "FLOPs-only (linear in MACs)": flops_only}


def _row(method: str, n: int, report: dict[str, float], seconds: float) -> dict[str, Any]:
    return {"method": method, "n_train": n, "within_10": report["within_10"],
            "within_5": report["within_5"], "tau": report["tau"], "mape": report["mape"],
            "fit_s": seconds}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| n_train | method | within ±10% | within ±5% | Kendall τ | MAPE % | fit s |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n_train']} | {r['method']} | {100 * r['within_10']:.1f} | "
                     f"{100 * r['within_5']:.1f} | {r['tau']:.3f} | {r['mape']:.2f} | "
                     f"{r['fit_s']:.1f} |")
    return "\n".join(lines)


def _throughput(space: Any, X: np.ndarray, y: np.ndarray, device_hash: str) -> float:
    """Archs/s of ``LatencyPredictor.predict`` on 100k random encoded subnets (one thread)."""
    from predictors.latency import LatencyPredictor

    model = LatencyPredictor(space, device_hash=device_hash, cv_folds=0, n_members=0).fit(X, y)
    xl, xu = space.bounds()
    Z = np.random.default_rng(0).integers(xl, xu + 1, size=(100_000, space.n_var))
    model.predict(Z[:1000])
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        model.predict(Z)
        best = min(best, time.perf_counter() - start)
    return len(Z) / best


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hwsearch.pipeline import select_subnets
    from hwsearch.store import SQLiteStore
    from hwsearch.supernets import create_supernet
    from predictors.features import ArchFeaturizer
    from predictors.fewshot import FewShotLatencyPredictor
    from predictors.latency import LatencyPredictor
    from predictors.metrics import regression_report

    torch.set_num_threads(1)
    store = SQLiteStore(args.store)
    net = create_supernet(SUPERNET)
    space = net.space
    main_profile, other_profile = _profiles(args.ci_target, args.max_rounds)
    device = args.device_key or main_profile.hash()
    n_pool = max(args.n_train)
    train_archs = select_subnets(space, n_pool, seed=1, resolution=args.resolution)
    test_archs = select_subnets(space, args.n_test, seed=2, resolution=args.resolution,
                                exclude=[a.key() for a in train_archs])
    _log(f"device {main_profile.name} {device}: {len(train_archs)} train, {len(test_archs)} test")
    train_lat = _measure(net, train_archs, main_profile, device, store, "train pool", args.chunk,
                         args.evaluate_only)
    test_lat = _measure(net, test_archs, main_profile, device, store, "test", args.chunk,
                        args.evaluate_only)

    scale = _scale(train_lat)
    selected_train, selected_test = train_archs, test_archs
    train_archs, y_pool = _labelled(train_lat, selected_train, scale)
    test_archs, y_test = _labelled(test_lat, selected_test, scale)
    X_pool = space.encode_many(train_archs)
    X_test = space.encode_many(test_archs)
    macs_pool = ArchFeaturizer(space).macs(X_pool)
    results: dict[str, Any] = {
        "supernet": SUPERNET, "resolution": args.resolution, "device": main_profile.name,
        "device_hash": device, "n_test": len(test_archs), "rows": [], "scale_ms": scale,
        "latency_range_ms": [float(y_test.min()), float(y_test.max())],
    }
    for n in _available_sizes(args.n_train, len(train_archs)):
        idx = _spread_subset(X_pool, macs_pool, n)
        for name, fit in _methods(space, device).items():
            start = time.perf_counter()
            predict = fit(X_pool[idx], y_pool[idx])
            seconds = time.perf_counter() - start
            results["rows"].append(_row(name, len(idx), regression_report(y_test, predict(X_test)),
                                        seconds))
    results["predict_archs_per_s"] = _throughput(space, X_pool, y_pool, device)

    if args.remeasure:
        again = _measure(net, test_archs, main_profile, f"{device}/remeasure", store,
                         "test re-measurement", args.chunk, args.evaluate_only)
        again_archs, y_again = _labelled(again, test_archs, scale)
        kept = [i for i, a in enumerate(test_archs) if a in set(again_archs)]
        best = LatencyPredictor(space, device_hash=device, cv_folds=0).fit(X_pool, y_pool)
        results["remeasure"] = {
            "first_vs_second_pass": regression_report(y_again, y_test[kept]),
            f"hwsearch_n{len(y_pool)}_vs_second_pass": regression_report(
                y_again, best.predict(X_test[kept])),
        }

    if args.fewshot:
        other = args.other_key or other_profile.hash()
        X_selected = space.encode_many(selected_train)
        shot_idx = _spread_subset(X_selected, ArchFeaturizer(space).macs(X_selected), 20)
        shot_archs = [selected_train[i] for i in shot_idx]
        fs_test = selected_test[:args.fewshot_test]
        shot_lat = _measure(net, shot_archs, other_profile, other, store, "few-shot 20",
                            args.chunk, args.evaluate_only)
        fs_lat = _measure(net, fs_test, other_profile, other, store, "few-shot test", args.chunk,
                          args.evaluate_only)
        other_scale = _scale(shot_lat)
        shot_archs, y_shot = _labelled(shot_lat, shot_archs, other_scale)
        fs_test, y_fs = _labelled(fs_lat, fs_test, other_scale)
        X_shot = space.encode_many(shot_archs)
        X_fs = space.encode_many(fs_test)
        source = LatencyPredictor(space, device_hash=device, cv_folds=0).fit(X_pool, y_pool)
        few = FewShotLatencyPredictor([source]).fit(X_shot, y_shot)
        scratch = LatencyPredictor(space, device_hash=other, cv_folds=0).fit(X_shot, y_shot)
        coef = np.polyfit(ArchFeaturizer(space).macs(X_shot), y_shot, 1)
        flops = np.polyval(coef, ArchFeaturizer(space).macs(X_fs))
        results["fewshot"] = {
            "new_device": other_profile.name, "n_shots": len(shot_archs), "n_test": len(fs_test),
            "fewshot (source predictor + fitted correction)": regression_report(y_fs,
                                                                                 few.predict(X_fs)),
            "hwsearch from scratch on the 20": regression_report(y_fs, scratch.predict(X_fs)),
            "FLOPs-only on the 20": regression_report(y_fs, flops),
            "source predictor unchanged": regression_report(y_fs, source.predict(X_fs)),
        }
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"\n{results['supernet']} at {results['resolution']} px on {results['device']} "
          f"({results['device_hash']}); test n={results['n_test']}, latencies "
          f"{results['latency_range_ms'][0]:.1f}-{results['latency_range_ms'][1]:.1f} ms\n")
    print(_table(results["rows"]))
    print(f"\nhwsearch predict throughput: {results['predict_archs_per_s']:,.0f} archs/s (1 thread)")
    for section in ("remeasure", "fewshot"):
        if section in results:
            print(f"\n{section}:")
            for name, rep in results[section].items():
                if isinstance(rep, dict):
                    print(f"  {name}: within10={100 * rep['within_10']:.1f}% "
                          f"within5={100 * rep['within_5']:.1f}% tau={rep['tau']:.3f} "
                          f"MAPE={rep['mape']:.2f}%")
                else:
                    print(f"  {name}: {rep}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=16, help="subnets per measurement session")
    parser.add_argument("--ci-target", type=float, default=0.02,
                        help="relative 95%% CI half-width at which a subnet stops being timed")
    parser.add_argument("--max-rounds", type=int, default=120,
                        help="cap on interleaved rounds per measurement session")
    parser.add_argument("--fewshot", action="store_true")
    parser.add_argument("--fewshot-test", type=int, default=100)
    parser.add_argument("--remeasure", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="measure nothing; score on the selected subnets already stored")
    parser.add_argument("--device-key", help="store key of the main device's rows (default: "
                        "its profile hash; set it to score rows taken under an older reference)")
    parser.add_argument("--other-key", help="the same for the few-shot device")
    parser.add_argument("--store", type=Path, default=Path("runs/bench_predictors.db"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_predictors.json"))
    args = parser.parse_args(argv)
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    _print(results)


if __name__ == "__main__":
    main()
