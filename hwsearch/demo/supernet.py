"""Registers the demo supernets, so ``create_supernet("demo_mbv3_mnist", checkpoint=...)`` works.

The factories return fresh weights like every other registered supernet; the
trained weights ship beside this file (:func:`hwsearch.demo.demo_files`) and
are loaded by passing that path, exactly as a user loads their own.
"""

from __future__ import annotations

import dataclasses

from hwsearch.demo import DEMO_SUPERNET, DEMO_VIT_SUPERNET, demo_space, demo_vit_space
from hwsearch.space import SearchSpace
from hwsearch.supernets import Supernet, build_supernet, register_supernet


def _with_classes(space: SearchSpace, n_classes: int | None) -> SearchSpace:
    """``space`` with its head resized to ``n_classes`` (``None``: keep the digits' 10)."""
    if n_classes is None:
        return space
    return dataclasses.replace(space, layout=dataclasses.replace(space.layout, n_classes=n_classes))


@register_supernet(DEMO_SUPERNET)
def demo_mbv3_mnist(n_classes: int | None = None) -> Supernet:
    """Small OFA-MobileNetV3 (k357, e346, d234, 16-32 px) for MNIST digits: the built-in demo."""
    return build_supernet(_with_classes(demo_space(), n_classes), name=DEMO_SUPERNET)


@register_supernet(DEMO_VIT_SUPERNET)
def demo_vit_mnist(n_classes: int | None = None) -> Supernet:
    """Small AutoFormer-style ViT (heads 2/4, MLP 2/3, embed 48/64, d345, 28 px) for MNIST digits."""
    return build_supernet(_with_classes(demo_vit_space(), n_classes), name=DEMO_VIT_SUPERNET)
