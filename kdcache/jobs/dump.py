"""Run a trained teacher once over a dataset split and write its raw logits to a cache."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
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
from kdcache.data.augment import for_images, parse_policy, view_record
from kdcache.data.datasets import load_dataset, read_options, reads_files
from kdcache.data.hf import find_columns, has_transform, hf_data, is_hf_dataset
from kdcache.data.items import ItemKeys
from kdcache.data.loader import LoaderConfig, make_loader
from kdcache.data.replay import ViewRows
from kdcache.data.samples import ImageData
from kdcache.data.user_data import ACCEPTED_DATASET, dataset_data, is_dataset
from kdcache.device import resolve_device, resolve_precision
from kdcache.errors import CacheError, ConfigError, StorageError
from kdcache.files import check_free_space, check_writable, disk_full_message
from kdcache.identity import DatasetInfo
from kdcache.jobs.recorded import checkpoint_reading, inherited_skip
from kdcache.progress import track
from kdcache.train.teacher import (
    Teacher,
    TeacherSpec,
    default_dataset,
    default_transform,
    load_teacher,
    module_teacher,
    with_teacher_classes,
)

ACCEPTED_TEACHER = "a kdcache checkpoint path, a TeacherSpec (factory + weights) or a torch.nn.Module"


def check_inputs(teacher: Any, dataset: Any) -> None:
    """One-line ConfigError for a teacher or dataset of a kind dump_logits does not take (named by type, never repr)."""
    if teacher is not None and not isinstance(teacher, (str, os.PathLike, torch.nn.Module, TeacherSpec)):
        raise ConfigError(f"teacher: got a {type(teacher).__name__}; give {ACCEPTED_TEACHER}")
    if dataset is not None and not is_dataset(dataset):
        raise ConfigError(f"dataset: got a {type(dataset).__name__}; give {ACCEPTED_DATASET}")



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
        **({"user_transform": info.user_transform} if info.user_transform else {}),  # a user's Dataset's own transform
        **({"data_source": info.source} if info.source else {}),  # a Hugging Face dataset: columns, row keying
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
    float16 top-k values (kdcache.config). An image folder's files are hashed (row ids, fingerprint) by the
    workers that decode them, with no pass of their own, where nothing needs the fingerprint first
    (defers_identity). Free disk space is checked
    before anything is written; a disk that fills up anyway leaves nothing at ``out``.
    With ``run.reuse``, an existing cache at ``out`` made by the same request (teacher file,
    data, rows, precision, dtype) is kept and reported as reused; any other is replaced.
    ``dump.ignore_labels`` (``--no-labels``) dumps the split as unlabelled: every row's label is -1 and
    its content id (and the fingerprint) hash -1, so the cache reveals no label. Data without
    labels (``unlabelled`` images, or ``ignore_labels``) takes its class names from the teacher:
    a kdcache checkpoint's, or ``dump.class_names`` for a factory teacher.
    Returns a summary (path, rows, seconds, teacher top-1 agreement with the labels: None without labels).

    Your own model and data (kdcache.train.teacher.module_teacher, kdcache.data.user_data): ``teacher`` may be any ``torch.nn.Module`` (run in eval
    mode; the cache records ``module:<class>`` and a SHA-256 of its state dict) and ``dataset`` any
    map-style ``torch.utils.data.Dataset`` of ``(image, label[, ...])`` tuples or ``{"image": ..., "label": ...}``
    dicts (keys found by name, or ``dump.image_key``/``dump.label_key``: kdcache.data.items), e.g. torchvision's
    ``ImageFolder(root, transform=Compose([Resize(S), CenterCrop(S), PILToTensor()]))``: images are
    (C, H, W) tensors of one shape or PIL images. uint8 images are standardised with ``dump.normalize=(mean,
    std)`` (default ImageNet's, or 0.5/0.5 for one channel); float images (ToTensor()+Normalize) reach the
    teacher exactly as the dataset returns them; the cache records what is known of the dataset's transform
    (``user_transform``: its repr, a Normalize's mean/std), which ``info`` shows. Class names come from
    ``dataset.classes`` or ``dump.class_names``; an ImageFolder gets the same row ids and fingerprint as
    ``--dataset imagefolder`` on that folder and is recorded as ``imagefolder``, so CLI jobs take the cache.

    With ``views.augment`` (a kdcache.data.augment policy: a name, resolved for the data, so "crop-flip" on image
    files is v3, cut from the original file; a policy object is used as given, e.g. ``CropFlip()`` for v2) it stores ``views.views`` augmented views per
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
    out = Path(out)
    plan = plan_dump(out, dump, views, run)  # every refusal of the settings, before anything is loaded
    check_inputs(teacher, dataset)  # a module, a Dataset object or a path; anything else: one line
    module = teacher if isinstance(teacher, torch.nn.Module) else None
    spec = teacher if isinstance(teacher, TeacherSpec) or module is not None else TeacherSpec(
        checkpoint=None if teacher is None else os.fspath(teacher))
    data = dump_data(spec, data_cfg, dataset, dump, defers_identity(out, data_cfg, run))
    info = with_teacher_classes(spec, data.info, dump.class_names)  # unlabelled images: the teacher's classes
    if isinstance(views.augment, str):  # "crop-flip" on image files: v3, cut from the file (augment.for_images)
        plan = replace(plan, policy=for_images(plan.policy, data.images))
    check_topk(plan.topk, info.num_classes)
    rows = TeacherRows(ready_teacher(spec, module, data, info, plan), data, plan, data_cfg.workers)
    request = plan.request(rows.teacher, info, len(data))
    if run.reuse and out.exists():
        found = reused_cache(out, request, plan)
        if found is not None:
            return found
    layout = CacheLayout(num_classes=info.num_classes, dtype=plan.dtype, topk=plan.topk or 0,
                         num_views=plan.num_views, view_policy=plan.record)
    t0 = time.perf_counter()
    if plan.codec is not None:  # fit the basis on a sample of rows first (rank 0, broadcast under torchrun)
        from kdcache.jobs.compress import basis_for_dump

        layout = replace(layout, **basis_for_dump(rows.logits_of, len(data), dist.current(), codec=plan.codec,
                                                  kl_budget=plan.kl_budget))
    attrs = cache_attrs(rows.teacher, info, plan.precision)
    agree, sharded = write_rows_to(out, layout, attrs, rows, request, run)
    request["dataset_fingerprint"] = rows.fingerprint  # deferred: known now that every file has been read
    seconds = sharded.pop("seconds", None) or time.perf_counter() - t0  # sharded: from when every rank was ready
    return {"cache": str(out), "rows": len(data), "num_classes": info.num_classes, "dtype": plan.dtype,
            "topk": plan.topk or 0, "seconds": seconds,
            **({"lowrank_rank": layout.basis.rank, "lowrank_kl": layout.lowrank_info["kl"]}
               if plan.codec is not None else {}),
            "teacher_label_agreement": agree / (data.num_labelled * plan.num_views) if data.num_labelled else None,
            "bytes": out.stat().st_size, "views": plan.num_views, "reused": False, "request": request, **sharded}


@dataclass(frozen=True)
class DumpPlan:
    """A dump's settings resolved and checked: what is stored (dtype, top-k or codec, views) and how it runs."""

    split: str
    batch_size: int
    device: str
    precision: str  # fp32 or bf16, never auto: the cache records what ran
    dtype: str
    topk: int | None
    codec: Any  # kdcache.cache.lowrank.Codec | None
    kl_budget: float | None
    policy: Any  # a kdcache.data.augment policy | None
    views: ViewConfig
    progress: bool

    @property
    def num_views(self) -> int:
        return self.views.views

    @property
    def record(self) -> dict[str, Any] | None:
        """What the cache records of its views (policy, seed, include_original), None without views."""
        return None if self.policy is None else view_record(self.policy, include_original=self.views.include_original,
                                                            seed=self.views.seed)

    def request(self, teacher: Teacher, info: DatasetInfo, num_rows: int) -> dict[str, Any]:
        """What determines the cache's values (dump_request, plus a stated low-rank codec)."""
        request = dump_request(teacher, info, num_rows, self.precision, self.dtype, self.num_views, self.record,
                               self.topk)
        if self.codec is not None:  # a stated rank is part of the request; a chosen one is not known yet (never reused)
            request.update(targets="lowrank", lowrank_rank=self.codec.rank, lowrank_code_dtype=self.codec.dtype,
                           lowrank_bits=self.codec.bits if self.codec.dtype == "packed" else None)
        return request


def plan_dump(out: Path, dump: DumpConfig, views: ViewConfig, run: RunOptions) -> DumpPlan:
    """The dump's settings, resolved; a ConfigError or CacheError for any that cannot work, before the slow part."""
    codec, kl_budget = None, dump.kl_budget
    if dump.codec is not None:
        from kdcache.cache.lowrank import DEFAULT_KL_BUDGET, parse_codec

        codec = parse_codec(dump.codec)
        if dump.topk is not None or dump.dtype is not None:
            raise ConfigError("--codec lowrank stores low-rank codes: leave out --top-k and --dtype (the codes' dtype is "
                              "--codec lowrank:dtype=int8|float16|packed)")
        kl_budget = DEFAULT_KL_BUDGET if kl_budget is None else kl_budget
    check_topk(dump.topk)  # the upper bound once the data's classes are known
    if views.views != 1 and views.augment is None:
        raise ConfigError(f"--views {views.views} stores augmented views of each image: name their policy with "
                          "--augment (e.g. --augment shift-flip)")
    if views.include_original and views.augment is None:
        raise ConfigError("--include-original makes view 0 of --augment's views the un-augmented image; add --augment")
    if out.exists() and not (run.overwrite or run.reuse):  # CacheWriter checks again
        raise CacheError(f"{out} already exists; pass --overwrite to replace it")
    check_writable(out)  # a read-only folder: one line now, not HDF5's text after the teacher ran
    precision = resolve_precision(dump.precision, resolve_device(dump.device))  # recorded as fp32 or bf16, never auto
    return DumpPlan(dump.split, dump.batch_size, dump.device, precision, storage_dtype(dump.dtype, dump.topk),
                    dump.topk, codec, kl_budget, None if views.augment is None else parse_policy(views.augment), views,
                    run.progress)


def defers_identity(out: Path, data_cfg: DataConfig, run: RunOptions) -> bool:
    """Whether an image folder's files are hashed where the dump reads them, not in a pass before (the one rule).

    A folder's row ids and fingerprint hash its files' bytes. Hashing them in the decoding workers, from the
    bytes they decode (kdcache.data.images.read_image), saves a pass over every file; then the rows' ids are
    made batch by batch and the fingerprint once the last row is read (TeacherRows.write), the same values.
    That serves a dump that needs the fingerprint only at the end. Three need it before any row is read, and
    keep the pass: ``run.reuse`` with a cache at ``out`` (compared by its request, fingerprint included), a
    sharded dump under torchrun (each rank's resumable shards are matched by it, kdcache.cache.shards), and
    ``--skip-unreadable`` (bad files must be found before the rows are counted). Built-in datasets (in
    memory) and a user's own Dataset (its items are what its transform returns) are identified as before.
    """
    return not (data_cfg.skip_unreadable or dist.current().distributed or (run.reuse and out.exists()))


def dump_data(spec: TeacherSpec, data_cfg: DataConfig, dataset: Any, dump: DumpConfig,
              defer_identity: bool = False) -> ImageData:
    """The rows to dump: the user's Dataset, or a dataset by name (default: the teacher's), read as the teacher was;
    an image folder with ``defer_identity`` is hashed as it is read (defers_identity)."""
    if dataset is not None:
        keys = ItemKeys(dump.image_key, dump.label_key)  # dict items: where the image and label are
        if is_hf_dataset(dataset):  # rows keyed by their encoded bytes, decoded as a folder's files (kdcache.data.hf)
            return hf_dump_data(spec, data_cfg, dataset, dump, keys)
        return dataset_data(dataset, split=dump.split, class_names=dump.class_names, normalize=dump.normalize,
                            ignore_labels=dump.ignore_labels, workers=data_cfg.workers, item_keys=keys
                            ).head(data_cfg.limit)
    name, image_size = data_cfg.dataset or default_dataset(spec), data_cfg.image_size
    if image_size is None and reads_files(name):
        image_size = default_transform(spec)  # the teacher's own input transform
    skip = inherited_skip(data_cfg.skip_unreadable, checkpoint_reading(getattr(spec, "checkpoint", None)))
    read = replace(data_cfg, image_size=image_size, skip_unreadable=skip)  # as the teacher read them
    return load_dataset(name, dump.split, data_cfg.data_dir, data_cfg.limit, ignore_labels=dump.ignore_labels,
                        **read_options(read), defer_identity=defer_identity)


def hf_dump_data(spec: TeacherSpec, data_cfg: DataConfig, dataset: Any, dump: DumpConfig, keys: ItemKeys
                 ) -> ImageData:
    """A Hugging Face ``datasets.Dataset``: without a transform of its own, its rows' encoded images decoded at
    ``data_cfg.image_size`` (else the teacher's input transform, else 64) and keyed by their bytes, as
    ``--dataset hf:PATH`` reads them; with one (``with_transform``), its items as any user's dataset gives them, with
    the ClassLabel's names as class names."""
    if has_transform(dataset):
        names = dump.class_names or find_columns(dataset, keys).class_names or None
        return dataset_data(dataset, split=dump.split, class_names=names, normalize=dump.normalize,
                            ignore_labels=dump.ignore_labels, workers=data_cfg.workers, item_keys=keys
                            ).head(data_cfg.limit)
    own = default_transform(spec) if isinstance(spec, TeacherSpec) else None  # a module: no recorded transform
    return hf_data(dataset, dump.split, keys=keys, image_size=data_cfg.image_size or own,
                   class_names=dump.class_names, ignore_labels=dump.ignore_labels).head(data_cfg.limit)


def ready_teacher(spec: TeacherSpec, module: torch.nn.Module | None, data: ImageData, info: DatasetInfo,
                  plan: DumpPlan) -> Teacher:
    """The teacher on this rank's device, in the memory format its precision runs fastest in."""
    teacher = module_teacher(module, info) if module is not None else load_teacher(spec, info)
    if getattr(data.images, "dtype", torch.uint8).is_floating_point:  # a user's Dataset whose transform standardised:
        teacher = replace(teacher, mean=info.mean, std=info.std)  # as they are (0/1), whatever the teacher's own
    teacher.model.to(dist.current().local_device(resolve_device(plan.device)))
    if plan.precision == "bf16":
        teacher.model.to(memory_format=torch.channels_last)
    return teacher


def reused_cache(out: Path, request: dict[str, Any], plan: DumpPlan) -> dict[str, Any] | None:
    """The summary of the cache at ``out`` when the same request made it (run.reuse), else None (dump again)."""
    try:
        meta = read_meta(out)
    except CacheError:
        return None
    if not matches_request(meta, request):
        return None
    return {"cache": str(out), "rows": meta.num_samples, "num_classes": meta.num_classes, "dtype": plan.dtype,
            "topk": plan.topk or 0, "seconds": None, "teacher_label_agreement": None, "bytes": out.stat().st_size,
            "views": plan.num_views, "reused": True, "request": request}


class TeacherRows:
    """The teacher's logits of dataset rows, batch by batch through the one loader: a pure function of the rows.

    ``batches(rows)`` cuts the rows into batches of ``plan.batch_size`` from their start, so a rank's
    contiguous range gives exactly the one-process dump's batches; each view's parameters are a pure
    function of (seed, view, dataset index) (kdcache.data.view_schedule.sample_views).
    """

    def __init__(self, teacher: Teacher, data: ImageData, plan: DumpPlan, workers: int | None):
        self.teacher, self.data, self.plan = teacher, data, plan
        self.device = dist.current().local_device(resolve_device(plan.device))
        self.raw = LoaderConfig(workers=workers, standardize=False)  # uint8: the teacher standardises its own input
        self.fingerprint = data.info.fingerprint  # None while deferred: set by write once every row is read

    def batches(self, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray | None, Any]]:
        """(dataset rows (B,), logits (B, [V,] C) float32, view parameters (B, V, P) or None, the files' digests
        (B, 16) uint8 where the data's identity is deferred, else None) for each batch."""
        plan = self.plan
        spans = [torch.from_numpy(rows[i:i + plan.batch_size]) for i in range(0, len(rows), plan.batch_size)]
        if plan.policy is None:
            for span, batch in zip(spans, make_loader(self.data, self.raw, batches=spans)):
                yield span, self.teacher.logits(batch.images, self.device, plan.precision), None, batch.digests
            return
        views = ViewRows(self.data, plan.policy, plan.num_views, plan.views.seed, plan.views.include_original)
        for span, batch in zip(spans, make_loader(views, self.raw, batches=spans)):  # (B, V, C, S, S) views
            logits = self.teacher.view_logits(batch.images, self.device, plan.precision)
            yield span, logits, views.params(span), batch.digests

    def logits_of(self, rows: Any) -> np.ndarray:
        """The logits (n, [V,] C) of dataset rows ``rows`` (a low-rank dump fits its basis on them)."""
        return torch.cat([logits for _, logits, _, _ in self.batches(np.asarray(rows))]).float().cpu().numpy()

    def write(self, writer: CacheWriter, rows: range) -> int:
        """Dataset rows ``rows`` at writer rows 0..; returns how many (row, view)s the teacher's top-1 agrees with.

        Data whose identity is deferred (defers_identity) gets each row's id from the digests its batch carries
        and, after the last row, the split's fingerprint, set on ``writer`` (its attributes are written at close)
        and kept as ``self.fingerprint``."""
        data, ctx, agree = self.data, dist.current(), 0
        steps = -(-len(rows) // self.plan.batch_size)
        batches = track(self.batches(np.arange(rows.start, rows.stop)), total=steps,
                        desc=f"dump {data.info.name}/{self.plan.split}", enabled=self.plan.progress and ctx.is_main)
        read: list[tuple[torch.Tensor, np.ndarray]] = []  # deferred: (dataset indices, digests) of each batch
        for span, logits, params, digests in batches:
            start, stop = int(span[0]), int(span[-1]) + 1
            indices, ids = data.indices[start:stop], data.sample_ids
            if data.deferred is None:
                ids = ids[start:stop]
            else:  # the ids of the bytes the workers decoded
                ids = data.deferred.sample_ids(indices.numpy(), digests)
                read.append((indices, digests))
            writer.write(start - rows.start, logits, data.labels[start:stop], indices, ids, view_params=params)
            agree += int((logits.argmax(-1) == data.labels[start:stop].view(-1, *([1] * (logits.ndim - 2)))).sum())
        if data.deferred is not None:
            assert (rows.start, rows.stop) == (0, len(data)), "a deferred identity is the one-process dump's"
            self.fingerprint = data.deferred.fingerprint(torch.cat([i for i, _ in read]).numpy(),
                                                         np.concatenate([d for _, d in read]))
            writer.set_attrs({"dataset_fingerprint": self.fingerprint})
        return agree


def write_rows_to(out: Path, layout: CacheLayout, attrs: dict[str, Any], rows: TeacherRows, request: dict[str, Any],
                  run: RunOptions) -> tuple[int, dict[str, Any]]:
    """Write every row into ``out`` (a shard per rank under torchrun, then assembled); (agreement, shard summary).
    A full disk is one StorageError line and leaves nothing at ``out``."""
    ctx, n = dist.current(), len(rows.data)
    try:
        if ctx.distributed:
            plan = ShardPlan(n, rows.plan.batch_size, request, rows.device.type)
            sharded = dump_sharded(out, ctx, plan, layout=layout, attrs=attrs, write_rows=rows.write,
                                   overwrite=run.overwrite)
            return sharded.pop("agree"), sharded
        writer = CacheWriter(out, layout, num_samples=n, attrs=attrs, overwrite=True)
        check_free_space(out, writer.estimated_bytes(), f"the cache {out}")
        with writer:
            return rows.write(writer, range(n)), {}
    except OSError as e:
        message = disk_full_message(e, out, "the cache")
        if message is None:
            raise
        raise StorageError(message) from None


def dataset_from_factory(target: str, option: str = "--dataset-factory") -> Any:
    """The map-style Dataset that ``package.module:function`` returns; anything it raises, or returns that is
    no map-style Dataset, is one ConfigError line."""
    from kdcache.train.models import import_factory

    fn = import_factory(target, option)
    try:
        dataset = fn()
    except Exception as e:  # the team's code: any failure is one line
        first = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"{option} {target} failed ({type(e).__name__}: {first})") from None
    if not is_dataset(dataset):
        raise ConfigError(f"{option} {target} returned a {type(dataset).__name__}, not a map-style Dataset (one with "
                          "__len__ and __getitem__, e.g. torchvision.datasets.ImageFolder)")
    return dataset
