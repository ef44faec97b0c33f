"""A population of subnets decoded once, as per-knob arrays every objective shares.

A search scores every population with several objectives.  Decoding each row
to an :class:`~hwsearch.space.ArchConfig` (and on to the family's native form) once per
objective and per row costs far more than a vectorised objective itself, so
:meth:`SearchSpace.decode_batch <hwsearch.space.SearchSpace.decode_batch>`
decodes a whole ``(n, n_var)`` gene matrix into numpy arrays in a few
vectorised steps, and the row-wise forms (``archs()``, ``native()``) are built
only when an objective asks for them, then cached for the next objective.

Block arrays are laid out per supernet block *slot* (``n_blocks`` columns,
stage after stage, each stage at its maximum depth) with ``active`` saying
which slots a row uses; switched-off slots hold 0, never a real choice, so a
lookup-table sum is ``np.where(batch.active, table_value, 0).sum(axis=1)``.

This module depends on numpy only (the space is passed in, not imported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hwsearch.space import ArchConfig, SearchSpace

__all__ = ["ArchBatch"]


@dataclass(frozen=True, eq=False)
class ArchBatch:
    """``n`` subnets of ``space``: canonical genes and the values they stand for.

    ``resolution`` is ``(n,)``; ``depths`` is ``(n, n_stages)``; ``kernel``,
    ``expand`` and ``active`` are ``(n, n_blocks)`` (``(n, 0)`` for a knob the
    space lacks); ``width`` is ``(n, n_width_slots)``.  All values are the
    space's choices (pixels, kernel sizes, expand ratios), not gene indices.
    """

    space: SearchSpace = field(repr=False)
    genes: np.ndarray
    resolution: np.ndarray
    depths: np.ndarray
    active: np.ndarray
    kernel: np.ndarray
    expand: np.ndarray
    width: np.ndarray

    @classmethod
    def decode(cls, space: SearchSpace, X: np.ndarray) -> ArchBatch:
        """Decode canonical genes ``X`` (already checked against the space's bounds)."""
        n_stages = len(space.stages)
        depth_values = [np.asarray(s.depths) for s in space.stages]
        depths = np.column_stack([depth_values[i][X[:, 1 + i]] for i in range(n_stages)]) \
            if n_stages else np.zeros((len(X), 0), dtype=np.int64)
        active = space.active_block_mask(X) if len(X) else np.zeros((0, space.n_blocks), bool)
        knobs = {}
        start = 1 + n_stages
        for knob in ("kernel", "expand"):
            choices = getattr(space, knob + "s")
            if knob not in space.block_knobs:
                knobs[knob] = np.zeros((len(X), 0))
                continue
            k = space.block_knobs.index(knob)
            genes = X[:, start + k * space.n_blocks: start + (k + 1) * space.n_blocks]
            knobs[knob] = np.where(active, np.asarray(choices)[genes], 0)
        width_start = start + len(space.block_knobs) * space.n_blocks
        widths = np.asarray(space.widths if space.widths else [0.0])
        width = widths[X[:, width_start:width_start + space.n_width_slots]]
        return cls(space=space, genes=X, resolution=np.asarray(space.resolutions)[X[:, 0]],
                   depths=depths, active=active, kernel=knobs["kernel"],
                   expand=knobs["expand"], width=width)

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def n_active(self) -> np.ndarray:
        """Active elastic blocks per row, ``(n,)``."""
        return self.active.sum(axis=1)

    @cached_property
    def _archs(self) -> list[ArchConfig]:
        return [self.space.decode(x) for x in self.genes]

    def archs(self) -> list[ArchConfig]:
        """Each row as an :class:`ArchConfig`; built on first call, then shared."""
        return self._archs

    @cached_property
    def _native(self) -> list[dict[str, Any]]:
        return self.space.layout.native_batch(self)

    def native(self) -> list[dict[str, Any]]:
        """Each row in the family's native form (as :meth:`SearchSpace.to_native`), built once."""
        return self._native

    def keys(self) -> list[str]:
        """Each row's :meth:`ArchConfig.key`."""
        return [arch.key() for arch in self.archs()]
