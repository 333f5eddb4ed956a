"""Batch sources: what the training loop iterates over, one ``Batch`` at a time.

A batch is images (normalised, on the device), labels (UNLABELLED = -1 where a sample
has none) and, when distilling, the teacher's soft targets for exactly those images
(kdcache.targets: full logits or top-k). ``MemoryBatches`` slices everything from
in-memory tensors with one index per batch; kdcache.reader streams the targets of
caches bigger than memory instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from .samples import ImageData, batch_order, normalize
from .targets import Targets, as_tensors, to_float


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) float32, normalised, on device
    labels: torch.Tensor  # (B,) int64, UNLABELLED where a sample has no label
    teacher_logits: Targets | None = None  # (B, C) float32 or TopK, when distilling


class BatchSource(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


class MemoryBatches:
    """Whole batches sliced from in-memory tensors; one fresh permutation per epoch.

    ``teacher_logits`` (N, C) or a TopK of N rows, when given, must be row-aligned with
    ``data`` and is sliced with the same indices, so each image meets its own targets.
    """

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", teacher_logits: Targets | None = None,
                 channels_last: bool = False):
        if teacher_logits is not None and len(teacher_logits) != len(data):
            raise ValueError(f"teacher_logits rows {len(teacher_logits)} != data rows {len(data)}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.teacher_logits = None if teacher_logits is None else to_float(as_tensors(teacher_logits)).to(self.device)
        self.mean, self.std = data.info.mean, data.info.std
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for idx in batch_order(len(self.labels), self.batch_size, self.shuffle, self.generator):
            idx = idx.to(self.device)
            x = normalize(self.images[idx], self.mean, self.std).contiguous(memory_format=self.memory_format)
            t = None if self.teacher_logits is None else self.teacher_logits[idx]
            yield Batch(x, self.labels[idx], t)
