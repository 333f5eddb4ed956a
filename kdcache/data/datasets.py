"""Datasets by name: built-in ones in memory as uint8 tensors, image folders as files decoded on demand.

Fashion-MNIST is 47 MB of uint8 pixels: holding it as one tensor and slicing whole
batches from it (kdcache.data.loader, ``__getitems__``) is ~100x cheaper than decoding one
PIL image at a time, and it makes the cached-KD data path as cheap as the plain one.
A folder of photos is listed and hashed, never held (kdcache.data.folders).
``load_dataset`` is the one entry point: built-in torchvision datasets, or a team's
own images (labelled ``imagefolder`` or ``unlabelled`` images).

``ignore_labels=True`` reads a split as if nobody had labelled it: every label is
UNLABELLED (-1) and the content ids and fingerprint are computed with -1, so a cache
made from it (``dump-logits --no-labels``) never reveals a label. The class names stay.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from kdcache.config import SPLITS
from kdcache.data.folders import (  # a team's own images (read lazily: PIL only when used)
    IMAGEFOLDER,
    UNLABELLED_FOLDER,
)
from kdcache.data.hf import HF, HF_PREFIX  # a Hugging Face dataset (datasets imported only when one is read)
from kdcache.data.images import InputTransform, check_image_size
from kdcache.data.items import ItemKeys
from kdcache.data.samples import ImageData
from kdcache.errors import ConfigError, DataError
from kdcache.identity import UNLABELLED, DatasetInfo, fingerprint_for, sample_ids_for


@dataclass(frozen=True)
class DatasetSpec:
    """What kdcache knows about a built-in dataset."""

    torchvision_class: str
    folder: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ReadOptions:
    """How image files are read. One object, because a job fills it once (from DataConfig) and reads every
    split alike. Built-in datasets are in memory: they only check that an ``image_size`` given is their own.

    ``image_size`` is the side of the square input (default 64) or a recorded InputTransform
    (kdcache.data.images); ``workers`` the processes that hash the files (None: one per CPU);
    ``skip_unreadable`` leaves out files that do not decode (recorded in ``info.skipped``);
    ``keys`` a Hugging Face dataset's image and label columns (None: found from its features, kdcache.data.hf).
    ``defer_identity``: the files are not hashed up front but where a job reads them, so the split's ids and
    fingerprint are known only once its rows are read (kdcache.data.samples.ImageData; a dump's choice,
    kdcache.jobs.dump.defers_identity); ignored with ``skip_unreadable``, and by built-in datasets.
    """

    image_size: int | InputTransform | None = None
    workers: int | None = None
    skip_unreadable: bool = False
    keys: ItemKeys | None = None
    defer_identity: bool = False


BUILTIN: dict[str, DatasetSpec] = {
    # Mean/std of the training split's pixels in [0, 1].
    "fashion-mnist": DatasetSpec("FashionMNIST", "FashionMNIST", (0.2860,), (0.3530,)),
    "mnist": DatasetSpec("MNIST", "MNIST", (0.1307,), (0.3081,)),
}


def dataset_names() -> list[str]:
    return sorted(BUILTIN) + [IMAGEFOLDER, UNLABELLED_FOLDER, "hf:PATH"]


def hf_path(name: str, root: str) -> str | None:
    """The path of a Hugging Face dataset named ``hf:PATH`` (or ``hf``, a cache's record of one: then --data-dir),
    else None."""
    if name.startswith(HF_PREFIX):
        return name[len(HF_PREFIX):] or root
    return root if name == HF else None


def reads_files(name: str | None) -> bool:
    """Whether dataset ``name`` is images decoded on demand at --image-size (folders, Hugging Face datasets)."""
    return name is not None and (name in (IMAGEFOLDER, UNLABELLED_FOLDER) or hf_path(name, "") is not None)


def check_dataset_name(name: str) -> DatasetSpec | None:
    """The built-in dataset's spec; None for a team's own images (see kdcache.data.folders, kdcache.data.hf)."""
    if reads_files(name):
        return None
    if name not in BUILTIN:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return BUILTIN[name]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split


def _load_full(name: str, split: str, root: str, download: bool, ignore_labels: bool, read: ReadOptions) -> ImageData:
    image_size, files = read.image_size, dict(workers=read.workers, skip_unreadable=read.skip_unreadable,
                                              defer_identity=read.defer_identity)
    spec = check_dataset_name(name)
    check_split(split)
    if spec is None:  # image files: listed and hashed here, decoded batch by batch when read
        if image_size is not None and not isinstance(image_size, InputTransform):
            check_image_size(image_size)  # before the folder is listed and hashed
        path = hf_path(name, root)
        if path is not None:  # a Hugging Face dataset on disk: rows keyed by their encoded bytes (kdcache.data.hf)
            from kdcache.data.hf import load_hf

            return load_hf(path, split, keys=read.keys, image_size=image_size, ignore_labels=ignore_labels)
        from kdcache.data.folders import load_imagefolder, load_unlabelled

        size = image_size  # an int, a recorded InputTransform, or None: 64
        if name == UNLABELLED_FOLDER:
            return load_unlabelled(root, split, image_size=size, **files)
        return load_imagefolder(root, split, ignore_labels, image_size=size, **files)
    return _load_builtin(name, spec, split, root, download, ignore_labels, image_size)


def looks_like_image_folder(root: str | os.PathLike) -> bool:
    """``root`` holds a train/ or test/ folder: a team's own images (imagefolder), not a built-in dataset's files."""
    return os.path.isdir(os.path.join(root, "train")) or os.path.isdir(os.path.join(root, "test"))


def _load_builtin(name: str, spec: DatasetSpec, split: str, root: str, download: bool, ignore_labels: bool,
                  image_size: int | None) -> ImageData:
    import torchvision.datasets as tvd  # slow import, only when data is needed

    cls = getattr(tvd, spec.torchvision_class)
    try:
        ds = cls(root=root, train=(split == "train"), download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raw = os.path.join(root, spec.folder, "raw")
        hint = ("; this folder looks like your own images (ROOT/train/<class>/...): pass --dataset imagefolder"
                if looks_like_image_folder(root) else "; run scripts/get-data.sh, or pass --download on a machine "
                                                      "with internet")
        raise DataError(f"{name} {split} split not found under {raw} ({str(e).splitlines()[0]}){hint}") from None
    images = ds.data.numpy()
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    side = image_size.size if isinstance(image_size, InputTransform) else image_size
    if side is not None and (side, side) != images.shape[2:]:
        raise ConfigError(f"--image-size {side}: {name} images are {images.shape[3]}x{images.shape[2]} and "
                          "are used as they are; --image-size applies to image folders (imagefolder, unlabelled)")
    labels = ds.targets.numpy().astype(np.int64)
    if ignore_labels:
        labels = np.full(len(labels), UNLABELLED, dtype=np.int64)
    info = DatasetInfo(  # read unlabelled, it has no classes of its own: a cache of it takes the teacher's
        name=name, split=split, num_samples=len(labels),
        class_names=() if ignore_labels else tuple(str(c) for c in ds.classes),
        in_channels=images.shape[1], image_size=(images.shape[2], images.shape[3]), mean=spec.mean, std=spec.std,
        fingerprint=fingerprint_for(images, labels),
    )
    return ImageData(images=torch.from_numpy(np.ascontiguousarray(images)), labels=torch.from_numpy(labels),
                     indices=torch.arange(len(labels), dtype=torch.int64), sample_ids=sample_ids_for(images, labels),
                     info=info)


def load_train_val(name: str, root: str | os.PathLike, limit: int | None, val_size: int,
                   download: bool = False, **read: Any) -> tuple[ImageData, ImageData | None]:
    """The training samples and the validation samples of a train split (``validation_rows``).

    The validation samples are never trained on; the training samples are the first
    ``limit`` of the rest, in dataset order (all of the rest for None).
    """
    full = load_dataset(name, "train", root, None, download, **read)
    if val_size == 0:
        return full.head(limit), None
    if val_size >= len(full):
        raise ConfigError(f"--val-size {val_size} leaves no training samples ({name} train has {len(full)})")
    stratified = name == IMAGEFOLDER or hf_path(name, "") is not None  # stored class by class, often
    val = validation_rows(full.labels.numpy(), val_size, stratified=stratified)
    train = np.setdiff1d(np.arange(len(full)), val)  # sorted: dataset order
    return full.take(train).head(limit), full.take(val)


def validation_rows(labels: np.ndarray, val_size: int, stratified: bool) -> np.ndarray:
    """Which rows of a train split are held out for validation (sorted).

    Built-in datasets come in the shuffled order their authors stored, so the last
    ``val_size`` rows are a fair sample. An image folder is stored class by class, so there
    the hold-out is ``stratified``: each class gives its last rows, in proportion to its size
    (largest remainders round), and every class is validated.
    """
    n = len(labels)
    if not stratified:
        return np.arange(n - val_size, n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = val_size * counts / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: val_size - int(quota.sum())]:
        quota[i] += 1
    rows = [np.flatnonzero(labels == c)[len(np.flatnonzero(labels == c)) - q:] for c, q in zip(classes, quota) if q]
    return np.sort(np.concatenate(rows))


def load_dataset(
    name: str = "fashion-mnist", split: str = "train", root: str | os.PathLike = "data",
    limit: int | None = None, download: bool = False, ignore_labels: bool = False, *,
    read: ReadOptions | None = None, **read_fields: Any,
) -> ImageData:
    """A split: built-in datasets in memory (read afresh, ~0.35 s for Fashion-MNIST's 60,000), image folders as
    lazily decoded files. Nothing is cached between calls: a split lives as long as the job that holds it.

    ``limit`` keeps the first N samples; ``ignore_labels`` reads it as unlabelled (see the
    module docstring). ``read`` says how image files are read (ReadOptions); its fields may also
    be given one by one (``image_size=96``), overriding ``read``'s.
    Example: ``load_dataset("fashion-mnist", "test", limit=1000)``,
    ``load_dataset("imagefolder", "train", "photos", image_size=96, workers=4)``
    """
    options = replace(read or ReadOptions(), **read_fields)  # an unknown name is a TypeError, as in a signature
    return _load_full(name, split, os.fspath(root), download, ignore_labels, options).head(limit)


def read_options(data_cfg: Any) -> dict[str, Any]:
    """The image-reading settings of a DataConfig, as load_dataset's (and load_train_val's) keyword arguments."""
    keys = None if data_cfg.image_key is None and data_cfg.label_key is None else \
        ItemKeys(data_cfg.image_key, data_cfg.label_key)
    return {"read": ReadOptions(image_size=data_cfg.image_size, workers=data_cfg.workers,
                                skip_unreadable=data_cfg.skip_unreadable, keys=keys)}


def require_labels(data: ImageData, role: str) -> ImageData:
    """Refuse data without a single label where labels are needed (training a teacher, evaluating)."""
    if len(data) and data.num_labelled == 0:
        raise DataError(f"{data.info.name}/{data.info.split} has no labels, so it cannot be {role}; unlabelled "
                        "images serve as a transfer set (train-student --transfer CACHE)")
    return data
