"""A 1,000-class task a 2-core machine can train a teacher for in minutes, with realistically peaked outputs.

The classes have structure, like ImageNet's 120 dog breeds: 100 groups of 10 classes. Each
group has a centre in R^64, each class a centre near its group's, and each class two modes
near its own centre (so no linear model separates the classes: the teacher needs its hidden
layers). A sample is a mode plus isotropic noise, quantised to uint8 and served as a 1x8x8
"image", so kdcache's data path (ImageData, the loader, caches, alignment) runs unchanged.
Confusions happen mostly between the 10 classes of a group: the teacher's soft targets carry
the "which sibling does this resemble" knowledge distillation is about, and its outputs on its
training rows are peaked as a trained ImageNet teacher's are (measured at full scale: mean top-1
probability ~0.9, entropy ~0.4 nats, the top 10 classes hold ~99% of the mass at T = 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdcache.data.samples import ImageData, normalize
from kdcache.identity import DatasetInfo, fingerprint_for, sample_ids_for

SIDE = 8  # features are served as a 1 x SIDE x SIDE image
SCALE, OFFSET = 24.0, 128.0  # feature -> uint8 pixel


@dataclass(frozen=True)
class TaskConfig:
    classes: int = 1000
    groups: int = 100
    modes: int = 2
    train_per_class: int = 60  # 60,000 training rows at 1,000 classes
    test_per_class: int = 10
    group_spread: float = 1.0  # std of group centres
    class_spread: float = 0.6  # std of class centres around their group's
    mode_spread: float = 0.6  # std of a class's modes around its centre
    noise: float = 1.7  # std of a sample around its mode
    seed: int = 0
    dim: int = SIDE * SIDE  # input features; above 64 the centres' spreads shrink by sqrt(64 / dim), so the
    # distances between centres (and the task's difficulty) stay about those at 64, while the classes' centres,
    # and so the teacher's logits, span dim dimensions instead of 64 (benchmarks.lowrank's not-low-rank teacher)
    centre_scale: float | None = None  # that shrink factor when given (1: the 64-dim spreads, farther apart at dim)


def make_task(cfg: TaskConfig) -> tuple[ImageData, ImageData]:
    """(train, test) splits in memory, shuffled, both with every class."""
    g = np.random.default_rng(cfg.seed)
    dim, width = cfg.dim, cfg.dim // SIDE
    if dim % SIDE:
        raise ValueError(f"dim must be a multiple of {SIDE}, got {dim}")
    shrink = cfg.centre_scale if cfg.centre_scale is not None else \
        1.0 if dim == SIDE * SIDE else float(np.sqrt(SIDE * SIDE / dim))
    groups = g.normal(0, cfg.group_spread * shrink, (cfg.groups, dim))
    centres = groups[np.arange(cfg.classes) * cfg.groups // cfg.classes] + g.normal(0, cfg.class_spread * shrink,
                                                                                     (cfg.classes, dim))
    modes = centres[:, None] + g.normal(0, cfg.mode_spread * shrink, (cfg.classes, cfg.modes, dim))

    def split(name: str, per_class: int) -> ImageData:
        labels = np.repeat(np.arange(cfg.classes), per_class)
        g.shuffle(labels)
        x = modes[labels, g.integers(0, cfg.modes, len(labels))] + g.normal(0, cfg.noise, (len(labels), dim))
        images = np.clip(np.round(x * SCALE + OFFSET), 0, 255).astype(np.uint8).reshape(-1, 1, SIDE, width)
        info = DatasetInfo(name=f"synthetic-{cfg.classes}", split=name, num_samples=len(labels),
                           class_names=tuple(f"class{i}" for i in range(cfg.classes)), in_channels=1,
                           image_size=(SIDE, width), mean=(OFFSET / 255,), std=(SCALE * 2.15 / 255,),
                           fingerprint=fingerprint_for(images, labels))
        return ImageData(images=torch.from_numpy(images), labels=torch.from_numpy(labels.astype(np.int64)),
                         indices=torch.arange(len(labels)), sample_ids=sample_ids_for(images, labels), info=info)

    return split("train", cfg.train_per_class), split("test", cfg.test_per_class)


def mlp(hidden: tuple[int, ...], classes: int, inputs: int = SIDE * SIDE) -> nn.Module:
    """``inputs`` (64) features -> ReLU hidden layers -> classes logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


@torch.inference_mode()
def logits_of(model: nn.Module, data: ImageData, batch: int = 4096) -> np.ndarray:
    """The model's raw logits (N, C) float32 for every row of ``data`` (eval mode), as dump-logits computes them."""
    model.eval()
    return torch.cat([model(normalize(data.images[i:i + batch], data.info.mean, data.info.std)).float()
                      for i in range(0, len(data), batch)]).numpy()
