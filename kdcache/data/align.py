"""Checking a cache against a dataset kdcache did not load: what can be compared, and comparing it.

A user's map-style dataset (torchvision's, an ImageFolder, their own) gives kdcache only
items and, maybe, ``.targets``, ``.classes`` or raw ``.data``. ``align_dataset`` finds each
sample's cache row and checks with ``LogitCache.align`` (the one alignment rule) whatever the
dataset lets it: coverage always, labels and class names where known, kdcache's own content
ids and the split's fingerprint for torchvision's MNIST-style datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from kdcache.cache import LogitCache
from kdcache.data.datasets import BUILTIN
from kdcache.data.folders import folder_files
from kdcache.data.user_data import item_digests
from kdcache.errors import CacheError, ConfigError
from kdcache.identity import UNLABELLED, DatasetInfo, fingerprint_for, sample_ids_for


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


def builtin_split(dataset: Any) -> tuple[str, str] | None:
    """(name, split) of a torchvision built-in dataset kdcache knows (its class and ``.train``), else None."""
    name = next((n for n, spec in BUILTIN.items() if spec.torchvision_class == type(dataset).__name__), None)
    if name is None or not isinstance(getattr(dataset, "train", None), bool):
        return None
    return name, "train" if dataset.train else "test"


def builtin_info(dataset: Any, images: np.ndarray, labels: np.ndarray, classes: bool = True) -> DatasetInfo | None:
    """The DatasetInfo kdcache would give a torchvision built-in dataset (name, split, classes, fingerprint);
    without ``classes`` as kdcache reads it with labels ignored (no class names)."""
    named = builtin_split(dataset)
    if named is None:
        return None
    name, split = named
    spec = BUILTIN[name]
    return DatasetInfo(name=name, split=split, num_samples=len(labels),
                       class_names=tuple(str(c) for c in getattr(dataset, "classes", ())) if classes else (),
                       in_channels=images.shape[1],
                       image_size=tuple(images.shape[2:]), mean=spec.mean, std=spec.std,
                       fingerprint=fingerprint_for(images, labels))


def align_dataset(cache: LogitCache, dataset: Any, idx: np.ndarray, *, labels: Sequence[int] | None = None,
                  check_labels: bool = True, check_content: bool = True) -> Alignment:
    """Cache rows for samples ``idx`` of ``dataset``, checked with LogitCache.align as far as the dataset allows.

    - every dataset: each sample's dataset index is in the cache, once (coverage);
    - with labels (``labels=``, else ``dataset.targets``, else read from the dataset once): every
      labelled cache row's label equals the sample's (rows the cache holds as unlabelled are skipped);
    - with ``dataset.classes``: the class names, in order (not for a cache without labels: its
      classes are the teacher's, which images read unlabelled need not share);
    - ImageFolder-like datasets (``.samples`` paths + ``.root``): each row's content id, from the file's
      relative path, bytes and label (kdcache.data.user_data.item_digests, the rule a dump of such a
      dataset used), so another set of images in the same layout is refused;
    - torchvision MNIST-style datasets (``.data`` uint8 (N, H, W) + ``.targets``: MNIST, FashionMNIST):
      each row's content id (kdcache's own sample ids) and, for a built-in dataset, its name, split
      and the fingerprint of the whole split.

    Any other dataset's items are what its transform made of the sample, so their bytes identify the
    transform as much as the sample: no content id is compared there (a cache dumped with one transform
    trains a student that reads another), only coverage, labels and class names.
    """
    checked = ["index"]
    if labels is not None:
        data_labels = np.asarray(labels, dtype=np.int64)
        if data_labels.shape != idx.shape:
            raise ConfigError(f"labels= has {len(data_labels)} entries for {len(idx)} samples")
    else:
        data_labels = dataset_labels(dataset, idx) if check_labels else None
    named = builtin_split(dataset) if check_content else None
    m = cache.meta
    if named is not None and named != (m.dataset, m.split):  # before coverage: "another split" says why rows miss
        raise CacheError(f"{cache.path} was made from {m.dataset}/{m.split}, but the data is {named[0]}/{named[1]}; "
                         f"dump a cache of {named[0]}/{named[1]} (or use the data the cache was made from)")
    rows = cache.rows_of(idx)  # coverage and a clean /indices first: its message names what is missing
    cache_labels = cache.labels[rows]
    compare = None
    if data_labels is not None:
        # rows the cache holds as unlabelled (-1) carry no label to compare: the sample's own label is hidden
        compare = np.where(cache_labels == UNLABELLED, UNLABELLED, data_labels)
        checked.append("label")
    classes = None if cache.meta.unlabelled else getattr(dataset, "classes", None)
    if classes is not None and len(classes) and list(map(str, classes)) != list(cache.class_names):
        raise CacheError(f"{cache.path} has classes {list(cache.class_names)[:4]}..., the dataset "
                         f"{list(map(str, classes))[:4]}...; the cache is for another label set")
    if classes is not None and len(classes):
        checked.append("class names")
    ids, info = None, None
    images = mnist_style(dataset) if check_content else None
    files = folder_files(dataset) if check_content and images is None else None
    if files is not None and data_labels is not None:  # an ImageFolder: rows are files (relative path + bytes)
        digests, _, keys = item_digests(dataset, idx)  # the rule dump_logits(dataset=...) hashes them with
        ids = sample_ids_for(digests, compare, keys)
        checked.append("content id")
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
            info = builtin_info(dataset, images, fingerprint_labels, classes=num_labelled != 0)
            if info is not None:
                checked += ["dataset and split", "fingerprint"]
    rows = cache.align(idx, labels=compare, sample_ids=ids, info=info)
    return Alignment(idx, rows, cache_labels, tuple(checked))
