"""Which images recalibrate batch norm, which measure accuracy, and what the result depends on.

A subnet's accuracy depends on more than the validation files: on the
weights, on the preprocessing, on which images recalibrated its BN and on
which (and how many) images it was scored on.  :class:`DataPlan` fixes all of
these choices once for a job; :meth:`DataPlan.open` draws the two parts
(:class:`EvalSplit`) and :meth:`DataPlan.dataset_id` names them for the
accuracy store, so a job with another subset, calibration split or
preprocessing never reuses accuracies measured under different choices,
and one with the same choices always does.

Calibration images come either from a separate source (``calibration``: a
folder or array file, e.g. a slice of the training set, as OFA recalibrates
on training images) or, by default, from a seeded random part of the
validation data that is then left out of scoring, so the two never mix.
``subset`` scores a seeded random sample of the validation images: the
accuracy's confidence interval (:func:`wilson_interval`) says what that
saves in time costs in precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from devices.hostlock import WaitFn

__all__ = ["ARRAY_PREPROCESSING", "DataPlan", "EvalSplit", "wilson_interval"]

#: How array files become images, part of every key of what was computed from them.  v2: integer
#: pixels of any width are 8-bit values (v1 divided only uint8 by 255).
ARRAY_PREPROCESSING = "arrays-v2:stored={size},bilinear-antialias-to-r;imagenet-mean-std"


@dataclass(frozen=True)
class EvalSplit:
    """BN calibration images and validation images, drawn once; ``identity`` is what they are."""

    calibration: Any  # hwsearch.data.Images
    validation: Any  # hwsearch.data.Images
    identity: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.calibration) + len(self.validation)

    def interval(self, accuracy: float, z: float = 1.96) -> tuple[float, float]:
        """The accuracy's Wilson interval over this split's validation images."""
        return wilson_interval(round(accuracy * len(self.validation)), len(self.validation), z)


@dataclass(frozen=True)
class DataPlan:
    """How a job's validation data is read and divided.

    ``dataset``: the validation folder or array file.  ``calibration``: an
    optional separate source of BN calibration images (default: split off
    ``dataset``).  ``n_calibration``: how many images recalibrate BN (at
    most half of ``dataset`` when split off it).  ``subset``: how many
    validation images are scored (default: all that remain).  ``seed``
    fixes every random choice.
    """

    dataset: str
    calibration: str | None = None
    n_calibration: int = 500
    subset: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_calibration < 1:
            raise ValueError(f"n_calibration must be at least 1, got {self.n_calibration}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be at least 1 image, got {self.subset}")

    def open(self, *, size: int, on_wait: WaitFn | None = None) -> EvalSplit:
        """Open the data (folders streamed, arrays loaded at ``size``) and draw the two parts.

        Loading resizes every image of an array file, so it is a unit of the
        host's compute (:func:`devices.hostlock.compute_unit`) that waits
        while a local measurement session runs; ``on_wait`` hears that wait.
        """
        from devices.hostlock import compute_unit

        with compute_unit(on_wait=on_wait):
            return self._opened(size)

    def _opened(self, size: int) -> EvalSplit:
        """:meth:`open`'s work."""
        from hwsearch.data import open_images

        data = open_images(self.dataset, size=size)
        rng = np.random.default_rng(self.seed)
        if self.calibration is None:
            n_calibration = min(self.n_calibration, len(data) // 2)
            if n_calibration < 1:
                raise ValueError(f"{self.dataset}: {len(data)} image(s) cannot be split into "
                                 "calibration and validation parts")
            order = rng.permutation(len(data))
            calibration = data.take(np.sort(order[:n_calibration]))
            remaining = order[n_calibration:]
        else:
            source = open_images(self.calibration, size=size)
            n_calibration = min(self.n_calibration, len(source))
            calibration = source.take(np.sort(rng.permutation(len(source))[:n_calibration]))
            remaining = rng.permutation(len(data))
        n_validation = len(remaining) if self.subset is None else min(self.subset, len(remaining))
        validation = data.take(np.sort(remaining[:n_validation]))
        return EvalSplit(calibration, validation, self._identity(data, size, n_calibration,
                                                                  n_validation))

    def _identity(self, data: Any, size: int, n_calibration: int, n_validation: int
                  ) -> dict[str, Any]:
        """What the accuracies depend on besides file contents and weights (see the module docstring)."""
        from hwsearch.imagefolder import ImageFolder
        from hwsearch.preprocess import PREPROCESSING_ID

        streamed = isinstance(data, ImageFolder)
        # Folders named by class index were numbered in sorted order before: their accuracies differ.
        numbered = {"labels": "folder numbers"} if streamed and data.numbered_by_name else {}
        return {"preprocessing": PREPROCESSING_ID if streamed else
                ARRAY_PREPROCESSING.format(size=size),
                "calibration": "split" if self.calibration is None else "separate",
                "n_calibration": n_calibration, "n_validation": n_validation, "seed": self.seed, **numbered}

    def dataset_id(self, split: EvalSplit, *, checkpoint: str | None = None,
                   extra: Mapping[str, Any] | None = None) -> str:
        """The accuracy store's key for ``split``: file contents, weights and every choice above."""
        from hwsearch.jobs.spec import content_id

        sources = (self.dataset, self.calibration) if self.calibration else (self.dataset,)
        return content_id(*sources, checkpoint,
                          extra={**dict(extra or {}), "data": dict(split.identity)})


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: ``correct`` of ``n`` (95% for ``z=1.96``).

    Chosen over the normal approximation because it stays inside [0, 1] and
    keeps its coverage near 0 and 1 and on small subsets.  It bounds the
    accuracy on the population the images were drawn from; against the full
    folder a subset's interval is conservative (no finite-population
    correction).
    """
    if n < 1:
        raise ValueError(f"an interval needs at least one image, got n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be in [0, {n}], got {correct}")
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
