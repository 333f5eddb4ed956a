"""Batch sources: what the training loop iterates over, one ``Batch`` at a time.

A batch is images (normalised, on the device), labels (UNLABELLED = -1 where a sample
has none) and, when distilling, the teacher's soft targets for exactly those images
(kdcache.cache.targets: full logits or top-k). ``MemoryBatches`` draws one index batch per
step, reads those images through kdcache.data.loader (a DataLoader: sliced from memory, or
decoded from files in workers) and slices labels and targets with the same index;
kdcache.data.streaming streams the targets of caches bigger than memory instead.

With a ``ViewPlan`` (kdcache.data.augment) a source augments its images: it replays the
cache's stored views (each epoch every row shows one of its views, and the batch carries
that view's targets), or draws fresh parameters each epoch (plain random augmentation).
Without one, the code path is the plain one, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import torch

from kdcache.cache.targets import Targets, as_tensors, to_float
from kdcache.data.loader import image_batches
from kdcache.data.samples import ImageData, batch_order, normalize, standardize, to_unit
from kdcache.data.view_schedule import ViewPlan
from kdcache.errors import ConfigError


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) float32, normalised, on device
    labels: torch.Tensor  # (B,) int64, UNLABELLED where a sample has no label
    teacher_logits: Targets | None = None  # (B, C) float32 or TopK, when distilling


class BatchSource(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


def pick_views(targets: Targets, views: torch.Tensor) -> Targets:
    """Targets (n, V, ...) -> (n, ...): row i's view ``views[i]`` (full logits or TopK alike)."""
    return targets[(torch.arange(len(views), device=views.device), views)]


def view_images(images: torch.Tensor, params: torch.Tensor, plan: ViewPlan, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the views with ``params`` (B, P), standardised: augment in [0, 1], then standardise."""
    return standardize(plan.policy.apply(to_unit(images), params), mean, std)


class MemoryBatches:
    """Whole batches sliced from in-memory tensors; one fresh permutation per epoch.

    ``teacher_logits`` (N, C) or a TopK of N rows, when given, must be row-aligned with
    ``data`` and is sliced with the same indices, so each image meets its own targets.
    With ``views`` replaying stored views, ``teacher_logits`` holds every view, (N, V, C),
    and each epoch's batches carry the targets of the view their images show.
    ``rank``/``world_size`` (DDP): ``batch_size`` is the global batch; every rank draws the
    same seeded order and takes its slice of each global batch (``rank_slices``).
    """

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", teacher_logits: Targets | None = None,
                 channels_last: bool = False, views: ViewPlan | None = None, rank: int = 0, world_size: int = 1,
                 workers: int | None = None):
        if teacher_logits is not None and len(teacher_logits) != len(data):
            raise ValueError(f"teacher_logits rows {len(teacher_logits)} != data rows {len(data)}")
        self.device = torch.device(device)
        self.images, self.workers = data.images, workers  # read through kdcache.data.loader, batch by batch
        self.labels = data.labels.to(self.device)
        self.teacher_logits = None if teacher_logits is None else to_float(as_tensors(teacher_logits)).to(self.device)
        self.mean, self.std = data.info.mean, data.info.std
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.views, self.epoch = views, 0
        self.rank, self.world_size = rank, world_size
        rank_batch_size(batch_size, rank, world_size)  # a global batch smaller than the ranks is refused

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` (0-based) next: its order and views are a pure function of seed and epoch.

        The loop calls it before every epoch (as torchvision's references call
        ``sampler.set_epoch``); iterating again without it serves the same epoch again.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return rank_steps(len(self.labels), self.batch_size, self.world_size)

    def _order(self) -> Iterator[torch.Tensor]:
        """This epoch's batches of sample positions: this rank's slice of each global batch.

        Epoch e's permutation is the e-th drawn from a generator seeded with ``seed``: the orders
        of one uninterrupted run, yet any epoch can be served on its own (a resumed run).
        """
        n, generator = len(self.labels), torch.Generator().manual_seed(self.seed)
        if self.shuffle:
            for _ in range(self.epoch):
                torch.randperm(n, generator=generator)
        order = batch_order(n, self.batch_size, self.shuffle, generator)
        return rank_slices(order, self.rank, self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.views is not None:
            yield from self._iter_views()
            return
        order = list(self._order())
        for idx, pixels in zip(order, image_batches(self.images, order, workers=self.workers, device=self.device)):
            idx = idx.to(self.device)
            x = normalize(pixels, self.mean, self.std).contiguous(memory_format=self.memory_format)
            t = None if self.teacher_logits is None else self.teacher_logits[idx]
            yield Batch(x, self.labels[idx], t)

    def _iter_views(self) -> Iterator[Batch]:
        plan, n = self.views, len(self.labels)
        assert plan is not None
        views, params = plan.for_epoch(self.epoch, n)  # (N,) or None, (N, P): this epoch's view of every row
        params = params.to(self.device)
        targets = self.teacher_logits
        if targets is not None and views is not None:
            targets = pick_views(targets, views.to(self.device))  # (N, C): the targets of each row's view
        order = list(self._order())
        for idx, pixels in zip(order, image_batches(self.images, order, workers=self.workers, device=self.device)):
            idx = idx.to(self.device)
            x = view_images(pixels, params[idx], plan, self.mean, self.std)
            yield Batch(x.contiguous(memory_format=self.memory_format), self.labels[idx],
                        None if targets is None else targets[idx])


# -- DDP: a rank's part of each epoch (pure functions of rank and world size; kdcache.dist runs the ranks) --


def rank_slices(batches: Iterable[torch.Tensor], rank: int, world_size: int) -> Iterator[torch.Tensor]:
    """This rank's part of each global batch of sample positions (sizes differ by at most one).

    Every rank walks the same global batches (same seeded order) and takes slice ``rank``
    of each, so one step of W ranks covers exactly the one-process batch. A last global
    batch with fewer samples than ranks is dropped (a rank cannot take an empty step);
    those samples are in a fresh place of the next epoch's order.
    """
    for idx in batches:
        if world_size == 1:
            yield idx
        elif len(idx) >= world_size:
            yield idx.tensor_split(world_size)[rank]


def rank_steps(num_samples: int, batch_size: int, world_size: int) -> int:
    """Steps per epoch of ``rank_slices`` over ``num_samples`` in global batches of ``batch_size``."""
    full, last = divmod(num_samples, batch_size)
    return full + (1 if last >= world_size or (world_size == 1 and last) else 0)


def rank_batch_size(batch_size: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s share of a global batch (the first ``batch_size % world_size`` ranks take one more)."""
    if batch_size < world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch, split over {world_size} ranks: use at "
                          f"least {world_size}")
    return batch_size // world_size + (1 if rank < batch_size % world_size else 0)

