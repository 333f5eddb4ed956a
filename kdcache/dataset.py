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
(kdcache.reader.LogitStream), each DataLoader worker and each rank reading its own blocks.

Item ``i`` is ``(image, label, teacher_targets)``: the dataset's image and label (UNLABELLED,
-1, where the cache row has no label, so kd_loss leaves it out of the cross-entropy) and the
row's raw teacher logits (float32, (C,)) or, from a top-k cache, a ``TopK`` row, which
``collate`` stacks (pass it as the DataLoader's ``collate_fn``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Subset, default_collate

from .cache import LogitCache, open_cache
from .config import CACHE_MEMORY_LIMIT_MB
from .data import BUILTIN
from .errors import CacheError, ConfigError
from .reader import DEFAULT_BUFFER_BLOCKS, LogitStream
from .samples import UNLABELLED, DatasetInfo, fingerprint_for, sample_ids_for
from .targets import TopK, Targets, as_tensors, stack, to_float

TRAIN_STUDENT_REPLAYS_VIEWS = ("does not replay augmentation views yet; train from it with `kdcache train-student`, "
                               "which applies each epoch's stored view to the image")


@dataclass(frozen=True)
class Alignment:
    """What was checked between a dataset and a cache, and each item's cache row and label."""

    dataset_indices: np.ndarray  # (n,) int64: item i is sample dataset_indices[i] of the (unwrapped) dataset
    rows: np.ndarray  # (n,) int64: its cache row
    labels: np.ndarray  # (n,) int64: the cache row's label, UNLABELLED where it has none
    checked: tuple[str, ...]  # e.g. ("index", "label", "content id", "fingerprint", "class names")


def unwrap(dataset: Any, indices: Sequence[int] | np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """The dataset under any torch ``Subset`` wrappers, and the positions in it of ``dataset``'s items (or ``indices``)."""
    idx = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(dataset)):
        raise ConfigError(f"indices must lie in 0..{len(dataset) - 1} (the dataset has {len(dataset)} samples)")
    while isinstance(dataset, Subset):
        idx = np.asarray(dataset.indices, dtype=np.int64)[idx]
        dataset = dataset.dataset
    return dataset, idx


def dataset_labels(dataset: Any, idx: np.ndarray) -> np.ndarray | None:
    """Labels of samples ``idx``: from ``dataset.targets`` when it has them, else read once; None for bare images."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        labels = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)[idx]
    else:
        first = dataset[int(idx[0])] if len(idx) else None
        if not isinstance(first, (tuple, list)) or len(first) < 2:
            return None  # the dataset yields images only: nothing to compare
        labels = np.array([first[1]] + [dataset[int(j)][1] for j in idx[1:]])
    try:
        return labels.astype(np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"the dataset's labels are not class indices (got {labels[:3].tolist()}...); pass "
                          "labels= (ints), or check_labels=False") from None


def mnist_style(dataset: Any) -> np.ndarray | None:
    """(N, 1, H, W) uint8 pixels of a torchvision MNIST-style dataset (``.data`` (N, H, W) uint8 + ``.targets``), else None.

    These are exactly the pixels kdcache hashes for its sample ids and dataset fingerprint.
    """
    data = getattr(dataset, "data", None)
    if getattr(dataset, "targets", None) is None or data is None:
        return None
    array = data.numpy() if isinstance(data, torch.Tensor) else data
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3:
        return None
    return array[:, None]


def builtin_info(dataset: Any, images: np.ndarray, labels: np.ndarray) -> DatasetInfo | None:
    """The DatasetInfo kdcache would give a torchvision built-in dataset (name, split, classes, fingerprint)."""
    name = next((n for n, spec in BUILTIN.items() if spec.torchvision_class == type(dataset).__name__), None)
    if name is None or not isinstance(getattr(dataset, "train", None), bool):
        return None
    spec = BUILTIN[name]
    return DatasetInfo(name=name, split="train" if dataset.train else "test", num_samples=len(labels),
                       class_names=tuple(str(c) for c in getattr(dataset, "classes", ())), in_channels=images.shape[1],
                       image_size=tuple(images.shape[2:]), mean=spec.mean, std=spec.std,
                       fingerprint=fingerprint_for(images, labels))


def align_dataset(cache: LogitCache, dataset: Any, idx: np.ndarray, *, labels: Sequence[int] | None = None,
                  check_labels: bool = True, check_content: bool = True) -> Alignment:
    """Cache rows for samples ``idx`` of ``dataset``, checked with LogitCache.align as far as the dataset allows.

    - every dataset: each sample's dataset index is in the cache, once (coverage);
    - with labels (``labels=``, else ``dataset.targets``, else read from the dataset once): every
      labelled cache row's label equals the sample's (rows the cache holds as unlabelled are skipped);
    - with ``dataset.classes``: the class names, in order;
    - torchvision MNIST-style datasets (``.data`` uint8 (N, H, W) + ``.targets``: MNIST, FashionMNIST):
      each row's content id (kdcache's own sample ids) and, for a built-in dataset, its name, split
      and the fingerprint of the whole split.
    """
    checked = ["index"]
    if labels is not None:
        data_labels = np.asarray(labels, dtype=np.int64)
        if data_labels.shape != idx.shape:
            raise ConfigError(f"labels= has {len(data_labels)} entries for {len(idx)} samples")
    else:
        data_labels = dataset_labels(dataset, idx) if check_labels else None
    rows = cache.rows_of(idx)  # coverage and a clean /indices first: its message names what is missing
    cache_labels = cache.labels[rows]
    compare = None
    if data_labels is not None:
        # rows the cache holds as unlabelled (-1) carry no label to compare: the sample's own label is hidden
        compare = np.where(cache_labels == UNLABELLED, UNLABELLED, data_labels)
        checked.append("label")
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) and list(map(str, classes)) != list(cache.class_names):
        raise CacheError(f"{cache.path} has classes {list(cache.class_names)[:4]}..., the dataset "
                         f"{list(map(str, classes))[:4]}...; the cache is for another label set")
    if classes is not None and len(classes):
        checked.append("class names")
    ids, info = None, None
    images = mnist_style(dataset) if check_content else None
    if images is not None:
        all_labels = dataset_labels(dataset, np.arange(len(images)))
        with_marker = all_labels[idx].copy()
        with_marker[cache_labels == UNLABELLED] = UNLABELLED  # an unlabelled row's id hashes -1, not the label
        ids = sample_ids_for(images[idx], with_marker)
        checked.append("content id")
        # The fingerprint covers the whole split's labels: all known (a labelled dump), or all -1 (a --no-labels
        # dump: docs/cache-format.md, "Alignment rule"); a cache with some rows unlabelled has no such rule.
        num_labelled = cache.meta.num_labelled
        if num_labelled in (None, cache.meta.num_samples, 0):
            fingerprint_labels = np.full_like(all_labels, UNLABELLED) if num_labelled == 0 else all_labels
            info = builtin_info(dataset, images, fingerprint_labels)
            if info is not None:
                checked += ["dataset and split", "fingerprint"]
    rows = cache.align(idx, labels=compare, sample_ids=ids, info=info)
    return Alignment(idx, rows, cache_labels, tuple(checked))


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


def _refuse_views(cache: LogitCache, what: str) -> None:
    m = cache.meta
    if m.has_views:
        raise ConfigError(f"{cache.path} stores {m.num_views} augmentation views per sample "
                          f"({m.view_policy['name']}); {what} {TRAIN_STUDENT_REPLAYS_VIEWS}")


def _split_item(item: Any) -> tuple[Any, Any]:
    """(image, label) of a dataset item; a bare image has no label (None)."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


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

    The alignment is checked once, here, with LogitCache.align's rule and one-line errors
    (CacheError); the file is closed before this returns. Multi-view caches are refused for now.
    """

    def __init__(self, dataset: Any, cache_path: str | os.PathLike, *, indices: Sequence[int] | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 labels: Sequence[int] | None = None, check_labels: bool = True, check_content: bool = True,
                 memory_limit_mb: float = CACHE_MEMORY_LIMIT_MB):
        self.dataset = dataset
        self.transform, self.target_transform = transform, target_transform
        self.base, idx = unwrap(dataset, indices)
        with open_cache(cache_path) as cache:
            _refuse_views(cache, "CachedDataset")
            self.cache_path, self.cache_summary = cache.path, repr(cache)
            need_mb = len(idx) * cache.target_bytes() / max(len(cache), 1) / 2**20
            if need_mb > memory_limit_mb:
                raise ConfigError(f"the targets of {len(idx)} samples need {need_mb:.0f} MB in memory, over "
                                  f"memory_limit_mb={memory_limit_mb:g}; use kdcache.StreamedCachedDataset, which "
                                  "streams them from disk, or raise the limit")
            self.alignment = align_dataset(cache, self.base, idx, labels=labels, check_labels=check_labels,
                                           check_content=check_content)
            self.targets: Targets = to_float(as_tensors(cache.read(self.alignment.rows)))  # (n, C) or TopK
        self.labels = self.alignment.labels
        self._epoch = SharedEpoch()

    def __len__(self) -> int:
        return len(self.alignment.rows)

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to start (picks each sample's stored view, once views are replayed; call every epoch).

        Reaches DataLoader workers, persistent ones too (SharedEpoch).
        """
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def __getitem__(self, i: int) -> tuple[Any, Any, Targets]:
        image, label = _split_item(self.base[int(self.alignment.dataset_indices[i])])
        if label is None or self.labels[i] == UNLABELLED:  # the cache's label: -1 where the row has none
            label = int(self.labels[i])
        view = self.view_of(i)
        if view is not None:
            image = self.apply_view(image, i, view)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label, self.targets_of(i, view)

    # The three steps an item takes; augmentation-view replay (kdcache.augment) fills in the first two.
    def view_of(self, i: int) -> int | None:
        """This epoch's stored view of item ``i`` (None: the cache has no views)."""
        return None

    def apply_view(self, image: Any, i: int, view: int) -> Any:
        raise NotImplementedError

    def targets_of(self, i: int, view: int | None) -> Targets:
        """The teacher's targets for item ``i`` (of that view): (C,) float32 logits or a TopK row."""
        return self.targets[i]

    def __repr__(self) -> str:
        lines = [f"Number of datapoints: {len(self)}", f"Dataset: {type(self.base).__name__}"
                 + (f" (through {type(self.dataset).__name__})" if self.dataset is not self.base else ""),
                 f"Cache: {self.cache_summary}", f"Checked: {', '.join(self.alignment.checked)}"]
        if int((self.labels == UNLABELLED).sum()):
            lines.append(f"Unlabelled rows: {int((self.labels == UNLABELLED).sum())} (label -1)")
        for name in ("transform", "target_transform"):
            if getattr(self, name) is not None:
                lines.append(f"{name}: {getattr(self, name)!r}".replace("\n", "\n    "))
        return "\n    ".join([type(self).__name__, *lines])


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

    An epoch visits every sample once, in an order shuffled block by block (kdcache.reader:
    chunk-aligned blocks in a random order, rows shuffled within a buffer of ``buffer_blocks``
    blocks): far faster than random row reads, memory bounded by one buffer per worker. Each
    DataLoader worker reads its own buffers and opens the cache lazily, in its own process; each
    rank (``rank``/``world_size``, from torch.distributed when it is initialised) its own blocks.
    Ranks' shares differ by at most one block, so a distributed loop must even out its steps.
    Call ``set_epoch`` before each epoch for a fresh order (every rank with the same ``seed``).
    Arguments as CachedDataset; alignment is checked once, up front.
    """

    def __init__(self, dataset: Any, cache_path: str | os.PathLike, *, indices: Sequence[int] | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 labels: Sequence[int] | None = None, check_labels: bool = True, check_content: bool = True,
                 shuffle: bool = True, seed: int = 0, buffer_blocks: int | None = None, rank: int | None = None,
                 world_size: int | None = None):
        self.dataset = dataset
        self.transform, self.target_transform = transform, target_transform
        self.base, idx = unwrap(dataset, indices)
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = (torch.distributed.get_rank() if dist else 0) if rank is None else rank
            world_size = (torch.distributed.get_world_size() if dist else 1) if world_size is None else world_size
        with open_cache(cache_path) as cache:
            _refuse_views(cache, "StreamedCachedDataset")
            self.cache_path, self.cache_summary = cache.path, repr(cache)
            self.alignment = align_dataset(cache, self.base, idx, labels=labels, check_labels=check_labels,
                                           check_content=check_content)
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
        self.stream.set_epoch(self._epoch.get())  # this process's copy of the stream (a worker's, in a DataLoader)
        for items, targets in self.stream:  # in a worker: this worker's buffers only
            targets = to_float(targets)
            for k, i in enumerate(items.tolist()):
                image, label = _split_item(self.base[int(self.alignment.dataset_indices[i])])
                if label is None or self.labels[i] == UNLABELLED:
                    label = int(self.labels[i])
                if self.transform is not None:
                    image = self.transform(image)
                if self.target_transform is not None:
                    label = self.target_transform(label)
                yield image, label, targets[k]

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
                              f"Order: {'shuffled blocks of ' + str(s.block_rows) + ' rows, seed ' + str(s.seed) if s.shuffle else 'file order'}"])
