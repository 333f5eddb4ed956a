"""A cache from your own training loop: torch Datasets that pair any map-style dataset with its cached targets.

    train = kdcache.CachedDataset(torchvision.datasets.FashionMNIST("data", transform=tf), "fmnist-train.h5")
    loader = DataLoader(train, batch_size=128, shuffle=True, num_workers=2, collate_fn=kdcache.collate)
    for images, labels, teacher_logits in loader:
        loss = kdcache.kd_loss(student(images), teacher_logits, labels, temperature=4.0, alpha=0.5)

``CachedDataset`` (map-style) holds the targets of its samples in memory: read once, aligned
once, the file closed before any DataLoader worker starts, so ``num_workers > 0`` is safe (no
HDF5 handle crosses a fork) and an item costs an index, not an HDF5 read (random single-row
reads run at ~20k rows/s, slower than a small student trains). ``StreamedCachedDataset``
(iterable) is for caches larger than memory: it streams shuffled, chunk-aligned blocks
(kdcache.cache.stream.LogitStream), each DataLoader worker and each rank reading its own blocks.

Item ``i`` is ``(image, label, teacher_targets)``: the dataset's image and label (UNLABELLED,
-1, where the cache row has no label, so kd_loss leaves it out of the cross-entropy) and the
row's raw teacher logits (float32, (C,)) or, from a top-k cache, a ``TopK`` row, which
``collate`` stacks (pass it as the DataLoader's ``collate_fn``).

A cache with augmentation views (``dump-logits --views K --augment POLICY``) is replayed as
``train-student`` replays it (kdcache.data.views.StoredViews): in epoch ``e`` (``set_epoch``) item
``i`` shows its view ``view_schedule(e, n, K, seed)[i]``, each view once per K epochs, rebuilt
from the stored parameters, and its targets are that view's. Views are applied to the base
dataset's image, which must then be a float tensor (C, H, W) in [0, 1] (``ToTensor()``);
normalisation goes in the wrapper's ``transform``, which runs after the view. They are built
a batch at a time (a DataLoader fetches a batch with one ``__getitems__`` call): one policy
call per image would cost more than reading the image.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, default_collate

from kdcache.cache import LogitCache, open_cache
from kdcache.cache.stream import DEFAULT_BUFFER_BLOCKS, LogitStream
from kdcache.cache.targets import Targets, TopK, as_tensors, stack, to_float
from kdcache.config import CACHE_MEMORY_LIMIT_MB
from kdcache.data.align import Alignment, align_dataset, unwrap
from kdcache.data.views import StoredViews, keep_views
from kdcache.errors import ConfigError
from kdcache.identity import UNLABELLED

VIEW_BATCH = 64  # items whose views StreamedCachedDataset builds in one call (a policy's apply costs ~ per call)


class SharedEpoch:
    """An epoch number that DataLoader workers see change, persistent workers included.

    Each worker holds its own copy of the dataset, made when its iterator started; a plain
    attribute set later in the main process never reaches a persistent worker. A tensor in
    shared memory does (under fork and spawn alike), so ``set_epoch`` works either way.
    """

    def __init__(self) -> None:
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(int(epoch))

    def get(self) -> int:
        return int(self._value)


def stored_views(cache: LogitCache, alignment: Alignment, base: Any, cache_views: int | None,
                 seed: int) -> StoredViews | None:
    """The cache's views of the aligned rows (None without views), checked on the first item's image up front,
    so a dataset that breaks the image contract is refused here, not in a DataLoader worker."""
    views = StoredViews.from_cache(cache, alignment.rows, cache_views=cache_views, seed=seed)
    if views is not None and len(alignment.rows):
        views.apply([_split_item(base[int(alignment.dataset_indices[0])])[0]], [0], [0])  # the checks every item gets
    return views


def _split_item(item: Any) -> tuple[Any, Any]:
    """(image, label) of a dataset item; a bare image has no label (None)."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _finish(ds: "CachedDataset | StreamedCachedDataset", i: int, image: Any, label: Any) -> tuple[Any, Any]:
    """Item ``i``'s image and label as served: the cache's label (-1) where the row has none, then the transforms."""
    if label is None or ds.labels[i] == UNLABELLED:
        label = int(ds.labels[i])
    if ds.transform is not None:
        image = ds.transform(image)
    if ds.target_transform is not None:
        label = ds.target_transform(label)
    return image, label


class CachedDataset(Dataset):
    """``(image, label, teacher_targets)`` for each item of a map-style dataset, targets from a kdcache cache.

    Args:
        dataset: any map-style dataset (torchvision FashionMNIST or ImageFolder, your own, a
            ``Subset`` of one); item ``i`` of the wrapper is item ``i`` of ``dataset``.
        cache_path: the cache of the split ``dataset`` indexes (its indices are the cache's
            dataset indices; a ``Subset``'s are mapped back to the split).
        indices: only these items of ``dataset`` (e.g. a labelled subset), in this order.
        transform, target_transform: applied to the image and the label, as in torchvision.
        labels: the samples' labels for the alignment check, if ``dataset.targets`` lacks them
            (otherwise they are read from the dataset once, which loads every image).
        check_labels, check_content: turn those checks off (see ``align_dataset``).
        memory_limit_mb: refuse targets bigger than this (as float32); use StreamedCachedDataset.
        cache_views: a cache with views: use only the first K' of its K views (train-student's
            ``--cache-views``).
        seed: a cache with views: the seed of the view schedule. With train-student's ``--seed``,
            item ``i`` shows in each epoch the view that run shows its row ``i`` (the same sample
            when the items are the split's samples in order, e.g. ``indices=range(n)``).

    The alignment is checked once, here, with LogitCache.align's rule and one-line errors
    (CacheError); the file is closed before this returns. With views, call ``set_epoch`` every
    epoch, and give ``dataset`` images as ToTensor() does (float (C, H, W) in [0, 1]; checked
    on the first item here and on every item it serves): the view is built on that image, then
    ``transform`` (e.g. Normalize) runs on the view.
    """

    def __init__(self, dataset: Any, cache_path: str | os.PathLike, *, indices: Sequence[int] | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 labels: Sequence[int] | None = None, check_labels: bool = True, check_content: bool = True,
                 memory_limit_mb: float = CACHE_MEMORY_LIMIT_MB, cache_views: int | None = None, seed: int = 0):
        self.dataset = dataset
        self.transform, self.target_transform = transform, target_transform
        self.base, idx = unwrap(dataset, indices)
        with open_cache(cache_path) as cache:
            self.cache_path, self.cache_summary = cache.path, repr(cache)
            used = cache.meta.num_views if cache_views is None else min(max(int(cache_views), 1), cache.meta.num_views)
            need_mb = len(idx) * cache.target_bytes() * used / cache.meta.num_views / max(len(cache), 1) / 2**20
            if need_mb > memory_limit_mb:
                raise ConfigError(f"the targets of {len(idx)} samples need {need_mb:.0f} MB in memory, over "
                                  f"memory_limit_mb={memory_limit_mb:g}; use kdcache.StreamedCachedDataset, which "
                                  "streams them from disk, or raise the limit")
            self.alignment = align_dataset(cache, self.base, idx, labels=labels, check_labels=check_labels,
                                           check_content=check_content)
            self.views = stored_views(cache, self.alignment, self.base, cache_views, seed)
            targets = cache.read(self.alignment.rows)  # (n, [V,] C) or TopK
            if self.views is not None:
                targets = keep_views(targets, self.views.num_views)  # (n, K', ...)
            self.targets: Targets = to_float(as_tensors(targets))
        self.labels = self.alignment.labels
        self._epoch = SharedEpoch()

    def __len__(self) -> int:
        return len(self.alignment.rows)

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to start: it picks each item's stored view (a cache with views; call it every epoch).

        Reaches DataLoader workers, persistent ones too (SharedEpoch).
        """
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def __getitem__(self, i: int) -> tuple[Any, Any, Targets]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> list[tuple[Any, Any, Targets]]:
        """Several items at once: a DataLoader fetches each batch with one call, so views are built batch by batch."""
        items = [int(i) for i in items]
        samples = [_split_item(self.base[int(self.alignment.dataset_indices[i])]) for i in items]
        images = [image for image, _ in samples]
        views = [self.view_of(i) for i in items]
        if self.views is not None:
            images = self.apply_views(images, items, views)
        return [(*_finish(self, i, image, label), self.targets_of(i, view))
                for i, image, (_, label), view in zip(items, images, samples, views)]

    # The three steps an item takes (a subclass can change one, e.g. to pick views its own way).
    def view_of(self, i: int) -> int | None:
        """This epoch's stored view of item ``i`` (None: the cache has no views)."""
        return None if self.views is None else int(self.views.schedule(self.epoch)[i])

    def apply_views(self, images: list[Any], items: list[int], views: list[Any]) -> list[Any]:
        """Each item's stored view of its image (float (C, H, W) tensors in [0, 1]), built in one batched call."""
        assert self.views is not None
        return list(self.views.apply(images, items, views).unbind(0))

    def targets_of(self, i: int, view: int | None) -> Targets:
        """The teacher's targets for item ``i`` (of that view): (C,) float32 logits or a TopK row."""
        return self.targets[i] if view is None else self.targets[i, view]

    def __repr__(self) -> str:
        lines = [f"Number of datapoints: {len(self)}", f"Dataset: {type(self.base).__name__}"
                 + (f" (through {type(self.dataset).__name__})" if self.dataset is not self.base else ""),
                 f"Cache: {self.cache_summary}", f"Checked: {', '.join(self.alignment.checked)}"]
        if int((self.labels == UNLABELLED).sum()):
            lines.append(f"Unlabelled rows: {int((self.labels == UNLABELLED).sum())} (label -1)")
        if self.views is not None:
            lines.append(_views_line(self.views))
        for name in ("transform", "target_transform"):
            if getattr(self, name) is not None:
                lines.append(f"{name}: {getattr(self, name)!r}".replace("\n", "\n    "))
        return "\n    ".join([type(self).__name__, *lines])


def _views_line(views: StoredViews) -> str:
    return (f"Views: {views.num_views} per item replayed ({views.policy}), each once per {views.num_views} epochs, "
            f"seed {views.seed}")


def collate(batch: Sequence[Any]) -> Any:
    """A DataLoader ``collate_fn`` that stacks ``TopK`` rows (top-k caches) and defers everything else to default_collate."""
    first = batch[0]
    if isinstance(first, TopK):
        return stack(batch)
    if isinstance(first, (tuple, list)):
        columns = [collate(list(column)) for column in zip(*batch)]
        return type(first)(*columns) if hasattr(first, "_fields") else type(first)(columns)  # namedtuples too
    return default_collate(batch)


class StreamedCachedDataset(IterableDataset):
    """``(image, label, teacher_targets)`` per sample, targets streamed from a cache too big for memory.

    An epoch visits every sample once, in an order shuffled block by block (kdcache.cache.stream:
    chunk-aligned blocks in a random order, rows shuffled within a buffer of ``buffer_blocks``
    blocks): far faster than random row reads, memory bounded by one buffer per worker. Each
    DataLoader worker reads its own buffers and opens the cache lazily, in its own process; each
    rank (``rank``/``world_size``, from torch.distributed when it is initialised) its own blocks.
    Ranks' shares differ by at most one block, so a distributed loop must even out its steps.
    Call ``set_epoch`` before each epoch for a fresh order (every rank with the same ``seed``)
    and, with a cache with views, that epoch's views (``seed`` is also the view schedule's, as
    train-student's ``--seed`` is both). Arguments as CachedDataset; alignment is checked once,
    up front.
    """

    def __init__(self, dataset: Any, cache_path: str | os.PathLike, *, indices: Sequence[int] | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 labels: Sequence[int] | None = None, check_labels: bool = True, check_content: bool = True,
                 shuffle: bool = True, seed: int = 0, buffer_blocks: int | None = None, rank: int | None = None,
                 world_size: int | None = None, cache_views: int | None = None):
        self.dataset = dataset
        self.transform, self.target_transform = transform, target_transform
        self.base, idx = unwrap(dataset, indices)
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = (torch.distributed.get_rank() if dist else 0) if rank is None else rank
            world_size = (torch.distributed.get_world_size() if dist else 1) if world_size is None else world_size
        with open_cache(cache_path) as cache:
            self.cache_path, self.cache_summary = cache.path, repr(cache)
            self.alignment = align_dataset(cache, self.base, idx, labels=labels, check_labels=check_labels,
                                           check_content=check_content)
            self.views = stored_views(cache, self.alignment, self.base, cache_views, seed)
        self.labels = self.alignment.labels
        # the stream yields each row with its item number, so every image meets its own targets
        self.stream = LogitStream(self.cache_path, rows=self.alignment.rows, values=np.arange(len(idx)),
                                  shuffle=shuffle, seed=seed, buffer_blocks=buffer_blocks or DEFAULT_BUFFER_BLOCKS,
                                  rank=rank, world_size=world_size)
        self._epoch = SharedEpoch()

    def __len__(self) -> int:
        """Samples this rank serves this epoch."""
        self.stream.set_epoch(self._epoch.get())
        return self.stream.num_rank_rows()

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (call before iterating, on every rank; reaches persistent workers too)."""
        self._epoch.set(epoch)

    def __iter__(self) -> Iterator[tuple[Any, Any, Targets]]:
        epoch = self._epoch.get()
        self.stream.set_epoch(epoch)  # this process's copy of the stream (a worker's, in a DataLoader)
        schedule = None if self.views is None else self.views.schedule(epoch)  # (n,) each item's view
        for items, targets in self.stream:  # in a worker: this worker's buffers only
            targets = to_float(targets)  # (b, [V,] C) or TopK
            for s in range(0, len(items), VIEW_BATCH):
                group = items[s:s + VIEW_BATCH].tolist()
                samples = [_split_item(self.base[int(self.alignment.dataset_indices[i])]) for i in group]
                images = [image for image, _ in samples]
                if schedule is not None:  # this epoch's view of each item, built for the group at once
                    assert self.views is not None
                    views = schedule[group]
                    images = list(self.views.apply(images, group, views).unbind(0))
                for k, (i, image, (_, label)) in enumerate(zip(group, images, samples)):
                    row_targets = targets[s + k] if schedule is None else targets[s + k, int(views[k])]
                    yield (*_finish(self, i, image, label), row_targets)

    def close(self) -> None:
        """Release this process's cache handle (also done when the stream is garbage-collected)."""
        self.stream.close()

    def __enter__(self) -> "StreamedCachedDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stream
        return "\n    ".join([type(self).__name__, f"Number of datapoints: {len(self.alignment.rows)} "
                              f"(this rank: {len(self)}, rank {s.rank} of {s.world_size})",
                              f"Dataset: {type(self.base).__name__}", f"Cache: {self.cache_summary}",
                              f"Checked: {', '.join(self.alignment.checked)}",
                              f"Order: {'shuffled blocks of ' + str(s.block_rows) + ' rows, seed ' + str(s.seed) if s.shuffle else 'file order'}",
                              *([_views_line(self.views)] if self.views is not None else [])])
