"""Targets of caches bigger than memory, read as batches ask for them: what training streams from.

``StreamedTargets`` gives the targets of given rows of one or more caches (a labelled cache and
its transfer sets), read block by block with a small LRU, in the order kdcache.data.sampler draws
(blocks of the chunk rows, shuffled within a buffer of blocks). That order is the same whether the
targets are streamed or held in memory, so training from the file and from memory are one path
(kdcache.data.cached_dataset.CachedDataset). kdcache.cache.stream's LogitStream is the other way to
read a big cache: whole-file passes in shuffled buffers (benchmarks, tools).
"""
from __future__ import annotations

import collections
import os
from typing import Any, Sequence

import numpy as np
import torch

from kdcache.cache import LogitCache
from kdcache.cache.stream import DEFAULT_BUFFER_BLOCKS
from kdcache.cache.targets import Targets, as_tensors, concat
from kdcache.errors import CacheError


class StreamedTargets:
    """Targets of rows of one or more caches, read from the files as asked: ``targets[positions]`` -> Targets (torch).

    What CachedDataset holds instead of a tensor when the targets do not fit in memory. Position
    ``p`` is row ``parts[k][1][p - offset_k]`` of cache ``parts[k][0]`` (a labelled cache, then its
    transfer sets, one after the other). A request is grouped by chunk-aligned block; each block is
    read whole in one call (one chunk read, values checked as every cache read checks them) and kept
    in a small LRU of ``cache_blocks`` blocks, so positions drawn block by block
    (kdcache.data.sampler's block order) cost one read per block per process. Low-rank caches keep a
    block's codes (a few bytes a row) and decode only the rows asked for.

    Picklable: each process (DataLoader worker, rank) opens its own handles lazily.
    """

    def __init__(self, parts: Sequence[tuple[str | os.PathLike, np.ndarray]], cache_blocks: int = 2 * DEFAULT_BUFFER_BLOCKS):
        if not parts:
            raise ValueError("StreamedTargets needs at least one (cache, rows) part")
        self.paths = [os.fspath(p) for p, _ in parts]
        self.rows = [np.asarray(r, dtype=np.int64) for _, r in parts]
        self.offsets = np.cumsum([0] + [len(r) for r in self.rows])
        shapes = []
        for path, rows in zip(self.paths, self.rows):
            with LogitCache(path) as c:  # closed before any fork; each process reopens
                if len(rows) and (rows.min() < 0 or rows.max() >= len(c)):
                    raise CacheError(f"{path}: asked for rows outside 0..{len(c) - 1}")
                first = c.read_span(0, 1)
                shapes.append((c.kind, tuple(first.shape[1:] if c.kind == "logits" else first.logits.shape[1:]),
                               c.chunk_rows, c.meta.targets == "lowrank"))
        for path, shape in zip(self.paths[1:], shapes[1:]):
            if shape[:2] != shapes[0][:2]:
                raise CacheError(f"{path} and {self.paths[0]} hold different kinds of targets ({shape[0]} {shape[1]} "
                                 f"vs {shapes[0][0]} {shapes[0][1]}); one stream needs one kind")
        self.kind, self.row_shape = shapes[0][0], shapes[0][1]
        self.chunk_rows = [s[2] for s in shapes]
        self.lowrank = [s[3] for s in shapes]
        self.cache_blocks = int(cache_blocks)
        self._caches: dict[int, LogitCache] = {}
        self._blocks: collections.OrderedDict = collections.OrderedDict()  # (part, block) -> (first row, stored)
        self._pid: int | None = None
        self.reads = 0  # blocks read by this process (the LRU's misses)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def block_rows(self) -> int:
        """Rows of a block of the first cache: the sampler's block size, so a drawn block is one chunk read."""
        return int(self.chunk_rows[0])

    def _cache(self, k: int) -> LogitCache:
        if self._pid != os.getpid():  # never use a handle opened in another process
            self._caches, self._blocks, self._pid = {}, collections.OrderedDict(), os.getpid()
        if k not in self._caches:
            self._caches[k] = LogitCache(self.paths[k])
        return self._caches[k]

    def _block(self, k: int, b: int) -> tuple[int, Any]:
        """Block ``b`` of cache ``k`` as (its first row, its targets as stored; low-rank: its codes)."""
        key = (k, b)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        cache = self._cache(k)
        first, stop = b * self.chunk_rows[k], min((b + 1) * self.chunk_rows[k], len(cache))
        stored = cache.read_codes(first, stop) if self.lowrank[k] else cache.read_span(first, stop)
        self.reads += 1
        self._blocks[key] = (first, stored)
        while len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
        return self._blocks[key]

    def __getitem__(self, positions: Any) -> Targets:
        pos = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions, dtype=np.int64)
        scalar = pos.ndim == 0
        pos = pos.reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"positions outside 0..{len(self) - 1}")
        part = np.searchsorted(self.offsets, pos, side="right") - 1
        pieces, where = [], []
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            rows = self.rows[k][pos[sel] - self.offsets[k]]
            blocks = rows // self.chunk_rows[k]
            for b in np.unique(blocks):
                mine = blocks == b
                first, stored = self._block(int(k), int(b))
                wanted = rows[mine]
                if self.lowrank[k]:
                    pieces.append(self._cache(int(k)).decode_codes(stored.take(wanted - first), wanted))
                else:
                    pieces.append(stored[wanted - first])
                where.append(sel[mine])
        targets = concat(pieces) if len(pieces) != 1 else pieces[0]
        order = np.empty(len(pos), dtype=np.int64)
        order[np.concatenate(where) if where else np.zeros(0, np.int64)] = np.arange(len(pos))
        out = as_tensors(targets[order])
        return out[0] if scalar else out

    def close(self) -> None:
        """Release this process's handles (reopened if read again)."""
        if self._pid == os.getpid():
            for c in self._caches.values():
                c.close()
        self._caches, self._blocks = {}, collections.OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_caches"], state["_blocks"], state["_pid"] = {}, collections.OrderedDict(), None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"StreamedTargets({len(self)} rows from {', '.join(self.paths)}, blocks of {self.block_rows} rows)"
