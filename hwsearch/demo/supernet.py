"""Registers the demo supernet, so ``create_supernet("demo_mbv3_mnist", checkpoint=...)`` works.

The factory returns fresh weights like every other registered supernet; the
trained weights ship beside this file (:data:`hwsearch.demo.DEMO_CHECKPOINT`)
and are loaded by passing that path, exactly as a user loads their own.
"""

from __future__ import annotations

import dataclasses

from hwsearch.demo import DEMO_SUPERNET, demo_space
from hwsearch.supernets import Supernet, build_supernet, register_supernet


@register_supernet(DEMO_SUPERNET)
def demo_mbv3_mnist(n_classes: int | None = None) -> Supernet:
    """Small OFA-MobileNetV3 (k357, e346, d234, 16-32 px) for MNIST digits: the built-in demo."""
    space = demo_space()
    if n_classes is not None:
        layout = dataclasses.replace(space.layout, n_classes=n_classes)
        space = dataclasses.replace(space, layout=layout)
    return build_supernet(space, name=DEMO_SUPERNET)
