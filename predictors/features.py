"""Features of encoded subnets: depth-masked one-hot codes plus an analytic cost model.

Predictors see subnets as encoded gene matrices (``space.encode_many``), so
search-time prediction is one vectorised pass over ``(n, n_var)`` integers.

Two feature groups are produced:

* **Codes** - one-hot kernel/expand choices per block slot multiplied by the
  slot's active mask (a switched-off block contributes nothing, whatever its
  stale genes say), the active mask itself, width choices and resolution.
* **Costs** - additive per-stage cost components (multiply-accumulates split by
  layer kind, parameters, activation elements, active block counts, operator
  counts by kind and memory traffic by kind, see
  :data:`hwsearch.costs.OVERHEAD_KINDS`) from the family's cost model,
  ``space.layout.costs`` (``hwsearch/families/<family>/layout.py``), the same
  one ``Supernet.count`` reports, so a new family brings its features along.
  Latency is close to additive over layers, so these columns also serve
  as the regressors of the linear base model in :mod:`predictors.base`: MAC
  columns carry compute-bound devices, operator counts and traffic carry
  overhead-bound ones (batch 1, small inputs, fast cores).

The counting convention is :mod:`hwsearch.costs`'s.
"""

from __future__ import annotations

import numpy as np

from hwsearch.costs import CostTable
from hwsearch.space import SearchSpace

__all__ = ["FEATURE_VERSION", "ArchFeaturizer", "CostTable"]

FEATURE_VERSION = "2"


class ArchFeaturizer:
    """Turns encoded gene matrices of one space into float32 feature matrices.

    Stateless apart from the space, so a saved predictor only needs the space
    and :data:`FEATURE_VERSION` to rebuild it.
    """

    def __init__(self, space: SearchSpace) -> None:
        if space.layout is None:
            raise ValueError(f"{space.name} has no layout; the analytic cost model needs one")
        self.space = space
        self._upper = space.bounds()[1]
        self.gene_names: list[str] = _gene_names(space)
        probe = self.costs(np.zeros((1, space.n_var), dtype=np.int64))
        self.cost_names: list[str] = list(probe.columns)
        self.names: list[str] = self._code_names() + self.cost_names + ["total_macs",
                                                                          "total_params"]

    # ------------------------------------------------------------------ costs

    def costs(self, X: np.ndarray) -> CostTable:
        """Additive per-stage cost components of each encoded row."""
        return self.space.layout.costs(self.space, self._check(X))

    def macs(self, X: np.ndarray) -> np.ndarray:
        """Total multiply-accumulates per row (batch 1)."""
        return self.costs(X).macs

    # ------------------------------------------------------------------ features

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, len(self.names))`` float32: masked codes, then cost components (in millions).

        Columns are written into one preallocated array; building blocks and
        stacking them costs more than the arithmetic at search-time batch sizes.
        """
        X = self._check(X)
        out = np.empty((len(X), len(self.names)), dtype=np.float32)
        n_codes = self._write_codes(X, out)
        table = self.space.layout.costs(self.space, X)
        col = n_codes
        for value in table.columns.values():
            out[:, col] = value / 1e6
            col += 1
        out[:, col] = table.macs / 1e6
        out[:, col + 1] = table.params / 1e6
        return out

    def _write_codes(self, X: np.ndarray, out: np.ndarray) -> int:
        """Fill the code columns of ``out`` in :meth:`_code_names` order; return their count."""
        space = self.space
        active = space.active_block_mask(X)
        nb = space.n_blocks
        out[:, :nb] = active
        col, start = nb, 1 + len(space.stages)
        for knob in space.block_knobs:
            genes = X[:, start:start + nb]
            n_choices = len(getattr(space, knob + "s"))
            for c in range(n_choices):  # slot-major, choice-minor, as in _code_names
                out[:, col + c:col + n_choices * nb:n_choices] = (genes == c) & active
            col += nb * n_choices
            start += nb
        for i in range(space.n_width_slots):
            for c in range(len(space.widths)):
                out[:, col] = X[:, start + i] == c
                col += 1
        res = np.asarray(space.resolutions, dtype=np.float32)[X[:, 0]] / 224.0
        out[:, col] = res
        out[:, col + 1] = res * res
        return col + 2

    def _code_names(self) -> list[str]:
        space = self.space
        names = [f"on_{i}" for i in range(space.n_blocks)]
        for knob in space.block_knobs:
            names += [f"{knob}_{i}={c}" for i in range(space.n_blocks)
                      for c in getattr(space, knob + "s")]
        names += [f"width_{i}={w}" for i in range(space.n_width_slots) for w in space.widths]
        return names + ["res", "res_sq"]

    def _check(self, X: np.ndarray) -> np.ndarray:
        """``X`` as int64 genes, or ``ValueError`` naming the first gene that is not a valid index.

        Genes index choices, and numpy indexing would read a bad one
        silently: ``-1`` as the last choice, ``2.7`` cast to 2, or fail with a
        bare ``IndexError``.  One vectorised pass, since search calls this
        on every batch.
        """
        X = np.atleast_2d(np.asarray(X))
        if X.ndim != 2 or X.shape[1] != self.space.n_var:
            raise ValueError(
                f"expected encoded genes of shape (n, {self.space.n_var}) for {self.space.name}, "
                f"got {X.shape}"
            )
        if X.dtype.kind not in "biuf":
            raise ValueError(f"encoded genes must be integers, got dtype {X.dtype}")
        bad = (X < 0) | (X > self._upper)
        if X.dtype.kind == "f":
            bad |= ~np.isfinite(X) | (X != np.floor(X))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"gene {col} ({self.gene_names[col]}) of row {row} is {X[row, col].item()}; "
                f"{self.space.name} allows the integers 0..{self._upper[col]} there"
            )
        return X.astype(np.int64, copy=False)


def _gene_names(space: SearchSpace) -> list[str]:
    """A name per gene, in the encoding's order (``SearchSpace``: resolution, depths, knobs, widths)."""
    names = ["resolution"] + [f"depth of stage {s}" for s in range(len(space.stages))]
    for knob in space.block_knobs:
        names += [f"{knob} of block slot {i}" for i in range(space.n_blocks)]
    return names + [f"width slot {i}" for i in range(space.n_width_slots)]
