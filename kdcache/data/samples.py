"""A split (ImageData, a Dataset of image rows), the Batch every loader yields, and the pixel arithmetic every job shares.

What ties a sample to a cache row (its content id, the split's identity) lives one floor
down, in kdcache.identity, because the cache format records it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from kdcache.cache.targets import TopK, stack
from kdcache.data.images import subset
from kdcache.errors import ConfigError
from kdcache.identity import UNLABELLED, DatasetInfo


@dataclass
class Batch:
    """What a dataset's ``__getitems__`` returns and the loader yields (kdcache.data.loader).

    From the dataset: images uint8 (B, C, H, W) as read (crop-flip v3 views too: cut from the file),
    or float in [0, 1] where other augmentation views were applied (kdcache.data.replay); a dump's
    views carry a views axis, (B, V, C, H, W). From the loader: on the device, float32 standardised with the dataset's mean/std.
    """

    images: torch.Tensor
    labels: torch.Tensor  # (B,) int64, UNLABELLED where a sample has no label
    teacher_logits: Any = None  # (B, C) float32 or a TopK (kdcache.cache.targets), when distilling
    global_counts: tuple[int, int] | None = None  # under DDP: (rows, labelled rows) of the whole global batch
    # (B, 16) uint8: each file's BLAKE2b, hashed where it was read, from a split whose identity is deferred (ImageData)
    digests: np.ndarray | None = None

    def pin_memory(self) -> "Batch":
        """A copy in pinned memory (the DataLoader's pin thread calls it on CUDA), so the copy to the device overlaps."""
        t = self.teacher_logits
        return Batch(self.images.pin_memory(), self.labels.pin_memory(),
                     None if t is None else t.pin_memory() if isinstance(t, torch.Tensor) else t, self.global_counts,
                     self.digests)


class BatchSource(Protocol):
    """What the training loop iterates: an epoch of Batches at a time (kdcache.data.loader.Loader)."""

    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class ImageData:
    """A split (or part of it). ``labels`` holds UNLABELLED where a sample has no label.

    ``images`` is a uint8 tensor (N, C, H, W) in memory, or a lazy source indexed the same
    way (kdcache.data.images: image files decoded on demand). It is a map-style Dataset whose
    ``__getitems__`` serves a whole Batch; read it through kdcache.data.loader.make_loader.

    A folder read with its identity deferred (kdcache.data.folders, ``ReadOptions(defer_identity=True)``: a dump)
    has ``sample_ids`` None and ``info.fingerprint`` None until its rows are read: each Batch then carries its
    files' digests, hashed where they were decoded, and ``deferred`` (the whole split's listing) turns them into
    the rows' ids and, once every row is read, the split's fingerprint: the values the hashing pass gives.
    """

    images: Any  # (N, C, H, W) uint8: a tensor, or a kdcache.data.images source
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) int64, position in the full split
    sample_ids: np.ndarray | None = field(repr=False)  # (N,) uint64 content ids; None: deferred (see above)
    info: DatasetInfo = field(repr=False)
    keys: tuple[str, ...] | None = field(default=None, repr=False)  # image files: each sample's relative path
    deferred: Any = field(default=None, repr=False)  # identity deferred: a kdcache.data.folders.FolderListing

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitems__(self, positions: Sequence[int] | torch.Tensor) -> Batch:
        """The samples at ``positions`` as one Batch (uint8 images): one slice in memory, files decoded here."""
        pos = torch.as_tensor(positions, dtype=torch.int64)
        if self.deferred is not None:  # the files' digests come with their pixels: the rows' ids are made from them
            images, digests = self.images.read(pos)
            return Batch(images, self.labels[pos], digests=digests)
        return Batch(self.images[pos], self.labels[pos])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample ``i`` as (uint8 image (C, H, W), label)."""
        batch = self.__getitems__([int(i)])
        return batch.images[0], int(batch.labels[0])

    def head(self, limit: int | None) -> "ImageData":
        """The first ``limit`` samples (all of them for None)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise ConfigError(f"--limit must be a positive number of samples, got {limit}")
        return self.take(slice(0, limit))

    def take(self, rows: slice | np.ndarray | torch.Tensor) -> "ImageData":
        """The samples at ``rows`` (a slice or an index array), same info."""
        idx = rows if isinstance(rows, slice) else torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        pos = rows if isinstance(rows, slice) else np.asarray(rows)
        keys = None if self.keys is None else tuple(np.asarray(self.keys, dtype=object)[pos])
        return replace(self, images=subset(self.images, rows), labels=self.labels[idx], indices=self.indices[idx],
                       sample_ids=None if self.sample_ids is None else self.sample_ids[pos], keys=keys)

    @property
    def num_labelled(self) -> int:
        return int((self.labels != UNLABELLED).sum())


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 standardised with the dataset's mean/std."""
    return standardize(to_unit(images), mean, std)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1] (augmentation views are applied at this stage)."""
    return images.float().div_(255.0)


def standardize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, for float (B, C, H, W) in [0, 1]."""
    m = torch.tensor(tuple(mean), device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def collate(batch: Sequence[Any]) -> Any:
    """A DataLoader ``collate_fn`` that stacks ``TopK`` rows (top-k caches) and defers everything else to default_collate.

    A Batch (what CachedDataset over a kdcache split serves per call) passes through as it is.
    """
    if isinstance(batch, Batch):
        return batch
    first = batch[0]
    if isinstance(first, TopK):
        return stack(batch)
    if isinstance(first, (tuple, list)):
        columns = [collate(list(column)) for column in zip(*batch)]
        return type(first)(*columns) if hasattr(first, "_fields") else type(first)(columns)  # namedtuples too
    if isinstance(first, Mapping):  # dict items (CachedDataset over a dataset of dicts): each key stacked
        return {key: collate([item[key] for item in batch]) for key in first}
    return default_collate(batch)
