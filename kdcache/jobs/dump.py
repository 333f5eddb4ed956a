"""Run a trained teacher once over a dataset split and write its raw logits to a cache."""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdcache import __version__, dist
from kdcache.cache import CacheLayout, CacheMeta, CacheWriter, read_meta
from kdcache.cache.shards import ShardPlan, dump_sharded
from kdcache.config import (
    LOGITS_DTYPE,
    TOPK_DTYPE,
    DataConfig,
    DumpConfig,
    RunOptions,
    ViewConfig,
)
from kdcache.data.augment import parse_policy, view_record
from kdcache.data.datasets import load_dataset
from kdcache.data.folders import IMAGEFOLDER, UNLABELLED_FOLDER
from kdcache.data.loader import LoaderConfig, make_loader
from kdcache.data.view_schedule import sample_views
from kdcache.device import resolve_device, resolve_precision
from kdcache.errors import CacheError, ConfigError, StorageError
from kdcache.files import check_free_space, disk_full_message
from kdcache.identity import DatasetInfo
from kdcache.jobs.foreign import check_inputs, dataset_data, module_teacher
from kdcache.progress import track
from kdcache.train.teacher import (
    Teacher,
    TeacherSpec,
    default_dataset,
    default_transform,
    load_teacher,
    with_teacher_classes,
)


def cache_attrs(teacher: Teacher, info: DatasetInfo, precision: str) -> dict[str, Any]:
    """What a cache records about how it was made (see docs/cache-format.md)."""
    return {
        "kdcache_version": __version__, "torch_version": str(torch.__version__),
        "teacher_arch": teacher.arch, "teacher_sha256": teacher.sha256, "teacher_precision": precision,
        "dataset": info.name, "split": info.split, "dataset_num_samples": info.num_samples,
        "dataset_fingerprint": info.fingerprint, "class_names": list(info.class_names),
        "normalization_mean": list(teacher.mean), "normalization_std": list(teacher.std),
        "input_transform": info.transform or "", "skipped_files": list(info.skipped) if info.skipped else "",
        "extra_config": teacher.config,
    }


def dump_request(teacher: Teacher, info: DatasetInfo, num_rows: int, precision: str, dtype: str,
                 num_views: int = 1, view_policy: dict[str, Any] | None = None,
                 topk: int | None = None) -> dict[str, Any]:
    """What determines a cache's values: reuse an existing cache only when all of it is the same."""
    return {"teacher_sha256": teacher.sha256, "teacher_arch": teacher.arch, "dataset": info.name, "split": info.split,
            "dataset_fingerprint": info.fingerprint, "num_samples": num_rows, "teacher_precision": precision,
            "logits_dtype": dtype, "targets": "topk" if topk else "logits", "topk": topk or 0,
            "num_views": num_views, "view_policy": view_policy}


def check_topk(topk: int | None, num_classes: int | None = None) -> None:
    """Refuse a --top-k that keeps no logit, or more logits than the teacher has classes."""
    if topk is None:
        return
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"--top-k {topk}: keep at least 1 logit per row (or leave --top-k out to store all of them)")
    if num_classes is not None and topk > num_classes:
        raise ConfigError(f"--top-k {topk} is more than the {num_classes} classes of the data; use --top-k 1..{num_classes} "
                          "(or leave it out to store every logit)")


def storage_dtype(dtype: str | None, topk: int | None) -> str:
    """The logits' storage dtype: as asked, else float32 for full logits and float16 for top-k (config.py says why)."""
    return dtype if dtype is not None else (TOPK_DTYPE if topk else LOGITS_DTYPE)


def matches_request(meta: CacheMeta, request: dict[str, Any]) -> bool:
    have = {k: getattr(meta, k) for k in request}
    return have == request


def dump_logits(teacher: "str | os.PathLike | torch.nn.Module | TeacherSpec | None", out: str | os.PathLike, *,
                data_cfg: DataConfig = DataConfig(), dataset: "torch.utils.data.Dataset | None" = None,
                dump: DumpConfig = DumpConfig(), views: ViewConfig = ViewConfig(),
                run: RunOptions = RunOptions()) -> dict[str, Any]:
    """Write ``teacher``'s logits over ``dump.split`` (the first ``data_cfg.limit`` rows; ``data_cfg.dataset``
    None: the teacher's dataset) to the cache ``out``.

    The teacher is a kdcache checkpoint (``teacher``, a path), or a ``TeacherSpec``: a factory
    ("package.module:function") plus a ``weights`` state dict (see kdcache.train.teacher).
    It runs in eval mode under inference_mode, without augmentation, at ``dump.precision``
    (fp32 by default so the cache holds fp32-computed logits; auto: bf16 where native, see
    kdcache.device.resolve_precision; the cache records the resolved one). ``dump.topk`` K stores each row's (each
    view's) K largest logits, their classes and the tail's statistics instead of all C logits
    (docs/cache-format.md, "Top-k caches"); ``dump.dtype`` None stores float32 full logits or
    float16 top-k values (kdcache.config). Free disk space is checked
    before anything is written; a disk that fills up anyway leaves nothing at ``out``.
    With ``run.reuse``, an existing cache at ``out`` made by the same request (teacher file,
    data, rows, precision, dtype) is kept and reported as reused; any other is replaced.
    ``dump.ignore_labels`` (``--no-labels``) dumps the split as unlabelled: every row's label is -1 and
    its content id (and the fingerprint) hash -1, so the cache reveals no label. Data without
    labels (``unlabelled`` images, or ``ignore_labels``) takes its class names from the teacher:
    a kdcache checkpoint's, or ``dump.class_names`` for a factory teacher.
    Returns a summary (path, rows, seconds, teacher top-1 agreement with the labels: None without labels).

    Your own model and data (kdcache.jobs.foreign): ``teacher`` may be any ``torch.nn.Module`` (run in eval
    mode; the cache records ``module:<class>`` and a SHA-256 of its state dict) and ``dataset`` any
    map-style ``torch.utils.data.Dataset`` of ``(image, label[, ...])`` items, e.g. torchvision's
    ``ImageFolder(root, transform=Compose([Resize(S), CenterCrop(S), PILToTensor()]))``: images are
    (C, H, W) tensors of one shape or PIL images. uint8 images are standardised with ``dump.normalize=(mean,
    std)`` (default ImageNet's, or 0.5/0.5 for one channel); float images (ToTensor()+Normalize) reach the
    teacher exactly as the dataset returns them. Class names come from ``dataset.classes`` or
    ``dump.class_names``; an ImageFolder gets the same row ids as ``--dataset imagefolder`` on that folder.

    With ``views.augment`` (a kdcache.data.augment policy) it stores ``views.views`` augmented views per
    image (view 0 the un-augmented image with ``views.include_original``): each view's parameters, a pure
    function of (``views.seed``, view, dataset index) (kdcache.data.view_schedule.sample_views), and the
    teacher's logits on it. Each image is read and converted once for its views.

    Under torchrun (``kdcache.dist.launch``), each rank runs the teacher on its own
    contiguous whole batches of rows and writes a shard; rank 0 assembles ``out`` and every
    rank returns the same summary, with ``world_size``, ``shards_reused``/``shards_written``
    and the assembly time added (kdcache.cache.shards: resuming, stale shards, ``run.overwrite``).
    Because each rank's batches are exactly the one-process dump's batches (same
    ``dump.batch_size``) and view parameters depend on the dataset index only, the assembled
    values are bit-identical to a one-process dump on the same kind of device with the same
    kernels (same CPU type, torch build and threads per process); across different hardware
    they agree within verify's tolerance.

    ``dump.codec`` "lowrank[:rank=R][,dtype=D][,bits=B]" writes low-rank codes (docs/cache-format.md, "Low-rank
    caches"): the teacher first runs over a fixed sample of rows, a basis is fitted on them (rank
    R, or the smallest meeting ``dump.kl_budget`` on held-out rows; under torchrun rank 0 fits and
    broadcasts it), then every row is coded with it as it streams.
    """
    split, batch_size, device, precision, topk = dump.split, dump.batch_size, dump.device, dump.precision, dump.topk
    limit, workers, view_seed, include_original = data_cfg.limit, data_cfg.workers, views.seed, views.include_original
    augment, overwrite, reuse, progress = views.augment, run.overwrite, run.reuse, run.progress
    out = Path(out)
    lowrank, kl_budget = None, dump.kl_budget
    if dump.codec is not None:
        from kdcache.cache.lowrank import DEFAULT_KL_BUDGET, parse_codec

        lowrank = parse_codec(dump.codec)
        if topk is not None or dump.dtype is not None:
            raise ConfigError("--codec lowrank stores low-rank codes: leave out --top-k and --dtype (the codes' dtype is "
                              "--codec lowrank:dtype=int8|float16|packed)")
        kl_budget = DEFAULT_KL_BUDGET if kl_budget is None else kl_budget
    check_topk(topk)  # before anything is loaded; the upper bound once the data's classes are known
    dtype = storage_dtype(dump.dtype, topk)
    precision = resolve_precision(precision, resolve_device(device))  # the cache records fp32 or bf16, never auto
    num_views = views.views
    if num_views != 1 and augment is None:
        raise ConfigError(f"--views {num_views} stores augmented views of each image: name their policy with --augment "
                          "(e.g. --augment shift-flip)")
    if include_original and augment is None:
        raise ConfigError("--include-original makes view 0 of --augment's views the un-augmented image; add --augment")
    policy = None if augment is None else parse_policy(augment)
    if out.exists() and not (overwrite or reuse):  # fail before the slow part; CacheWriter checks again
        raise CacheError(f"{out} already exists; pass --overwrite to replace it")
    check_inputs(teacher, dataset)  # a module and a Dataset object are kdcache.jobs.foreign's; anything else: one line
    module = teacher if isinstance(teacher, torch.nn.Module) else None
    spec = teacher if isinstance(teacher, TeacherSpec) or module is not None else TeacherSpec(
        checkpoint=None if teacher is None else os.fspath(teacher))
    if dataset is not None:
        data = dataset_data(dataset, split=split, class_names=dump.class_names, normalize=dump.normalize,
                            ignore_labels=dump.ignore_labels, workers=workers).head(limit)
    else:
        name, image_size = data_cfg.dataset or default_dataset(spec), data_cfg.image_size
        if image_size is None and name in (IMAGEFOLDER, UNLABELLED_FOLDER):
            image_size = default_transform(spec)  # the teacher's own input transform
        data = load_dataset(name, split, data_cfg.data_dir, limit, ignore_labels=dump.ignore_labels,
                            image_size=image_size, workers=workers, skip_unreadable=data_cfg.skip_unreadable)
    info = with_teacher_classes(spec, data.info, dump.class_names)  # unlabelled images: the teacher's classes
    check_topk(topk, info.num_classes)
    loaded = module_teacher(module, info) if module is not None else load_teacher(spec, info)
    if dataset is not None and data.images.dtype.is_floating_point:  # the user's transform standardised them:
        loaded = replace(loaded, mean=info.mean, std=info.std)  # as they are (0/1), whatever the teacher's own
    ctx = dist.current()
    dev = ctx.local_device(resolve_device(device))
    loaded.model.to(dev)
    if precision == "bf16":
        loaded.model.to(memory_format=torch.channels_last)
    record = None if policy is None else view_record(policy, include_original=include_original, seed=view_seed)
    request = dump_request(loaded, info, len(data), precision, dtype, num_views, record, topk)
    if lowrank is not None:  # a stated rank is part of the request; a chosen one is not known yet (never reused)
        request.update(targets="lowrank", lowrank_rank=lowrank.rank, lowrank_code_dtype=lowrank.dtype,
                       lowrank_bits=lowrank.bits if lowrank.dtype == "packed" else None)
    if reuse and out.exists():
        try:
            meta = read_meta(out)
        except CacheError:
            meta = None
        if meta is not None and matches_request(meta, request):
            return {"cache": str(out), "rows": meta.num_samples, "num_classes": meta.num_classes, "dtype": dtype,
                    "topk": topk or 0, "seconds": None, "teacher_label_agreement": None, "bytes": out.stat().st_size,
                    "views": num_views, "reused": True, "request": request}
    raw = LoaderConfig(workers=workers, standardize=False)  # uint8 batches: the teacher standardises its own input
    writer_opts = dict(num_classes=info.num_classes, attrs=cache_attrs(loaded, info, precision), dtype=dtype,
                       topk=topk or 0, num_views=num_views, view_policy=record)

    def write_rows(writer: CacheWriter, rows: range) -> int:
        """Dataset rows ``rows`` at writer rows 0.., batches from ``rows.start``: a function of the range only."""
        agree = 0
        starts = range(rows.start, rows.stop, batch_size)
        spans = [torch.arange(start, min(start + batch_size, rows.stop)) for start in starts]
        pixels = (b.images for b in make_loader(data, raw, batches=spans))  # decoded in workers for image files
        for span, images in track(zip(spans, pixels), total=len(spans), desc=f"dump {info.name}/{split}",
                                  enabled=progress and ctx.is_main):
            start, stop = int(span[0]), int(span[-1]) + 1
            params = None
            if policy is None:
                logits = loaded.logits(images, dev, precision)  # (B, C) float32
            else:
                params = sample_views(policy, data.indices[start:stop].numpy(), num_views, view_seed,
                                      info.image_size, include_original)  # (B, V, P)
                logits = loaded.view_logits(images, torch.from_numpy(params), policy, dev, precision)  # (B, V, C)
            writer.write(start - rows.start, logits, data.labels[start:stop], data.indices[start:stop],
                         data.sample_ids[start:stop], view_params=params)
            hit = logits.argmax(-1) == data.labels[start:stop].view(-1, *([1] * (logits.ndim - 2)))
            agree += int(hit.sum())
        return agree

    t0 = time.perf_counter()
    if lowrank is not None:
        from kdcache.jobs.compress import basis_for_dump

        def logits_of_rows(rows: Any) -> Any:
            """The teacher's logits (n, [V,] C) of dataset rows ``rows``, as write_rows computes them."""
            spans = [torch.from_numpy(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
            parts = []
            for span, batch in zip(spans, make_loader(data, raw, batches=spans)):
                images = batch.images
                if policy is None:
                    parts.append(loaded.logits(images, dev, precision))
                else:
                    params = sample_views(policy, data.indices[span].numpy(), num_views, view_seed, info.image_size,
                                          include_original)
                    parts.append(loaded.view_logits(images, torch.from_numpy(params), policy, dev, precision))
            return torch.cat(parts).float().cpu().numpy()

        writer_opts.update(basis_for_dump(logits_of_rows, len(data), ctx, codec=lowrank, kl_budget=kl_budget))
    sharded: dict[str, Any] = {}
    layout = CacheLayout(**{k: v for k, v in writer_opts.items() if k != "attrs"})
    try:
        if ctx.distributed:
            sharded = dump_sharded(out, ctx, ShardPlan(len(data), batch_size, request, dev.type), layout=layout,
                                   attrs=writer_opts["attrs"], write_rows=write_rows, overwrite=overwrite)
            agree = sharded.pop("agree")
        else:
            writer = CacheWriter(out, layout, num_samples=len(data), attrs=writer_opts["attrs"], overwrite=True)
            check_free_space(out, writer.estimated_bytes(), f"the cache {out}")
            with writer:
                agree = write_rows(writer, range(len(data)))
    except OSError as e:
        message = disk_full_message(e, out, "the cache")
        if message is None:
            raise
        raise StorageError(message) from None
    seconds = sharded.pop("seconds", None) or time.perf_counter() - t0  # sharded: from when every rank was ready
    return {"cache": str(out), "rows": len(data), "num_classes": info.num_classes, "dtype": dtype,
            "topk": topk or 0, "seconds": seconds,
            **({"lowrank_rank": writer_opts["basis"].rank, "lowrank_kl": writer_opts["lowrank_info"]["kl"]}
               if lowrank is not None else {}),
            "teacher_label_agreement": agree / (data.num_labelled * num_views) if data.num_labelled else None,
            "bytes": out.stat().st_size, "views": num_views, "reused": False, "request": request, **sharded}
