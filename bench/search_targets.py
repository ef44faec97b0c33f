"""Refinement aimed at latency targets vs the whole front, on a noisy two-objective benchmark.

The benchmark is OFA-MBv3 w1.0 scored by the analytic oracle of
``tests/_search_oracle.py`` (a roofline-style latency model and a saturating
accuracy proxy; neither is a device or a trained network) with measurement
noise added: every measured latency is multiplied by ``1 + N(0, 3%)`` and
every measured accuracy shifted by ``N(0, 0.2 points)``, drawn once per subnet
and seed.  Each run measures 400 subnets (20 spread over MACs, then rounds of
10); the budgets 50/100/200/400 are prefixes of one run, because a round's
choice does not depend on the budget left.

Modes: ``whole`` (no targets: optimistic hypervolume gain over the whole
front, hwsearch's default), ``targets`` (the five budgets below: expected
improvement of the best measured accuracy under each budget) and ``band``
(hypervolume gain counted inside the band from the lowest to the highest
budget).  Printed per budget and measurement count: the best *measured*
accuracy under the budget (mean ± sd over seeds, in points), how many seeds
the mode beats ``whole``, and the band hypervolume; plus the share of
measurements spent above the slowest budget.

Run: ``python bench/search_targets.py --seeds 10 --jobs 2`` (about a minute
per run and mode on this machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# This folder would shadow the packages it benchmarks; the oracle lives with the tests.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _search_oracle import ORACLE_NOTE, AnalyticOracle  # noqa: E402

from hwsearch.acquisition import LatencyTargets, band_hypervolume, best_under  # noqa: E402
from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space  # noqa: E402
from hwsearch.refine import RefineSettings, refine  # noqa: E402
from hwsearch.search import SearchSettings  # noqa: E402
from hwsearch.space import ArchConfig  # noqa: E402
from predictors.accuracy import AccuracyPredictor  # noqa: E402
from predictors.latency import LatencyPredictor  # noqa: E402

BUDGETS_MS = (2.5, 3.0, 3.5, 4.0, 4.5)
CHECKPOINTS = (50, 100, 200, 400)
LATENCY_NOISE, ACCURACY_NOISE = 0.03, 0.002
FAST_PREDICTOR = {"n_estimators": 100, "n_members": 4, "cv_folds": 1}
MODES = {
    "whole": LatencyTargets(),
    "targets": LatencyTargets(BUDGETS_MS),
    "band": LatencyTargets(band_ms=(BUDGETS_MS[0], BUDGETS_MS[-1])),
}


class NoisyOracle:
    """The analytic oracle plus per-subnet measurement noise, fixed for a seed."""

    def __init__(self, seed: int) -> None:
        self.space = ofa_mbv3_space()
        self.oracle = AnalyticOracle(self.space)
        self.seed = seed

    def _noise(self, arch: ArchConfig) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(arch.digest(12), 16)])

    def measure_latency(self, archs: list[ArchConfig]) -> list[float]:
        true = self.oracle.latency_ms(self.space.encode_many(archs))
        return [float(t * (1 + LATENCY_NOISE * self._noise(a).normal()))
                for a, t in zip(archs, true)]

    def measure_accuracy(self, archs: list[ArchConfig]) -> list[float]:
        true = self.oracle.accuracy(self.space.encode_many(archs))
        return [float(t + ACCURACY_NOISE * self._noise(a).normal(size=2)[1])
                for a, t in zip(archs, true)]


def run(mode: str, seed: int) -> dict[str, np.ndarray | float]:
    """One refinement run; returns the measured (accuracy, latency) in measurement order."""
    device = NoisyOracle(seed)
    space = device.space
    settings = RefineSettings(max_measurements=max(CHECKPOINTS), per_round=10, initial=20,
                              kappa=1.0, seed=seed, search=SearchSettings(pop_size=64, n_gen=40))
    start = time.perf_counter()
    result = refine(space, AccuracyPredictor(space, seed=seed, **FAST_PREDICTOR),
                    LatencyPredictor(space, seed=seed, **FAST_PREDICTOR), device,
                    device="noisy-oracle", settings=settings, targets=MODES[mode])
    keys = [o.arch.key() for o in result.observations]
    assert len(set(keys)) == len(keys), "a subnet was measured twice"
    return {"accuracy": np.array([o.accuracy for o in result.observations]),
            "latency": np.array([o.latency_ms for o in result.observations]),
            "seconds": time.perf_counter() - start}


def summarise(runs: dict[str, list[dict]], seeds: int) -> None:
    worst_error = -min(float(r["accuracy"].min()) for rows in runs.values() for r in rows)
    print(f"{ORACLE_NOTE}; noise: latency x(1+N(0,{LATENCY_NOISE:.0%})), accuracy "
          f"+N(0,{100 * ACCURACY_NOISE:.1f} points); {seeds} seeds; budgets {BUDGETS_MS} ms")
    for mode, rows in runs.items():
        above = np.mean([np.mean(r["latency"][20:] > BUDGETS_MS[-1]) for r in rows])
        print(f"  {mode:<8} {np.mean([r['seconds'] for r in rows]):.0f} s per run; "
              f"{above:.0%} of chosen measurements above {BUDGETS_MS[-1]} ms")
    print("\nbest measured accuracy under each budget, points (mean ± sd over seeds); "
          "[wins/ties vs whole]")
    header = "  n    budget  " + "".join(f"{mode:>22}" for mode in runs)
    print(header)
    for n in CHECKPOINTS:
        for budget in BUDGETS_MS:
            picks = {mode: np.array([100 * best_under(r["accuracy"][:n], r["latency"][:n], budget)
                                     for r in rows]) for mode, rows in runs.items()}
            cells = ""
            for mode, values in picks.items():
                cell = f"{values.mean():.2f} ±{values.std():.2f}"
                if mode != "whole":
                    wins = int(np.sum(values > picks["whole"] + 1e-9))
                    ties = int(np.sum(np.abs(values - picks["whole"]) <= 1e-9))
                    cell += f" [{wins}/{ties}]"
                cells += f"{cell:>22}"
            print(f"  {n:<4} {budget:>5.1f} ms{cells}")
    print("\nband hypervolume (band "
          f"{BUDGETS_MS[0]}-{BUDGETS_MS[-1]} ms, reference accuracy {-worst_error:.4f}):")
    for n in CHECKPOINTS:
        cells = ""
        for rows in runs.values():
            hv = np.array([band_hypervolume(np.column_stack([-r["accuracy"][:n],
                                                             r["latency"][:n]]),
                                            (BUDGETS_MS[0], BUDGETS_MS[-1]), worst_error)
                           for r in rows])
            cells += f"{hv.mean():>13.5f} ±{hv.std():.5f}"
        print(f"  {n:<4}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    tasks = [(mode, seed) for mode in args.modes for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run, *zip(*tasks)))
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for (mode, _), result in zip(tasks, results):
        runs[mode].append(result)
    summarise(runs, args.seeds)


if __name__ == "__main__":
    main()
