"""`kdcache info`: what a person checks about a cache before training from it.

Reads the root attributes and streams the targets once, block by block, for the
teacher's agreement with the stored labels and how soft the targets are at a few
temperatures (mean entropy of softmax(z/T), in nats; ln C is the uniform maximum).
Top-k rows count as rebuilt over all C classes with the tail's mass spread evenly
(kdcache.cache.targets.TopK.dense_probs), in closed form, and the tail's mean share of the
probability is reported at the same temperatures;
with views, every view counts as a row.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.cache import open_cache
from kdcache.cache.lowrank import describe_bytes
from kdcache.cache.targets import Targets, TopK, as_tensors
from kdcache.files import format_bytes
from kdcache.identity import UNLABELLED

INFO_TEMPERATURES = (1.0, 4.0, 20.0)


def softmax_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Entropy in nats of softmax(z/T) for each row of ``logits`` (N, C) -> (N,)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, C) log-softmax
    return -(np.exp(log_p) * log_p).sum(axis=1)


def _entropy(block: Targets, temperature: float) -> np.ndarray:
    """Entropy of each row's (rebuilt) soft targets at T, flattened over views.

    Top-k rows: the entropy of the distribution rebuilt with the tail's mass spread evenly
    over its n classes (TopK.dense_probs), in closed form so no (rows, C) array is made:
    H = -Σ_support P log P + P_tail · log n.
    """
    if isinstance(block, TopK):
        log_p = torch.log_softmax(as_tensors(block).support_logits(temperature).double(), dim=-1)  # (..., k[+1])
        h = -(log_p.exp() * log_p).sum(-1)
        if block.has_tail:
            h = h + log_p[..., -1].exp() * math.log(block.num_classes - block.k)
        return h.reshape(-1).numpy()
    return softmax_entropy(block.reshape(-1, block.shape[-1]), temperature)


def _tail_mass(block: TopK, temperature: float) -> np.ndarray:
    """Probability of the classes not kept, per row (and view), at T: exact at T = 1."""
    if not block.has_tail:
        return np.zeros(int(np.prod(block.shape)))
    log_p = torch.log_softmax(as_tensors(block).support_logits(temperature).double(), dim=-1)
    return log_p[..., -1].exp().reshape(-1).numpy()


def _top1_and_max(block: Targets) -> tuple[np.ndarray, float]:
    """(top-1 class of each row, (rows, V) for views; max |stored logit|)."""
    if isinstance(block, TopK):
        return block.classes[..., 0], float(np.abs(block.logits.astype(np.float32)).max())
    return block.argmax(axis=-1), float(np.abs(block.astype(np.float32)).max())


def cache_info(path: str | os.PathLike, temperatures: tuple[float, ...] = INFO_TEMPERATURES) -> dict[str, Any]:
    """Metadata and soft-target statistics of a cache (validates the schema; reads every row once)."""
    p = Path(path)
    with open_cache(p) as cache:
        meta, a = cache.meta, cache.meta.attrs
        code_bytes = cache.target_bytes(as_float32=False) // (meta.num_samples * meta.num_views)  # a row, a view
        labels = cache.labels
        labelled = labels != UNLABELLED
        agree, entropy_sums, tail_sums, max_abs = 0, np.zeros(len(temperatures)), np.zeros(len(temperatures)), 0.0
        for rows, block in cache.blocks():
            top1, m = _top1_and_max(block)
            max_abs = max(max_abs, m)
            lab = labels[rows]
            hit = top1 == (lab[:, None] if top1.ndim == 2 else lab)
            agree += int(hit[labelled[rows]].sum())
            entropy_sums += [_entropy(block, t).sum() for t in temperatures]
            if isinstance(block, TopK):
                tail_sums += [_tail_mass(block, t).sum() for t in temperatures]
        chunk_rows = cache.chunk_rows
    n, views = meta.num_samples, meta.num_views
    num_labelled = int(labelled.sum())
    return {
        "path": str(p), "bytes": p.stat().st_size, "format": a["format"], "schema_version": meta.schema_version,
        "complete": bool(int(a["complete"])), "created_utc": a["created_utc"],
        "kdcache_version": a["kdcache_version"], "torch_version": a["torch_version"],
        "teacher_arch": meta.teacher_arch, "teacher_sha256": meta.teacher_sha256,
        "teacher_precision": meta.teacher_precision, "dataset": meta.dataset, "split": meta.split,
        "num_samples": n, "num_labelled": num_labelled, "num_unlabelled": n - num_labelled,
        "dataset_num_samples": meta.dataset_num_samples,
        "dataset_fingerprint": meta.dataset_fingerprint, "num_classes": meta.num_classes,
        "class_names": list(meta.class_names), "logits_dtype": meta.logits_dtype, "targets": meta.targets,
        "topk": meta.topk, "num_views": views, "view_policy": meta.view_policy, "chunk_rows": chunk_rows,
        "content_sha256": meta.content_sha256,
        "normalization_mean": list(meta.normalization_mean), "normalization_std": list(meta.normalization_std),
        "input_transform": meta.input_transform, "user_transform": meta.user_transform,
        "skipped_files": meta.skipped_files, "source": source_of(meta.dataset, meta.data_source),
        "teacher_label_agreement": agree / (num_labelled * (views if meta.has_views else 1)) if num_labelled else None,
        "max_abs_logit": max_abs,
        "mean_entropy_nats": {f"{t:g}": float(s / (n * (views if meta.has_views else 1)))
                              for t, s in zip(temperatures, entropy_sums)},
        "mean_tail_mass": ({f"{t:g}": float(s / (n * (views if meta.has_views else 1)))
                            for t, s in zip(temperatures, tail_sums)} if meta.topk else None),
        "max_entropy_nats": math.log(meta.num_classes),
        "codec": "lowrank" if meta.targets == "lowrank" else None,
        "lowrank_rank": meta.lowrank_rank or None, "lowrank_code_dtype": meta.lowrank_code_dtype,
        "lowrank_kl": meta.lowrank_kl,
        "lowrank_row_bytes": code_bytes if meta.targets == "lowrank" else None,
    }


def source_of(dataset: str, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The kind of data a cache's rows came from and how its rows are keyed (content ids, docs/cache-format.md):
    what the dump recorded (``data_source``, a Hugging Face dataset), else what its dataset name says."""
    if recorded:
        return dict(recorded)
    if dataset in ("imagefolder", "unlabelled"):
        return {"kind": "folder", "rows_keyed_by": "relative path + file bytes (BLAKE2b-16) + label"}
    if dataset.startswith("dataset:"):
        return {"kind": "dataset", "rows_keyed_by": "each item's image tensor (dtype, shape, bytes) + label"}
    return {"kind": "builtin", "rows_keyed_by": "uint8 pixels + label"}


def source_line(source: dict[str, Any] | None) -> str:
    """``source`` for format_info: the kind of data, its columns (a Hugging Face dataset), how rows are keyed."""
    if not source:
        return "unknown"
    kinds = {"hf": "Hugging Face dataset", "folder": "image files", "dataset": "a user's Dataset from Python",
             "builtin": "built-in dataset"}
    what = f"{source.get('kind')} ({kinds.get(source.get('kind'), 'other')})"
    if source.get("kind") == "hf":
        what += f", image column {source.get('image_column')!r}, label column {source.get('label_column')!r}"
    return f"{what}; rows keyed by {source.get('rows_keyed_by')}"


def inputs_line(info: dict[str, Any]) -> str:
    """How the teacher's inputs were standardised, saying so when it was the user's own transform (known or not)."""
    kdcache_did = f"standardised with mean {info['normalization_mean']}, std {info['normalization_std']}"
    user = info.get("user_transform")
    if not user:
        return kdcache_did
    norm = user.get("normalize")
    if user.get("image_dtype") == "uint8":
        return f"{kdcache_did} (by kdcache, after the dataset's transform)"
    if norm:
        return (f"{user.get('image_dtype')}, standardised by the dataset's transform: Normalize(mean {norm['mean']}, "
                f"std {norm['std']}); kdcache changed nothing")
    return (f"{user.get('image_dtype')}, as the dataset's transform returned them; no Normalize found in it, so their "
            "standardisation is unknown; kdcache changed nothing")


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of cache_info's result, one fact per line."""
    names = info["class_names"]
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    entropy = ", ".join(f"T={t}: {h:.3f}" for t, h in info["mean_entropy_nats"].items())
    kind = (f"top-{info['topk']} of {info['num_classes']} raw logits per row + the tail's log-sum-exp (T=1, 2) and mean"
            if info["targets"] == "topk" else "raw (not divided by T)")
    if info.get("codec") == "lowrank":
        kind = (f"decoded from low-rank codes: rank {info['lowrank_rank']} {info['lowrank_code_dtype']} per row "
                "+ one basis, raw (not divided by T)")
    size = ""
    if info.get("codec") == "lowrank":
        rec = info.get("lowrank_kl") or {}
        bits = f" ({rec['bits']:g} bits a component on average)" if rec.get("bits") else ""
        size = f" of {describe_bytes(info['lowrank_row_bytes'])}{bits}"
    lines = [
        ("cache", f"{info['path']} ({format_bytes(info['bytes'])} on disk)"),
        ("format", f"{info['format']} schema {info['schema_version']}, "
                   f"{'complete' if info['complete'] else 'INCOMPLETE'}"),
        ("created", f"{info['created_utc']} by kdcache {info['kdcache_version']}, torch {info['torch_version']}"),
        ("teacher", f"{info['teacher_arch']} (sha256 {info['teacher_sha256'][:16]}...), ran at "
                    f"{info['teacher_precision']}"),
        ("data", f"{info['dataset']}/{info['split']}: {info['num_samples']} of {info['dataset_num_samples']} "
                 f"samples, {info['num_labelled']} labelled, {info['num_unlabelled']} unlabelled (fingerprint "
                 f"{info['dataset_fingerprint'][:16]}...)"),
        ("source", source_line(info.get("source"))),
        ("classes", f"{info['num_classes']}: {shown}"),
        ("logits", f"{info['logits_dtype']}, {kind}, {info['chunk_rows']} rows per chunk, "
                   f"max |z| {info['max_abs_logit']:.2f}"),
    ]
    if info["view_policy"]:
        pol = info["view_policy"]
        settings = ", ".join(f"{k}={v:g}" for k, v in (pol.get("settings") or {}).items())
        lines.append(("views", f"{info['num_views']} per sample, policy {pol.get('name')} v{pol.get('version')} "
                               f"{settings}, parameters {', '.join(pol.get('param_names', []))}, seed "
                               f"{pol.get('seed')}" + (", view 0 un-augmented" if pol.get("include_original")
                                                       else "")))
    agreement = info["teacher_label_agreement"]
    tf = info.get("input_transform")
    if tf:
        lines.append(("transform", f"image files decoded as {tf['mode']}, shorter side resized to {tf['resize']} "
                                   f"({tf['interpolation']}, antialiased), centre crop {tf['size']}x{tf['size']}"))
    if info.get("skipped_files"):
        skipped = info["skipped_files"]
        lines.append(("skipped", f"{len(skipped)} unreadable file(s) left out: {', '.join(skipped[:3])}"
                                 + (", ..." if len(skipped) > 3 else "")))
    user = info.get("user_transform")
    if user:
        lines.append(("transform", "the dataset's own, not recorded in full (kdcache cannot re-run it): "
                                   + (user.get("repr") or f"none visible on {user.get('dataset_class')}")))
    lines += [
        ("inputs", inputs_line(info)),
        ("agreement", f"teacher top-1 = stored label on {agreement:.2%} of labelled rows" if agreement is not None
                      else "no labelled rows"),
        ("softness", f"mean entropy of softmax(z/T) in nats: {entropy} (uniform: {info['max_entropy_nats']:.3f})"
                     + ("; top-k rows rebuilt with the tail's mass spread evenly" if info["topk"] else "")),
        ("content", f"sha256 {info['content_sha256'] or '(not stored: schema 1.0)'}"),
    ]
    if info.get("codec") == "lowrank":
        rec = info.get("lowrank_kl") or {}
        kl = rec.get("kl") or {}
        measured = (f"mean KL(p_T || rebuilt_T) on {rec.get('heldout_rows')} held-out rows: "
                    + ", ".join(f"T={t}: {v:.2g}" for t, v in kl.items())
                    + (f"; rank chosen for the budget {rec.get('budget'):g}" if rec.get("rank_chosen_by") == "budget"
                       else "; rank stated")) if kl \
            else "KL not recorded"
        encoder = rec.get("encoder", "projection")  # caches from before the kl encoder projected their rows
        lines.insert(-1, ("codec", f"lowrank, rank {info['lowrank_rank']}, {info['lowrank_code_dtype']} codes{size}, "
                                   f"{encoder} encoder; " + measured))
    if info.get("mean_tail_mass"):
        tail = ", ".join(f"T={t}: {100 * m:.2f}%" for t, m in info["mean_tail_mass"].items())
        lines.insert(-1, ("tail", f"the {info['num_classes'] - info['topk']} classes not kept hold on average {tail} of "
                                  "the probability (exact at T=1 and 2, rebuilt from the tail's statistics elsewhere)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
