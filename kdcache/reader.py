"""Streaming a logit cache larger than memory in a shuffled order, block by block.

Random access one row at a time is what makes big HDF5 caches slow (one chunk read
and checksum per row). This reader never does that:

1. the wanted rows are grouped into contiguous **blocks** aligned to the cache's HDF5
   chunks, and each block is read with one call (one chunk read, one checksum);
2. each epoch the blocks are visited in a fresh random order (``seed``, ``epoch``);
3. ``buffer_blocks`` blocks at a time are pooled in a buffer whose rows are shuffled.

So an epoch is a permutation of all rows, each exactly once, read at nearly
sequential speed, with memory bounded by one buffer (``buffer_blocks`` chunks,
~16 MiB by default) per reader process, whatever the size of the file.

``LogitStream`` is a torch ``IterableDataset`` yielding shuffled buffers; it works in
DataLoader worker processes (each opens its own cache handle lazily, in its own
process; the order does not depend on how many) and takes a ``rank``/``world_size``
partition (disjoint sets of blocks, together all of them) for distributed training;
ranks' shares differ by at most one block, so a distributed loop must still even out
its step counts (StreamingBatches gives every rank the same number of full batches). ``iter_batches`` cuts its
buffers into batches of exactly ``batch_size`` rows; ``StreamingBatches`` (a train.fit
batch source) pairs them with the in-memory images of the same samples. ``ConcatStream``
is one such stream over several caches (a labelled cache and transfer caches, see
kdcache.transfer): their blocks share one random order and the same buffers, so every
buffer, and every batch, mixes rows of all of them.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .augment import ViewPlan
from .batches import Batch, pick_views, rank_batch_size, view_images
from .cache import LogitCache
from .config import STREAM_MIN_BLOCKS_PER_RANK
from .errors import CacheError, ConfigError
from .samples import ImageData, normalize
from .targets import Targets, as_numpy, as_tensors, concat, to_float

DEFAULT_BUFFER_BLOCKS = 16


class LogitStream(IterableDataset):
    """Shuffled buffers ``(values (n,), targets of n rows)`` over the rows of a cache (targets as stored: torch).

    Args:
        path: the cache file.
        rows: cache rows to serve (default: all); each is served once per epoch.
        values: what to yield for each of ``rows`` (default: the row numbers), e.g. the
            position of that sample in the in-memory dataset.
        shuffle: False serves the rows in file order (a sequential pass).
        seed: with ``epoch`` (see ``set_epoch``) fixes the order; every rank must use the same seed.
        buffer_blocks: blocks pooled and shuffled together (memory: this many chunks).
        block_rows: rows per block (default: the cache's chunk rows, so a block is one chunk).
        rank, world_size: serve only this rank's share of the blocks (disjoint, together all).
        min_blocks: with the default ``block_rows``, use blocks smaller than a chunk when the
            rows would otherwise make fewer blocks than this (so ranks' shares stay even).
        rdcc_nbytes: HDF5 chunk cache size per handle (0: none; whole-chunk reads do not need one).

    Use as a context manager (or call ``close``) to release the file handle.
    """

    def __init__(self, path: str | os.PathLike, *, rows: np.ndarray | None = None, values: np.ndarray | None = None,
                 shuffle: bool = True, seed: int = 0, buffer_blocks: int = DEFAULT_BUFFER_BLOCKS,
                 block_rows: int | None = None, rank: int = 0, world_size: int = 1, rdcc_nbytes: int = 0,
                 min_blocks: int = 1):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        if buffer_blocks < 1:
            raise ConfigError(f"buffer_blocks must be >= 1, got {buffer_blocks}")
        self.path = os.fspath(path)
        with LogitCache(self.path) as c:  # closed before any fork; workers reopen
            self.num_rows, self.kind = len(c), c.kind
            wanted = self.num_rows if rows is None else len(rows)
            small = max(1, wanted // min_blocks) if min_blocks > 1 else c.chunk_rows
            self.block_rows = int(block_rows or min(c.chunk_rows, small))
            first = c.read_span(0, 1)
            self.full_shape = first.shape[1:] if c.kind == "logits" else None  # ([V,] C)
            self.row_shape = tuple(first.shape[1:] if c.kind == "logits" else first.logits.shape[1:])  # ([V,] C or k)
            self.dtype = np.dtype(c.dtype)
        rows = np.arange(self.num_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        values = rows if values is None else np.asarray(values, dtype=np.int64)
        if rows.shape != values.shape:
            raise ValueError(f"rows {rows.shape} and values {values.shape} differ in shape")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise CacheError(f"{self.path}: asked for rows outside 0..{self.num_rows - 1}")
        order = np.argsort(rows, kind="stable")
        self.rows, self.values = rows[order], values[order]  # sorted by cache row
        if len(self.rows) > 1 and (np.diff(self.rows) == 0).any():
            raise ValueError("rows holds duplicates; each row is served once per epoch")
        # Blocks that hold at least one wanted row, and where their rows sit in self.rows.
        block_of = self.rows // self.block_rows
        self.blocks, self.block_starts = np.unique(block_of, return_index=True)
        self.block_stops = np.append(self.block_starts[1:], len(self.rows))
        self.shuffle, self.seed, self.buffer_blocks = shuffle, seed, buffer_blocks
        self.rank, self.world_size, self.rdcc_nbytes = rank, world_size, rdcc_nbytes
        self.epoch = 0
        self._cache: LogitCache | None = None
        self._fd: int | None = None
        self._pid: int | None = None

    # -- order ------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *key])

    def rank_blocks(self) -> np.ndarray:
        """Positions into ``self.blocks`` that this rank reads this epoch, in reading order."""
        order = self._rng(0).permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
        return order[self.rank::self.world_size]

    def num_rank_rows(self) -> int:
        """Rows this rank serves this epoch (differs between ranks by at most one block)."""
        b = self.rank_blocks()
        return int((self.block_stops[b] - self.block_starts[b]).sum())

    def min_rank_rows(self) -> int:
        """The fewest rows any rank can get in any epoch: its whole-block share made of the smallest blocks.

        What a distributed loop can serve on every rank, every epoch, without padding.
        """
        sizes = np.sort(self.block_stops - self.block_starts)
        return int(sizes[:len(sizes) // self.world_size].sum())

    # -- reading ----------------------------------------------------------------------------------

    def _open(self) -> LogitCache:
        if self._cache is None or self._pid != os.getpid():  # never use a handle opened in another process
            self._cache = LogitCache(self.path, rdcc_nbytes=self.rdcc_nbytes)
            self._fd = os.open(self.path, os.O_RDONLY) if hasattr(os, "posix_fadvise") else None
            self._pid = os.getpid()
        return self._cache

    def close(self) -> None:
        """Release this process's file handles (a stream reopens them if iterated again)."""
        if self._cache is not None and self._pid == os.getpid():
            self._cache.close()
            if self._fd is not None:
                os.close(self._fd)
        self._cache, self._fd = None, None

    def __enter__(self) -> "LogitStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"], state["_pid"], state["_fd"] = None, None, None
        return state

    def prefetch(self, blocks: np.ndarray) -> None:
        """Ask the OS to start reading these blocks' chunks now (posix_fadvise WILLNEED).

        Random block reads are otherwise synchronous: the disk waits while we verify
        checksums and vice versa. Hinting the next buffer while this one is processed
        overlaps the two, which sequential reads get for free from kernel readahead.
        """
        cache = self._open()
        if self._fd is None:
            return
        for b in blocks:
            first = int(self.rows[self.block_starts[b]])
            last = int(self.rows[self.block_stops[b] - 1])
            for offset, size in cache.chunk_byte_ranges(first, last + 1):
                os.posix_fadvise(self._fd, offset, size, os.POSIX_FADV_WILLNEED)

    def read_block(self, b: int, out: np.ndarray | None = None) -> tuple[np.ndarray, Targets]:
        """``(values, targets)`` of the wanted rows of block ``self.blocks[b]``, read in one call per dataset.

        ``out`` (full-logit caches), when given, receives the logits (it must have room for the block's rows).
        NaN/Inf or implausible logits are refused, naming the row.
        """
        s, e = int(self.block_starts[b]), int(self.block_stops[b])
        first, last = int(self.rows[s]), int(self.rows[e - 1])
        span = last - first + 1
        cache = self._open()
        if e - s == span:  # every row of the block is wanted: read straight into ``out``
            targets = cache.read_span(first, last + 1, out=None if out is None else out[:span])
        else:  # the block has rows nobody asked for: read it whole, keep the wanted ones
            targets = cache.read_span(first, last + 1)[self.rows[s:e] - first]
            if out is not None:
                out[:len(targets)] = targets
                targets = out[:len(targets)]
        return self.values[s:e], targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Targets]]:
        mine = self.rank_blocks()
        n = self.buffer_blocks
        groups = [mine[i:i + n] for i in range(0, len(mine), n)]  # buffer k holds groups[k]
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Worker w makes buffers w, w + W, ...; the DataLoader hands them out round-robin, i.e.
        # as buffers 0, 1, 2, ...: the order is the same for any number of workers.
        todo = range(worker, len(groups), workers)
        if self.shuffle and len(todo):  # sequential reads get kernel readahead anyway
            self.prefetch(groups[todo[0]])
        for k in todo:
            if self.shuffle and k + workers < len(groups):
                self.prefetch(groups[k + workers])  # read ahead while this buffer is processed
            values, targets = self._buffer(groups[k])
            if self.shuffle:
                perm = self._rng(1, self.rank, k).permutation(len(values))
                values, targets = values[perm], targets[perm]
            yield torch.from_numpy(values), as_tensors(targets)

    def _buffer(self, group: np.ndarray) -> tuple[np.ndarray, Targets]:
        """The rows of a group of blocks, in one buffer (full logits: one preallocated array, no copies)."""
        size = int((self.block_stops[group] - self.block_starts[group]).sum())
        values = np.empty(size, dtype=np.int64)
        if self.kind == "logits":
            buf = np.empty((size, *self.full_shape), dtype=self.dtype)  # (rows of n blocks, [V,] C)
            off = 0
            for b in group:
                v, _ = self.read_block(int(b), out=buf[off:])
                values[off:off + len(v)] = v
                off += len(v)
            return values, buf
        parts, off = [], 0
        for b in group:
            v, t = self.read_block(int(b))
            values[off:off + len(v)] = v
            off += len(v)
            parts.append(t)
        return values, concat(parts)


class ConcatStream(LogitStream):
    """One shuffled stream over the rows of several caches, each part a ``LogitStream`` yielding its own values.

    The parts' blocks are numbered one after the other and visited in one random order
    (``seed``, epoch), pooled ``buffer_blocks`` at a time and row-shuffled exactly as in a
    single-file stream, so a buffer mixes the parts in proportion to their blocks. Parts must
    hold the same kind of targets (full logits of one shape, or top-k of one k); float16 and
    float32 parts are served as float32.
    """

    def __init__(self, parts: Sequence[LogitStream], *, shuffle: bool = True, seed: int = 0,
                 buffer_blocks: int = DEFAULT_BUFFER_BLOCKS, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        if buffer_blocks < 1:
            raise ConfigError(f"buffer_blocks must be >= 1, got {buffer_blocks}")
        first = parts[0]
        for p in parts[1:]:
            if (p.kind, p.row_shape) != (first.kind, first.row_shape):  # top-k: the same k (and views) too
                raise CacheError(f"{p.path} and {first.path} hold different kinds of targets ({p.kind} "
                                 f"{p.row_shape} vs {first.kind} {first.row_shape}); one stream needs one kind")
        self.parts = list(parts)
        self.path, self.kind, self.full_shape, self.row_shape = first.path, first.kind, first.full_shape, first.row_shape
        self.dtype = np.result_type(*[p.dtype for p in parts])
        self.part_of = np.concatenate([np.full(len(p.blocks), i, dtype=np.int64) for i, p in enumerate(parts)])
        self.local = np.concatenate([np.arange(len(p.blocks), dtype=np.int64) for p in parts])
        sizes = np.concatenate([p.block_stops - p.block_starts for p in parts])
        self.block_stops = np.cumsum(sizes)
        self.block_starts = self.block_stops - sizes
        self.blocks = np.arange(len(sizes))
        self.shuffle, self.seed, self.buffer_blocks = shuffle, seed, buffer_blocks
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self._cache, self._fd, self._pid = None, None, None

    def read_block(self, b: int, out: np.ndarray | None = None) -> tuple[np.ndarray, Targets]:
        part = self.parts[int(self.part_of[b])]
        if out is None or part.dtype == self.dtype:
            return part.read_block(int(self.local[b]), out=out)
        values, targets = part.read_block(int(self.local[b]))  # float16 part: converted into the float32 buffer
        out[:len(targets)] = targets
        return values, out[:len(targets)]

    def prefetch(self, blocks: np.ndarray) -> None:
        for i, part in enumerate(self.parts):
            mine = self.local[blocks[self.part_of[blocks] == i]]
            if len(mine):
                part.prefetch(mine)

    def close(self) -> None:
        for part in self.parts:
            part.close()


def iter_batches(stream: LogitStream, batch_size: int, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, Targets]]:
    """Batches of exactly ``batch_size`` rows ``(values (B,), targets of B rows)`` (the last may be short).

    With ``num_workers`` > 0, buffers are read in that many DataLoader worker processes
    (reading overlaps the consumer's compute), interleaved in a fixed order.
    """
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers,
                        prefetch_factor=2 if num_workers else None, persistent_workers=False)
    carry: tuple[torch.Tensor, Targets] | None = None  # < batch_size rows left from the last buffer
    for values, targets in loader:
        start = 0
        if carry is not None:  # complete the carried batch with the head of this buffer (small copy)
            need = batch_size - len(carry[0])
            v = torch.cat([carry[0], values[:need]])
            t = as_tensors(concat([as_numpy(carry[1]), as_numpy(targets[:need])]))
            if len(v) < batch_size:
                carry = (v, t)
                continue
            yield v, t
            carry, start = None, need
        full = start + (len(values) - start) // batch_size * batch_size
        for s in range(start, full, batch_size):  # views into the buffer, no copy
            yield values[s:s + batch_size], targets[s:s + batch_size]
        if full < len(values):
            carry = (values[full:], targets[full:])
    if carry is not None:
        yield carry


class StreamingBatches:
    """A train.fit batch source: targets streamed from the cache, images gathered from memory.

    ``rows[i]`` is the cache row of sample ``i`` of ``data`` (LogitCache.align). Each
    epoch is a fresh shuffled order (``seed``, epoch number); each sample meets its own
    targets because the stream carries the sample's position in ``data`` along with them.
    With ``views`` (kdcache.augment.ViewPlan) the stream serves every view of a row,
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
                 rank: int = 0, world_size: int = 1, views: ViewPlan | None = None):
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
        self.images, self.labels = data.images.to(self.device), data.labels.to(self.device)
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

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.stream.num_rank_rows() / self.batch_size)

    def _batches(self) -> Iterator[tuple[torch.Tensor, Targets]]:
        """This epoch's (positions, targets) batches; with several ranks, the same number on each."""
        batches = iter_batches(self.stream, self.batch_size, self.num_workers)
        return batches if self.steps is None else itertools.islice(batches, self.steps)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.stream.set_epoch(epoch)
        self.epoch += 1
        if self.views is not None:
            yield from self._iter_views(epoch)
            return
        for pos, targets in self._batches():
            pos = pos.to(self.device)
            x = normalize(self.images[pos], self.mean, self.std).contiguous(memory_format=self.memory_format)
            yield Batch(x, self.labels[pos], to_float(targets).to(self.device))

    def _iter_views(self, epoch: int) -> Iterator[Batch]:
        plan = self.views
        assert plan is not None
        views, params = plan.for_epoch(epoch, len(self.labels))  # (N,) or None, (N, P), by position in data
        params = params.to(self.device)
        views = None if views is None else views.to(self.device)
        for pos, targets in self._batches():
            pos = pos.to(self.device)
            t = to_float(targets).to(self.device)
            if views is not None:
                t = pick_views(t, views[pos])  # (B, V, C) -> the view each sample shows this epoch
            x = view_images(self.images[pos], params[pos], plan, self.mean, self.std)
            yield Batch(x.contiguous(memory_format=self.memory_format), self.labels[pos], t)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "StreamingBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
