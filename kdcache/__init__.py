"""kdcache: knowledge distillation from an offline cache of teacher logits.

Run the teacher once (``dump_logits``), then train students at any temperature and
alpha from the HDF5 cache, without the teacher: with kdcache's own loop
(``train_student``) or your own (``open_cache``, ``CachedDataset``, ``kd_loss``)::

    import kdcache
    with kdcache.open_cache("fmnist-train.h5") as cache:
        print(cache)                                    # rows, classes, teacher, views, top-k
    train = kdcache.CachedDataset(torchvision_dataset, "fmnist-train.h5")   # (image, label, teacher_logits)
    loader = DataLoader(train, batch_size=128, shuffle=True, num_workers=2, collate_fn=kdcache.collate)
    loss = kdcache.kd_loss(student(images), teacher_logits, labels, temperature=4.0, alpha=0.5)

The cache: ``open_cache``/``LogitCache`` (read, align), ``CacheWriter``/``CacheLayout``/``write_cache``.
Your loop: ``CachedDataset`` (targets in memory, or read from the file past a limit),
``StreamedCachedDataset`` (always read from the file), ``collate``, ``make_loader``/``LoaderConfig`` and
``EpochSampler`` (the loader and sampler every job reads through), ``kd_loss``/``soft_loss``, ``TopK``, ``UNLABELLED``. kdcache's loop (what the
CLI runs): ``train_teacher``, ``dump_logits``, ``train_student``, ``evaluate_checkpoint``,
``run_pipeline``, ``load_checkpoint``, ``verify_cache``, ``compress_cache``, ``cache_info``, ``run_sweep``/``RunSpec``.
Each job is configured by a few frozen dataclasses (defaults in kdcache.config): ``DistillConfig``
(caches, T, alpha, ensemble, transfer rows), ``ViewConfig``, ``CacheIO``, ``DumpConfig``,
``RunOptions`` (overwrite, reuse, resume, progress), ``TrainConfig``, ``DataConfig``,
``PipelineConfig``, and what to build: ``ModelSpec`` (also your own student factory),
``TeacherSpec``. Errors: every one a user can cause is a ``KDCacheError`` with a one-line message.

Names are imported on first use, so ``import kdcache`` (and the CLI) start fast: it
imports neither torch nor the HDF5 library.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "open_cache": "cache", "LogitCache": "cache", "CacheMeta": "cache", "CacheWriter": "cache", "CacheLayout": "cache",
    "write_cache": "cache",
    "TopK": "cache.targets", "cache_info": "cache.info",
    "UNLABELLED": "identity", "DatasetInfo": "identity",
    "CachedDataset": "data.cached_dataset", "StreamedCachedDataset": "data.cached_dataset", "collate": "data.cached_dataset",
    "WrapOptions": "data.cached_dataset",
    "load_dataset": "data.datasets", "ReadOptions": "data.datasets", "ImageData": "data.samples",
    "make_loader": "data.loader", "LoaderConfig": "data.loader", "EpochSampler": "data.sampler",
    "kd_loss": "train.loss", "soft_loss": "train.loss", "ModelSpec": "train.models",
    "load_checkpoint": "train.checkpoint",
    "train_teacher": "jobs.training", "train_student": "jobs.training", "evaluate_checkpoint": "jobs.training",
    "dump_logits": "jobs.dump", "verify_cache": "jobs.verify", "compress_cache": "jobs.compress",
    "run_sweep": "experiments.sweep", "RunSpec": "experiments.sweep",
    "run_pipeline": "experiments.pipeline", "TeacherSpec": "train.teacher",
    "TrainConfig": "config", "DataConfig": "config", "DistillConfig": "config", "ViewConfig": "config",
    "CacheIO": "config", "DumpConfig": "config", "RunOptions": "config", "PipelineConfig": "config",
    "KDCacheError": "errors", "CacheError": "errors", "CheckpointError": "errors", "ConfigError": "errors",
    "DataError": "errors", "StorageError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kdcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
