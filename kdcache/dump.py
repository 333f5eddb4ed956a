"""Run a trained teacher once over a dataset split and write its raw logits to a cache."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__
from .cache import CacheWriter
from .data import load_dataset
from .errors import CacheError
from .teacher import TeacherSpec, default_dataset, load_teacher
from .train import MemoryBatches, autocast, resolve_device, strict_fp32


def dump_logits(teacher: str | os.PathLike | None, out: str | os.PathLike, *, split: str = "train",
                dataset: str | None = None, data_dir: str = "data", limit: int | None = None,
                batch_size: int = 1000, device: str = "auto", precision: str = "fp32", dtype: str = "float32",
                arch: str | None = None, teacher_factory: str | None = None, weights: str | None = None,
                overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write ``teacher``'s logits over ``split`` (first ``limit`` rows) to the cache ``out``.

    The teacher is a kdcache checkpoint (``teacher``), or ``teacher_factory``
    ("package.module:function") plus a ``weights`` state dict (see kdcache.teacher).

    The teacher runs in eval mode under inference_mode, without augmentation, at
    ``precision`` (fp32 by default so the cache holds fp32-computed logits).
    Returns a summary (path, rows, seconds, teacher top-1 agreement with the labels).
    """
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the slow part; CacheWriter checks again
        raise CacheError(f"{out} already exists; pass --overwrite to replace it")
    spec = TeacherSpec(checkpoint=None if teacher is None else str(teacher), factory=teacher_factory,
                       weights=weights, arch=arch)
    data = load_dataset(dataset or default_dataset(spec), split, data_dir, limit)
    loaded = load_teacher(spec, data.info)
    model = loaded.model
    dev = resolve_device(device)
    model.to(dev)
    if precision == "bf16":
        model.to(memory_format=torch.channels_last)
    info = data.info
    attrs = {
        "kdcache_version": __version__, "torch_version": str(torch.__version__),
        "teacher_arch": loaded.arch, "teacher_sha256": loaded.sha256, "teacher_precision": precision,
        "dataset": info.name, "split": info.split, "dataset_num_samples": info.num_samples,
        "dataset_fingerprint": info.fingerprint, "class_names": list(info.class_names),
        "normalization_mean": list(loaded.mean), "normalization_std": list(loaded.std),
        "extra_config": loaded.config,
    }
    # The teacher sees its inputs standardised exactly as in training.
    batches = MemoryBatches(data, batch_size, shuffle=False, device=dev, channels_last=precision == "bf16")
    batches.mean, batches.std = loaded.mean, loaded.std
    t0 = time.perf_counter()
    agree = 0
    with CacheWriter(out, num_samples=len(data), num_classes=info.num_classes, attrs=attrs, dtype=dtype,
                     overwrite=overwrite) as writer, torch.inference_mode(), \
            (strict_fp32() if precision == "fp32" else contextlib.nullcontext()):
        start = 0
        for batch in tqdm(batches, desc=f"dump {info.name}/{split}", disable=not progress, unit="batch"):
            with autocast(dev, precision):
                logits = model(batch.images).float()
            stop = start + logits.shape[0]
            writer.write(start, logits, batch.labels, data.indices[start:stop], data.sample_ids[start:stop])
            agree += int((logits.argmax(1) == batch.labels).sum())
            start = stop
    seconds = time.perf_counter() - t0
    return {"cache": str(out), "rows": len(data), "num_classes": info.num_classes, "dtype": dtype,
            "seconds": seconds, "teacher_label_agreement": agree / len(data), "bytes": out.stat().st_size}
