"""Batch-norm recalibration: re-estimate BN running statistics of a (sub)network from data.

Weights shared in a supernet are trained for many subnets, so the running
statistics a subnet inherits were accumulated over other subnets' activations.
Re-estimating them on a few batches of training data (OFA's
``set_running_statistics``) restores most of the subnet's accuracy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["ONE_VALUE_PER_CHANNEL", "has_batch_norm", "one_value_per_channel", "recalibrate_bn"]

M = TypeVar("M", bound=nn.Module)


#: Why images that :func:`one_value_per_channel` finds are refused for recalibration.
ONE_VALUE_PER_CHANNEL = ("the calibration images hold one value per channel (all zeros, say): batch norm cannot "
                         "take statistics from them")


def one_value_per_channel(images: Tensor) -> bool:
    """Whether each channel of ``images`` (N, C, H, W) holds a single value across the whole batch.

    Batch norm recalibrated on such images takes a zero variance and divides
    by its epsilon alone: an exported network's outputs reached 1e11, and a
    job's accuracies were all the same guess.
    """
    return not bool((images.amax(dim=(0, 2, 3)) > images.amin(dim=(0, 2, 3))).any())


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` keeps running statistics that a subnet must re-estimate (ViTs' layer norms do not)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def recalibrate_bn(module: M, batches: Iterable[Any]) -> M:
    """Replace every BN layer's running mean/variance with their average over ``batches``.

    Each batch is an input tensor, or an ``(inputs, targets, ...)`` tuple as a
    DataLoader yields.  BN layers normalise with batch statistics while the
    estimate is accumulated (a cumulative average, ``momentum=None``); every
    other layer runs in eval mode (no dropout).  ``module`` is updated in place
    and returned with its own train/eval mode and BN momenta restored.  A
    module without batch norm is returned untouched, without running a batch.
    A last batch of one image joins the batch before it (:func:`_no_single_image`):
    batch norm cannot take statistics of one value per channel, which a small
    network's last 1x1 feature map gives; 130 images in batches of 64 failed so.
    """
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("recalibrate_bn needs at least one calibration batch; got none")
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # layer-normalised networks (ViTs) have no running statistics to refresh
        return module
    was_training = module.training
    momenta = [bn.momentum for bn in norms]
    try:
        module.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        _run(module, _no_single_image(itertools.chain([first], batches)))
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        module.train(was_training)
    return module


def _inputs(batch: Any) -> Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(inputs, Tensor):
        raise TypeError("a calibration batch must be a tensor or (tensor, ...), "
                        f"got {type(batch).__name__}")
    return inputs


def _no_single_image(batches: Iterable[Any]) -> Iterator[Tensor]:
    """The batches' inputs, with a batch of one image joined to the batch before it."""
    held: Tensor | None = None
    for batch in batches:
        inputs = _inputs(batch)
        if held is not None and len(inputs) == 1:
            held = torch.cat([held, inputs])
            continue
        if held is not None:
            yield held
        held = inputs
    if held is not None:
        yield held


def _run(module: nn.Module, batches: Iterable[Any]) -> None:
    device = next(module.parameters()).device
    with torch.no_grad():
        for batch in batches:
            module(_inputs(batch).to(device))
