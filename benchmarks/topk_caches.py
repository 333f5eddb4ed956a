"""The caches behind benchmarks.topk, and what each costs in bytes and in soft-target error (KL).

Every cache is written by kdcache's own CacheWriter, as dump-logits writes it; errors are
computed in float64 against the teacher's full float32 logits.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kdcache import __version__
from kdcache.cache import CacheLayout, CacheWriter, open_cache
from kdcache.cache.targets import TopK, as_tensors
from kdcache.data.samples import ImageData
from kdcache.errors import CacheError


def cache_attrs(data: ImageData, arch: str, teacher_accuracy: float, teacher_sha256: str = "0" * 64) -> dict[str, Any]:
    info = data.info
    return {"kdcache_version": __version__, "torch_version": str(torch.__version__), "teacher_arch": arch,
            "teacher_sha256": teacher_sha256, "teacher_precision": "fp32", "dataset": info.name, "split": info.split,
            "dataset_num_samples": info.num_samples, "dataset_fingerprint": info.fingerprint,
            "class_names": list(info.class_names), "normalization_mean": list(info.mean),
            "normalization_std": list(info.std), "extra_config": {"test_accuracy": teacher_accuracy}}


def write_caches(out: Path, data: ImageData, logits: np.ndarray, attrs: dict[str, Any],
                 ks: Sequence[int]) -> dict[str, Path]:
    """full float32/float16, top-K float16 for each K, top-10 float32: what dump-logits would write for each.

    A cache already at its path is kept only when it is this one (``same_source``: the teacher of
    ``attrs`` over the same rows of the same data, same k and dtype); any other is written again.
    """
    plans = {"full-float32": (0, "float32"), "full-float16": (0, "float16")}
    plans.update({f"top{k}-float16": (k, "float16") for k in ks})
    plans["top10-float32"] = (10, "float32")
    paths = {}
    for name, (k, dtype) in plans.items():
        path = paths[name] = out / f"{name}.h5"
        if path.exists() and same_source(path, attrs, data.indices.numpy(), k, dtype):
            continue
        with CacheWriter(path, CacheLayout(num_classes=logits.shape[1], dtype=dtype, topk=k), num_samples=len(data),
                         attrs=attrs, overwrite=True) as w:
            for s in range(0, len(data), 8192):
                e = min(s + 8192, len(data))
                w.write(s, logits[s:e], data.labels[s:e], data.indices[s:e], data.sample_ids[s:e])
    return paths


def same_source(path: Path, attrs: dict[str, Any], indices: np.ndarray, k: int, dtype: str) -> bool:
    """Whether the cache at ``path`` holds the rows ``indices`` of the teacher and data ``attrs`` name, as top-``k``
    (0: full logits) ``dtype`` values: what a benchmark may reuse instead of writing it again."""
    try:
        with open_cache(path) as c:
            m = c.meta
            return ((m.teacher_sha256, m.teacher_precision, m.dataset, m.split, m.dataset_fingerprint, m.topk,
                     m.logits_dtype) == (attrs["teacher_sha256"], attrs["teacher_precision"], attrs["dataset"],
                                         attrs["split"], attrs["dataset_fingerprint"], k, dtype)
                    and np.array_equal(c.indices, indices))
    except CacheError:  # unreadable or unfinished: write it again
        return False


INDEX_BYTES = 24  # /labels, /indices, /sample_ids: 8 bytes each per row, in every cache


def size_table(paths: dict[str, Path], base: str = "full-float16") -> list[dict[str, Any]]:
    """Bytes per row: of the soft targets, of a row at scale (targets + index columns), and of this file.

    The file's bytes per row also hold HDF5's overhead: its metadata, and the unused rows of each
    dataset's last chunk, which HDF5 allocates in full (kdcache spreads the rows evenly over the
    chunks, so that is a few rows per chunk); ratios are taken at scale, where neither shows.
    """
    rows = []
    for name, path in paths.items():
        with open_cache(path) as c:
            n, target = len(c), c.target_bytes(as_float32=False) / len(c)
        rows.append({"cache": name, "target_bytes_per_row": target, "bytes_per_row": target + INDEX_BYTES,
                     "file_bytes_per_row": path.stat().st_size / n})
    ref = next(r["bytes_per_row"] for r in rows if r["cache"] == base)
    for r in rows:
        r["smaller_than_full"] = ref / r["bytes_per_row"]
    return rows


def _lse(a: np.ndarray) -> np.ndarray:
    m = a.max(-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]


def kl_table(logits: np.ndarray, paths: dict[str, Path], temperatures: Sequence[float]) -> list[dict[str, Any]]:
    """Mean KL(p_T ‖ rebuilt) per cache and T, in float64, against the full float32 logits ``logits`` (n, C)."""
    z = logits.astype(np.float64)
    n, rows = len(z), []
    for name, path in paths.items():
        if name == "full-float32":
            continue
        with open_cache(path) as c:
            stored = c.read(np.arange(n))
        for T in temperatures:
            log_p = z / T - _lse(z / T)[:, None]  # (n, C) the teacher's own
            row = {"cache": name, "T": T}
            if not isinstance(stored, TopK):
                q = stored.astype(np.float64) / T
                row["kl_dense"] = float((np.exp(log_p) * (log_p - (q - _lse(q)[:, None]))).sum(1).mean())
            else:
                row.update(_topk_kl(stored, log_p, T))
            rows.append(row)
    return rows


def _topk_kl(stored: TopK, log_p: np.ndarray, T: float) -> dict[str, float]:
    cls = stored.classes.astype(np.int64)
    kept = np.zeros(log_p.shape, dtype=bool)
    np.put_along_axis(kept, cls, True, axis=1)
    p_top = np.take_along_axis(log_p, cls, axis=1)  # (n, k) log p of the kept classes
    p_tail = np.log(np.where(kept, 0.0, np.exp(log_p)).sum(1))  # (n,) log of the tail's true mass

    def bucket(t: TopK) -> np.ndarray:
        log_q = torch.log_softmax(as_tensors(t).support_logits(T).double(), dim=-1).numpy()  # (n, k+1)
        kl = (np.exp(p_top) * (p_top - log_q[:, :-1])).sum(1) + np.exp(p_tail) * (p_tail - log_q[:, -1])
        return kl, log_q

    kl_bucket, log_q = bucket(stored)
    kl_quad, _ = bucket(replace(stored, tail_logsumexp_t2=None))
    n_tail = stored.num_classes - stored.k
    log_q_tail_each = log_q[:, -1] - math.log(n_tail)  # the tail's mass spread evenly
    dense_tail = np.where(kept, 0.0, np.exp(log_p) * (log_p - log_q_tail_each[:, None])).sum(1)
    kl_dense = (np.exp(p_top) * (p_top - log_q[:, :-1])).sum(1) + dense_tail
    return {"tail_mass": float(np.exp(p_tail).mean()), "kl_bucket": float(kl_bucket.mean()),
            "kl_bucket_without_t2": float(kl_quad.mean()), "kl_dense": float(kl_dense.mean())}


def derive_topk_cache(src: str | Path, dst: Path, k: int, dtype: str = "float16") -> Path:
    """The top-k cache of a full float32 cache's rows, with its attributes: what `dump-logits --top-k k` writes.

    TopK.encode is a pure function of each float32 row, so this is byte for byte the dump's
    values (tests/test_dump.py checks that equivalence) without running the teacher again.
    A ``dst`` derived earlier is kept only when it comes from the same teacher, data and rows
    as ``src`` (``same_source``): after ``src`` is dumped again by another teacher, it is derived again.
    """
    with open_cache(src) as c:
        if c.kind != "logits" or c.dtype != "float32":
            raise SystemExit(f"{src}: need a full float32 cache to derive top-k caches from (got {c.kind} {c.dtype})")
        a = c.meta.attrs
        if dst.exists() and same_source(dst, a, c.indices, k, dtype):
            return dst
        skip = {"format", "schema_version", "complete", "created_utc", "num_samples", "num_classes", "logits_dtype",
                "targets", "topk", "num_views", "view_policy", "view_policy_json", "num_labelled", "content_sha256",
                "config_json"}
        attrs = {key: v for key, v in a.items() if key not in skip}
        attrs["class_names"] = list(c.class_names)
        if c.meta.config.get("teacher_config") is not None:
            attrs["extra_config"] = c.meta.config["teacher_config"]
        with CacheWriter(dst, CacheLayout(num_classes=c.num_classes, dtype=dtype, topk=k), num_samples=len(c),
                         attrs=attrs, overwrite=True) as w:
            for rows, block in c.blocks():
                w.write(rows.start, block, c.labels[rows], c.indices[rows], c.sample_ids[rows])
    return dst
