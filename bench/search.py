"""Search benchmark: batched evaluation speed, NSGA-II vs exhaustive, refinement vs random.

Prints, in one run:

(a) seconds for 20,000 predictor evaluations through :class:`hwsearch.problem.SubnetProblem`
    (population batches, as NSGA-II calls it) vs DyNAS-T-style row-by-row prediction;
(b) on a reduced OFA-MBv3 space small enough to enumerate, the hypervolume of the
    NSGA-II front divided by that of the exhaustive front (same predictors);
(c) the refinement loop vs random sampling with the same number of measured subnets:
    hypervolume of the measured fronts at 50, 100 and 200 measurements.

Ground truth.  (b) needs every subnet of a space scored, so by default
"measurements" in (b)/(c) and the training labels in (a)-(c) come from the
deterministic analytic oracle in ``tests/_search_oracle.py``: latency is an
additive roofline cost model over exact per-stage MACs and activation sizes,
accuracy a saturating function of log-params/log-MACs/resolution.  Neither is
a device measurement or a trained network's accuracy; the benchmark says so
in its output.  The predictors are hwsearch's real XGBoost predictors.

``--real`` runs (c) on real measurements instead: the built-in demo supernet
(trained on MNIST digits), latency measured with onnxruntime on this CPU (one
thread, thread CPU clock, interleaved with a reference model) and accuracy
evaluated on the held-out digits after batch-norm recalibration.  Both methods
share one store, so a subnet both of them pick is measured once.

Run: ``python bench/search.py`` (``--full-rowwise`` times all 20,000 rows
row by row instead of 1,000 scaled up; ``--seeds`` sets the repeats of (c)).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# The script's own folder holds bench/predictors.py, which would shadow the predictors
# package; the test helpers (the analytic oracle) are needed instead.
sys.path[0] = str(Path(__file__).resolve().parents[1] / "tests")

from _search_oracle import ORACLE_NOTE, AnalyticOracle, small_space  # noqa: E402

from hwsearch.problem import Cost, SubnetProblem  # noqa: E402
from hwsearch.refine import RefineSettings, refine  # noqa: E402
from hwsearch.results import hypervolume, non_dominated  # noqa: E402
from hwsearch.search import SearchSettings, search  # noqa: E402
from hwsearch.space import SearchSpace, ofa_mbv3_space  # noqa: E402
from predictors.accuracy import AccuracyPredictor  # noqa: E402
from predictors.latency import LatencyPredictor  # noqa: E402

N_EVALS = 20_000
POP = 100
CHECKPOINTS = (50, 100, 200)
FAST_PREDICTOR = {"n_estimators": 100, "n_members": 4, "cv_folds": 1}


def fit_predictors(space: SearchSpace, n: int, seed: int, **settings: int):
    oracle = AnalyticOracle(space)
    X = space.encode_many(space.sample(seed, n))
    accuracy = AccuracyPredictor(space, seed=seed, **settings).fit(X, oracle.accuracy(X))
    latency = LatencyPredictor(space, seed=seed, **settings).fit(X, oracle.latency_ms(X))
    return accuracy, latency


# --------------------------------------------------------------------------- (a)


def bench_throughput(full_rowwise: bool) -> None:
    space = ofa_mbv3_space()
    accuracy, latency = fit_predictors(space, 300, seed=0)
    problem = SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency})
    X = space.encode_many(space.sample(1, N_EVALS))
    start = time.perf_counter()
    for i in range(0, N_EVALS, POP):
        problem.evaluate(X[i:i + POP])
    batched = time.perf_counter() - start
    start = time.perf_counter()
    problem.evaluate(X)
    one_batch = time.perf_counter() - start
    n_rows = N_EVALS if full_rowwise else 1_000
    start = time.perf_counter()
    for x in X[:n_rows]:
        accuracy.predict(x[None, :])
        latency.predict(x[None, :])
    rowwise = (time.perf_counter() - start) * N_EVALS / n_rows
    how = "measured" if full_rowwise else f"measured on {n_rows:,} rows, scaled to {N_EVALS:,}"
    print(f"(a) {N_EVALS:,} evaluations, OFA-MBv3 w1.0, accuracy+latency predictors "
          f"(linear base + XGBoost residual, 300 trees)")
    print(f"    hwsearch problem, population batches of {POP}: {batched:8.2f} s")
    print(f"    hwsearch problem, one batch of {N_EVALS:,}:     {one_batch:8.2f} s")
    print(f"    row by row (DyNAS-T style), {how}: {rowwise:8.2f} s")
    print(f"    speed-up (batches of {POP}): {rowwise / batched:.0f}x")


# --------------------------------------------------------------------------- (b)


def all_genes(space: SearchSpace) -> np.ndarray:
    """Every subnet of ``space`` as canonical genes, via a mixed-radix grid of all gene vectors."""
    _, xu = space.bounds()
    radix = xu + 1
    idx = np.arange(int(np.prod(radix)), dtype=np.int64)
    digits = np.empty((len(idx), len(radix)), dtype=np.int64)
    for j in range(len(radix) - 1, -1, -1):
        digits[:, j] = idx % radix[j]
        idx //= radix[j]
    genes = np.unique(space.canonical_genes(digits), axis=0)
    assert len(genes) == space.size(), (len(genes), space.size())
    return genes


def bench_exhaustive(seeds: int) -> None:
    space = small_space()
    accuracy, latency = fit_predictors(space, 300, seed=0)
    problem = SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency})
    every = all_genes(space)
    start = time.perf_counter()
    values = problem.predict(every)
    predict_s = time.perf_counter() - start
    F_all = np.column_stack([-values["accuracy"], values["latency_ms"]])
    front_all = F_all[non_dominated(F_all)]
    ref = F_all.max(axis=0) + 0.01 * np.ptp(F_all, axis=0)
    hv_all = hypervolume(front_all, ref)
    print(f"(b) {space.name}: {len(every):,} subnets (2 stages, depth 2-4, kernel 3/7, "
          f"expand 3/6, resolution 160/224), all scored through the predictors in "
          f"{predict_s:.1f} s; exhaustive front {len(front_all)} points")
    for pop, n_gen in ((100, 100), (100, 200)):
        ratios, evals, secs = [], [], []
        for seed in range(seeds):
            result = search(problem, SearchSettings(pop_size=pop, n_gen=n_gen, seed=seed))
            F = np.column_stack([-result.values["accuracy"], result.values["latency_ms"]])
            ratios.append(hypervolume(F, ref) / hv_all)
            evals.append(result.n_evals)
            secs.append(result.seconds)
        print(f"    NSGA-II pop {pop}, {n_gen} gen ({np.mean(evals):,.0f} evals, "
              f"{np.mean(secs):.1f} s): HV ratio mean {np.mean(ratios):.4f}, "
              f"min {np.min(ratios):.4f} over {seeds} seeds (goal >= 0.99)")


# --------------------------------------------------------------------------- (c)


class OracleDevice:
    """The measurer of (c): the analytic oracle, not a device (see the module docstring)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space, self.oracle = space, AnalyticOracle(space)

    def measure_latency(self, archs):
        return self.oracle.latency_ms(self.space.encode_many(archs)).tolist()

    def measure_accuracy(self, archs):
        return self.oracle.accuracy(self.space.encode_many(archs)).tolist()


class DemoDevice:
    """The measurer of (c) with ``--real``: the demo supernet, measured on this CPU for real."""

    def __init__(self, workdir: Path) -> None:
        from devices import open_profiler
        from devices.profile import DeviceProfile, Protocol
        from hwsearch.demo import DEMO_CHECKPOINT, DEMO_SUPERNET
        from hwsearch.demo.data import load_digits
        from hwsearch.store import SQLiteStore
        from hwsearch.supernets import create_supernet

        self.net = create_supernet(DEMO_SUPERNET, checkpoint=DEMO_CHECKPOINT)
        self.space = self.net.space
        _, self.data = load_digits(workdir / "data")
        self.profile = DeviceProfile(name="bench-cpu-1t", intra_op_threads=1, clock="thread_cpu",
                                     protocol=Protocol(ci_target=0.02, max_rounds=60,
                                                       max_seconds=60.0))
        self.profiler = open_profiler(self.profile)
        self.store = SQLiteStore(workdir / "bench_search_real.db")

    def measure_latency(self, archs):
        from hwsearch.pipeline import finite_latencies, profile_subnets

        key = self.profiler.device_key()
        profile_subnets(self.net, archs, self.profiler, key, self.store)
        rows = finite_latencies(self.store, key, self.space.network_id)
        return [float(rows[a.key()]["latency_ms"]) for a in archs]

    def measure_accuracy(self, archs):
        from hwsearch.accuracy_eval import evaluate_subnets

        found = evaluate_subnets(self.net, archs, self.data, store=self.store,
                                 dataset_id="digits-heldout")
        return [found[a.key()] for a in archs]


def bench_refinement_real(seeds: int, workdir: Path) -> None:
    """(c) on real measurements of the demo supernet; the reference point is the worst seen."""
    device = DemoDevice(workdir)
    space = device.space
    settings = RefineSettings(max_measurements=max(CHECKPOINTS), per_round=10, initial=20,
                              kappa=1.0, search=SearchSettings(pop_size=64, n_gen=40))
    runs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"refine": [], "random": []}
    start = time.perf_counter()
    for seed in range(seeds):
        result = refine(space, AccuracyPredictor(space, seed=seed, **FAST_PREDICTOR),
                        LatencyPredictor(space, seed=seed, **FAST_PREDICTOR), device,
                        device="demo-cpu-1t", settings=RefineSettings(**{
                            **settings.__dict__, "seed": seed}))
        runs["refine"].append((np.array([o.accuracy for o in result.observations]),
                               np.array([o.latency_ms for o in result.observations])))
        archs = list({a.key(): a for a in space.sample(seed + 100, 3 * max(CHECKPOINTS))}.values())
        archs = archs[:max(CHECKPOINTS)]
        runs["random"].append((np.array(device.measure_accuracy(archs)),
                               np.array(device.measure_latency(archs))))
    everything = np.vstack([np.column_stack([-a, t]) for rows in runs.values() for a, t in rows])
    ref = everything.max(axis=0)
    print(f"(c, real) demo supernet on MNIST digits, onnxruntime 1 thread on this CPU; "
          f"{seeds} seed(s); reference point (-acc, ms) = ({ref[0]:.4f}, {ref[1]:.3f}) = worst "
          f"measured; {len(everything)} measurements in {time.perf_counter() - start:.0f} s")
    _print_hv_table({name: [[measured_hv(a, t, n, ref) for n in CHECKPOINTS] for a, t in rows]
                     for name, rows in runs.items()})


def _print_hv_table(table: dict[str, list[list[float]]]) -> None:
    print("    measured subnets:   " + "".join(f"{n:>16}" for n in CHECKPOINTS))
    for name, rows in table.items():
        rows = np.array(rows)
        cells = "".join(f"{m:>9.5f} ±{s:.5f}" for m, s in zip(rows.mean(0), rows.std(0)))
        print(f"    {name:<20}{cells}")
    ratio = np.array(table["refine"]).mean(0) / np.array(table["random"]).mean(0)
    print("    refine / random:    " + "".join(f"{r:>16.3f}" for r in ratio))


def measured_hv(accs: np.ndarray, lats: np.ndarray, n: int, ref: np.ndarray) -> float:
    F = np.column_stack([-accs[:n], lats[:n]])
    return hypervolume(F[non_dominated(F)], ref)


def bench_refinement(seeds: int) -> None:
    space = ofa_mbv3_space()
    oracle = AnalyticOracle(space)
    probe = space.encode_many(space.sample(12345, 20_000))
    F_probe = np.column_stack([-oracle.accuracy(probe), oracle.latency_ms(probe)])
    ref = F_probe.max(axis=0)
    settings = RefineSettings(max_measurements=max(CHECKPOINTS), per_round=10, initial=20,
                              kappa=1.0, search=SearchSettings(pop_size=64, n_gen=40))
    table = {"refine": [], "random": []}
    seconds = []
    for seed in range(seeds):
        start = time.perf_counter()
        result = refine(space, AccuracyPredictor(space, seed=seed, **FAST_PREDICTOR),
                        LatencyPredictor(space, seed=seed, **FAST_PREDICTOR), OracleDevice(space),
                        device="oracle", settings=RefineSettings(**{
                            **settings.__dict__, "seed": seed}), reference_point=ref)
        seconds.append(time.perf_counter() - start)
        accs = np.array([o.accuracy for o in result.observations])
        lats = np.array([o.latency_ms for o in result.observations])
        table["refine"].append([measured_hv(accs, lats, n, ref) for n in CHECKPOINTS])
        archs = list({a.key(): a for a in space.sample(seed + 100, 3 * max(CHECKPOINTS))}.values())
        X = space.encode_many(archs[:max(CHECKPOINTS)])
        accs, lats = oracle.accuracy(X), oracle.latency_ms(X)
        table["random"].append([measured_hv(accs, lats, n, ref) for n in CHECKPOINTS])
    print(f"(c) OFA-MBv3 w1.0, refinement (20 random, then rounds of 10 chosen by optimistic "
          f"HV gain, kappa 1) vs uniform random sampling; {seeds} seeds; HV of the measured "
          f"front, reference point (-acc, ms) = ({ref[0]:.4f}, {ref[1]:.3f}) = worst of 20,000 "
          f"random subnets; refinement took {np.mean(seconds):.0f} s per run")
    _print_hv_table(table)
    ceiling = oracle_front_hv(space, oracle, ref)
    print(f"    for scale: NSGA-II run directly on the oracle (pop 100, 200 gen, 20,000 oracle "
          f"calls, no measurement budget) reaches HV {ceiling:.5f}")


def oracle_front_hv(space: SearchSpace, oracle: AnalyticOracle, ref: np.ndarray) -> float:
    """HV of a front found with unlimited oracle calls: how much of it a budget recovers."""
    problem = SubnetProblem(space, {"accuracy": Cost(oracle.accuracy),
                                    "latency_ms": Cost(oracle.latency_ms)})
    result = search(problem, SearchSettings(pop_size=100, n_gen=200, seed=0))
    F = np.column_stack([-result.values["accuracy"], result.values["latency_ms"]])
    return hypervolume(F, ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full-rowwise", action="store_true",
                        help="time all 20,000 rows row by row (about 10 minutes)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=["a", "b", "c"], action="append")
    parser.add_argument("--real", action="store_true",
                        help="(c) on real measurements of the demo supernet (about 30 minutes)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_search"))
    args = parser.parse_args()
    parts = args.only or ["a", "b", "c"]
    if args.real:
        bench_refinement_real(args.seeds, args.workdir)
        return
    print("Ground truth: " + ORACLE_NOTE + ".")
    if "a" in parts:
        bench_throughput(args.full_rowwise)
    if "b" in parts:
        bench_exhaustive(args.seeds)
    if "c" in parts:
        bench_refinement(args.seeds)


if __name__ == "__main__":
    main()
