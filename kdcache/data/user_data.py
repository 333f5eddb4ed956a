"""A user's own map-style Dataset as kdcache's ImageData (``dump_logits(model, out, dataset=ds)``), and its row ids.

A map-style Dataset of ``(image, label[, ...])`` tuples or ``{"image": ..., "label": ...}`` dicts
(kdcache.data.items: keys found by name, or named) becomes an ImageData whose pixels are read
item by item on demand (``DatasetImages``, through kdcache.data.loader's DataLoader workers).
Images are tensors (C, H, W), uint8 (standardised here with ``normalize``, ImageNet's by default)
or float (used exactly as the dataset returns them: kdcache standardises with mean 0, std 1), or PIL
images (PILToTensor, uint8). What is known of the dataset's own transform (``user_transform``: its
repr, a Normalize's mean/std) is recorded, since kdcache cannot re-run it.

Row ids, one rule (``item_digests``) for dumping a user's dataset and for aligning one with a cache
(kdcache.data.align): an ImageFolder-like dataset (``.samples`` of (path, class) and ``.root``) is
hashed as kdcache.data.folders hashes a folder (relative path, file bytes, label), so the same folder
gives the same ids and fingerprint whether kdcache or torchvision lists it; any other dataset hashes
each item's image tensor (dtype, shape, bytes) and label, in one pass through a DataLoader.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kdcache.data.folders import IMAGEFOLDER, IMAGENET_MEAN, IMAGENET_STD, folder_files, hash_files
from kdcache.data.images import positions
from kdcache.data.items import LABEL_KEYS, ItemKeys, item_parts
from kdcache.data.loader import scan
from kdcache.data.samples import ImageData
from kdcache.errors import ConfigError, DataError
from kdcache.identity import UNLABELLED, USER_DATASET, DatasetInfo, fingerprint_for, sample_ids_for

ACCEPTED_DATASET = ("a map-style torch Dataset of (image, label) or {image, label} dict items (a dataset by name "
                    "goes in data_cfg=DataConfig(dataset=...))")


def is_dataset(obj: Any) -> bool:
    """A map-style dataset: has __len__ and __getitem__ (and is no string, which kdcache reads as a name)."""
    return not isinstance(obj, (str, bytes, os.PathLike)) and hasattr(obj, "__len__") and hasattr(obj, "__getitem__")


def _image_of(item: Any, i: int, keys: ItemKeys | None = None) -> torch.Tensor:
    """Item ``i``'s image (kdcache.data.items.item_parts) as a (C, H, W) tensor (PIL: PILToTensor, uint8)."""
    image, _ = item_parts(item, i, keys)
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


def _label_of(item: Any, i: int, keys: ItemKeys | None = None) -> int:
    _, label = item_parts(item, i, keys)
    if label is None:
        raise ConfigError(f"dataset item {i} is a {type(item).__name__} with no label, not (image, label) or a dict "
                          f"with a label key ({', '.join(LABEL_KEYS[:4])}, ...); give labelled items (or name the key: "
                          "label_key=)")
    if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < UNLABELLED:
        raise ConfigError(f"dataset item {i}: the items are not (image, label): the label is a {type(label).__name__}, "
                          "not a class index (int >= 0, or -1 for unlabelled)")
    return int(label)


class DatasetImages:
    """A Dataset's images as a kdcache image source: ``images[rows]`` stacks items' images (B, C, H, W)."""

    def __init__(self, dataset: Any, positions: np.ndarray, item_shape: tuple[int, ...], dtype: torch.dtype,
                 keys: ItemKeys | None = None):
        self.dataset, self.positions, self.item_shape, self.dtype = dataset, positions, tuple(item_shape), dtype
        self.keys = keys

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
            image = _image_of(self.dataset[int(i)], int(i), self.keys)
            check_shape(image, int(i), self.item_shape)
            images.append(image)
        if not images:
            return torch.empty(self.shape[1:], dtype=self.dtype)[None][:0]
        return torch.stack(images)

    def subset(self, rows: Any) -> "DatasetImages":
        return DatasetImages(self.dataset, self.positions[positions(rows, len(self))], self.item_shape, self.dtype,
                             self.keys)

    def __repr__(self) -> str:
        return f"DatasetImages({type(self.dataset).__name__}, {len(self)} items, {self.item_shape})"


def check_shape(image: torch.Tensor, i: int, shape: tuple[int, ...]) -> None:
    if tuple(image.shape) != tuple(shape):
        raise DataError(f"dataset item {i}: image shape {tuple(image.shape)} differs from item 0's {tuple(shape)}; "
                        "every image must have one shape (add Resize and CenterCrop to the dataset's transform)")


class _ItemDigests:
    """Each item's (digest of dtype, shape and image bytes, label), computed in DataLoader workers.

    ``need_label``: an item without a label is refused (a dump); else its label is UNLABELLED (CachedDataset).
    """

    def __init__(self, dataset: Any, shape: tuple[int, ...], positions: np.ndarray, keys: ItemKeys | None,
                 need_label: bool):
        self.dataset, self.shape, self.positions = dataset, shape, positions
        self.keys, self.need_label = keys, need_label

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, rows: list[int]) -> list[Any]:
        out: list[Any] = []
        for i in (int(self.positions[r]) for r in rows):
            try:
                item = self.dataset[i]
                image = _image_of(item, i, self.keys)
                check_shape(image, i, self.shape)
                unlabelled = not self.need_label and item_parts(item, i, self.keys)[1] is None
                label = UNLABELLED if unlabelled else _label_of(item, i, self.keys)
            except (ConfigError, DataError) as e:
                return [e]  # carried back as a value: one clean line in the main process
            h = hashlib.blake2b(digest_size=16)
            h.update(f"{image.dtype}{tuple(image.shape)}".encode())
            h.update(image.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            out.append((h.digest(), label))
        return out


def _scan_items(dataset: Any, shape: tuple[int, ...], positions: np.ndarray, workers: int | None,
                keys: ItemKeys | None, need_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(digests (n, 16) uint8, labels (n,) int64) of the items at ``positions``, one pass."""
    digests, labels = [], []
    for batch in scan(_ItemDigests(dataset, shape, positions, keys, need_label), 64, workers, source=dataset):
        for entry in batch:
            if isinstance(entry, Exception):
                raise type(entry)(str(entry))
            digests.append(np.frombuffer(entry[0], dtype=np.uint8))
            labels.append(entry[1])
    return np.stack(digests), np.asarray(labels, dtype=np.int64)


def item_digests(dataset: Any, positions: np.ndarray, workers: int | None = None, keys: ItemKeys | None = None,
                 need_label: bool = True) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """The one content-id rule for a user's dataset: (digests (n, 16) uint8, item labels (n,), keys or None) of the
    items at ``positions``; ``identity.sample_ids_for(digests, labels, keys)`` makes their ids.

    An ImageFolder-like dataset is hashed by file (bytes; its relative paths are the keys; labels from
    ``.samples``), as kdcache.data.folders hashes a folder; any other by each item's image tensor (dtype,
    shape, bytes; the label the item gives: a tuple's second element, a dict's label key, ``keys``). An item without
    a label is refused with ``need_label``, else hashed as UNLABELLED. dump_logits(dataset=...) and CachedDataset
    use it alike.
    """
    positions = np.asarray(positions, dtype=np.int64)
    folder = folder_files(dataset)
    if folder is not None:
        paths, keys = folder
        digests, _ = hash_files([paths[i] for i in positions], workers=workers)
        labels = np.asarray([int(dataset.samples[i][1]) for i in positions], dtype=np.int64)
        return digests, labels, [keys[i] for i in positions]
    shape = tuple(_image_of(dataset[int(positions[0])], int(positions[0]), keys).shape) if len(positions) else ()
    digests, labels = _scan_items(dataset, shape, positions, workers, keys, need_label)
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
                 workers: int | None = None, item_keys: ItemKeys | None = None) -> ImageData:
    """A map-style Dataset of (image, label[, ...]) tuples or {image, label} dicts (``item_keys``: their keys, else
    found by name: kdcache.data.items) as an ImageData (see the module docstring).

    An ImageFolder-like dataset is recorded as ``imagefolder``, the dataset ``--dataset imagefolder`` reads
    (its split: the folder's name when it is train or test, else ``split``), since its row ids and fingerprint
    are that rule's; any other as ``dataset:<module>.<class>``. What is known of the dataset's transform
    (``user_transform``) goes into the DatasetInfo, hence the cache.
    """
    n = len(dataset)
    if n == 0:
        raise DataError(f"dataset: the {type(dataset).__name__} has no items")
    first = _image_of(dataset[0], 0, item_keys)
    shape = tuple(first.shape)
    labels = _targets(dataset, n)
    digests, item_labels, keys = item_digests(dataset, np.arange(n), workers, item_keys)
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
    name, split = dataset_name(dataset, split)
    info = DatasetInfo(name=name, split=split, num_samples=n, class_names=names, in_channels=channels,
                       image_size=(shape[1], shape[2]), mean=mean, std=std,
                       fingerprint=fingerprint_for(digests, labels, keys), user_transform=user_transform(dataset, first))
    return ImageData(images=DatasetImages(dataset, np.arange(n), shape, first.dtype, item_keys),
                     labels=torch.from_numpy(labels),
                     indices=torch.arange(n, dtype=torch.int64), sample_ids=sample_ids_for(digests, labels, keys),
                     info=info, keys=None if keys is None else tuple(keys))


def dataset_name(dataset: Any, split: str) -> tuple[str, str]:
    """(name, split) a cache of ``dataset`` records: ``imagefolder`` for an ImageFolder-like dataset (the folder
    rule's ids and fingerprint, so ``--dataset imagefolder`` jobs take the cache; its split is the folder's name
    when that is train or test), else ``dataset:<module>.<class>`` and ``split``."""
    folder = folder_files(dataset)
    if folder is not None:
        leaf = Path(str(dataset.root)).name
        return IMAGEFOLDER, leaf if leaf in ("train", "test") else split
    cls = type(dataset)
    return f"{USER_DATASET}{cls.__module__}.{cls.__qualname__}", split


def find_normalize(transform: Any) -> Any | None:
    """The last ``Normalize`` (torchvision's, v1 or v2) in ``transform``, looking inside ``Compose.transforms``."""
    found = None
    if transform is None:
        return None
    if type(transform).__name__ == "Normalize" and hasattr(transform, "mean") and hasattr(transform, "std"):
        return transform
    for inner in getattr(transform, "transforms", None) or ():
        found = find_normalize(inner) or found
    return found


def user_transform(dataset: Any, first: torch.Tensor) -> dict[str, Any]:
    """What is known of how a user's dataset made its images: its ``transform``'s repr (None: it has none kdcache
    can see), the mean/std of a ``Normalize`` in it, and the images' dtype (float images reach the teacher as
    they are; uint8 ones kdcache standardises). Not the transform itself: kdcache cannot re-run it."""
    tf = getattr(dataset, "transform", None)
    norm = find_normalize(tf)
    as_list = lambda v: [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]  # noqa: E731
    return {"kind": "user", "dataset_class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
            "repr": None if tf is None else " ".join(repr(tf).split())[:2000],
            "normalize": None if norm is None else {"mean": as_list(norm.mean), "std": as_list(norm.std)},
            "image_dtype": str(first.dtype).replace("torch.", "")}
