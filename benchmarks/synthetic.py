"""A synthetic ImageNet-shaped logit cache (a real kdcache file) and page-cache control."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kdcache import __version__, cache

IMAGENET_ROWS, IMAGENET_CLASSES = 1_281_167, 1000


def synthetic_attrs(rows: int, classes: int) -> dict:
    """Root attributes for a synthetic cache (no real dataset or teacher behind it)."""
    return {
        "kdcache_version": __version__, "torch_version": str(torch.__version__), "teacher_arch": "synthetic",
        "teacher_sha256": "0" * 64, "teacher_precision": "fp32", "dataset": "synthetic-imagenet",
        "split": "train", "dataset_num_samples": rows, "dataset_fingerprint": "0" * 64,
        "class_names": [f"class{i}" for i in range(classes)], "normalization_mean": [0.0],
        "normalization_std": [1.0],
    }


def write_synthetic_cache(path: str | os.PathLike, rows: int, classes: int = IMAGENET_CLASSES,
                          dtype: str = "float16") -> Path:
    """Write (or reuse, when one of that shape exists) a ``rows x classes`` cache at ``path``.

    Logits are a repeated random block (their values do not matter for read speed; nothing
    is compressed); labels are ``row % classes``, indices ``row``.
    """
    path = Path(path)
    if path.exists():
        try:
            meta = cache.read_meta(path)
            if (meta.num_samples, meta.num_classes, meta.logits_dtype) == (rows, classes, dtype):
                return path
        except Exception:  # a broken leftover: write it again
            pass
    g = np.random.default_rng(0)
    block = (g.standard_normal((8192, classes)) * 3).astype(dtype)
    with cache.CacheWriter(path, cache.CacheLayout(num_classes=classes, dtype=dtype), num_samples=rows,
                           attrs=synthetic_attrs(rows, classes), overwrite=True) as w:
        for start in range(0, rows, len(block)):
            stop = min(rows, start + len(block))
            idx = np.arange(start, stop, dtype=np.int64)
            w.write(start, block[: stop - start], idx % classes, idx, idx.astype(np.uint64))
    return path


def evict_page_cache(path: str | os.PathLike) -> None:
    """Drop ``path``'s pages from the OS page cache (this file only), so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
