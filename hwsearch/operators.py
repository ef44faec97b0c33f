"""Variation operators for integer subnet genes: crossover choices and a mutation that always bites.

pymoo's recipe for integer problems (SBX and polynomial mutation on reals,
rounded back) wastes most of its mutations on subnet genes: polynomial
mutation with its default rate touches about one gene in ``n_var`` and the
small real step often rounds back to the same index, and a changed gene of a
switched-off block changes nothing at all.  :func:`mutate` instead picks
genes that *matter for this row* (resolution, depths, widths and the genes of
active blocks), each with probability ``rate`` (default ``1/n_var``), at
least one per row, and moves each picked gene to a *different* choice drawn
uniformly from the others.  Every mutated row is therefore a different
subnet.

Operators work on whole ``(n, n_var)`` integer arrays, so a generation is a
few numpy calls; :class:`GeneCrossover` and :class:`GeneMutation` wrap the
same functions as pymoo operators for :func:`hwsearch.search.build_nsga2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import cross_sbx

from hwsearch.space import SearchSpace

__all__ = ["CROSSOVERS", "CrossoverKind", "GeneCrossover", "GeneMutation", "canonical",
           "crossover", "effective_genes", "mutate", "tournament"]

CrossoverKind = Literal["uniform", "two_point", "sbx"]
CROSSOVERS: tuple[CrossoverKind, ...] = ("uniform", "two_point", "sbx")


@dataclass(frozen=True)
class _Layout:
    """Per-space constants a generation needs, computed once per space."""

    n_choices: np.ndarray
    always: np.ndarray
    tables: tuple[np.ndarray, ...]
    depth_cols: tuple[int, ...]
    knob_cols: slice
    n_knobs: int


@lru_cache(maxsize=64)
def _layout(space: SearchSpace) -> _Layout:
    """Choice counts, genes that always matter, and depth→active-slot tables of ``space``.

    Cached because a search needs them every generation and
    :meth:`SearchSpace.bounds` rebuilds them in Python each time.
    """
    xl, xu = space.bounds()
    start = 1 + len(space.stages)
    knob_cols = slice(start, start + len(space.block_knobs) * space.n_blocks)
    always = xu > xl
    always[knob_cols] = False
    elastic = [i for i, stage in enumerate(space.stages) if stage.elastic]
    tables = tuple(np.arange(space.stages[i].max_depth)[None, :]
                   < np.asarray(space.stages[i].depths)[:, None] for i in elastic)
    return _Layout(xu + 1, always, tables, tuple(1 + i for i in elastic), knob_cols,
                   len(space.block_knobs))


def _active(layout: _Layout, X: np.ndarray) -> np.ndarray:
    """Boolean ``(n, n_blocks)`` active block slots (as :meth:`SearchSpace.active_block_mask`)."""
    return np.concatenate([t[X[:, c]] for t, c in zip(layout.tables, layout.depth_cols)], axis=1)


def canonical(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """:meth:`SearchSpace.canonical_genes` from cached tables: the per-generation fast path."""
    layout = _layout(space)
    X = np.array(X, dtype=np.int64, copy=True)
    if layout.n_knobs and len(X):
        X[:, layout.knob_cols] *= np.tile(_active(layout, X), layout.n_knobs)
    return X


def effective_genes(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """Boolean ``(n, n_var)``: genes whose change changes the subnet of each row.

    Genes with a single choice (a sub-space can fix a knob) and the genes of
    switched-off blocks are not effective.
    """
    layout = _layout(space)
    mask = np.broadcast_to(layout.always, X.shape).copy()
    if layout.n_knobs:
        multi = layout.n_choices[layout.knob_cols] > 1
        mask[:, layout.knob_cols] = np.tile(_active(layout, X), layout.n_knobs) & multi
    return mask


def mutate(space: SearchSpace, X: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each row with at least one effective gene moved to another of its choices.

    Each effective gene is picked with probability about ``rate`` (positions
    are drawn with replacement, so a gene drawn twice counts once); a row
    where none was picked gets one picked uniformly among its effective
    genes.  A picked gene ``g`` with ``c`` choices becomes
    ``(g + U{1..c-1}) mod c``: never itself, every other choice equally likely.
    """
    X = np.array(X, dtype=np.int64, copy=True)
    n, n_var = X.shape
    if n == 0:
        return X
    n_choices = _layout(space).n_choices
    effective = effective_genes(space, X)
    picked = np.zeros(n * n_var, dtype=bool)
    picked[rng.integers(0, n * n_var, size=rng.binomial(n * n_var, rate))] = True
    picked = picked.reshape(n, n_var) & effective
    idle = np.flatnonzero(~picked.any(axis=1) & effective.any(axis=1))
    if len(idle):
        scores = np.where(effective[idle], rng.random((len(idle), n_var)), -1.0)
        picked[idle, scores.argmax(axis=1)] = True
    rows, cols = np.nonzero(picked)
    c = n_choices[cols]
    X[rows, cols] = (X[rows, cols] + 1 + (rng.random(len(cols)) * (c - 1)).astype(np.int64)) % c
    return X


def crossover(kind: CrossoverKind, P1: np.ndarray, P2: np.ndarray, xu: np.ndarray, prob: float,
              eta: float, rng: np.random.Generator) -> np.ndarray:
    """One child per pair of parent rows; with probability ``1 - prob`` the child is ``P1``.

    ``uniform`` takes each gene from either parent (good for genes that act
    independently, as per-block knobs mostly do); ``two_point`` keeps runs of
    neighbouring genes (blocks of one stage) together; ``sbx`` is pymoo's
    simulated binary crossover on the gene indices, rounded.
    """
    n, n_var = P1.shape
    if kind == "uniform":
        child = np.where(rng.integers(0, 2, size=(n, n_var), dtype=bool), P1, P2)
    elif kind == "two_point":
        cuts = np.sort(rng.integers(0, n_var + 1, size=(n, 2)), axis=1)
        cols = np.arange(n_var)[None, :]
        child = np.where((cols >= cuts[:, :1]) & (cols < cuts[:, 1:]), P2, P1)
    elif kind == "sbx":
        pair = np.stack([P1, P2]).astype(np.float64)
        child = cross_sbx(pair, np.zeros(n_var), xu.astype(np.float64), np.full((n, 1), eta),
                          0.5, np.full((n, 1), 0.5), random_state=rng)[0]
        child = np.clip(np.rint(child), 0, xu).astype(np.int64)
    else:
        raise ValueError(f"crossover must be one of {CROSSOVERS}, got {kind!r}")
    keep = rng.random(n) >= prob
    return np.where(keep[:, None], P1, child)


def tournament(rank: np.ndarray, crowding: np.ndarray, n: int,
               rng: np.random.Generator) -> np.ndarray:
    """``n`` parent indices by binary tournament: lower rank wins, then larger crowding."""
    a, b = rng.integers(0, len(rank), size=(2, n))
    b_wins = (rank[b] < rank[a]) | ((rank[b] == rank[a]) & (crowding[b] > crowding[a]))
    return np.where(b_wins, b, a)


class GeneCrossover(Crossover):
    """:func:`crossover` as a pymoo operator (two parents, one child)."""

    def __init__(self, kind: CrossoverKind = "uniform", prob: float = 0.9,
                 eta: float = 15.0) -> None:
        super().__init__(n_parents=2, n_offsprings=1, prob=1.0)
        if kind not in CROSSOVERS:
            raise ValueError(f"crossover must be one of {CROSSOVERS}, got {kind!r}")
        self.kind, self.cross_prob, self.eta = kind, prob, eta

    def _do(self, problem: Problem, X: np.ndarray, *args: object,
            random_state: np.random.Generator, **kwargs: object) -> np.ndarray:
        P1, P2 = np.rint(X).astype(np.int64)
        xu = np.asarray(problem.xu, dtype=np.int64)
        return crossover(self.kind, P1, P2, xu, self.cross_prob, self.eta, random_state)[None]


class GeneMutation(Mutation):
    """:func:`mutate` as a pymoo operator."""

    def __init__(self, space: SearchSpace, rate: float | None = None) -> None:
        super().__init__(prob=1.0)
        self.space = space
        self.rate = rate if rate is not None else 1.0 / space.n_var

    def _do(self, problem: Problem, X: np.ndarray, *args: object,
            random_state: np.random.Generator, **kwargs: object) -> np.ndarray:
        return mutate(self.space, np.rint(X).astype(np.int64), self.rate, random_state)
