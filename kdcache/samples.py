"""What a sample is to kdcache: a split held in memory, and the ids that tie cache rows to it.

Every sample carries its dataset index and a 64-bit content id (a hash of its pixels
and label, and for files its relative path), so that a logit cache can be matched to
the data row by row. A sample without a label carries ``UNLABELLED`` (-1): its id
hashes that marker instead of a label, so an unlabelled row never reveals a label.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .images import subset

UNLABELLED = -1  # the label of a sample nobody labelled (cache rows, batches, datasets)


@dataclass(frozen=True)
class DatasetInfo:
    """Identity of a dataset split: everything a cache or checkpoint records about its data."""

    name: str
    split: str
    num_samples: int  # of the whole split, before any --limit
    class_names: tuple[str, ...]  # () for a dataset without labels
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str  # sha256 over the whole split's pixels (files: relative paths and bytes) and labels
    transform: dict | None = field(default=None, hash=False)  # image files: kdcache.images.InputTransform.record()
    skipped: tuple[str, ...] = ()  # image files left out as unreadable (--skip-unreadable), relative paths

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ImageData:
    """A split (or part of it). ``labels`` holds UNLABELLED where a sample has no label.

    ``images`` is a uint8 tensor (N, C, H, W) in memory, or a lazy source indexed the same
    way (kdcache.images: image files decoded on demand); read batches of it through
    kdcache.loader.image_batches.
    """

    images: Any  # (N, C, H, W) uint8: a tensor, or a kdcache.images source
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) int64, position in the full split
    sample_ids: np.ndarray = field(repr=False)  # (N,) uint64 content ids
    info: DatasetInfo = field(repr=False)
    keys: tuple[str, ...] | None = field(default=None, repr=False)  # image files: each sample's relative path

    def __len__(self) -> int:
        return int(self.labels.shape[0])

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
                       sample_ids=self.sample_ids[pos], keys=keys)

    @property
    def num_labelled(self) -> int:
        return int((self.labels != UNLABELLED).sum())


def sample_ids_for(images: np.ndarray, labels: np.ndarray, keys: Sequence[str] | None = None) -> np.ndarray:
    """64-bit BLAKE2b of each sample's key (if any, e.g. a relative path), uint8 pixels and int64 label.

    Detects reordered, relabelled or edited data row by row (docs/cache-format.md).
    """
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    lab = np.ascontiguousarray(labels, dtype="<i8")
    out = bytearray()
    for i, (row, label) in enumerate(zip(flat, lab)):
        h = hashlib.blake2b(digest_size=8)
        if keys is not None:
            h.update(keys[i].encode("utf-8"))
        h.update(row.tobytes())
        h.update(label.tobytes())
        out += h.digest()
    return np.frombuffer(bytes(out), dtype="<u8").copy()


def fingerprint_for(images: np.ndarray, labels: np.ndarray, keys: Sequence[str] | None = None) -> str:
    """SHA-256 over a whole split: its keys joined by newlines (if any), then pixels, then labels (int64 LE)."""
    h = hashlib.sha256()
    if keys is not None:
        h.update("\n".join(keys).encode("utf-8"))
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


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


def batch_order(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index tensors for one epoch: a permutation (or 0..n-1) cut into batches."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
