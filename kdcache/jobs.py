"""The jobs behind the CLI: train a teacher, train a student from a cache, evaluate a checkpoint.

Each takes explicit arguments, writes its artifacts atomically and returns a result
dict; none prints or exits (the CLI does that).
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .cache import align_rows, align_to_data, load_cache, load_cache_index, read_meta, sha256_file
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DatasetInfo, ImageData, load_dataset
from .ensemble import ENSEMBLE_METHODS, check_same_rows, combine_logits
from .errors import CheckpointError, ConfigError
from .files import check_output, write_json
from .loss import check_alpha, check_temperature, kd_loss
from .models import build_model, count_parameters
from .train import Batch, MemoryBatches, TrainConfig, cross_entropy_loss, evaluate, fit, resolve_device

DEFAULT_CACHE_MEMORY_LIMIT_MB = 2048.0  # caches bigger than this (as float32 logits) are streamed from disk


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from."""

    dataset: str = "fashion-mnist"
    data_dir: str = "data"
    limit: int | None = None  # first N training samples
    eval_limit: int | None = None  # first N test samples (quick runs)
    download: bool = False


def metrics_path_for(out: str | os.PathLike) -> Path:
    """runs/teacher.pt -> runs/teacher.metrics.json"""
    p = Path(out)
    return p.with_name(p.stem + ".metrics.json")


def _model_config(arch: str, info: DatasetInfo) -> dict[str, Any]:
    return {
        "arch": arch, "in_channels": info.in_channels, "num_classes": info.num_classes,
        "image_size": list(info.image_size), "dataset": info.name, "mean": list(info.mean), "std": list(info.std),
        "class_names": list(info.class_names), "dataset_fingerprint": info.fingerprint,
    }


def _train_and_save(role: str, arch: str, train_data: ImageData, data_cfg: DataConfig, cfg: TrainConfig,
                    out: str | os.PathLike, overwrite: bool, progress: bool,
                    teacher_logits: torch.Tensor | None, loss_fn, extra: dict[str, Any],
                    make_batches=None) -> dict[str, Any]:
    """Shared by train_teacher / train_student: build, fit, evaluate on test, save checkpoint + metrics.

    ``make_batches(device)``, when given, builds the batch source (e.g. a streamed cache)
    instead of MemoryBatches over ``train_data`` + ``teacher_logits``.
    """
    out = check_output(out, overwrite)
    metrics_out = check_output(metrics_path_for(out), overwrite)
    device = resolve_device(cfg.device)
    test_data = load_dataset(data_cfg.dataset, "test", data_cfg.data_dir, data_cfg.eval_limit, data_cfg.download)
    info = train_data.info
    torch.manual_seed(cfg.seed)
    model = build_model(arch, info.in_channels, info.num_classes, info.image_size)
    if make_batches is not None:
        batches = make_batches(device)
    else:
        batches = MemoryBatches(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, device=device,
                                teacher_logits=teacher_logits, channels_last=cfg.precision == "bf16")
    t0 = time.perf_counter()
    history = fit(model, batches, loss_fn, cfg, eval_data=test_data, progress=progress, desc=f"{role} {arch}")
    seconds = time.perf_counter() - t0
    final = evaluate(model, test_data, device=device, precision="fp32")
    config = {
        **_model_config(arch, info), "role": role, "train": cfg.to_dict(), "limit": data_cfg.limit,
        "num_train_samples": len(train_data), "epochs": cfg.epochs, "seed": cfg.seed,
        "test_accuracy": final["accuracy"], "test_loss": final["loss"], "eval_limit": data_cfg.eval_limit, "train_seconds": seconds,
        "kdcache_version": __version__, "torch_version": str(torch.__version__),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra,
    }
    save_checkpoint(out, model.cpu(), config, overwrite=True)
    result = {"checkpoint": str(out), "metrics": str(metrics_out), "config": config, "history": history,
              "test": final, "parameters": count_parameters(model), "seconds": seconds}
    write_json(metrics_out, result)
    return result


def train_teacher(out: str | os.PathLike, *, arch: str = "teacher-cnn", data_cfg: DataConfig = DataConfig(),
                  cfg: TrainConfig = TrainConfig(), overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Train ``arch`` with cross-entropy on hard labels; writes ``out`` and its metrics JSON."""
    build_model(arch)  # unknown arch fails before any data is read
    data = load_dataset(data_cfg.dataset, "train", data_cfg.data_dir, data_cfg.limit, data_cfg.download)
    return _train_and_save("teacher", arch, data, data_cfg, cfg, out, overwrite, progress, None,
                           cross_entropy_loss, {})


def distillation_loss(temperature: float, alpha: float):
    """A LossFn that distils from ``batch.teacher_logits`` (cached) with kd_loss."""
    def loss_fn(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return kd_loss(outputs, batch.teacher_logits, batch.labels, temperature, alpha)
    return loss_fn


def train_student(out: str | os.PathLike, *, caches: Sequence[str | os.PathLike] = (), temperature: float = 4.0,
                  alpha: float = 0.5, arch: str = "student-cnn", data_cfg: DataConfig = DataConfig(),
                  cfg: TrainConfig = TrainConfig(), ensemble: str = "mean-probs", overwrite: bool = False,
                  progress: bool = False, cache_memory_limit_mb: float = DEFAULT_CACHE_MEMORY_LIMIT_MB,
                  cache_workers: int = 0) -> dict[str, Any]:
    """Train a student from images + cached teacher logits. Never loads or runs a teacher.

    Every cache is checked against the training samples (dataset, split, fingerprint,
    index coverage, labels and content ids row by row) before training starts.
    Several caches distil from an ensemble: they must hold the same rows in the same
    order, and are combined by ``ensemble`` (see kdcache.ensemble).
    ``alpha = 0`` trains on labels alone and needs no cache.
    A single cache whose logits (as float32) exceed ``cache_memory_limit_mb`` is streamed
    from disk (kdcache.reader, read in ``cache_workers`` processes) instead of loaded whole.
    """
    check_temperature(temperature)
    check_alpha(alpha)
    build_model(arch)
    if ensemble not in ENSEMBLE_METHODS:
        raise ConfigError(f"unknown ensemble method {ensemble!r}; choose one of: {', '.join(ENSEMBLE_METHODS)}")
    if alpha > 0 and not caches:
        raise ConfigError("alpha > 0 distils from a teacher: pass --cache (or use --alpha 0 for labels only)")
    data = load_dataset(data_cfg.dataset, "train", data_cfg.data_dir, data_cfg.limit, data_cfg.download)
    make_batches = _streaming_batches(caches, data, cfg, cache_memory_limit_mb, cache_workers)
    if make_batches is not None:
        members = [load_cache_index(caches[0])]
        make_batches = make_batches(align_rows(members[0], data))
    else:
        members = [load_cache(path) for path in caches]
    if len(members) > 1:
        check_same_rows(members)
    aligned = [align_to_data(arrays, data) for arrays in members] if make_batches is None else []  # (N, C) each
    teacher_logits = None
    if len(aligned) == 1:
        teacher_logits = aligned[0]
    elif aligned:
        teacher_logits = combine_logits(aligned, ensemble, temperature)  # once per run: depends on T only
    cache_records = [{"path": str(path), "sha256": sha256_file(path), "teacher_arch": arrays.meta.teacher_arch,
                      "teacher_sha256": arrays.meta.teacher_sha256} for path, arrays in zip(caches, members)]
    extra = {"temperature": temperature, "alpha": alpha, "caches": cache_records,
             "ensemble": ensemble if len(members) > 1 else None, "cache_streamed": make_batches is not None}
    return _train_and_save("student", arch, data, data_cfg, cfg, out, overwrite, progress, teacher_logits,
                           distillation_loss(temperature, alpha), extra, make_batches)


def _streaming_batches(caches: Sequence[str | os.PathLike], data: ImageData, cfg: TrainConfig, limit_mb: float,
                       workers: int):
    """None when the caches fit in ``limit_mb`` (as float32); else ``rows -> device -> StreamingBatches``."""
    metas = [read_meta(path) for path in caches]
    need_mb = sum(m.num_samples * m.num_classes * 4 for m in metas) / 2**20
    if need_mb <= limit_mb:
        return None
    if len(caches) > 1:
        raise ConfigError(f"the ensemble's caches need {need_mb:.0f} MB in memory, over --cache-memory-limit "
                          f"{limit_mb:g}; streaming serves one cache only: raise the limit or use one cache")
    from .reader import StreamingBatches

    def with_rows(rows):
        return lambda device: StreamingBatches(data, caches[0], rows, cfg.batch_size, seed=cfg.seed, device=device,
                                               num_workers=workers, channels_last=cfg.precision == "bf16")
    return with_rows


def evaluate_checkpoint(path: str | os.PathLike, *, split: str = "test", dataset: str | None = None,
                        data_dir: str = "data", limit: int | None = None, device: str = "auto",
                        batch_size: int = 1000, progress: bool = False) -> dict[str, Any]:
    """Accuracy, loss and per-class accuracy of a checkpoint on a dataset split."""
    model, config = load_checkpoint(path)
    data = load_dataset(dataset or config["dataset"], split, data_dir, limit)
    check_model_fits_data(config, data.info, path)
    metrics = evaluate(model, data, batch_size=batch_size, device=resolve_device(device), progress=progress)
    return {"checkpoint": str(path), "arch": config["arch"], "dataset": data.info.name, "split": split, **metrics}


def check_model_fits_data(config: dict[str, Any], info: DatasetInfo, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose classes or input shape differ from the data's."""
    if int(config["num_classes"]) != info.num_classes or list(config["class_names"]) != list(info.class_names):
        raise CheckpointError(f"{path} predicts {config['num_classes']} classes of {config['dataset']}, but "
                              f"{info.name} has {info.num_classes}; use a checkpoint trained on this data")
    if int(config["in_channels"]) != info.in_channels or list(config["image_size"]) != list(info.image_size):
        raise CheckpointError(f"{path} expects {config['in_channels']}x{config['image_size']} inputs, the data is "
                              f"{info.in_channels}x{list(info.image_size)}")
