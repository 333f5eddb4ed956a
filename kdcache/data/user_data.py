"""A user's own map-style Dataset as kdcache's ImageData (``dump_logits(model, out, dataset=ds)``), and its row ids.

A map-style Dataset of ``(image, label[, ...])`` items becomes an ImageData whose pixels are read
item by item on demand (``DatasetImages``, through kdcache.data.loader's DataLoader workers).
Images are tensors (C, H, W), uint8 (standardised here with ``normalize``, ImageNet's by default)
or float (used exactly as the dataset returns them: the cache records mean 0, std 1), or PIL
images (PILToTensor, uint8).

Row ids, one rule (``dataset_ids``) for dumping a user's dataset and for aligning one with a cache
(kdcache.data.align): an ImageFolder-like dataset (``.samples`` of (path, class) and ``.root``) is
hashed as kdcache.data.folders hashes a folder (relative path, file bytes, label), so the same folder
gives the same ids and fingerprint whether kdcache or torchvision lists it; any other dataset hashes
each item's image tensor (dtype, shape, bytes) and label, in one pass through a DataLoader.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD, folder_files, hash_files
from kdcache.data.images import positions
from kdcache.data.loader import resolve_workers
from kdcache.data.samples import ImageData
from kdcache.errors import ConfigError, DataError
from kdcache.identity import UNLABELLED, DatasetInfo, fingerprint_for, sample_ids_for

ACCEPTED_DATASET = ("a map-style torch Dataset of (image, label) items (a dataset by name goes in "
                    "data_cfg=DataConfig(dataset=...))")


def is_dataset(obj: Any) -> bool:
    """A map-style dataset: has __len__ and __getitem__ (and is no string, which kdcache reads as a name)."""
    return not isinstance(obj, (str, bytes, os.PathLike)) and hasattr(obj, "__len__") and hasattr(obj, "__getitem__")


def _image_of(item: Any, i: int) -> torch.Tensor:
    """Item ``i``'s image as a (C, H, W) tensor (PIL: PILToTensor, uint8)."""
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ConfigError(f"dataset item {i} is a {type(item).__name__}, not (image, label); give a Dataset whose "
                          "items are (image, label) tuples")
    image = item[0]
    if not isinstance(image, torch.Tensor):
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise ConfigError(f"dataset item {i}: the image is a {type(image).__name__}; give a tensor (C, H, W) or a "
                              "PIL image (e.g. transform=PILToTensor() or ToTensor())")
        from torchvision.transforms.functional import pil_to_tensor

        image = pil_to_tensor(image)
    if image.ndim != 3 or not (image.dtype == torch.uint8 or image.is_floating_point()):
        raise ConfigError(f"dataset item {i}: the image is a {image.dtype} tensor of shape {tuple(image.shape)}; "
                          "give uint8 or float (C, H, W)")
    return image


def _label_of(item: Any, i: int) -> int:
    label = item[1] if isinstance(item, (tuple, list)) and len(item) >= 2 else None
    if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < UNLABELLED:
        raise ConfigError(f"dataset item {i}: the items are not (image, label): item[1] is a {type(label).__name__}, "
                          "not a class index (int >= 0, or -1 for unlabelled)")
    return int(label)


class DatasetImages:
    """A Dataset's images as a kdcache image source: ``images[rows]`` stacks items' images (B, C, H, W)."""

    def __init__(self, dataset: Any, positions: np.ndarray, item_shape: tuple[int, ...], dtype: torch.dtype):
        self.dataset, self.positions, self.item_shape, self.dtype = dataset, positions, tuple(item_shape), dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.positions),) + self.item_shape

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, rows: Any) -> torch.Tensor:
        if isinstance(rows, (int, np.integer)):
            return self[[int(rows)]][0]
        pos = self.positions[positions(rows, len(self))]
        images = []
        for i in pos:
            image = _image_of(self.dataset[int(i)], int(i))
            check_shape(image, int(i), self.item_shape)
            images.append(image)
        if not images:
            return torch.empty(self.shape[1:], dtype=self.dtype)[None][:0]
        return torch.stack(images)

    def subset(self, rows: Any) -> "DatasetImages":
        return DatasetImages(self.dataset, self.positions[positions(rows, len(self))], self.item_shape, self.dtype)

    def __repr__(self) -> str:
        return f"DatasetImages({type(self.dataset).__name__}, {len(self)} items, {self.item_shape})"


def check_shape(image: torch.Tensor, i: int, shape: tuple[int, ...]) -> None:
    if tuple(image.shape) != tuple(shape):
        raise DataError(f"dataset item {i}: image shape {tuple(image.shape)} differs from item 0's {tuple(shape)}; "
                        "every image must have one shape (add Resize and CenterCrop to the dataset's transform)")


class _ItemDigests:
    """Each item's (digest of dtype, shape and image bytes, label), computed in DataLoader workers."""

    def __init__(self, dataset: Any, shape: tuple[int, ...], positions: np.ndarray):
        self.dataset, self.shape, self.positions = dataset, shape, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, rows: list[int]) -> list[Any]:
        out: list[Any] = []
        for i in (int(self.positions[r]) for r in rows):
            try:
                item = self.dataset[i]
                image = _image_of(item, i)
                check_shape(image, i, self.shape)
                label = _label_of(item, i)
            except (ConfigError, DataError) as e:
                return [e]  # carried back as a value: one clean line in the main process
            h = hashlib.blake2b(digest_size=16)
            h.update(f"{image.dtype}{tuple(image.shape)}".encode())
            h.update(image.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            out.append((h.digest(), label))
        return out


def _identity(batch: list) -> list:
    return batch


def _scan_items(dataset: Any, shape: tuple[int, ...], positions: np.ndarray,
                workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(digests (n, 16) uint8, labels (n,) int64) of the items at ``positions``, one pass."""
    loader = DataLoader(_ItemDigests(dataset, shape, positions), batch_size=64, collate_fn=_identity,
                        num_workers=resolve_workers(workers, dataset))
    digests, labels = [], []
    for batch in loader:
        for entry in batch:
            if isinstance(entry, Exception):
                raise type(entry)(str(entry))
            digests.append(np.frombuffer(entry[0], dtype=np.uint8))
            labels.append(entry[1])
    return np.stack(digests), np.asarray(labels, dtype=np.int64)


def item_digests(dataset: Any, positions: np.ndarray, workers: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """The one content-id rule for a user's dataset: (digests (n, 16) uint8, item labels (n,), keys or None) of the
    items at ``positions``; ``identity.sample_ids_for(digests, labels, keys)`` makes their ids.

    An ImageFolder-like dataset is hashed by file (bytes; its relative paths are the keys; labels from
    ``.samples``), as kdcache.data.folders hashes a folder; any other by each item's image tensor (dtype,
    shape, bytes; the label the item gives). dump_logits(dataset=...) and CachedDataset use it alike.
    """
    positions = np.asarray(positions, dtype=np.int64)
    folder = folder_files(dataset)
    if folder is not None:
        paths, keys = folder
        digests, _ = hash_files([paths[i] for i in positions], workers=workers)
        labels = np.asarray([int(dataset.samples[i][1]) for i in positions], dtype=np.int64)
        return digests, labels, [keys[i] for i in positions]
    shape = tuple(_image_of(dataset[int(positions[0])], int(positions[0])).shape) if len(positions) else ()
    digests, labels = _scan_items(dataset, shape, positions, workers)
    return digests, labels, None


def _targets(dataset: Any, n: int) -> np.ndarray | None:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    labels = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or (labels < UNLABELLED).any():
        raise ConfigError(f"dataset.targets holds {labels.shape} {labels.dtype} values for {n} items; it must hold "
                          "one class index (int) per item")
    return labels.astype(np.int64)


def dataset_data(dataset: Any, *, split: str = "train", class_names: Sequence[str] | None = None,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None, ignore_labels: bool = False,
                 workers: int | None = None) -> ImageData:
    """A map-style Dataset of (image, label[, ...]) as an ImageData (see the module docstring)."""
    n = len(dataset)
    if n == 0:
        raise DataError(f"dataset: the {type(dataset).__name__} has no items")
    first = _image_of(dataset[0], 0)
    shape = tuple(first.shape)
    labels = _targets(dataset, n)
    digests, item_labels, keys = item_digests(dataset, np.arange(n), workers)
    labels = item_labels if labels is None else labels
    if ignore_labels:
        labels = np.full(n, UNLABELLED, dtype=np.int64)
    names = tuple(str(c) for c in getattr(dataset, "classes", None) or class_names or ())
    if not names:
        raise ConfigError(f"dataset: a {type(dataset).__name__} has no .classes; pass class_names= (the teacher's "
                          "classes, in the order of its logits)")
    if labels.max() >= len(names):
        raise ConfigError(f"dataset: label {int(labels.max())} is out of range for {len(names)} class names")
    channels = shape[0]
    if first.is_floating_point():
        mean, std = (0.0,) * channels, (1.0,) * channels  # used as the dataset returns them
    elif normalize is not None:
        mean, std = tuple(map(float, normalize[0])), tuple(map(float, normalize[1]))
    elif channels in (1, 3):
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    else:
        raise ConfigError(f"dataset: {channels}-channel uint8 images; pass normalize=(mean, std) with {channels} values each")
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"normalize: give {channels} means and {channels} stds for {channels}-channel images")
    cls = type(dataset)
    info = DatasetInfo(name=f"dataset:{cls.__module__}.{cls.__qualname__}", split=split, num_samples=n,
                       class_names=names, in_channels=channels, image_size=(shape[1], shape[2]), mean=mean, std=std,
                       fingerprint=fingerprint_for(digests, labels, keys))
    return ImageData(images=DatasetImages(dataset, np.arange(n), shape, first.dtype), labels=torch.from_numpy(labels),
                     indices=torch.arange(n, dtype=torch.int64), sample_ids=sample_ids_for(digests, labels, keys),
                     info=info, keys=None if keys is None else tuple(keys))
