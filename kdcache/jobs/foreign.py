"""A user's own Dataset and nn.Module as kdcache's ImageData and Teacher (``dump_logits(model, out, dataset=ds)``).

A map-style Dataset of ``(image, label[, ...])`` items becomes an ImageData whose pixels are read
item by item on demand (``DatasetImages``, through kdcache.data.loader's DataLoader workers); an
nn.Module becomes a Teacher identified by a hash of its state dict. Images are tensors (C, H, W),
uint8 (standardised here with ``normalize``, ImageNet's by default) or float (used exactly as the
dataset returns them: the cache records mean 0, std 1), or PIL images (PILToTensor, uint8).

Row ids: an ImageFolder-like dataset (``.samples`` of (path, class) and ``.root``) is hashed as
kdcache.data.folders hashes a folder (relative path, file bytes, label), so the same folder gives
the same ids and fingerprint whether kdcache or torchvision lists it; any other dataset hashes each
item's image tensor (dtype, shape, bytes) and label, in one pass through a DataLoader.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD, folder_files, hash_files
from kdcache.data.images import _positions
from kdcache.data.loader import resolve_workers
from kdcache.data.samples import ImageData
from kdcache.errors import ConfigError, DataError
from kdcache.identity import UNLABELLED, DatasetInfo, fingerprint_for, sample_ids_for
from kdcache.train.teacher import Teacher, TeacherSpec

ACCEPTED_TEACHER = "a kdcache checkpoint path, a TeacherSpec (factory + weights) or a torch.nn.Module"
ACCEPTED_DATASET = ("a map-style torch Dataset of (image, label) items (a dataset by name goes in "
                    "data_cfg=DataConfig(dataset=...))")


def is_dataset(obj: Any) -> bool:
    """A map-style dataset: has __len__ and __getitem__ (and is no string, which kdcache reads as a name)."""
    return not isinstance(obj, (str, bytes, os.PathLike)) and hasattr(obj, "__len__") and hasattr(obj, "__getitem__")


def check_inputs(teacher: Any, dataset: Any) -> None:
    """One-line ConfigError for a teacher or dataset of a kind dump_logits does not take (named by type, never repr)."""
    if teacher is not None and not isinstance(teacher, (str, os.PathLike, nn.Module, TeacherSpec)):
        raise ConfigError(f"teacher: got a {type(teacher).__name__}; give {ACCEPTED_TEACHER}")
    if dataset is not None and not is_dataset(dataset):
        raise ConfigError(f"dataset: got a {type(dataset).__name__}; give {ACCEPTED_DATASET}")


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
        pos = self.positions[_positions(rows, len(self))]
        images = []
        for i in pos:
            image = _image_of(self.dataset[int(i)], int(i))
            check_shape(image, int(i), self.item_shape)
            images.append(image)
        if not images:
            return torch.empty(self.shape[1:], dtype=self.dtype)[None][:0]
        return torch.stack(images)

    def subset(self, rows: Any) -> "DatasetImages":
        return DatasetImages(self.dataset, self.positions[_positions(rows, len(self))], self.item_shape, self.dtype)

    def __repr__(self) -> str:
        return f"DatasetImages({type(self.dataset).__name__}, {len(self)} items, {self.item_shape})"


def check_shape(image: torch.Tensor, i: int, shape: tuple[int, ...]) -> None:
    if tuple(image.shape) != tuple(shape):
        raise DataError(f"dataset item {i}: image shape {tuple(image.shape)} differs from item 0's {tuple(shape)}; "
                        "every image must have one shape (add Resize and CenterCrop to the dataset's transform)")


class _ItemDigests:
    """Each item's (digest of dtype, shape and image bytes, label), computed in DataLoader workers."""

    def __init__(self, dataset: Any, shape: tuple[int, ...]):
        self.dataset, self.shape = dataset, shape

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, rows: list[int]) -> list[Any]:
        out: list[Any] = []
        for i in rows:
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


def _scan_items(dataset: Any, shape: tuple[int, ...], workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(digests (N, 16) uint8, labels (N,) int64) of every item, one pass."""
    loader = DataLoader(_ItemDigests(dataset, shape), batch_size=64, collate_fn=_identity,
                        num_workers=resolve_workers(workers, dataset))
    digests, labels = [], []
    for batch in loader:
        for entry in batch:
            if isinstance(entry, Exception):
                raise type(entry)(str(entry))
            digests.append(np.frombuffer(entry[0], dtype=np.uint8))
            labels.append(entry[1])
    return np.stack(digests), np.asarray(labels, dtype=np.int64)


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
    folder = folder_files(dataset)
    labels = _targets(dataset, n)
    if folder is not None:
        if labels is None:
            labels = np.asarray([int(c) for _, c in dataset.samples], dtype=np.int64)
        paths, keys = folder
        digests, _ = hash_files(paths, workers=workers)
    else:
        digests, item_labels = _scan_items(dataset, shape, workers)
        labels = item_labels if labels is None else labels
        keys = None
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


def state_sha256(module: nn.Module) -> str:
    """SHA-256 over the state dict in key order: each key, dtype, shape and tensor bytes."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_teacher(module: nn.Module, info: DatasetInfo) -> Teacher:
    """An nn.Module as a Teacher (eval mode) that sees ``info``'s standardisation; checked on the data's input shape."""
    from kdcache.train.models import check_output_shape

    cls = type(module)
    arch = f"module:{cls.__module__}.{cls.__qualname__}"
    check_output_shape(module, info.num_classes, info.in_channels, tuple(info.image_size), arch)
    return Teacher(model=module.eval(), arch=arch, sha256=state_sha256(module), mean=tuple(info.mean),
                   std=tuple(info.std), config={})


def dataset_from_factory(target: str, option: str = "--dataset-factory") -> Any:
    """The map-style Dataset that ``package.module:function`` returns; anything it raises, or returns that is
    no map-style Dataset, is one ConfigError line."""
    from kdcache.train.models import import_factory

    fn = import_factory(target, option)
    try:
        dataset = fn()
    except Exception as e:  # the team's code: any failure is one line
        first = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"{option} {target} failed ({type(e).__name__}: {first})") from None
    if not is_dataset(dataset):
        raise ConfigError(f"{option} {target} returned a {type(dataset).__name__}, not a map-style Dataset (one with "
                          "__len__ and __getitem__, e.g. torchvision.datasets.ImageFolder)")
    return dataset
