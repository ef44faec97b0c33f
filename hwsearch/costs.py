"""Additive cost tables: the one form in which every supernet family states its arithmetic.

A family's cost model (``Layout.costs``) turns encoded gene rows into named,
additive components (MACs split by layer kind, parameters, activation
elements, operator counts, memory traffic).  The same table serves three
users, so a family's arithmetic is written once: :meth:`Supernet.count
<hwsearch.supernets.Supernet.count>` reads its totals, predictors read its
columns as features, and searches read ``macs``/``params`` as cheap
objectives.

Counting convention: MACs count the multiply-accumulates of convolutions,
linear layers and attention's matrix products (QK^T, attention x V, and
relative-position terms where a family has them) at batch 1; parameters
count every trainable tensor of the extracted subnet (batch-norm and
layer-norm affine weights included, running statistics not).

This module depends on numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["OVERHEAD_KINDS", "CostAccumulator", "CostTable", "ceil_div", "is_overhead",
           "overhead_names"]


@dataclass
class CostTable:
    """Additive cost components of each row, column by named column.

    ``columns`` maps a component name (e.g. ``s2_macs_dw_k5``) to an ``(n,)``
    float64 array; ``macs``/``params`` are the totals, equal to the sums of the
    ``*_macs*``/``*_params`` components.  The names are the contract: a
    column named ``stem_flops`` counts in neither total, so a family checks
    its model against the network it builds
    (:func:`hwsearch.supernets.counting.check_cost_model`).
    """

    columns: dict[str, np.ndarray]

    @property
    def macs(self) -> np.ndarray:
        return self._total(lambda name: "_macs" in name, "*_macs*")

    @property
    def params(self) -> np.ndarray:
        return self._total(lambda name: name.endswith("_params"), "*_params")

    def _total(self, counts: Callable[[str], bool], pattern: str) -> np.ndarray:
        """The sum of the columns ``counts`` picks; a table with none names the pattern (``sum`` of nothing was
        the integer 0, and a caller indexing it failed with ``'int' object is not subscriptable``)."""
        picked = [values for name, values in self.columns.items() if counts(name)]
        if not picked:
            raise ValueError(f"the cost table has no {pattern} column (columns: {sorted(self.columns)[:8]}...)")
        return sum(picked[1:], picked[0])  # in column order, as the totals always were


class CostAccumulator:
    """Collects per-row additive components under stable names."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.columns: dict[str, np.ndarray] = {}

    def add(self, name: str, value: np.ndarray | float) -> None:
        value = np.broadcast_to(np.asarray(value, dtype=np.float64), (self.n,))
        if name in self.columns:
            self.columns[name] = self.columns[name] + value
        else:
            self.columns[name] = value.copy()

    def declare(self, *names: str) -> None:
        """Make columns exist (as zeros) so the column set never depends on the data."""
        for name in names:
            self.add(name, 0.0)

    def table(self) -> CostTable:
        return CostTable(self.columns)


def ceil_div(h: np.ndarray, stride: int) -> np.ndarray:
    """Spatial size after a 'same'-padded strided conv/pool: ``ceil(h / stride)``."""
    return -(-h // stride)


_OVERHEAD_PREFIXES = ("ops_", "mem_")


def is_overhead(column: str) -> bool:
    """Whether a cost column counts operators or memory traffic (``[sN_]ops_*``/``mem_*``).

    The naming convention every family follows, so predictors can tell
    overhead terms from compute terms without knowing the family.
    """
    return re.sub(r"^s\d+_", "", column).startswith(_OVERHEAD_PREFIXES)


OVERHEAD_KINDS = ("ops_dw", "ops_pw", "ops_dense", "ops_se", "ops_elem", "ops_pool",
                  "mem_conv", "mem_elem")
"""The convolutional families' per-stage overhead components (operator counts and memory
traffic by kind); other families add ``ops_*``/``mem_*`` kinds of their own.

On an overhead-bound device (batch 1, small inputs, a fast core) each
operator costs a fixed launch/scheduling/allocation time whatever its MACs,
and elementwise operators cost their memory traffic, so latency follows
these counts far more than MACs.  ``ops_*`` count the operators an exported
subnet runs (depthwise and pointwise convs or matrix products, dense convs,
squeeze-excite modules or attention softmaxes, elementwise ops: normalisation,
activations, residual adds, scaling; pooling); ``mem_*`` count the elements
read and written by convolutions/matrix products and by elementwise ops.  A
runtime that fuses normalisation and activations makes ``ops_elem``/``mem_elem``
cheap, one that does not makes them dominate; the fit decides.
"""


def overhead_names(stage: int) -> list[str]:
    """The overhead columns of one stage, declared by every family so column sets match."""
    return [f"s{stage}_{kind}" for kind in OVERHEAD_KINDS]
