"""hwsearch's NSGA-II as a library, with objectives of your own.

A researcher's setting: a per-operator latency lookup table for a phone that
covers only some input resolutions, and an accuracy predictor for the OFA
MobileNetV3 space.  Both are made here (the table from a made-up cost
formula, the predictor a small numpy MLP fitted on made-up labels), so the
example runs anywhere in well under a minute without torch; swap in real
ones with the same call signatures.

What it shows (see docs/library.md):

* objectives as plain vectorised functions of an :class:`~hwsearch.batch.ArchBatch`,
  the population decoded once into per-knob arrays;
* ``space.restrict(resolutions=...)``: a sub-space named after what it keeps;
* a time limit, a per-generation callback and a warm start from known subnets;
* the query helpers on the predicted front (``knee``, ``best_under``).

Run: ``python examples/search_library.py [SECONDS]`` (default 15 s of search).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from hwsearch.batch import ArchBatch
from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.problem import Limit, Objective, SubnetProblem
from hwsearch.search import SearchProgress, SearchSettings, search
from hwsearch.space import SearchSpace

TABLE_RESOLUTIONS = (160, 176, 192, 208, 224)


class LookupTableLatency:
    """Latency (ms) as the sum of per-block table entries plus a per-resolution stem/head cost.

    ``table[slot, kernel, expand, resolution]`` holds one block's latency, the
    way published per-operator tables do; the lookup is one fancy-indexing
    call for the whole population.
    """

    def __init__(self, space: SearchSpace, table: np.ndarray, fixed_ms: np.ndarray) -> None:
        self.space, self.table, self.fixed_ms = space, table, fixed_ms

    @classmethod
    def made_up(cls, space: SearchSpace) -> LookupTableLatency:
        """A table from a roofline-like formula: deeper stages wider, larger kernels dearer."""
        widths = np.repeat(space.layout.stage_widths, [s.max_depth for s in space.stages])
        k = np.asarray(space.kernels, dtype=float)[None, :, None, None]
        e = np.asarray(space.expands, dtype=float)[None, None, :, None]
        r = np.asarray(space.resolutions, dtype=float)[None, None, None, :]
        c = widths.astype(float)[:, None, None, None]
        pixels = (r / 224.0) ** 2 / np.repeat(4.0 ** np.arange(len(space.stages)),
                                               [s.max_depth for s in space.stages])[:, None, None, None]
        table = 2e-4 * pixels * c * e * (c / 16 + 0.6 * k ** 2) + 0.02
        fixed = 1.2 * (np.asarray(space.resolutions, dtype=float) / 224.0) ** 2 + 0.5
        return cls(space, table, fixed)

    def __call__(self, batch: ArchBatch) -> np.ndarray:
        k = np.searchsorted(self.space.kernels, np.where(batch.active, batch.kernel, 3))
        e = np.searchsorted(self.space.expands, np.where(batch.active, batch.expand, 3))
        r = np.searchsorted(self.space.resolutions, batch.resolution)[:, None]
        slots = np.arange(self.space.n_blocks)[None, :]
        per_block = self.table[slots, k, e, r]
        return np.where(batch.active, per_block, 0.0).sum(axis=1) + self.fixed_ms[r[:, 0]]


def features(batch: ArchBatch) -> np.ndarray:
    """One-hot kernel/expand per active block slot, plus normalised depths and resolution."""
    space = batch.space
    parts = [(batch.kernel[:, :, None] == np.asarray(space.kernels)) & batch.active[:, :, None],
             (batch.expand[:, :, None] == np.asarray(space.expands)) & batch.active[:, :, None]]
    flat = [p.reshape(len(batch), -1).astype(np.float32) for p in parts]
    flat.append((batch.depths / 4.0).astype(np.float32))
    flat.append((batch.resolution[:, None] / 224.0).astype(np.float32))
    return np.concatenate(flat, axis=1)


class MLPAccuracy:
    """A one-hidden-layer MLP over :func:`features`, fitted with Adam in numpy."""

    def __init__(self, hidden: int = 64, seed: int = 0) -> None:
        self.hidden, self.rng = hidden, np.random.default_rng(seed)

    def fit(self, Z: np.ndarray, y: np.ndarray, steps: int = 400, lr: float = 3e-3) -> MLPAccuracy:
        self.mean, self.scale = float(y.mean()), float(y.std() or 1.0)
        t = ((y - self.mean) / self.scale)[:, None]
        params = [self.rng.normal(0, 1 / np.sqrt(Z.shape[1]), (Z.shape[1], self.hidden)),
                  np.zeros(self.hidden), self.rng.normal(0, 1 / np.sqrt(self.hidden),
                                                         (self.hidden, 1)), np.zeros(1)]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        for step in range(1, steps + 1):
            W1, b1, W2, b2 = params
            h = np.maximum(Z @ W1 + b1, 0.0)
            err = (h @ W2 + b2 - t) * (2.0 / len(Z))
            dh = (err @ W2.T) * (h > 0)
            grads = [Z.T @ dh, dh.sum(0), h.T @ err, err.sum(0)]
            for i, g in enumerate(grads):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                params[i] -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step))
                                                                 + 1e-8)
        self.params = [p.astype(np.float32) for p in params]
        return self

    def __call__(self, batch: ArchBatch) -> np.ndarray:
        W1, b1, W2, b2 = self.params
        h = np.maximum(features(batch) @ W1 + b1, 0.0)
        return (h @ W2 + b2)[:, 0] * self.scale + self.mean


def made_up_accuracy(batch: ArchBatch) -> np.ndarray:
    """The labels the MLP learns: saturating in capacity (a stand-in for measured accuracy)."""
    capacity = (np.where(batch.active, batch.kernel ** 1.5 * batch.expand, 0).sum(axis=1) / 3000.0
                + 0.8 * (batch.resolution / 224.0))
    return 0.55 + 0.25 * (1 - np.exp(-1.5 * capacity))


def make_objectives(space: SearchSpace, n_train: int = 2000,
                    seed: int = 0) -> tuple[LookupTableLatency, MLPAccuracy]:
    """The table and a predictor fitted on ``n_train`` random subnets of ``space``."""
    X = space.encode_many(space.sample(seed, n_train))
    train = space.decode_batch(X)
    accuracy = MLPAccuracy(seed=seed).fit(features(train), made_up_accuracy(train))
    return LookupTableLatency.made_up(space), accuracy


def main(max_seconds: float = 15.0) -> None:
    full = ofa_mbv3_space()
    space = full.restrict(resolutions=TABLE_RESOLUTIONS)
    print(f"space {space.name}: {space.size():.2e} subnets, {space.n_var} genes")
    start = time.perf_counter()
    latency, accuracy = make_objectives(space)
    print(f"lookup table {latency.table.shape} and MLP predictor ready in "
          f"{time.perf_counter() - start:.1f} s")

    problem = SubnetProblem(space, {"accuracy": accuracy, "latency_ms": latency},
                            (Objective("accuracy", "max"), Objective("latency_ms")),
                            limits=[Limit("latency_ms", upper=5.0)])
    known = [space.largest(r) for r in TABLE_RESOLUTIONS] + space.sample(7, 20)

    shown = [0.0]

    def report(progress: SearchProgress) -> None:
        """About once a second: how far the search has got (a callback may also stop it)."""
        if progress.seconds >= shown[0] + 1.0:
            shown[0] = progress.seconds
            print(f"  gen {progress.n_gen:4d}: {progress.n_evals:9,d} evaluations, "
                  f"front of {len(progress.front_X)} after {progress.seconds:.1f} s")

    settings = SearchSettings(pop_size=200, n_gen=10**6, max_seconds=max_seconds, seed=0)
    result = search(problem, settings, initial=known, callback=report)
    print(f"stopped by {result.stopped_by} after {result.n_gen} generations: "
          f"{result.n_evals:,} evaluations in {result.seconds:.1f} s "
          f"({result.n_evals / result.seconds:,.0f}/s); front of {len(result)} subnets")
    for label, point in (("knee", result.knee()), ("best under 3 ms", result.best_under(3.0))):
        if point is not None:
            print(f"  {label}: accuracy {point.predicted['accuracy']:.4f}, "
                  f"{point.predicted['latency_ms']:.2f} ms, {point.arch.key()}")


if __name__ == "__main__":
    # A population's matrices are small: BLAS threads cost more than they save.
    with threadpool_limits(1):
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0)
