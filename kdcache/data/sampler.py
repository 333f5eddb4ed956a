"""Which samples each step reads: one order rule for every job, and one rule for what a rank takes.

``kdcache.dist.rank_share(items, rank, world_size)`` is every partition between ranks in kdcache:
part ``rank`` of ``items`` cut into ``world_size`` contiguous parts whose sizes differ by at most
one (the first parts take the extra), ``torch.tensor_split``'s cut. It is applied to different things:

- a dump's batches: each rank runs a contiguous run of the one-process dump's whole batches,
  so the assembled cache equals a one-process dump bit for bit (kdcache.cache.shards);
- an evaluation's rows: each rank a contiguous shard, the sums reduced (torchvision's reference
  ``evaluate`` with a DistributedSampler);
- each training step's global batch: every rank draws the same seeded order and takes its part
  of every global batch, so one step of W ranks covers exactly the one-process batch.

``EpochSampler`` is the one sampler: a DataLoader ``batch_sampler`` whose epoch ``e`` is a pure
function of (seed, e), set explicitly with ``set_epoch`` (as torchvision's references call
``DistributedSampler.set_epoch``), never by a hidden counter; a resumed run serves any epoch alone.

Over a cache the order is **block-shuffled**: positions are cut into blocks of the cache's chunk
rows, the blocks are visited in a random order, and the rows of ``buffer_blocks`` blocks at a time
are shuffled together (a shuffle buffer, as webdataset's). Targets read from the file
(kdcache.cache.streamed_targets.StreamedTargets) then cost one chunk read per block, and targets held in
memory are read in the very same order, so where the targets live never changes a result.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from kdcache.cache.stream import DEFAULT_BUFFER_BLOCKS

from kdcache.dist import rank_share
from kdcache.errors import ConfigError


def rank_batch_size(batch_size: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s share of a global batch of ``batch_size`` (the first ``batch_size % world_size`` take one more)."""
    if batch_size < world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch, split over {world_size} ranks: use at "
                          f"least {world_size}")
    return len(rank_share(range(batch_size), rank, world_size))


def rank_steps(num_samples: int, batch_size: int, world_size: int) -> int:
    """Steps per epoch of an EpochSampler over ``num_samples`` in global batches of ``batch_size``.

    A last global batch with fewer samples than ranks is dropped (a rank cannot take an empty
    step); those samples fall somewhere else in the next epoch's order.
    """
    full, last = divmod(num_samples, batch_size)
    return full + (1 if last >= world_size or (world_size == 1 and last) else 0)


class EpochSampler(Sampler):
    """Batches of sample positions for one epoch at a time: this rank's part of each global batch.

    Args:
        num_samples: positions 0..num_samples-1 of the dataset.
        batch_size: the global batch (split over ranks with ``rank_share``).
        shuffle: a fresh permutation each epoch; False: 0..n-1 in order (evaluation, dumps).
        seed: epoch ``e``'s permutation is the e-th one drawn from a generator seeded with it:
            the orders of one uninterrupted run, yet any epoch can be served on its own.
        rank, world_size: which part of each global batch this process takes.
        block_rows: shuffle block by block (see the module docstring) in blocks of this many
            positions, ``DEFAULT_BUFFER_BLOCKS`` blocks to a shuffle buffer; None: one permutation.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, block_rows: int | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: give a positive number of samples")
        rank_batch_size(batch_size, rank, world_size)  # a global batch smaller than the ranks is refused
        self.num_samples, self.batch_size, self.shuffle, self.seed = int(num_samples), batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.block_rows = None if block_rows is None else max(int(block_rows), 1)

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` (0-based) next; iterating again without it serves the same epoch again."""
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        """(num_samples,) int64: this epoch's global order of positions."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        if self.block_rows is not None:
            return torch.from_numpy(block_order(self.num_samples, self.block_rows, self.seed, self.epoch))
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):
            torch.randperm(self.num_samples, generator=generator)
        return torch.randperm(self.num_samples, generator=generator)

    def global_batches(self) -> Iterator[torch.Tensor]:
        """This epoch's global batches, one per step (every rank draws the same ones)."""
        for batch in self.order().split(self.batch_size):
            if self.world_size == 1 or len(batch) >= self.world_size:
                yield batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.global_batches():
            yield batch if self.world_size == 1 else rank_share(batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return rank_steps(self.num_samples, self.batch_size, self.world_size)

    def __repr__(self) -> str:
        order = f"shuffled, seed {self.seed}" if self.shuffle else "in order"
        if self.shuffle and self.block_rows is not None:
            order += f", blocks of {self.block_rows}"
        ranks = f", rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        return f"EpochSampler({self.num_samples} samples, batch {self.batch_size}, {order}{ranks})"


def block_order(num_samples: int, block_rows: int, seed: int, epoch: int,
                buffer_blocks: int = DEFAULT_BUFFER_BLOCKS) -> np.ndarray:
    """(num_samples,) int64: epoch ``epoch``'s block-shuffled order (see the module docstring), a pure function of
    (seed, epoch): blocks ``[b * block_rows, (b + 1) * block_rows)`` in a random order, rows shuffled within each
    buffer of ``buffer_blocks`` consecutive blocks of that order."""
    rng = np.random.default_rng([int(seed) % 2**64, int(epoch), 0x6B64626F])  # its own stream ("kdbo")
    blocks = rng.permutation(-(-num_samples // block_rows))
    out = []
    for k in range(0, len(blocks), buffer_blocks):
        rows = np.concatenate([np.arange(b * block_rows, min((b + 1) * block_rows, num_samples))
                               for b in blocks[k:k + buffer_blocks]])
        out.append(rows[rng.permutation(len(rows))])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
