"""Checking a cache against a dataset kdcache did not load: what can be compared, and comparing it.

A user's map-style dataset (torchvision's, an ImageFolder, their own) gives kdcache only
items and, maybe, ``.targets``, ``.classes`` or raw ``.data``. ``align_dataset`` finds each
sample's cache row and checks with ``LogitCache.align`` (the one alignment rule) whatever the
dataset lets it: coverage always, labels and class names where known, kdcache's own content
ids and the split's fingerprint for torchvision's MNIST-style datasets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from kdcache.cache import LogitCache
from kdcache.data.datasets import BUILTIN
from kdcache.data.folders import folder_files
from kdcache.data.hf import HF, find_columns, is_hf_dataset, row_identity
from kdcache.data.items import ItemKeys, check_served_dict, item_parts
from kdcache.data.user_data import item_digests
from kdcache.errors import CacheError, ConfigError, DataError
from kdcache.identity import UNLABELLED, USER_DATASET, DatasetInfo, fingerprint_for, sample_ids_for

log = logging.getLogger(__name__)  # warnings reach a Python user on stderr, a CLI user as `warning:` lines


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


def dataset_labels(dataset: Any, idx: np.ndarray, keys: ItemKeys | None = None, first_item: Any = None
                   ) -> np.ndarray | None:
    """Labels of samples ``idx``: from ``dataset.targets`` when it has them, else read once from the items (a tuple's
    second element, a dict's label key: kdcache.data.items; ``first_item``: item ``idx[0]``, already read); None for
    items without labels (bare images)."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        labels = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)[idx]
    else:
        item = (dataset[int(idx[0])] if first_item is None else first_item) if len(idx) else None
        first = item_parts(item, int(idx[0]), keys)[1] if len(idx) else None
        if first is None:
            return None  # the dataset yields images only: nothing to compare
        labels = np.array([int(first) if isinstance(first, torch.Tensor) else first]
                          + [_label(dataset[int(j)], int(j), keys) for j in idx[1:]])
    try:
        return labels.astype(np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"the dataset's labels are not class indices (got {labels[:3].tolist()}...); pass "
                          "labels= (ints), or check_labels=False") from None


def _label(item: Any, i: int, keys: ItemKeys | None) -> Any:
    label = item_parts(item, i, keys)[1]
    if label is None:
        raise ConfigError(f"dataset item {i} has no label, but item 0 has one; give every item a label (or none)")
    return int(label) if isinstance(label, torch.Tensor) and label.ndim == 0 else label


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
                  check_labels: bool = True, check_content: bool = True, keys: ItemKeys | None = None) -> Alignment:
    """Cache rows for samples ``idx`` of ``dataset``, checked with LogitCache.align as far as the dataset allows.

    - every dataset: its first item is understood (kdcache.data.items: a tuple, a dict with an image key,
      ``keys`` naming them, or a bare image), else a one-line ConfigError naming what it is;
      each sample's dataset index is in the cache, once (coverage);
    - with labels (``labels=``, else ``dataset.targets``, else read from the items once: a tuple's second
      element, a dict's label key): every labelled cache row's label equals the sample's (rows the cache holds as
      unlabelled are skipped);
    - with ``dataset.classes``: the class names, in order (not for a cache without labels: its
      classes are the teacher's, which images read unlabelled need not share);
    - ImageFolder-like datasets (``.samples`` paths + ``.root``): each row's content id, from the file's
      relative path, bytes and label (kdcache.data.user_data.item_digests, the rule a dump of such a
      dataset used), so another set of images in the same layout is refused, naming the files (relative paths);
    - torchvision MNIST-style datasets (``.data`` uint8 (N, H, W) + ``.targets``: MNIST, FashionMNIST):
      each row's content id (kdcache's own sample ids) and, for a built-in dataset, its name, split
      and the fingerprint of the whole split;
    - a Hugging Face ``datasets.Dataset`` over a cache dumped from one (dataset ``hf``): each row is found by its
      content id (encoded image bytes + label, kdcache.data.hf), not its index (``hf_alignment``);
    - any other dataset over a cache that ``dump_logits(dataset=...)`` made of a user's dataset (``dataset:...``):
      each item's content id (image bytes and label, the dump's rule), when the items are the bytes the dump hashed
      (the first few items' ids are looked for in the cache first): a shuffled or changed dataset is refused.

    Otherwise items are what a transform made of the sample, so their bytes identify the transform as much
    as the sample: no content id is compared there (a cache dumped with one transform trains a student that
    reads another), only coverage, labels and class names.
    """
    if check_content and cache.meta.dataset == HF and is_hf_dataset(dataset):  # rows found by id, wherever they are
        return hf_alignment(cache, dataset, idx, keys)
    checked, first = ["index"], None
    if len(idx):
        first = dataset[int(idx[0])]
        item_parts(first, int(idx[0]), keys)  # an item of no kind kdcache reads: one line naming what it is
        check_served_dict(first, int(idx[0]))
    if labels is not None:
        data_labels = np.asarray(labels, dtype=np.int64)
        if data_labels.shape != idx.shape:
            raise ConfigError(f"labels= has {len(data_labels)} entries for {len(idx)} samples")
    else:
        data_labels = dataset_labels(dataset, idx, keys, first) if check_labels else None
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
    ids, info, names = None, None, None
    images = mnist_style(dataset) if check_content else None
    files = folder_files(dataset) if check_content and images is None else None
    if files is not None and data_labels is not None:  # an ImageFolder: rows are files (relative path + bytes)
        digests, _, names = item_digests(dataset, idx)  # the rule dump_logits(dataset=...) hashes them with
        ids = sample_ids_for(digests, compare, names)
        info = folder_info(cache, dataset, idx, digests, compare, names)  # the whole folder: changed files by name
        checked.append("content id")
    elif check_content and images is None and files is None and m.dataset.startswith(USER_DATASET):
        ids = item_ids(cache, dataset, idx, compare if compare is not None else cache_labels, keys)
        if ids is not None:
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
    rows = cache.align(idx, labels=compare, sample_ids=ids, info=info, keys=names)
    if check_content and ids is None:  # said, never silent: position is all that pairs an item with its row
        log.warning(f"{cache.path}: the dataset's items could not be compared with the cache's rows by content (they "
                    "are not the images it was made from: another transform, or a dataset kdcache cannot read "
                    f"files or raw pixels of), so they are paired by index and checked by {', '.join(checked)} only; "
                    "a reordering within a class would go unnoticed. Wrap the dataset the cache was made from, or "
                    "pass WrapOptions(check_content=False) to pair by index knowingly")
    return Alignment(idx, rows, cache_labels, tuple(checked))


def folder_info(cache: LogitCache, dataset: Any, idx: np.ndarray, digests: np.ndarray, labels: np.ndarray,
                names: list[str]) -> DatasetInfo | None:
    """The identity of a whole ImageFolder-like dataset read in order (``idx`` = 0..N-1), as the cache names its
    data, so LogitCache.align compares fingerprints and names the files that changed; None for a part of it."""
    if len(idx) != len(dataset) or not np.array_equal(idx, np.arange(len(idx))):
        return None
    m = cache.meta
    return DatasetInfo(name=m.dataset, split=m.split, num_samples=len(idx), class_names=(), in_channels=0,
                       image_size=(0, 0), mean=(), std=(), fingerprint=fingerprint_for(digests, labels, names))


PROBE_ITEMS = 8  # items hashed first to see whether a dataset's items are the bytes a dump of it hashed


def item_ids(cache: LogitCache, dataset: Any, idx: np.ndarray, labels: np.ndarray,
             keys: ItemKeys | None) -> np.ndarray | None:
    """Content ids of items ``idx`` by the rule dump_logits(dataset=...) hashed them with (image bytes, label), or
    None when the items are not those bytes (none of the first PROBE_ITEMS is in the cache: another transform, e.g.
    a student's augmentation, or images of varying shape), so they cannot be compared by content."""
    try:
        probe, _, _ = item_digests(dataset, idx[:PROBE_ITEMS], workers=0, keys=keys, need_label=False)
        if not np.isin(sample_ids_for(probe, labels[:PROBE_ITEMS]), cache.sample_ids).any():
            return None
        digests, _, _ = item_digests(dataset, idx, keys=keys, need_label=False)
    except DataError:
        return None
    return sample_ids_for(digests, labels)


def hf_alignment(cache: LogitCache, dataset: Any, idx: np.ndarray, keys: ItemKeys | None) -> Alignment:
    """Cache rows of rows ``idx`` of a Hugging Face dataset, found by content id (its encoded image bytes and label:
    kdcache.data.hf.row_identity), so a re-saved, shuffled or re-sharded copy of the dumped rows aligns whatever its
    order; a row the cache does not hold (a changed image or label, an added row) is a CacheError naming the first
    ones by index and path. The class names (a ClassLabel's) must be the cache's."""
    digests, labels, names = row_identity(dataset, idx, keys)
    classes = find_columns(dataset, keys).class_names
    if classes and not cache.meta.unlabelled and list(classes) != list(cache.class_names):
        raise CacheError(f"{cache.path} has classes {list(cache.class_names)[:4]}..., the dataset "
                         f"{list(classes)[:4]}...; the cache is for another label set")
    cache_ids = cache.sample_ids
    order = np.argsort(cache_ids, kind="stable")
    rows = np.full(len(idx), -1, dtype=np.int64)
    # a row the cache holds as unlabelled (--no-labels) hashes -1 instead of its label: looked for second
    for ids in (sample_ids_for(digests, labels), sample_ids_for(digests, np.full_like(labels, UNLABELLED))):
        at = np.minimum(np.searchsorted(cache_ids, ids, sorter=order), len(order) - 1)
        found = (rows < 0) & (cache_ids[order[at]] == ids)
        rows[found] = order[at[found]]
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        first = ", ".join(names[i] for i in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CacheError(f"{cache.path}: {len(missing)} of {len(idx)} rows of the Hugging Face dataset are not in the "
                         f"cache (first: {first}): their image or label changed, or they were added, since the dump; "
                         "re-dump the cache on this dataset, or use the rows it was made from")
    checked = ("content id", "label") + (("class names",) if classes else ())
    return Alignment(idx, rows, cache.labels[rows], checked)
