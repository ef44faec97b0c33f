"""Predictor benchmark on real measurements: latency in two regimes, few-shot, accuracy (issue 13).

Everything is measured on this machine through the devices layer (each
session interleaves the device's reference model and stores the ratio), and
kept in one SQLite store, so every step resumes where it stopped.

Devices (``DEVICES``):

* ``demo-1t`` - the demo supernet (MNIST digits, 16-32 px, ~0.2-0.6 ms) on
  onnxruntime, one thread: **overhead-bound**, latency follows how many
  operators run more than MACs;
* ``demo-1t-noopt`` - the same with graph optimisation disabled (no
  conv/BN/activation fusion: more, smaller operators);
* ``demo-1t-b8`` - batch 8: eight times the compute per operator launch;
* ``demo-2t`` - two intra-op threads (thread hand-off per operator);
* ``ofa224-1t`` - OFA MobileNetV3 w1.0 at 224 px, one thread: **compute-bound**.

Steps (subcommands):

``measure``   train pool and test subnets per device, and a re-measurement of
              the test subnets in separate sessions (the noise floor);
``accuracy``  real top-1 of demo subnets on held-out digits (trained checkpoint);
``accuracy-noise``  per-image correctness of held-out subnets under two BN
              calibrations: how noisy one accuracy label is (the MAE floor);
``report``    the tables: latency per device and training size for hwsearch,
              FLOPs-only and ridge on one-hot, scored against the
              re-measurement; few-shot over source->target pairs at 5/10/20
              shots; accuracy at 40/100/200 training subnets.

Usage::

    python bench/predictors.py measure --devices demo-1t demo-1t-noopt --n-train 300 --n-test 100
    python bench/predictors.py accuracy --n-train 200 --n-test 100
    python bench/predictors.py accuracy-noise --n 60
    python bench/predictors.py report --out runs/bench_predictors.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its own name
# would shadow the ``predictors`` package it benchmarks.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

DEMO = "demo_mbv3_mnist"
OFA = "ofa_mbv3_d234_e346_k357_w1.0"
ACCURACY_DATASET = "demo-digits-heldout"
TEST_POOL = 100


@dataclass(frozen=True)
class BenchDevice:
    """One measured device: a supernet (at a pinned resolution or all) and profile settings."""

    name: str
    supernet: str
    settings: dict[str, Any]
    resolution: int | None = None
    regime: str = "overhead"
    note: str = ""
    protocol: dict[str, Any] = field(default_factory=lambda: {"ci_target": 0.02,
                                                              "max_rounds": 150,
                                                              "max_seconds": 240.0})

    def profile(self) -> Any:
        from devices.profile import DeviceProfile, Protocol

        return DeviceProfile(name=f"bench-{self.name}", protocol=Protocol(**self.protocol),
                             **self.settings)

    def key(self) -> str:
        return self.profile().hash()


_ONE_THREAD = {"intra_op_threads": 1, "clock": "thread_cpu"}
DEVICES: dict[str, BenchDevice] = {d.name: d for d in [
    BenchDevice("demo-1t", DEMO, dict(_ONE_THREAD), note="demo, ORT 1 thread, batch 1"),
    BenchDevice("demo-1t-noopt", DEMO, dict(_ONE_THREAD, graph_optimization="disable"),
                note="demo, ORT 1 thread, graph optimisation off"),
    BenchDevice("demo-1t-b8", DEMO, dict(_ONE_THREAD, batch=8), regime="mixed",
                note="demo, ORT 1 thread, batch 8"),
    BenchDevice("demo-2t", DEMO, {"intra_op_threads": 2, "allow_spinning": False},
                note="demo, ORT 2 threads, batch 1 (wall clock)"),
    BenchDevice("ofa224-1t", OFA, dict(_ONE_THREAD), resolution=224, regime="compute",
                note="OFA-MBv3 w1.0 224 px, ORT 1 thread"),
    BenchDevice("ofa224-1t-noopt", OFA, dict(_ONE_THREAD, graph_optimization="disable"),
                resolution=224, regime="compute",
                note="OFA-MBv3 w1.0 224 px, ORT 1 thread, graph optimisation off"),
]}

# (source(s), target, kind): kind says whether the regimes differ.
FEWSHOT_PAIRS: list[tuple[tuple[str, ...], str, str]] = [
    (("demo-1t",), "demo-1t-noopt", "same regime (ORT opt on -> off)"),
    (("demo-1t-noopt",), "demo-1t", "same regime (ORT opt off -> on)"),
    (("demo-1t-b8",), "demo-1t", "cross-regime (batch 8 -> 1)"),
    (("demo-2t",), "demo-1t", "cross-regime (2 threads -> 1)"),
    (("ofa224-1t",), "ofa224-1t-noopt", "same regime, compute-bound (opt on -> off)"),
    (("demo-1t-b8", "demo-2t", "demo-1t-noopt"), "demo-1t", "three sources -> batch 1"),
]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- subnets and store


def _supernet(name: str, checkpoint: str | None = None) -> Any:
    from hwsearch.supernets import create_supernet

    return create_supernet(name, checkpoint=checkpoint)


def _pools(space: Any, device: BenchDevice, n_train: int, n_test: int) -> tuple[list, list]:
    """Train pool and the first ``n_test`` of :data:`TEST_POOL` test subnets.

    Both are the same for every device of one space and resolution.

    ``select_subnets`` shuffles its result, so a prefix of the train pool is
    still spread over the whole MACs range (a smaller pool for a source device).
    """
    from hwsearch.pipeline import select_subnets

    train = select_subnets(space, n_train, seed=1, resolution=device.resolution)
    test = select_subnets(space, TEST_POOL, seed=2, resolution=device.resolution,
                          exclude=[a.key() for a in train])[:n_test]
    return train, test


def _measure(net: Any, archs: list, device: BenchDevice, key: str, store: Any, what: str,
             chunk: int) -> None:
    from devices import open_profiler
    from hwsearch.pipeline import profile_subnets

    def progress(event: dict[str, Any]) -> None:
        if event.get("stage") == "measure":
            _log(f"{device.name} {what}: {event['done']}/{event['total']}")

    report = profile_subnets(net, archs, open_profiler(device.profile()), key, store,
                             chunk=chunk, progress=progress)
    _log(f"{device.name} {what}: {report.measured} new, {report.skipped} stored, "
         f"{report.unstable} unstable, {report.seconds:.0f} s")


def measure(args: argparse.Namespace) -> None:
    """Train pool, test set and the test set's re-measurement for each named device."""
    import torch

    from hwsearch.store import SQLiteStore

    torch.set_num_threads(1)
    store = SQLiteStore(args.store)
    for name in args.devices:
        device = DEVICES[name]
        net = _supernet(device.supernet)
        train, test = _pools(net.space, device, args.pool, args.n_test)
        key = device.key()
        if args.n_test:
            _measure(net, test, device, key, store, "test", args.chunk)
        _measure(net, train[:args.n_train], device, key, store, "train", args.chunk)
        if args.remeasure and args.n_test:
            _measure(net, test, device, f"{key}/remeasure", store, "re-measure", args.chunk)


def measure_accuracy(args: argparse.Namespace) -> None:
    """Top-1 of demo subnets on held-out digits (BN recalibrated), stored as a job would."""
    import torch

    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.demo import DEMO_CHECKPOINT
    from hwsearch.demo.data import load_digits
    from hwsearch.pipeline import select_subnets
    from hwsearch.store import SQLiteStore

    torch.set_num_threads(1)
    store = SQLiteStore(args.store)
    net = _supernet(DEMO, checkpoint=str(DEMO_CHECKPOINT))
    _, heldout = load_digits(args.data)
    settings = EvalSettings()
    calibration, validation = heldout.split(settings.n_calibration, seed=settings.seed)
    train = select_subnets(net.space, args.n_train, seed=11)
    test = select_subnets(net.space, args.n_test, seed=12, exclude=[a.key() for a in train])
    done = store.get_accuracies(net.name, ACCURACY_DATASET)
    todo = [a for a in test + train if a.key() not in done]
    start = time.perf_counter()
    for i, arch in enumerate(todo):
        store.put_accuracy(net.name, ACCURACY_DATASET, arch.key(),
                           subnet_accuracy(net, arch, calibration, validation, settings))
        if (i + 1) % 20 == 0:
            _log(f"accuracy: {i + 1}/{len(todo)} evaluated, {time.perf_counter() - start:.0f} s")


def _correct_per_image(net: Any, arch: Any, calibration: Any, validation: Any,
                       settings: Any) -> np.ndarray:
    """Per validation image, whether ``arch`` (BN recalibrated on ``calibration``) gets it right.

    The same steps as :func:`hwsearch.accuracy_eval.subnet_accuracy`, kept per
    image so the label's noise can be taken apart (see :func:`accuracy_noise`).
    """
    import torch

    from hwsearch.bn import recalibrate_bn
    from hwsearch.data import batches

    module = recalibrate_bn(net.extract(arch),
                            (x for x, _ in batches(calibration, arch.resolution,
                                                   settings.batch_size)))
    module.eval()
    with torch.inference_mode():
        hits = [(module(x).argmax(dim=1) == y).numpy()
                for x, y in batches(validation, arch.resolution, settings.batch_size)]
    return np.concatenate(hits)


def measure_accuracy_noise(args: argparse.Namespace) -> None:
    """Per-image correctness of the first ``--n`` held-out accuracy subnets, two BN calibrations.

    ``official``: BN recalibrated on the same 500 held-out images as the
    stored labels (so its mean must equal the stored label);
    ``other``: on 500 training images instead (the supernet trained on them,
    but BN statistics only need inputs).  Written to ``--out`` (npz).
    """
    import torch

    from hwsearch.accuracy_eval import EvalSettings
    from hwsearch.demo import DEMO_CHECKPOINT
    from hwsearch.demo.data import load_digits
    from hwsearch.pipeline import select_subnets

    torch.set_num_threads(1)
    net = _supernet(DEMO, checkpoint=str(DEMO_CHECKPOINT))
    train_images, heldout = load_digits(args.data)
    settings = EvalSettings()
    calibration, validation = heldout.split(settings.n_calibration, seed=settings.seed)
    other = train_images.take(np.random.default_rng(7).permutation(len(train_images))
                              [:settings.n_calibration])
    pool = select_subnets(net.space, args.pool, seed=11)
    test = select_subnets(net.space, TEST_POOL, seed=12,
                          exclude=[a.key() for a in pool])[:args.n]  # as ``accuracy`` drew them
    official, recal = [], []
    for i, arch in enumerate(test):
        official.append(_correct_per_image(net, arch, calibration, validation, settings))
        recal.append(_correct_per_image(net, arch, other, validation, settings))
        if (i + 1) % 10 == 0:
            _log(f"accuracy noise: {i + 1}/{len(test)}")
    np.savez_compressed(args.out, keys=np.array([a.key() for a in test]),
                        official=np.array(official), other=np.array(recal))


def accuracy_noise(path: Path, store: Any) -> dict[str, Any]:
    """How noisy one accuracy label is, and hence the best MAE any predictor can reach on them.

    * ``binomial``: ``sqrt(p (1 - p) / n)`` per label, ``n`` validation images;
    * ``validation``: the part of that which differs between subnets: per
      image, correctness minus its mean over the measured subnets (an image
      every subnet gets wrong only shifts all labels alike, which any
      predictor's intercept absorbs), its variance over images ``/ n``;
    * ``calibration``: the label's change when BN is recalibrated on other
      images, ``sd(difference) / sqrt(2)`` (both calibrations are draws).

    A predictor that knew each subnet's expected accuracy exactly would still
    miss the label by ``sqrt(2 / pi) * sd`` on average (normal errors): the floor.
    """
    data = np.load(path)
    official, other = data["official"].astype(np.float64), data["other"].astype(np.float64)
    stored = store.get_accuracies(DEMO, ACCURACY_DATASET)
    labels = np.array([stored.get(str(k), np.nan) for k in data["keys"]])
    n_images = official.shape[1]
    p = official.mean(axis=1)
    binomial = np.sqrt(p * (1 - p) / n_images)
    m = len(official)  # the image means include the subnet itself: scale by m / (m - 1)
    idio = np.sqrt((official - official.mean(axis=0)).var(axis=1, ddof=1) / n_images
                   * m / (m - 1))
    shift = other.mean(axis=1) - p
    calibration = float(np.std(shift - shift.mean(), ddof=1) / np.sqrt(2))
    total = np.sqrt(idio**2 + calibration**2)
    floor = np.sqrt(2 / np.pi)
    return {"n_subnets": len(p), "n_images": n_images,
            "matches_stored_labels": bool(np.allclose(p, labels)),
            "accuracy_range": [float(p.min()), float(p.max())],
            "binomial_sd_points": float(100 * np.sqrt(np.mean(binomial**2))),
            "validation_sd_points": float(100 * np.sqrt(np.mean(idio**2))),
            "calibration_sd_points": float(100 * calibration),
            "calibration_mean_shift_points": float(100 * shift.mean()),
            "total_sd_points": float(100 * np.sqrt(np.mean(total**2))),
            "mae_floor_binomial_points": float(100 * floor * np.mean(binomial)),
            "mae_floor_points": float(100 * floor * np.mean(total))}


# --------------------------------------------------------------------------- loading rows


@dataclass
class Labelled:
    """One device's measured train pool and test set (ms on one per-device scale)."""

    device: BenchDevice
    space: Any
    X_pool: np.ndarray
    y_pool: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    y_again: np.ndarray | None  # the test set re-measured in other sessions (NaN: missing)


def _load(store: Any, name: str, n_pool: int, n_test: int) -> Labelled | None:
    """Rows stored for a device (``None`` if too few); pools as :func:`measure` drew them."""
    from predictors.dataset import calibrated_latencies

    device = DEVICES[name]
    space = _supernet(device.supernet).space
    rows = store.get_latencies(device.key(), space.network_id)
    again_rows = store.get_latencies(f"{device.key()}/remeasure", space.network_id)
    if not rows:
        return None
    scale = calibrated_latencies(rows)
    # The re-measurement goes on the first pass's scale: the ruler is per device.
    ruler = float(np.median([r["env"]["reference_ms"] for r in rows.values()]))
    again = {k: float(r["ratio"]) * ruler for k, r in again_rows.items()
             if np.isfinite(float(r["ratio"]))}
    train, test = _pools(space, device, n_pool, n_test)
    train = [a for a in train if a.key() in scale]
    test = [a for a in test if a.key() in scale]
    if len(train) < 20:
        return None
    y_again = np.array([again.get(a.key(), np.nan) for a in test]) if again else None
    return Labelled(device, space, space.encode_many(train),
                    np.array([scale[a.key()] for a in train]), space.encode_many(test),
                    np.array([scale[a.key()] for a in test]), y_again)


def _spread_subset(macs: np.ndarray, n: int) -> np.ndarray:
    """``n`` row indices evenly spaced along the MACs order (the pipeline's coverage idea)."""
    order = np.argsort(macs, kind="stable")
    return order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]


def _plain_onehot(space: Any, X: np.ndarray) -> np.ndarray:
    """Every gene one-hot, stale genes of switched-off blocks included (the naive encoding)."""
    _, xu = space.bounds()
    return np.hstack([np.eye(int(u) + 1)[X[:, i]] for i, u in enumerate(xu)])


# --------------------------------------------------------------------------- latency table


def _latency_methods(space: Any) -> dict[str, Callable[[np.ndarray, np.ndarray], Any]]:
    """name -> fit(X, y) returning predict(X)."""
    from sklearn.linear_model import RidgeCV

    from predictors.features import ArchFeaturizer
    from predictors.latency import LatencyPredictor, latency_groupings

    featurizer = ArchFeaturizer(space)

    def hwsearch(X: np.ndarray, y: np.ndarray) -> Any:
        model = LatencyPredictor(space, cv_folds=0, n_members=0).fit(X, y)
        hwsearch.chosen = model.meta.metrics["base"]  # type: ignore[attr-defined]
        return model.predict

    class ComputeOnly(LatencyPredictor):
        """The base before issue 13: only the compute groupings (no operator or traffic terms)."""

        def _groupings(self) -> dict[str, list[list[int]]]:
            options = latency_groupings(self.featurizer)
            return {k: options[k] for k in ("macs", "kind", "stage")}

    def compute_only(X: np.ndarray, y: np.ndarray) -> Any:
        return ComputeOnly(space, cv_folds=0, n_members=0).fit(X, y).predict

    def ridge_onehot(X: np.ndarray, y: np.ndarray) -> Any:
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(_plain_onehot(space, X), y)
        return lambda Z: model.predict(_plain_onehot(space, Z))

    def flops_only(X: np.ndarray, y: np.ndarray) -> Any:
        coef = np.polyfit(featurizer.macs(X), y, 1)
        return lambda Z: np.polyval(coef, featurizer.macs(Z))

    return {"hwsearch": hwsearch, "hwsearch, compute terms only (before)": compute_only,
            "FLOPs-only": flops_only, "ridge one-hot": ridge_onehot}


def _what_dominates(data: Labelled) -> dict[str, float]:
    """Kendall tau of the test latencies with total MACs, operator count and memory traffic."""
    from scipy.stats import kendalltau

    from predictors.features import ArchFeaturizer

    columns = ArchFeaturizer(data.space).costs(data.X_test).columns
    totals = {"macs": sum(v for k, v in columns.items() if "_macs" in k),
              "operators": sum(v for k, v in columns.items() if "_ops_" in k),
              "memory traffic": sum(v for k, v in columns.items() if "_mem_" in k)}
    return {k: float(kendalltau(v, data.y_test).statistic) for k, v in totals.items()}


def _truth(data: Labelled) -> tuple[np.ndarray, str]:
    """The test labels to score against: the independent re-measurement where there is one.

    It is taken in other sessions than the first pass, so a predictor is not
    credited for matching one session's state of the machine.
    """
    if data.y_again is not None and np.isfinite(data.y_again).sum() >= 20:
        return data.y_again, "re-measurement"
    return data.y_test, "first pass"


def latency_table(data: Labelled, sizes: list[int]) -> dict[str, Any]:
    """Every method at every training size, scored against the re-measured test set."""
    from predictors.features import ArchFeaturizer
    from predictors.metrics import regression_report

    truth, label = _truth(data)
    kept = np.isfinite(truth)
    out: dict[str, Any] = {"device": data.device.name, "note": data.device.note,
                           "regime": data.device.regime, "scored_against": label,
                           "n_test": int(kept.sum()), "rows": [],
                           "latency_range_ms": [float(truth[kept].min()), float(truth[kept].max())],
                           "tau_with_test_latency": _what_dominates(data)}
    if label == "re-measurement":
        out["noise_floor"] = regression_report(truth[kept], data.y_test[kept])
    macs = ArchFeaturizer(data.space).macs(data.X_pool)
    for n in sorted({min(n, len(data.y_pool)) for n in sizes}):
        idx = _spread_subset(macs, n)
        for name, fit in _latency_methods(data.space).items():
            start = time.perf_counter()
            predict = fit(data.X_pool[idx], data.y_pool[idx])
            seconds = time.perf_counter() - start
            report = regression_report(truth[kept], predict(data.X_test[kept]))
            row = {"method": name, "n_train": len(idx), "fit_s": seconds, **report}
            if name == "hwsearch":
                row["base"] = fit.chosen  # type: ignore[attr-defined]
            out["rows"].append(row)
    return out


# --------------------------------------------------------------------------- few-shot table


def _shortfall_se(truth: np.ndarray, chosen: list[np.ndarray], better: list[np.ndarray],
                  n_boot: int = 200) -> float:
    """Bootstrap SE (over test rows) of mean-over-draws τ(chosen) - τ(better method).

    The draws of one cell can coincide (a target pool no larger than the
    shots), so the spread over draws alone would understate the noise; the
    test rows are the other source of it.
    """
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(truth), len(truth))
        diffs.append(np.mean([kendalltau(c[rows], truth[rows]).statistic
                              - kendalltau(b[rows], truth[rows]).statistic
                              for c, b in zip(chosen, better)]))
    return float(np.std(diffs, ddof=1))


def fewshot_table(loaded: dict[str, Labelled], shots: list[int], repeats: int) -> list[dict]:
    """Per pair and shot count: transfer, from scratch and the CV choice, averaged over draws.

    ``weights`` is the mean weight each candidate got in the chosen average;
    ``shortfall`` the chosen τ minus the better of transfer and scratch, with
    its bootstrap SE over the test rows (:func:`_shortfall_se`).
    """
    from predictors.fewshot import FewShotLatencyPredictor
    from predictors.latency import LatencyPredictor
    from predictors.metrics import regression_report

    sources: dict[str, Any] = {}
    out = []
    for names, target, kind in FEWSHOT_PAIRS:
        if (target not in loaded or len(loaded[target].y_test) < 20
                or any(n not in loaded for n in names)):
            _log(f"few-shot {'+'.join(names)} -> {target}: not measured, skipped")
            continue
        for name in names:
            if name not in sources:
                src = loaded[name]
                sources[name] = LatencyPredictor(src.space, cv_folds=0, n_members=0).fit(
                    src.X_pool, src.y_pool)
        tgt = loaded[target]
        truth, label = _truth(tgt)
        kept = np.isfinite(truth)
        for n in shots:
            methods = ("transfer", "scratch", "chosen")
            scores: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            preds: dict[str, list[np.ndarray]] = {m: [] for m in methods}
            chosen, cv_rmse, weights = [], [], []
            for r in range(repeats):
                idx = np.random.default_rng(1000 * n + r).choice(len(tgt.y_pool), n,
                                                                 replace=False)
                few = FewShotLatencyPredictor([sources[s] for s in names]).fit(
                    tgt.X_pool[idx], tgt.y_pool[idx])
                for method in methods:
                    preds[method].append(few.predict(tgt.X_test[kept], method=method))
                    scores[method].append(regression_report(truth[kept], preds[method][-1]))
                chosen.append(few.choice.method)
                cv_rmse.append(few.choice.quality["rmse_log"])
                weights.append(few.choice.weights)
            row = {"sources": list(names), "target": target, "kind": kind, "shots": n,
                   "repeats": repeats, "scored_against": label,
                   "choices": {m: chosen.count(m) for m in sorted(set(chosen))},
                   "weights": {k: float(np.mean([w.get(k, 0.0) for w in weights]))
                               for k in sorted({k for w in weights for k in w})},
                   "chosen_cv_rmse_log": float(np.mean(cv_rmse))}
            for method, reports in scores.items():
                row[method] = {k: float(np.mean([rep[k] for rep in reports]))
                               for k in ("tau", "within_10", "mape")}
            better = max(("transfer", "scratch"), key=lambda m: row[m]["tau"])
            row["shortfall"] = {"vs": better,
                                "tau": row["chosen"]["tau"] - row[better]["tau"],
                                "se": _shortfall_se(truth[kept], preds["chosen"], preds[better])}
            out.append(row)
            _log(f"few-shot {'+'.join(names)} -> {target} at {n}: "
                 + ", ".join(f"{m} tau={row[m]['tau']:.3f}" for m in scores))
    return out


# --------------------------------------------------------------------------- accuracy table


def _identity_link_predictor() -> type:
    """The accuracy predictor before issue 13: ridge + XGBoost residual on the plain features,
    clipped to [0, 1], bootstrap sd."""
    from predictors.base import ResidualPredictor, fit_ridge_base

    class LinearAccuracy(ResidualPredictor):
        target = "accuracy"

        def _fit_base(self, F: np.ndarray, y: np.ndarray) -> Any:
            return fit_ridge_base(F, y, list(range(F.shape[1])))

        def _combine(self, base_pred: np.ndarray, resid: np.ndarray) -> np.ndarray:
            return np.clip(base_pred + resid, 0.0, 1.0)

    return LinearAccuracy


def accuracy_table(store: Any, sizes: list[int], n_pool: int, n_test: int,
                   noise_path: Path | None = None) -> dict[str, Any]:
    """Held-out accuracy prediction at each training size: new vs old (linear); the noise floor.

    ``noise_path``: the per-image correctness ``accuracy-noise`` wrote, if any.
    """
    from hwsearch.pipeline import select_subnets
    from predictors.accuracy import AccuracyPredictor, interval_coverage
    from predictors.metrics import regression_report

    net = _supernet(DEMO)
    space = net.space
    acc = store.get_accuracies(net.name, ACCURACY_DATASET)
    train = [a for a in select_subnets(space, n_pool, seed=11) if a.key() in acc]
    test = [a for a in select_subnets(space, n_test, seed=12,
                                      exclude=[a.key() for a in select_subnets(space, n_pool,
                                                                               seed=11)])
            if a.key() in acc]
    if len(train) < 20 or len(test) < 20:
        return {}
    X_tr, y_tr = space.encode_many(train), np.array([acc[a.key()] for a in train])
    X_te, y_te = space.encode_many(test), np.array([acc[a.key()] for a in test])
    xl, xu = space.bounds()
    X_wide = space.canonical_genes(np.random.default_rng(5).integers(xl, xu + 1,
                                                                    size=(20_000, space.n_var)))
    out: dict[str, Any] = {"n_test": len(test), "best_measured": float(max(y_tr.max(),
                                                                           y_te.max())),
                           "test_range": [float(y_te.min()), float(y_te.max())], "rows": []}
    if noise_path is not None and noise_path.exists():
        out["noise"] = accuracy_noise(noise_path, store)
    for n in sorted({min(n, len(train)) for n in sizes}):
        for name, cls in (("hwsearch (resolution-aware blend, soft ceiling)", AccuracyPredictor),
                          ("before (linear, bootstrap sd)", _identity_link_predictor())):
            model = cls(space).fit(X_tr[:n], y_tr[:n])
            mean, sd = model.predict_dist(X_te)
            rep = regression_report(y_te, mean)
            out["rows"].append({
                "weights": model.calibration.get("weights", {}),
                "method": name, "n_train": n, "mae_points": float(100 * np.mean(np.abs(mean - y_te))),
                "tau": rep["tau"], "cover_1sd": interval_coverage(y_te, mean, sd, 1.0),
                "cover_2sd": interval_coverage(y_te, mean, sd, 2.0),
                "max_pred_test": float(mean.max()), "max_pred_20k": float(model.predict(X_wide).max()),
                "best_train": float(y_tr[:n].max()), "mean_sd_points": float(100 * sd.mean()),
            })
    return out


# --------------------------------------------------------------------------- printing


def _print_latency(table: dict[str, Any]) -> None:
    lo, hi = table["latency_range_ms"]
    dominance = ", ".join(f"{k} {v:.3f}" for k, v in table["tau_with_test_latency"].items())
    print(f"\n### {table['device']} ({table['note']}; {table['regime']}-bound)\n")
    print(f"test n={table['n_test']}, {lo:.3f}-{hi:.3f} ms, scored against the "
          f"{table['scored_against']}; Kendall tau of latency with {dominance}\n")
    print("| n_train | method | within ±10% | within ±5% | τ | MAPE % | base chosen by CV |")
    print("|---:|---|---:|---:|---:|---:|---|")
    if "noise_floor" in table:
        nf = table["noise_floor"]
        print(f"| - | first pass vs re-measurement (noise floor) | {100 * nf['within_10']:.1f} | "
              f"{100 * nf['within_5']:.1f} | {nf['tau']:.3f} | {nf['mape']:.2f} | |")
    for r in table["rows"]:
        print(f"| {r['n_train']} | {r['method']} | {100 * r['within_10']:.1f} | "
              f"{100 * r['within_5']:.1f} | {r['tau']:.3f} | {r['mape']:.2f} | "
              f"{r.get('base', '')} |")


def _print_fewshot(rows: list[dict[str, Any]]) -> None:
    print("\n### Few-shot (mean over random shot draws; test = the target's test set)\n")
    print("| source -> target | kind | shots | transfer τ / ±10% / MAPE | scratch τ / ±10% / MAPE "
          "| chosen τ / ±10% / MAPE | chosen - better τ (± SE) | mean weights |")
    print("|---|---|---:|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[m]['tau']:.3f} / {100 * r[m]['within_10']:.0f}% / {r[m]['mape']:.1f}"
                 for m in ("transfer", "scratch", "chosen")]
        top = sorted(r["weights"].items(), key=lambda kv: -kv[1])[:3]
        weights = ", ".join(f"{k} {v:.2f}" for k, v in top)
        gap = r["shortfall"]
        print(f"| {'+'.join(r['sources'])} -> {r['target']} | {r['kind']} | {r['shots']} | "
              + " | ".join(cells) + f" | {gap['tau']:+.3f} ± {gap['se']:.3f} | {weights} |")


def _print_accuracy(table: dict[str, Any]) -> None:
    print(f"\n### Accuracy, demo supernet (held-out n={table['n_test']}, measured "
          f"{table['test_range'][0]:.3f}-{table['test_range'][1]:.3f}, best measured "
          f"{table['best_measured']:.3f})\n")
    print("| n_train | method | MAE pts | τ | ±1sd cover | ±2sd cover | mean sd pts | best train "
          "| max pred (test) | max pred (20k random) | blend weights (CV) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in table["rows"]:
        weights = ", ".join(f"{k} {v:.2f}" for k, v in r.get("weights", {}).items() if v)
        print(f"| {r['n_train']} | {r['method']} | {r['mae_points']:.2f} | {r['tau']:.3f} | "
              f"{100 * r['cover_1sd']:.0f}% | {100 * r['cover_2sd']:.0f}% | "
              f"{r['mean_sd_points']:.2f} | {r['best_train']:.3f} | {r['max_pred_test']:.3f} | "
              f"{r['max_pred_20k']:.3f} | {weights} |")
    if "noise" in table:
        nz = table["noise"]
        print(f"\nLabel noise ({nz['n_subnets']} held-out subnets, {nz['n_images']} validation "
              f"images, labels reproduced: {nz['matches_stored_labels']}): binomial sd "
              f"{nz['binomial_sd_points']:.2f} pts; subnet-specific validation sd "
              f"{nz['validation_sd_points']:.2f}; BN-calibration sd "
              f"{nz['calibration_sd_points']:.2f}; together {nz['total_sd_points']:.2f}.  "
              f"Best MAE any predictor can reach: {nz['mae_floor_points']:.2f} pts "
              f"({nz['mae_floor_binomial_points']:.2f} from the binomial sd alone).")


def report(args: argparse.Namespace) -> None:
    """All tables from what the store holds; JSON to ``--out``, markdown to stdout."""
    from hwsearch.store import SQLiteStore

    store = SQLiteStore(args.store)
    loaded = {name: data for name in DEVICES
              if (data := _load(store, name, args.pool, args.n_test)) is not None}
    _log(f"measured devices: {', '.join(f'{k} ({len(v.y_pool)} train)' for k, v in loaded.items())}")
    results: dict[str, Any] = {"latency": [], "fewshot": [], "accuracy": {}}
    for name in args.latency_devices if "latency" not in args.skip else []:
        if name in loaded and len(loaded[name].y_test) >= 20:
            results["latency"].append(latency_table(loaded[name], args.n_train))
    if "fewshot" not in args.skip:
        results["fewshot"] = fewshot_table(loaded, args.shots, args.repeats)
    if "accuracy" not in args.skip:
        results["accuracy"] = accuracy_table(store, args.accuracy_sizes, args.accuracy_pool,
                                         args.accuracy_test, args.accuracy_noise)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for table in results["latency"]:
        _print_latency(table)
    if results["fewshot"]:
        _print_fewshot(results["fewshot"])
    if results["accuracy"]:
        _print_accuracy(results["accuracy"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("runs/bench_predictors.db"))
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure train pool, test set and re-measurement")
    m.add_argument("--devices", nargs="+", choices=sorted(DEVICES), default=["demo-1t"])
    m.add_argument("--pool", type=int, default=300, help="size of the train pool drawn")
    m.add_argument("--n-train", type=int, default=300, help="how much of the pool to measure")
    m.add_argument("--n-test", type=int, default=100)
    m.add_argument("--remeasure", action="store_true")
    m.add_argument("--chunk", type=int, default=16, help="subnets per measurement session")
    a = sub.add_parser("accuracy", help="evaluate demo subnets on held-out digits")
    a.add_argument("--n-train", type=int, default=200)
    a.add_argument("--n-test", type=int, default=100)
    a.add_argument("--data", type=Path, default=Path("runs/digits"))
    z = sub.add_parser("accuracy-noise",
                       help="per-image correctness of held-out subnets (label noise floor)")
    z.add_argument("--n", type=int, default=60, help="how many held-out subnets")
    z.add_argument("--pool", type=int, default=200, help="the accuracy train pool's size")
    z.add_argument("--data", type=Path, default=Path("runs/digits"))
    z.add_argument("--out", type=Path, default=Path("runs/bench_accuracy_noise.npz"))
    r = sub.add_parser("report", help="fit and score every predictor; print the tables")
    r.add_argument("--latency-devices", nargs="+", choices=sorted(DEVICES),
                   default=["demo-1t", "demo-1t-noopt", "ofa224-1t"])
    r.add_argument("--pool", type=int, default=300)
    r.add_argument("--n-test", type=int, default=100)
    r.add_argument("--n-train", type=int, nargs="+", default=[50, 100, 300])
    r.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    r.add_argument("--repeats", type=int, default=10, help="random shot draws per cell")
    r.add_argument("--accuracy-sizes", type=int, nargs="+", default=[40, 100, 200])
    r.add_argument("--accuracy-pool", type=int, default=200)
    r.add_argument("--accuracy-test", type=int, default=100)
    r.add_argument("--accuracy-noise", type=Path, default=Path("runs/bench_accuracy_noise.npz"),
                   help="what `accuracy-noise` wrote (the labels' noise floor), if present")
    r.add_argument("--skip", nargs="*", default=[], choices=["latency", "fewshot", "accuracy"],
                   help="tables not to compute")
    r.add_argument("--out", type=Path, default=Path("runs/bench_predictors.json"))
    args = parser.parse_args(argv)
    args.store.parent.mkdir(parents=True, exist_ok=True)
    {"measure": measure, "accuracy": measure_accuracy, "accuracy-noise": measure_accuracy_noise,
     "report": report}[args.command](args)


if __name__ == "__main__":
    main()
