"""A train.fit batch source over a cache bigger than memory: targets streamed, images read alongside.

kdcache.cache.stream streams a cache's targets in block-shuffled order (every row once per epoch,
read at near-sequential speed); ``StreamingBatches`` pairs each streamed row with its image
(and, with a ViewPlan, replays the view the epoch's schedule gives it), so train-student
trains from such a cache exactly as from one held in memory.
"""
from __future__ import annotations

import collections
import itertools
import math
import os
from typing import Iterator, Sequence

import numpy as np
import torch

from kdcache.cache.stream import (
    DEFAULT_BUFFER_BLOCKS,
    ConcatStream,
    LogitStream,
    iter_batches,
)
from kdcache.cache.targets import Targets, to_float
from kdcache.config import STREAM_MIN_BLOCKS_PER_RANK
from kdcache.data.batches import Batch, pick_views, rank_batch_size, view_images
from kdcache.data.loader import image_batches
from kdcache.data.samples import ImageData, normalize
from kdcache.data.view_schedule import ViewPlan
from kdcache.errors import ConfigError


class StreamingBatches:
    """A train.fit batch source: targets streamed from the cache, images read for the same rows (kdcache.data.loader).

    ``rows[i]`` is the cache row of sample ``i`` of ``data`` (LogitCache.align). Each
    epoch is a fresh shuffled order (``seed``, epoch number); each sample meets its own
    targets because the stream carries the sample's position in ``data`` along with them.
    With ``views`` (kdcache.data.view_schedule.ViewPlan) the stream serves every view of a row,
    (B, V, ...), and each batch keeps the view the epoch's schedule gives that sample, whose
    image is replayed from the stored parameters (or fresh parameters, without stored views).
    Several caches (``cache_path`` and ``rows`` as sequences) serve consecutive parts of
    ``data`` (its first ``len(rows[0])`` samples from the first cache, ...) through one
    ``ConcatStream``. Close it (or use it as a context manager) when training is done.

    ``rank``/``world_size`` (DDP): ``batch_size`` is the global batch, this rank reads its
    share of the blocks in batches of its share of the global batch, and every rank takes
    the same number of full steps each epoch, as many as the smallest possible share allows
    (``LogitStream.min_rank_rows``; the blocks are cut small enough that this drops at most
    ~1/64 of a share, different rows each epoch). One process reads every row, every epoch.
    """

    def __init__(self, data: ImageData, cache_path: str | os.PathLike | Sequence[str | os.PathLike],
                 rows: np.ndarray | Sequence[np.ndarray], batch_size: int, *,
                 seed: int = 0, device: torch.device | str = "cpu", num_workers: int = 0,
                 buffer_blocks: int = DEFAULT_BUFFER_BLOCKS, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, views: ViewPlan | None = None, workers: int | None = None):
        min_blocks = STREAM_MIN_BLOCKS_PER_RANK * world_size if world_size > 1 else 1
        if isinstance(cache_path, (str, os.PathLike)):
            self.stream = LogitStream(cache_path, rows=rows, values=np.arange(len(data)), shuffle=True, seed=seed,
                                      buffer_blocks=buffer_blocks, rank=rank, world_size=world_size,
                                      min_blocks=min_blocks)
        else:
            if sum(len(r) for r in rows) != len(data):
                raise ValueError(f"the caches' rows ({[len(r) for r in rows]}) do not add up to the {len(data)} samples")
            offsets = np.cumsum([0] + [len(r) for r in rows])
            parts = [LogitStream(p, rows=r, values=np.arange(o, o + len(r)), shuffle=True, seed=seed,
                                 buffer_blocks=buffer_blocks, min_blocks=min_blocks)
                     for p, r, o in zip(cache_path, rows, offsets)]
            self.stream = ConcatStream(parts, shuffle=True, seed=seed, buffer_blocks=buffer_blocks, rank=rank,
                                       world_size=world_size)
        self.device = torch.device(device)
        self.images, self.labels = data.images, data.labels.to(self.device)
        self.workers = workers  # image readers (kdcache.data.loader); num_workers reads the cache
        self.mean, self.std = data.info.mean, data.info.std
        self.batch_size = rank_batch_size(batch_size, rank, world_size)
        self.num_workers = num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0
        self.views = views
        self.steps: int | None = None  # every rank's step count, when there are several ranks
        if world_size > 1:
            self.steps = self.stream.min_rank_rows() // rank_batch_size(batch_size, 0, world_size)
            if self.steps == 0:
                raise ConfigError(f"{len(data)} streamed rows over {world_size} ranks leave no full batch of "
                                  f"{batch_size // world_size} per rank; use fewer ranks or a smaller --batch-size")

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` (0-based) next: its block order and views are a pure function of seed and epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.stream.num_rank_rows() / self.batch_size)

    def _batches(self) -> Iterator[tuple[torch.Tensor, Targets, torch.Tensor]]:
        """This epoch's (positions, targets, uint8 images) batches; with several ranks, the same number on each.

        The positions the stream produces are the image loader's batch sampler; the loader
        yields in order, a few batches behind, so each batch's targets wait in a FIFO for its images.
        """
        batches = iter_batches(self.stream, self.batch_size, self.num_workers)
        batches = batches if self.steps is None else itertools.islice(batches, self.steps)
        pending: collections.deque = collections.deque()

        def positions() -> Iterator[torch.Tensor]:
            for pos, targets in batches:
                pending.append((pos, targets))
                yield pos
        for pixels in image_batches(self.images, positions(), workers=self.workers, device=self.device):
            pos, targets = pending.popleft()
            yield pos, targets, pixels

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.stream.set_epoch(epoch)
        if self.views is not None:
            yield from self._iter_views(epoch)
            return
        for pos, targets, pixels in self._batches():
            pos = pos.to(self.device)
            x = normalize(pixels, self.mean, self.std).contiguous(memory_format=self.memory_format)
            yield Batch(x, self.labels[pos], to_float(targets).to(self.device))

    def _iter_views(self, epoch: int) -> Iterator[Batch]:
        plan = self.views
        assert plan is not None
        views, params = plan.for_epoch(epoch, len(self.labels))  # (N,) or None, (N, P), by position in data
        params = params.to(self.device)
        views = None if views is None else views.to(self.device)
        for pos, targets, pixels in self._batches():
            pos = pos.to(self.device)
            t = to_float(targets).to(self.device)
            if views is not None:
                t = pick_views(t, views[pos])  # (B, V, C) -> the view each sample shows this epoch
            x = view_images(pixels, params[pos], plan, self.mean, self.std)
            yield Batch(x.contiguous(memory_format=self.memory_format), self.labels[pos], t)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "StreamingBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
