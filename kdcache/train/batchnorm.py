"""BatchNorm running statistics that are settled before a model is evaluated.

In train mode BatchNorm normalises with each batch's statistics and keeps an exponential moving average
of them (``momentum``: 0.1 in most torchvision models, 0.01 in MobileNetV3) that eval mode uses instead.
With few steps an epoch that average still holds its initial values and weights of epochs ago: a
torchvision resnet18 on 421 photos (4 steps an epoch at batch 128, 20 updates in all) reached 80%
training accuracy and 33.6% test (chance), and recomputing the statistics on the same weights gave 73.8%.
``settle_batchnorm`` recomputes them as "precise BN" does (Wu & Johnson 2021, fvcore's ``update_bn_stats``;
``torch.optim.swa_utils.update_bn``): reset, then a plain average over one pass of the training batches in
train mode, without gradients; dropout stays off, so the pass draws nothing from the RNG.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from kdcache.data.samples import Batch
from kdcache.device import autocast

# The running statistics are stale when more than this share of them predates the last epoch's steps:
# (1 - momentum) ** steps_per_epoch > STALE_SHARE. At momentum 0.1 that is an epoch of fewer than 44 steps,
# at MobileNetV3's 0.01 fewer than 459; teacher-cnn on Fashion-MNIST (469 steps, 0.1) is never settled.
STALE_SHARE = 0.01


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (what eval mode uses)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def batchnorm_updates(model: nn.Module) -> int | None:
    """How many batches the running statistics have seen (the most of any layer); None without BatchNorm."""
    counts = [int(m.num_batches_tracked) for m in batchnorm_layers(model) if m.num_batches_tracked is not None]
    return max(counts) if counts else None


def is_stale(model: nn.Module, steps_per_epoch: int) -> bool:
    """Whether an epoch of ``steps_per_epoch`` steps leaves running statistics that eval mode should not trust."""
    for m in batchnorm_layers(model):
        if m.momentum is None or (1.0 - m.momentum) ** steps_per_epoch > STALE_SHARE:  # None: a plain average
            return True
    return False


@torch.no_grad()
def settle_batchnorm(model: nn.Module, batches: Iterable[Batch], precision: str = "fp32") -> int:
    """Recompute every BatchNorm layer's running statistics as the plain average over ``batches``.

    Only the BatchNorm layers run in train mode (dropout and the rest in eval mode); the model's weights
    are untouched and its mode is restored. Returns the number of batches seen.
    """
    layers = batchnorm_layers(model)
    was_training = model.training
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
        m.train()
    n = 0
    try:
        for batch in batches:
            with autocast(batch.images.device, precision):
                model(batch.images)
            n += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return n
