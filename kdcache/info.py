"""`kdcache info`: what a person checks about a cache before training from it.

Reads the root attributes and streams /logits once, chunk by chunk, for the
teacher's agreement with the stored labels and how soft the targets are at a few
temperatures (mean entropy of softmax(z/T), in nats; ln C is the uniform maximum).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .cache import open_h5, read_dataset, read_meta

INFO_TEMPERATURES = (1.0, 4.0, 20.0)
UNCHUNKED_BLOCK_ROWS = 65536


def row_blocks(num_rows: int, chunk_rows: int | None) -> Iterator[slice]:
    """Row ranges that follow the dataset's chunks, so each chunk is read (and checksummed) once."""
    step = chunk_rows or UNCHUNKED_BLOCK_ROWS
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def softmax_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Entropy in nats of softmax(z/T) for each row of ``logits`` (N, C) -> (N,)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, C) log-softmax
    return -(np.exp(log_p) * log_p).sum(axis=1)


def cache_info(path: str | os.PathLike, temperatures: tuple[float, ...] = INFO_TEMPERATURES) -> dict[str, Any]:
    """Metadata and soft-target statistics of a cache (validates the schema; reads every logit once)."""
    p = Path(path)
    meta = read_meta(p)
    a = meta.attrs
    agree, entropy_sums, max_abs = 0, np.zeros(len(temperatures)), 0.0
    with open_h5(p) as f:
        labels = read_dataset(f, "labels")
        ds = f["logits"]
        chunk_rows = ds.chunks[0] if ds.chunks else None
        for rows in row_blocks(meta.num_samples, chunk_rows):
            block = read_dataset(f, "logits", rows).astype(np.float32)  # (B, C)
            agree += int((block.argmax(axis=1) == labels[rows]).sum())
            finite = np.isfinite(block).all(axis=1)
            if finite.any():
                max_abs = max(max_abs, float(np.abs(block[finite]).max()))
                entropy_sums += [softmax_entropy(block[finite], t).sum() for t in temperatures]
    n = meta.num_samples
    return {
        "path": str(p), "bytes": p.stat().st_size, "format": a["format"], "schema_version": meta.schema_version,
        "complete": bool(int(a["complete"])), "created_utc": a["created_utc"],
        "kdcache_version": a["kdcache_version"], "torch_version": a["torch_version"],
        "teacher_arch": meta.teacher_arch, "teacher_sha256": meta.teacher_sha256,
        "teacher_precision": a["teacher_precision"], "dataset": meta.dataset, "split": meta.split,
        "num_samples": n, "dataset_num_samples": int(a["dataset_num_samples"]),
        "dataset_fingerprint": meta.dataset_fingerprint, "num_classes": meta.num_classes,
        "class_names": list(meta.class_names), "logits_dtype": meta.logits_dtype, "chunk_rows": chunk_rows,
        "normalization_mean": list(a["normalization_mean"]), "normalization_std": list(a["normalization_std"]),
        "teacher_label_agreement": agree / n, "max_abs_logit": max_abs,
        "mean_entropy_nats": {f"{t:g}": float(s / n) for t, s in zip(temperatures, entropy_sums)},
        "max_entropy_nats": math.log(meta.num_classes),
    }


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of cache_info's result, one fact per line."""
    names = info["class_names"]
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    entropy = ", ".join(f"T={t}: {h:.3f}" for t, h in info["mean_entropy_nats"].items())
    lines = [
        ("cache", f"{info['path']} ({info['bytes'] / 1e6:.2f} MB on disk)"),
        ("format", f"{info['format']} schema {info['schema_version']}, "
                   f"{'complete' if info['complete'] else 'INCOMPLETE'}"),
        ("created", f"{info['created_utc']} by kdcache {info['kdcache_version']}, torch {info['torch_version']}"),
        ("teacher", f"{info['teacher_arch']} (sha256 {info['teacher_sha256'][:16]}...), ran at "
                    f"{info['teacher_precision']}"),
        ("data", f"{info['dataset']}/{info['split']}: {info['num_samples']} of {info['dataset_num_samples']} "
                 f"samples (fingerprint {info['dataset_fingerprint'][:16]}...)"),
        ("classes", f"{info['num_classes']}: {shown}"),
        ("logits", f"{info['logits_dtype']}, raw (not divided by T), {info['chunk_rows']} rows per chunk, "
                   f"max |z| {info['max_abs_logit']:.2f}"),
        ("inputs", f"standardised with mean {info['normalization_mean']}, std {info['normalization_std']}"),
        ("agreement", f"teacher top-1 = stored label on {info['teacher_label_agreement']:.2%} of rows"),
        ("softness", f"mean entropy of softmax(z/T) in nats: {entropy} (uniform: {info['max_entropy_nats']:.3f})"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
