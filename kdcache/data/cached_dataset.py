"""The rows every job trains from, and your own loop too: a dataset paired with its teacher's targets.

    train = kdcache.CachedDataset(torchvision.datasets.FashionMNIST("data", transform=tf), "fmnist-train.h5")
    loader = DataLoader(train, batch_size=128, shuffle=True, num_workers=2, collate_fn=kdcache.collate)
    for images, labels, teacher_logits in loader:
        loss = kdcache.kd_loss(student(images), teacher_logits, labels, temperature=4.0, alpha=0.5)

``CachedDataset`` is map-style. Its targets are held in memory (read once, aligned once, the file
closed before any DataLoader worker starts, so ``num_workers > 0`` is safe and an item costs an
index, not an HDF5 read) or, over ``memory_limit_mb`` (``StreamedCachedDataset``: always), read from
the file as batches ask for them (kdcache.cache.streamed_targets.StreamedTargets: one chunk read per block per
process). Read it in the order of kdcache's sampler (``make_loader``, or
``EpochSampler(..., block_rows=ds.block_rows)`` as a ``batch_sampler``), and in-memory and streamed
targets give the same batches; another order works, streamed targets then read more chunks.

Over kdcache's own split (an ImageData: ``load_dataset``, what ``train-student`` reads) the
alignment is checked with every rule (LogitCache.align: dataset, split, fingerprint, labels, content
ids) and ``__getitems__`` returns one ``Batch`` per call, images sliced or decoded together:
``train-student``, ``train-teacher`` (``from_targets(data, None, views)``) and your loop over
``make_loader(CachedDataset(data, cache))`` read the same object, batch for batch.

Item ``i`` is ``(image, label, teacher_targets)``: the dataset's image and label (UNLABELLED,
-1, where the cache row has no label, so kd_loss leaves it out of the cross-entropy) and the
row's raw teacher logits (float32, (C,)) or, from a top-k cache, a ``TopK`` row, which
``collate`` stacks (pass it as the DataLoader's ``collate_fn``). A dataset of dict items
(Hugging Face style, ``{"image": ..., "label": ...}``; keys found by name or named with
``WrapOptions(image_key=, label_key=)``, kdcache.data.items) is served as dicts: the same dict,
``transform`` applied under its image key, the label (-1 as above) under its label key, and
the teacher's targets added under ``"teacher_logits"``. Items kdcache cannot read an image from
are refused in one line when the wrapper is made, never paired with rows by position unchecked.

A cache with augmentation views (``dump-logits --views K --augment POLICY``) is replayed as
``train-student`` replays it (kdcache.data.view_schedule.ViewPlan, one replayer): in epoch ``e``
(``set_epoch``) item ``i`` shows its view ``view_schedule(e, n, K, seed)[i]``, each view once per K
epochs, rebuilt from the stored parameters, and its targets are that view's. Views are applied to
the base dataset's image, which must then be a float tensor (C, H, W) in [0, 1] (``ToTensor()``);
normalisation goes in the wrapper's ``transform``, which runs after the view. They are built a
batch at a time (a DataLoader fetches a batch with one ``__getitems__`` call): one policy call per
image would cost more than reading the image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcache.cache import LogitCache, open_cache
from kdcache.cache.streamed_targets import StreamedTargets
from kdcache.cache.targets import Targets, as_tensors, to_float
from kdcache.config import CACHE_MEMORY_LIMIT_MB
from kdcache.data.align import Alignment, align_dataset, unwrap
from kdcache.data.items import ItemKeys, item_parts, rebuild_item
from kdcache.data.replay import view_images
from kdcache.data.samples import Batch, ImageData, collate
from kdcache.data.view_schedule import ViewPlan
from kdcache.data.views import StoredViews, keep_views, student_views
from kdcache.errors import ConfigError
from kdcache.identity import UNLABELLED

__all__ = ["CachedDataset", "StreamedCachedDataset", "WrapOptions", "collate", "cache_targets", "pick_views"]

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
                 seed: int, keys: ItemKeys | None = None) -> StoredViews | None:
    """The cache's views of the aligned rows (None without views), checked on the first item's image up front,
    so a dataset that breaks the image contract is refused here, not in a DataLoader worker."""
    views = StoredViews.from_cache(cache, alignment.rows, cache_views=cache_views, seed=seed)
    if views is not None and len(alignment.rows):
        i = int(alignment.dataset_indices[0])
        views.apply([item_parts(base[i], i, keys)[0]], [0], [0])  # the checks every item gets
    return views


def pick_views(targets: Targets, views: torch.Tensor) -> Targets:
    """Targets (n, V, ...) -> (n, ...): row i's view ``views[i]`` (full logits or TopK alike)."""
    return targets[(torch.arange(len(views), device=views.device), views)]


def _finish(ds: "CachedDataset", i: int, image: Any, label: Any) -> tuple[Any, Any]:
    """Item ``i``'s image and label as served: the cache's label (-1) where the row has none, then the transforms."""
    if label is None or ds.labels[i] == UNLABELLED:
        label = int(ds.labels[i])
    if ds.transform is not None:
        image = ds.transform(image)
    if ds.target_transform is not None:
        label = ds.target_transform(label)
    return image, label


@dataclass(frozen=True)
class WrapOptions:
    """How CachedDataset checks a cache against your dataset and where it keeps the targets (rarely changed)."""

    labels: Sequence[int] | None = None  # the samples' labels, if dataset.targets lacks them (else read once)
    check_labels: bool = True  # False: skip the label check (see align_dataset)
    check_content: bool = True  # False: skip content ids and the fingerprint
    memory_limit_mb: float = CACHE_MEMORY_LIMIT_MB  # targets bigger (as float32) are read from the file (0: always)
    image_key: str | None = None  # dict items: the image's key (None: the first of image, img, pixel_values, ...)
    label_key: str | None = None  # dict items: the label's key (None: the first of label, labels, cls, target, ...)

    @property
    def keys(self) -> ItemKeys | None:
        return None if self.image_key is None and self.label_key is None else ItemKeys(self.image_key, self.label_key)


class CachedDataset(Dataset):
    """``(image, label, teacher_targets)`` for each item of a map-style dataset, targets from a kdcache cache.

    Args:
        dataset: kdcache's own split (an ImageData, see the module docstring), or any map-style
            dataset (torchvision FashionMNIST or ImageFolder, your own, a ``Subset`` of one); item
            ``i`` of the wrapper is item ``i`` of ``dataset``.
        cache_path: the cache of the split ``dataset`` indexes (its indices are the cache's
            dataset indices; a ``Subset``'s are mapped back to the split).
        indices: only these items of ``dataset`` (e.g. a labelled subset), in this order.
        transform, target_transform: applied to the image and the label, as in torchvision.
        cache_views: a cache with views: use only the first K' of its K views (train-student's
            ``--cache-views``).
        seed: a cache with views: the seed of the view schedule. With train-student's ``--seed``,
            item ``i`` shows in each epoch the view that run shows its row ``i`` (the same sample
            when the items are the split's samples in order, e.g. ``indices=range(n)``).
        options: how the cache is checked and held (``WrapOptions``: labels to check against,
            checks switched off, the memory limit past which targets are read from the file, the keys of
            dict items' image and label).

    The alignment is checked once, here, with LogitCache.align's rule and one-line errors
    (CacheError). With views, call ``set_epoch`` every epoch, and give ``dataset`` images as
    ToTensor() does (float (C, H, W) in [0, 1]; checked on the first item here and on every item it
    serves): the view is built on that image, then ``transform`` (e.g. Normalize) runs on the view.
    Kdcache's own split takes no ``indices``/transforms/``labels`` (select rows with ``data.take``).
    """

    def __init__(self, dataset: Any, cache_path: str | os.PathLike, *, indices: Sequence[int] | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 cache_views: int | None = None, seed: int = 0, options: "WrapOptions | None" = None):
        options = options or WrapOptions()
        labels, memory_limit_mb, self.keys = options.labels, options.memory_limit_mb, options.keys
        self.dataset, self.data, self.plan, self.views, self.alignment = dataset, None, None, None, None
        self.transform, self.target_transform = transform, target_transform
        self._epoch = SharedEpoch()
        if isinstance(dataset, ImageData):  # kdcache's own split: every check LogitCache.align has
            if indices is not None or transform is not None or target_transform is not None or labels is not None:
                raise ConfigError("CachedDataset over a kdcache ImageData takes no indices, transforms or labels: "
                                  "select rows with data.take(rows); the loader standardises the images")
            self._from_split(dataset, cache_path, cache_views, seed, memory_limit_mb)
            return
        self.base, idx = unwrap(dataset, indices)
        with open_cache(cache_path) as cache:
            self.cache_path, self.cache_summary = cache.path, repr(cache)
            self.alignment = align_dataset(cache, self.base, idx, labels=labels, check_labels=options.check_labels,
                                           check_content=options.check_content, keys=self.keys)
            self.views = stored_views(cache, self.alignment, self.base, cache_views, seed, self.keys)
            self.targets = cache_targets(cache, self.alignment.rows, self.views and self.views.num_views,
                                         memory_limit_mb)
            self.block_rows: int | None = cache.chunk_rows
        self.labels = self.alignment.labels

    def _from_split(self, data: ImageData, cache_path: str | os.PathLike, cache_views: int | None, seed: int,
                    memory_limit_mb: float) -> None:
        """A kdcache split and its cache: rows aligned by index, label, content id and fingerprint (LogitCache.align)."""
        with open_cache(cache_path) as cache:
            rows = cache.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids,
                               info=data.info, keys=data.keys)
            plan, record = student_views([cache], [rows], data, augment=None, alpha=1.0, cache_views=cache_views,
                                         seed=seed)
            targets = cache_targets(cache, rows, record and record["views"], memory_limit_mb)
            self._split(data, targets, plan, f"{cache.path}: {cache!r}", cache.chunk_rows)

    def _split(self, data: ImageData, targets: "Targets | StreamedTargets | None", plan: ViewPlan | None,
               summary: str, block_rows: int | None) -> None:
        self.data, self.base, self.targets, self.plan = data, data, targets, plan
        self.cache_summary, self.block_rows = summary, block_rows
        self.labels = data.labels
        self._plan_epoch: tuple[int, Any, Any] | None = None  # (epoch, views (N,) or None, params (N, P))

    @classmethod
    def from_targets(cls, data: ImageData, targets: "Targets | StreamedTargets | None" = None,
                     views: ViewPlan | None = None, block_rows: int | None = None) -> "CachedDataset":
        """A split with targets already aligned to its rows (``targets[i]`` is row ``i``'s, (N, [V,] C), a TopK
        or StreamedTargets; None: labels only) and the views it shows (a ViewPlan: stored views replayed, or
        fresh ones). ``block_rows``: the sampler's block size (default: StreamedTargets' chunk rows, else none).

        What ``train-student`` trains from after aligning its caches, ensembles and transfer sets
        (kdcache.jobs.student_targets), and ``train-teacher`` from with ``targets=None``.
        """
        if targets is not None and len(targets) != len(data):
            raise ValueError(f"targets rows {len(targets)} != data rows {len(data)}")
        self = cls.__new__(cls)
        self.dataset, self.transform, self.target_transform, self.views, self.alignment = data, None, None, None, None
        self._epoch, self.keys = SharedEpoch(), None
        if isinstance(targets, StreamedTargets):
            block_rows = block_rows or targets.block_rows
        elif targets is not None:
            targets = to_float(as_tensors(targets))
        summary = "labels only" if targets is None else repr(targets) if isinstance(targets, StreamedTargets) \
            else "targets in memory, aligned by the caller"
        self._split(data, targets, views, summary, block_rows)
        return self

    @property
    def info(self) -> Any:
        """The split's DatasetInfo (mean/std the loader standardises with); None over your own dataset."""
        return None if self.data is None else self.data.info

    @property
    def images(self) -> Any:
        """What the items' images are read from (make_loader gives files worker processes)."""
        return self.dataset if self.data is None else self.data.images

    @property
    def streamed(self) -> bool:
        """Whether the targets are read from the file as batches ask for them (not held in memory)."""
        return isinstance(self.targets, StreamedTargets)

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to start: it picks each item's stored view (a cache with views; call it every epoch).

        Reaches DataLoader workers, persistent ones too (SharedEpoch).
        """
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def __getitem__(self, i: int) -> Any:
        if self.data is not None:
            batch = self._batch(torch.tensor([int(i)]))
            return batch.images[0], int(batch.labels[0]), None if batch.teacher_logits is None else \
                batch.teacher_logits[0]
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> Any:
        """Several items at once: a DataLoader fetches each batch with one call, so views and targets are read batch
        by batch. Over a kdcache split the result is one Batch (as make_loader reads it); otherwise a list of items.
        """
        if self.data is not None:
            return self._batch(torch.as_tensor(items, dtype=torch.int64))
        items = [int(i) for i in items]
        positions = [int(self.alignment.dataset_indices[i]) for i in items]
        raw = [self.base[j] for j in positions]
        samples = [item_parts(item, j, self.keys) for item, j in zip(raw, positions)]
        images = [image for image, _ in samples]
        views = [self.view_of(i) for i in items]
        if self.views is not None:
            images = self.apply_views(images, items, views)
        targets = self.targets_of(items, views)
        return [rebuild_item(item, j, self.keys, *_finish(self, i, image, label), targets[k])
                for k, (i, j, item, image, (_, label)) in enumerate(zip(items, positions, raw, images, samples))]

    def _batch(self, pos: torch.Tensor) -> Batch:
        """A kdcache split's rows ``pos`` (B,): images (this epoch's views applied), labels, the targets of those views."""
        assert self.data is not None
        targets = None if self.targets is None else self.targets[pos]
        if self.plan is None:
            batch = self.data.__getitems__(pos)
            return Batch(batch.images, self.labels[pos], None if targets is None else to_float(targets))
        views, params = self.epoch_views()
        images = view_images(self.data.images, pos, params[pos], self.plan.policy)  # the one replayer (B, C, S, S)
        if targets is not None and views is not None:
            targets = pick_views(targets, views[pos])  # (B, V, ...) -> the view each row shows this epoch
        return Batch(images, self.labels[pos], None if targets is None else to_float(targets))

    def epoch_views(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """This epoch's (view of every row (N,) or None for fresh views, parameters of every row (N, P)), made once
        per epoch and process (a pure function of seed and epoch: every worker and rank agrees)."""
        assert self.plan is not None
        epoch = self.epoch
        if self._plan_epoch is None or self._plan_epoch[0] != epoch:
            self._plan_epoch = (epoch, *self.plan.for_epoch(epoch, len(self.labels)))
        return self._plan_epoch[1], self._plan_epoch[2]

    # The three steps an item of your own dataset takes (a subclass can change one, e.g. to pick views its own way).
    def view_of(self, i: int) -> int | None:
        """This epoch's stored view of item ``i`` (None: the cache has no views)."""
        return None if self.views is None else int(self.views.schedule(self.epoch)[i])

    def apply_views(self, images: list[Any], items: list[int], views: list[Any]) -> list[Any]:
        """Each item's stored view of its image (float (C, H, W) tensors in [0, 1]), built in one batched call."""
        assert self.views is not None
        return list(self.views.apply(images, items, views).unbind(0))

    def targets_of(self, items: list[int], views: list[int | None]) -> Targets:
        """The teacher's targets for ``items`` (each of its view), read in one call: (B, C) float32 or TopK rows."""
        targets = to_float(self.targets[torch.as_tensor(items, dtype=torch.int64)])
        if self.views is None:
            return targets
        return pick_views(targets, torch.as_tensor(views, dtype=torch.int64))

    def close(self) -> None:
        """Release this process's cache handles (streamed targets; nothing to do for targets in memory)."""
        if isinstance(self.targets, StreamedTargets):
            self.targets.close()

    def __enter__(self) -> "CachedDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "read from the file as batches ask" if self.streamed else "in memory"
        if self.data is not None:
            info = self.data.info
            lines = [f"Number of datapoints: {len(self)}", f"Dataset: {info.name}/{info.split}",
                     f"Targets: {self.cache_summary}" + ("" if self.targets is None else f" ({where})")]
            if self.plan is not None:
                lines.append(f"Views: {'stored, replayed' if self.plan.replay else 'fresh each epoch'} ({self.plan.policy})")
            return "\n    ".join([type(self).__name__, *lines])
        lines = [f"Number of datapoints: {len(self)}", f"Dataset: {type(self.base).__name__}"
                 + (f" (through {type(self.dataset).__name__})" if self.dataset is not self.base else ""),
                 f"Cache: {self.cache_summary}", f"Targets: {where}", f"Checked: {', '.join(self.alignment.checked)}"]
        if int((self.labels == UNLABELLED).sum()):
            lines.append(f"Unlabelled rows: {int((self.labels == UNLABELLED).sum())} (label -1)")
        if self.views is not None:
            lines.append(_views_line(self.views))
        for name in ("transform", "target_transform"):
            if getattr(self, name) is not None:
                lines.append(f"{name}: {getattr(self, name)!r}".replace("\n", "\n    "))
        return "\n    ".join([type(self).__name__, *lines])


def cache_targets(cache: LogitCache, rows: np.ndarray, used_views: int | None,
                  memory_limit_mb: float) -> "Targets | StreamedTargets":
    """The targets of cache ``rows`` (the first ``used_views`` views, where it has views): in memory as float32,
    or StreamedTargets when they would take more than ``memory_limit_mb`` there."""
    used = cache.meta.num_views if not used_views else min(int(used_views), cache.meta.num_views)
    need_mb = len(rows) * cache.target_bytes() * used / cache.meta.num_views / max(len(cache), 1) / 2**20
    if need_mb > memory_limit_mb:
        return StreamedTargets([(cache.path, rows)])
    targets = cache.read(rows)  # (n, [V,] C) or TopK
    if cache.meta.has_views:
        targets = keep_views(targets, used)  # (n, K', ...)
    return to_float(as_tensors(targets))


def _views_line(views: StoredViews) -> str:
    return (f"Views: {views.num_views} per item replayed ({views.policy}), each once per {views.num_views} epochs, "
            f"seed {views.seed}")


class StreamedCachedDataset(CachedDataset):
    """A CachedDataset whose targets are always read from the file as batches ask for them (caches bigger than
    memory): arguments as CachedDataset's. Read it in kdcache's block order (``make_loader``, or
    ``EpochSampler(len(ds), B, seed=S, block_rows=ds.block_rows)`` as the DataLoader's ``batch_sampler``, with
    ``rank``/``world_size`` under DDP) so each process reads each chunk once per epoch; ``close`` (or ``with``)
    releases the file handles.
    """

    def __init__(self, dataset: Any, cache_path: str | os.PathLike, **kwargs: Any):
        options = kwargs.pop("options", None) or WrapOptions()
        super().__init__(dataset, cache_path, options=replace(options, memory_limit_mb=0.0), **kwargs)
