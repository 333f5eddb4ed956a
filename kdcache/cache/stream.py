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
process; the order does not depend on how many). ``iter_batches`` cuts its buffers into batches of exactly ``batch_size``
rows. ``ConcatStream`` is one such stream over several caches: their blocks share one random
order and the same buffers. These serve whole-file passes (benchmarks, tools).

Training reads kdcache.cache.streamed_targets.StreamedTargets instead (rows read as batches ask).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kdcache.cache import LogitCache
from kdcache.cache.lowrank import Codes
from kdcache.cache.targets import Targets, as_numpy, as_tensors, concat
from kdcache.errors import CacheError, ConfigError
from kdcache.workers import quiet_worker

DEFAULT_BUFFER_BLOCKS = 16
DECODE_ROWS = 2048  # low-rank rows decoded at a time (8 MB of float32 logits at 1,000 classes)


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
        rdcc_nbytes: HDF5 chunk cache size per handle (0: none; whole-chunk reads do not need one).

    Use as a context manager (or call ``close``) to release the file handle.
    """

    def __init__(self, path: str | os.PathLike, *, rows: np.ndarray | None = None, values: np.ndarray | None = None,
                 shuffle: bool = True, seed: int = 0, buffer_blocks: int = DEFAULT_BUFFER_BLOCKS,
                 block_rows: int | None = None, rdcc_nbytes: int = 0):
        if buffer_blocks < 1:
            raise ConfigError(f"buffer_blocks must be >= 1, got {buffer_blocks}")
        self.path = os.fspath(path)
        with LogitCache(self.path) as c:  # closed before any fork; workers reopen
            self.num_rows, self.kind = len(c), c.kind
            self.block_rows = int(block_rows or c.chunk_rows)
            first = c.read_span(0, 1)
            self.full_shape = first.shape[1:] if c.kind == "logits" else None  # ([V,] C)
            self.row_shape = tuple(first.shape[1:] if c.kind == "logits" else first.logits.shape[1:])  # ([V,] C or k)
            self.dtype = np.dtype(c.dtype)
            self.lowrank = c.meta.targets == "lowrank"  # buffers of codes, decoded DECODE_ROWS at a time
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
        self.rdcc_nbytes = rdcc_nbytes
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

    def block_order(self) -> np.ndarray:
        """Positions into ``self.blocks`` in this epoch's reading order."""
        return self._rng(0).permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))

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
            if cache.meta.targets == "lowrank":  # low-rank: read the block's codes (a few bytes a row) in one
                wanted = self.rows[s:e]  # call, decode only the wanted rows (h5py's row-list reads are slow)
                targets = cache.decode_codes(cache.read_codes(first, last + 1).take(wanted - first), wanted)
            else:
                targets = cache.read_span(first, last + 1)[self.rows[s:e] - first]
            if out is not None:
                out[:len(targets)] = targets
                targets = out[:len(targets)]
        return self.values[s:e], targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Targets]]:
        mine = self.block_order()
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
            if self.lowrank:
                yield from self._decoded(groups[k], k)
                continue
            values, targets = self._buffer(groups[k])
            if self.shuffle:
                perm = self._rng(1, 0, k).permutation(len(values))
                values, targets = values[perm], targets[perm]
            yield torch.from_numpy(values), as_tensors(targets)

    def _decoded(self, group: np.ndarray, k: int) -> Iterator[tuple[torch.Tensor, Targets]]:
        """A low-rank buffer: its codes (a few bytes a row) read and shuffled, then decoded DECODE_ROWS rows at a time
        in the shuffled order, so memory holds one piece of float logits, not the buffer's (chunks of codes are
        thousands of rows, a buffer of them can be a whole cache)."""
        cache = self._open()
        parts, rows, values = [], [], []
        for b in group:
            s, e = int(self.block_starts[b]), int(self.block_stops[b])
            first, last = int(self.rows[s]), int(self.rows[e - 1])
            codes = cache.read_codes(first, last + 1)  # one read of the block's span
            parts.append(codes if e - s == last - first + 1 else codes.take(self.rows[s:e] - first))
            rows.append(self.rows[s:e])
            values.append(self.values[s:e])
        codes, cache_rows, vals = Codes.concat(parts), np.concatenate(rows), np.concatenate(values)
        if self.shuffle:
            perm = self._rng(1, 0, k).permutation(len(vals))
            codes, cache_rows, vals = codes.take(perm), cache_rows[perm], vals[perm]
        for s in range(0, len(vals), DECODE_ROWS):
            piece = slice(s, s + DECODE_ROWS)
            yield torch.from_numpy(vals[piece]), as_tensors(cache.decode_codes(codes.take(piece), cache_rows[piece]))

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
                 buffer_blocks: int = DEFAULT_BUFFER_BLOCKS):
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
        self.lowrank = False  # parts decode their own blocks (each low-rank part with its own basis)
        self.part_of = np.concatenate([np.full(len(p.blocks), i, dtype=np.int64) for i, p in enumerate(parts)])
        self.local = np.concatenate([np.arange(len(p.blocks), dtype=np.int64) for p in parts])
        sizes = np.concatenate([p.block_stops - p.block_starts for p in parts])
        self.block_stops = np.cumsum(sizes)
        self.block_starts = self.block_stops - sizes
        self.blocks = np.arange(len(sizes))
        self.shuffle, self.seed, self.buffer_blocks = shuffle, seed, buffer_blocks
        self.epoch = 0
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
    (reading overlaps the consumer's compute), interleaved in a fixed order. Without, and when
    torch leaves a core idle (fewer threads than cores), one thread reads (and decodes, for
    low-rank caches) the next buffer while the consumer works on this one. Where torch's
    threads already fill the cores it does not: measured on 2 cores with 2 torch threads, a
    decoding thread beside them made a tiny student's streamed epoch 1.6x slower, not faster.
    """
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, prefetch_factor=2 if num_workers else None,
                        persistent_workers=False, worker_init_fn=quiet_worker if num_workers else None)
    carry: tuple[torch.Tensor, Targets] | None = None  # < batch_size rows left from the last buffer
    ahead = not num_workers and torch.get_num_threads() < len(os.sched_getaffinity(0))
    for values, targets in (read_ahead(iter(loader)) if ahead else loader):
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


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def read_ahead(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer.

    An exception in the producer is raised in the consumer at the item it failed on. When the
    consumer stops early (or fails), the producer stops at its next item and is joined, so
    nothing reads a file after the consumer has moved on (and, say, closed it).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(e))

    worker = threading.Thread(target=produce, name="kdcache-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
