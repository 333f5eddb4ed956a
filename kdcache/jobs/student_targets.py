"""What a student learns from: its caches aligned with its rows, their soft targets, and the loss on them.

``student_targets`` aligns every cache (and transfer set) with the training rows and returns the
targets in memory, or read from the files (StreamedTargets) when they exceed the memory limit, with
the run's views; ``distillation_loss`` is kd_loss as a training loss (global-batch mean under torchrun);
``cache_record`` is what a checkpoint records of a cache; ``data_from_cache`` fills the data a
student's configuration leaves open from its first cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from kdcache import dist
from kdcache.cache import LogitCache, read_meta
from kdcache.cache.ensemble import check_members, combine_logits
from kdcache.cache.streamed_targets import StreamedTargets
from kdcache.cache.targets import as_tensors, concat
from kdcache.config import (
    DEFAULT_DATASET,
    CacheIO,
    DataConfig,
    DistillConfig,
    ViewConfig,
)
from kdcache.data.folders import folder_dataset_name
from kdcache.data.hf import source_keys
from kdcache.data.items import ItemKeys
from kdcache.data.images import InputTransform
from kdcache.data.samples import Batch, ImageData
from kdcache.data.views import student_views
from kdcache.errors import ConfigError
from kdcache.identity import UNLABELLED
from kdcache.jobs.recorded import cache_reading, inherited_skip
from kdcache.jobs.transfer import (
    TransferSet,
    transfer_views,
)
from kdcache.train.loss import (
    DEFAULT_TOPK_REBUILD,
    kd_loss,
)


def data_from_cache(data_cfg: DataConfig, caches: Sequence[str | os.PathLike]) -> DataConfig:
    """``data_cfg`` with what it leaves open taken from the first cache: its dataset and input size.

    A student trains on the data its teacher labelled; asking for it again (``--dataset``)
    is only needed to override, and a different dataset is then refused by the alignment.
    ``--image-size`` given keeps the student's own input size: image folders align by file
    (relative path, bytes, label), not pixels, so the same files read at another size align,
    and crop-flip views (fractions of the image) replay at that size; the checkpoint records
    the student's input transform.
    """
    if not caches:
        return replace(data_cfg, dataset=data_cfg.dataset or DEFAULT_DATASET)
    meta = read_meta(caches[0])
    transform = meta.input_transform
    source = source_keys(meta.data_source) or ItemKeys()  # a Hugging Face dataset: the columns the dump read
    return replace(data_cfg, dataset=data_cfg.dataset or folder_dataset_name(meta.dataset),
                   image_size=data_cfg.image_size or InputTransform.from_record(transform),
                   image_key=data_cfg.image_key or source.image, label_key=data_cfg.label_key or source.label,
                   skip_unreadable=inherited_skip(data_cfg.skip_unreadable, cache_reading(meta)))  # as the dump read


def distillation_loss(temperature: float, alpha: float, topk_rebuild: str = DEFAULT_TOPK_REBUILD
                      ) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
    """A LossFn that distils from ``batch.teacher_logits`` (cached) with kd_loss (``topk_rebuild``: see kd_loss).

    Under torchrun it averages over the global batch (kd_loss's ``counts``: the loader knows
    them, since every rank draws the same global batches; else one small all-reduce a step),
    so ranks holding different numbers of labelled rows still give exactly one process's gradient.
    """
    def loss_fn(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        ctx = dist.current()
        counts = None
        if ctx.distributed:
            rows, labelled = batch.global_counts or ctx.sum([len(batch.labels), int((batch.labels != UNLABELLED).sum())])
            counts = (rows / ctx.world_size, labelled / ctx.world_size)
        return kd_loss(outputs, batch.teacher_logits, batch.labels, temperature, alpha, counts=counts,
                       topk_rebuild=topk_rebuild)
    return loss_fn


def cache_record(cache: LogitCache) -> dict[str, Any]:
    """What a student records about a cache it learned from (the content hash identifies the values)."""
    m = cache.meta
    content = m.content_sha256 or cache.scan().content_sha256  # 1.0 files store none: compute it once
    return {"path": str(cache.path), "content_sha256": content, "teacher_arch": m.teacher_arch,
            "teacher_sha256": m.teacher_sha256, "targets": m.targets, "topk": m.topk, "num_views": m.num_views}


@dataclass(frozen=True)
class StudentTargets:
    """A student's soft targets, aligned with its rows (in memory, or StreamedTargets when the caches exceed the
    memory limit; None without a cache), the sampler's block size over them, and its views (kdcache.data.views)."""

    targets: Any  # Targets | StreamedTargets | None
    block_rows: int | None  # the first cache's chunk rows: in-memory and streamed targets are read in one order
    plan: Any  # ViewPlan | None, extended to the transfer rows
    view_record: dict[str, Any] | None

    @property
    def streamed(self) -> bool:
        return isinstance(self.targets, StreamedTargets)


def student_targets(caches: Sequence[LogitCache], data: ImageData, transfer: Sequence[TransferSet],
                    distill: DistillConfig, views: ViewConfig, io: CacheIO, seed: int) -> StudentTargets:
    """Targets aligned with the student's rows (``data``'s rows, then each transfer set's), in memory, or streamed
    when the caches exceed ``io.memory_limit_mb``; and the run's views, stored views extended to the transfer rows."""
    if len(caches) > 1:
        check_members(caches)
    rows = [c.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids, info=data.info,
                    keys=data.keys)
            for c in caches]
    plan, record = student_views(caches, rows, data, augment=views.augment, alpha=distill.alpha,
                                 allow_inconsistent=views.allow_inconsistent, cache_views=views.cache_views,
                                 seed=seed)
    plan = transfer_views(plan, transfer)
    if not caches:
        return StudentTargets(None, None, plan, record)
    block_rows = caches[0].chunk_rows
    sources = [(list(caches), rows)] + [(s.caches, s.rows) for s in transfer]  # per source: a cache per teacher
    need_mb = sum(c.target_bytes() for cs, _ in sources for c in cs) / 2**20
    if need_mb > io.memory_limit_mb:
        if len(caches) > 1:
            raise ConfigError(f"the ensemble's caches need {need_mb:.0f} MB in memory, over --cache-memory-limit "
                              f"{io.memory_limit_mb:g}; streaming serves one cache only: raise the limit or use one cache")
        streamed = StreamedTargets([(cs[0].path, rs[0]) for cs, rs in sources])
        return StudentTargets(streamed, block_rows, plan, record)
    # per teacher: its targets of every row, in the student's row order
    members = [as_tensors(concat([cs[e].read(rs[e]) for cs, rs in sources])) for e in range(len(caches))]
    if record is not None and record["mode"] == "replay":
        members = [m[:, :record["views"]] for m in members]  # (N, K', ...): the views in use
    if len(members) == 1:
        return StudentTargets(members[0], block_rows, plan, record)
    combined = combine_logits(members, distill.ensemble, distill.temperature)  # once per run: depends on T only
    return StudentTargets(combined, block_rows, plan, record)
