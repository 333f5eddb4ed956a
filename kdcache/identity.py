"""What a sample is to a cache: its identity, shared by the cache format and the data layer.

Every sample carries its dataset index and a 64-bit content id (a hash of its pixels
and label, and for files its relative path), so that a logit cache can be matched to
the data row by row. A sample without a label carries ``UNLABELLED`` (-1): its id
hashes that marker instead of a label, so an unlabelled row never reveals a label.
``DatasetInfo`` is what a cache or checkpoint records about its split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

UNLABELLED = -1  # the label of a sample nobody labelled (cache rows, batches, datasets)
USER_DATASET = "dataset:"  # prefix of the name of a user's own Dataset: dataset:<module>.<class> (not a folder)


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
    # sha256 over the whole split's pixels (files: relative paths and bytes) and labels; None for a folder whose
    # identity is deferred until its rows are read (kdcache.data.samples.ImageData, a dump)
    fingerprint: str | None
    transform: dict | None = field(default=None, hash=False)  # image files: kdcache.data.images.InputTransform.record()
    skipped: tuple[str, ...] = ()  # image files left out as unreadable (--skip-unreadable), relative paths
    # a user's Dataset: what is known of its own transform (repr, Normalize's mean/std; kdcache.data.user_data)
    user_transform: dict | None = field(default=None, hash=False, compare=False)
    # where the rows came from when a name does not say it all (a Hugging Face dataset: its columns and how rows
    # are keyed; kdcache.data.hf), recorded in the cache as data_source
    source: dict | None = field(default=None, hash=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
