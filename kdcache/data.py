"""Datasets held in memory as uint8 tensors, served as whole batches.

Fashion-MNIST is 47 MB of uint8 pixels: holding it as one tensor and slicing
batches from it is ~100x cheaper than decoding one PIL image at a time through a
DataLoader, and it makes the cached-KD data path as cheap as the plain one.

Every sample carries its dataset index and a 64-bit content id (hash of its pixels
and label) so that a logit cache can be matched to the data row by row.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError, DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """What kdcache knows about a built-in dataset."""

    torchvision_class: str
    folder: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetSpec] = {
    # Mean/std of the training split's pixels in [0, 1].
    "fashion-mnist": DatasetSpec("FashionMNIST", "FashionMNIST", (0.2860,), (0.3530,)),
    "mnist": DatasetSpec("MNIST", "MNIST", (0.1307,), (0.3081,)),
}


@dataclass(frozen=True)
class DatasetInfo:
    """Identity of a dataset split: everything a cache or checkpoint records about its data."""

    name: str
    split: str
    num_samples: int  # of the whole split, before any --limit
    class_names: tuple[str, ...]
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str  # sha256 over the whole split's pixels and labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ImageData:
    """A split (or its first ``limit`` rows) in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) int64, position in the full split
    sample_ids: np.ndarray = field(repr=False)  # (N,) uint64 content ids
    info: DatasetInfo = field(repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None) -> "ImageData":
        """The first ``limit`` samples (all of them for None)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise ConfigError(f"--limit must be a positive number of samples, got {limit}")
        return replace(
            self,
            images=self.images[:limit],
            labels=self.labels[:limit],
            indices=self.indices[:limit],
            sample_ids=self.sample_ids[:limit],
        )


def sample_ids_for(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """64-bit blake2b of each row's pixels and label: detects reordered or different data."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    lab = np.ascontiguousarray(labels, dtype="<i8")
    out = bytearray()
    for row, label in zip(flat, lab):
        h = hashlib.blake2b(row.tobytes(), digest_size=8)
        h.update(label.tobytes())
        out += h.digest()
    return np.frombuffer(bytes(out), dtype="<u8").copy()


def fingerprint_for(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def check_dataset_name(name: str) -> DatasetSpec | None:
    """The built-in dataset's spec; None for 'imagefolder' (a team's own images, see kdcache.imagefolder)."""
    if name == "imagefolder":
        return None
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS) + ['imagefolder'])}")
    return DATASETS[name]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split


@lru_cache(maxsize=4)
def _load_full(name: str, split: str, root: str, download: bool) -> ImageData:
    spec = check_dataset_name(name)
    check_split(split)
    if spec is None:
        from .imagefolder import load_imagefolder

        return load_imagefolder(root, split)
    import torchvision.datasets as tvd  # slow import, only when data is needed

    cls = getattr(tvd, spec.torchvision_class)
    try:
        ds = cls(root=root, train=(split == "train"), download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raw = os.path.join(root, spec.folder, "raw")
        raise DataError(
            f"{name} {split} split not found under {raw} ({e}); run scripts/get-data.sh, or pass --download "
            "on a machine with internet"
        ) from None
    images = ds.data.numpy()
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    labels = ds.targets.numpy().astype(np.int64)
    info = DatasetInfo(
        name=name,
        split=split,
        num_samples=len(labels),
        class_names=tuple(str(c) for c in ds.classes),
        in_channels=images.shape[1],
        image_size=(images.shape[2], images.shape[3]),
        mean=spec.mean,
        std=spec.std,
        fingerprint=fingerprint_for(images, labels),
    )
    return ImageData(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        indices=torch.arange(len(labels), dtype=torch.int64),
        sample_ids=sample_ids_for(images, labels),
        info=info,
    )


def load_dataset(
    name: str = "fashion-mnist", split: str = "train", root: str | os.PathLike = "data",
    limit: int | None = None, download: bool = False,
) -> ImageData:
    """Load a split into memory (cached per process); ``limit`` keeps its first N samples.

    Example: ``load_dataset("fashion-mnist", "test", limit=1000)``
    """
    return _load_full(name, split, os.fspath(root), download).head(limit)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 standardised with the dataset's mean/std."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - m) / s


def batch_order(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index tensors for one epoch: a permutation (or 0..n-1) cut into batches."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
