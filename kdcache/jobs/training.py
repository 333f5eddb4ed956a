"""The jobs behind the CLI: train a teacher, train a student from caches, evaluate a checkpoint.

Each takes explicit arguments, writes its artifacts atomically and returns a result
dict; none prints or exits (the CLI does that). Every checkpoint stores the *request*
that made it (the resolved configuration that determines the result: data, model,
training settings, T, alpha, the caches' content hashes), so an artifact is reused only
when the same request is asked for again (``find_reusable``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from kdcache import __version__, dist
from kdcache.cache import LogitCache, open_cache
from kdcache.cache.stream import DEFAULT_BUFFER_BLOCKS
from kdcache.config import (
    DEFAULT_DATASET,
    EVAL_BATCH_SIZE,
    HIGH_TEMPERATURE,
    STUDENT_ARCH,
    STUDENT_TRAIN,
    TEACHER_ARCH,
    TEACHER_TRAIN,
    CacheIO,
    DataConfig,
    DistillConfig,
    RunOptions,
    TrainConfig,
    ViewConfig,
    default_batch_size,
    default_lr,
)
from kdcache.data.cached_dataset import CachedDataset
from kdcache.data.datasets import (
    load_dataset,
    load_train_val,
    read_options,
    require_labels,
)
from kdcache.data.images import InputTransform, is_lazy
from kdcache.data.loader import LoaderConfig, make_loader
from kdcache.data.samples import BatchSource, ImageData
from kdcache.data.views import fresh_views
from kdcache.device import resolve_device, resolve_precision
from kdcache.errors import CheckpointError, Diverged, Interrupted
from kdcache.files import check_output, write_json
from kdcache.jobs.recorded import inherited_skip, recorded_reading
from kdcache.jobs.student_targets import (
    cache_record,
    data_from_cache,
    distillation_loss,
    student_targets,
)
from kdcache.jobs.transfer import (
    check_unlabelled_rows,
    concat_data,
    mask_labels,
    open_transfer_sets,
)
from kdcache.progress import note
from kdcache.train.batchnorm import batchnorm_layers, batchnorm_updates, is_stale
from kdcache.train.checkpoint import (
    check_model_fits_data,
    load_checkpoint,
    model_config,
    read_checkpoint,
    save_checkpoint,
)
from kdcache.train.health import FitFacts, chance_warnings, loss_warnings
from kdcache.train.loop import FitHooks, cross_entropy_loss, evaluate, fit
from kdcache.train.models import ModelSpec, count_parameters
from kdcache.train.resume import load_resume_state, matching_state, resume_path_for, save_resume_state


def metrics_path_for(out: str | os.PathLike) -> Path:
    """runs/teacher.pt -> runs/teacher.metrics.json"""
    p = Path(out)
    return p.with_name(p.stem + ".metrics.json")


def find_reusable(out: str | os.PathLike, request: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of ``out`` if it exists and was made by exactly ``request``; else None (train again)."""
    out = Path(out)
    metrics = metrics_path_for(out)
    if not (out.is_file() and metrics.is_file()):
        return None
    try:
        stored = read_checkpoint(out)["config"].get("request")
        result = json.loads(metrics.read_text())
    except (CheckpointError, OSError, ValueError):
        return None
    return result if _plain(stored) == _plain(request) else None


def _plain(obj: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float spellings) compare as stored."""
    return json.loads(json.dumps(obj, sort_keys=True))


@dataclass(frozen=True)
class _Training:
    """What train_teacher and train_student hand the shared part: the model, its data, how to fit it, and
    the request (what determines the result) that reuse and resume compare."""

    role: str
    spec: ModelSpec
    data: ImageData
    data_cfg: DataConfig
    cfg: TrainConfig
    loss_fn: Callable
    make_batches: Callable[[torch.device], BatchSource]
    request: dict[str, Any]
    extra: dict[str, Any]  # recorded in the checkpoint beside the request


def _train_and_save(job: _Training, out: str | os.PathLike, run: RunOptions) -> dict[str, Any]:
    """Shared by train_teacher / train_student: build, fit, evaluate on test, save checkpoint + metrics.

    With ``reuse``, an existing ``out`` made by the same ``request`` is returned instead
    (its metrics, with ``"reused": True``); one made by another request is retrained.

    After every epoch rank 0 saves a resume state next to ``out`` (kdcache.train.resume); one made by
    the same ``request`` is continued from (``resume``: it must exist), one made by another is
    refused naming what differs (discarded with ``reuse``), and ``overwrite`` discards it.
    """
    role, spec, train_data, data_cfg, cfg = job.role, job.spec, job.data, job.data_cfg, job.cfg
    request, overwrite = job.request, run.overwrite
    start_over = overwrite and not run.reuse  # the user's --overwrite, not reuse's "retrain"
    if run.reuse:
        found = find_reusable(out, request)
        if found is not None:
            return {**found, "reused": True}
        overwrite = True
    out = check_output(out, overwrite)
    metrics_out = check_output(metrics_path_for(out), overwrite)
    ctx = dist.current()
    state_path = resume_path_for(out)
    state = None if start_over else matching_state(state_path, request, run.resume, refuse_other=not run.reuse)
    if start_over and ctx.is_main:
        state_path.unlink(missing_ok=True)
    device = ctx.local_device(resolve_device(cfg.device))
    test_data = load_dataset(data_cfg.dataset, "test", data_cfg.data_dir, data_cfg.eval_limit, data_cfg.download,
                             **read_options(data_cfg))
    val_data = _val_data(data_cfg)
    info = train_data.info
    torch.manual_seed(cfg.seed)
    model = spec.build(info.in_channels, info.num_classes, info.image_size)
    batches = job.make_batches(device)
    saved: list[int] = [] if state is None else [int(state["epoch"])]  # the epochs whose state is on disk
    resumed_from = None if state is None else int(state["epoch"])
    if resumed_from is not None:
        note(f"resuming from epoch {resumed_from} of {cfg.epochs} (state {state_path}); "
             f"{_epochs(max(cfg.epochs - resumed_from, 0))} to run", enabled=run.progress and ctx.is_main)
    writing: list[int] = []  # an epoch whose state is being written (a stop may land before or after the rename)

    def save_state(s: dict) -> None:
        writing.append(s["epoch"])
        save_resume_state(state_path, {**s, "request": request})
        saved.append(s["epoch"])
    try:  # Ctrl-C or SIGTERM (the CLI's handler) keeps the last epoch's state: say so
        t0 = time.perf_counter()
        try:
            history = fit(model, batches, job.loss_fn, cfg, eval_data=val_data if val_data is not None else test_data,
                          eval_name="val" if val_data is not None else "test",
                          hooks=FitHooks(f"{role} {spec.name}", run.progress, resume=state, save_state=save_state))
        finally:
            close = getattr(batches, "close", None)  # streamed targets' file handles
            if close is not None:
                close()
        seconds = time.perf_counter() - t0
        result = None
        facts = None if not history else FitFacts(  # no epoch trained here: nothing to explain a result by
            history[-1]["train_accuracy"], len(batches), int(cfg.batch_size), batchnorm_updates(model),
            is_stale(model, len(batches)))
        # sharded on ranks
        final = evaluate(model, test_data, device=device, precision="fp32", workers=data_cfg.workers)
        val = None if val_data is None else evaluate(model, val_data, device=device, precision="fp32",
                                                     workers=data_cfg.workers)
        if ctx.is_main:  # under torchrun rank 0 writes; the others wait at the check below
            config = {
                **model_config(spec, info), "role": role, "train": cfg.to_dict(), "limit": data_cfg.limit,
                "num_train_samples": len(train_data), "epochs": cfg.epochs, "seed": cfg.seed,
                "test_accuracy": final["accuracy"], "test_loss": final["loss"], "eval_limit": data_cfg.eval_limit,
                "val_size": data_cfg.val_size, "val_accuracy": None if val is None else val["accuracy"],
                "train_seconds": seconds, "resumed_from_epoch": resumed_from, "world_size": ctx.world_size,
                "kdcache_version": __version__,
                "torch_version": str(torch.__version__),
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **job.extra,
                "request": request,
            }
            save_checkpoint(out, model.cpu(), config, overwrite=True)
            result = {"checkpoint": str(out), "metrics": str(metrics_out), "config": config, "history": history,
                      "test": final, "val": val, "parameters": count_parameters(model), "seconds": seconds,
                      "resumed_from_epoch": resumed_from, "epochs_run": len(history) - (resumed_from or 0),
                      "reused": False,
                      "warnings": chance_warnings(final["accuracy"], test_data, facts) + loss_warnings(history)}
            write_json(metrics_out, result)
            state_path.unlink(missing_ok=True)  # the run is done: nothing to resume
    except KeyboardInterrupt as e:
        if ctx.is_main and (saved or writing) and not isinstance(e, Interrupted) and state_path.exists():
            mid_write = bool(writing) and saved[-1:] != writing[-1:]  # before or after the rename: ask the file
            epoch = int(load_resume_state(state_path)["epoch"]) if mid_write else saved[-1]
            raise Interrupted(f"{_epochs(epoch)} of {cfg.epochs} saved in {state_path}; run the same command "
                              "again to resume") from None
        raise
    ctx.check()  # rank 0's evaluation and files (or everyone hears why not)
    return ctx.broadcast(result)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _val_data(data_cfg: DataConfig) -> ImageData | None:
    return load_train_val(data_cfg.dataset, data_cfg.data_dir, data_cfg.limit, data_cfg.val_size,
                          data_cfg.download, **read_options(data_cfg))[1]


def resolve_train_config(cfg: TrainConfig, role_default: TrainConfig, image_files: bool,
                         num_samples: int | None = None, batchnorm: bool = False) -> TrainConfig:
    """``cfg`` with what it leaves open resolved, so requests, checkpoints and sweep tables record what ran:
    precision None -> the role's, then for its device ("auto" -> fp32 or bf16: "auto" on two kinds of hardware is
    not one setting); a learning rate of None -> the role's default for this data (kdcache.config.default_lr; a
    student with BatchNorm keeps the role's rate on image files); a batch size of None -> the role's, smaller for
    few ``num_samples`` (default_batch_size) for a teacher and for a student with BatchNorm (``batchnorm``; why
    only those: kdcache.config)."""
    lr = cfg.lr if cfg.lr is not None else default_lr(float(role_default.lr), image_files and not batchnorm)
    precision = resolve_precision(cfg.precision or role_default.precision, resolve_device(cfg.device))
    batch = cfg.batch_size
    if batch is None:
        small_data = num_samples is not None and (role_default is TEACHER_TRAIN or batchnorm)
        batch = default_batch_size(int(role_default.batch_size), num_samples) if small_data else role_default.batch_size
    return replace(cfg, precision=precision, lr=lr, batch_size=batch)


def train_loader(cfg: TrainConfig, data_cfg: DataConfig, device: torch.device) -> LoaderConfig:
    """How a training run reads its data: shuffled by its seed, its rank's part of each global batch."""
    ctx = dist.current()
    return LoaderConfig(cfg.batch_size, shuffle=True, seed=cfg.seed, workers=data_cfg.workers, device=device,
                        channels_last=cfg.precision == "bf16", rank=ctx.rank, world_size=ctx.world_size)


def _request(role: str, spec: ModelSpec, data: ImageData, data_cfg: DataConfig, cfg: TrainConfig, **more: Any) -> dict:
    """What determines a run's result. Keys that only some runs have are absent, not None, elsewhere, so
    requests stored before such a key existed still compare equal."""
    train = {k: v for k, v in cfg.to_dict().items() if k != "device"}  # the device does not change the result
    model = spec.record() if spec.factory else {"arch": spec.arch}  # (requests made before factories compare equal)
    ranks = dist.current().world_size
    return {"role": role, **model, "dataset": data.info.name, "dataset_fingerprint": data.info.fingerprint,
            "limit": data_cfg.limit, "val_size": data_cfg.val_size, "eval_limit": data_cfg.eval_limit,
            "train": train, **({"world_size": ranks} if ranks > 1 else {}), **more}


def train_teacher(out: str | os.PathLike, *, model: str | ModelSpec = TEACHER_ARCH, data_cfg: DataConfig = DataConfig(),
                  cfg: TrainConfig = TEACHER_TRAIN, views: ViewConfig = ViewConfig(),
                  run: RunOptions = RunOptions()) -> dict[str, Any]:
    """Train ``model`` with cross-entropy on hard labels; writes ``out`` and its metrics JSON.

    ``views.augment`` (a kdcache.data.augment policy, e.g. "shift-flip") draws fresh views every epoch,
    so the teacher learns the views it will later label (``dump-logits --augment``).
    ``run.reuse``: return an existing ``out`` trained with the same request (data, model, settings) instead.
    A stopped run continues from the resume state saved after every epoch (``run.resume``: there must be one).
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec(arch=model)
    spec.check()  # unknown arch fails before any data is read
    data_cfg = replace(data_cfg, dataset=data_cfg.dataset or DEFAULT_DATASET)
    data, _ = load_train_val(data_cfg.dataset, data_cfg.data_dir, data_cfg.limit, data_cfg.val_size, data_cfg.download,
                             **read_options(data_cfg))
    require_labels(data, "a teacher's training data")
    cfg = resolve_train_config(cfg, TEACHER_TRAIN, is_lazy(data.images), len(data))
    plan = fresh_views(views.augment, data, cfg.seed)
    more = {} if plan is None else {"augment": plan.policy.describe()}  # absent, not None: old requests still match

    def batches(device: torch.device) -> BatchSource:
        return make_loader(CachedDataset.from_targets(data, None, plan), train_loader(cfg, data_cfg, device))
    job = _Training("teacher", spec, data, data_cfg, cfg, cross_entropy_loss, batches,
                    _request("teacher", spec, data, data_cfg, cfg, **more),
                    {**more, "job_config": {"views": asdict(views), "data": asdict(data_cfg)}})
    return _train_and_save(job, out, run)


def train_student(out: str | os.PathLike, distill: DistillConfig, *, model: str | ModelSpec = STUDENT_ARCH,
                  data_cfg: DataConfig = DataConfig(), cfg: TrainConfig = STUDENT_TRAIN,
                  views: ViewConfig = ViewConfig(), io: CacheIO = CacheIO(),
                  run: RunOptions = RunOptions()) -> dict[str, Any]:
    """Train a student from images + cached teacher targets. Never loads or runs a teacher.

    Every cache is checked against the training samples (LogitCache.align: dataset, split,
    fingerprint, index coverage, labels and content ids row by row) before training starts.
    Several caches distil from an ensemble (kdcache.cache.ensemble). ``distill.alpha = 0`` trains on labels
    alone and needs no cache. A single teacher's caches whose targets (as float32) exceed
    ``io.memory_limit_mb`` are streamed from disk (kdcache.cache.stream, read in ``io.workers``
    processes) instead of loaded whole. ``run.reuse``: return an existing ``out`` made by the same
    request (same data, settings, T, alpha and cache contents) instead of training again.

    Augmentation (kdcache.data.views): a cache with views is replayed (each epoch every image shows
    one stored view and learns that view's logits; ``views.cache_views`` uses only the first K');
    ``views.augment`` without one draws fresh views (labels-only students, ``alpha = 0``), and with a
    single-view cache while distilling is refused unless ``views.allow_inconsistent``.

    Unlabelled rows (kdcache.jobs.transfer): ``distill.labels_limit`` keeps the labels of the first N
    training samples only; ``distill.transfer`` adds the rows of caches of other images (their data
    read from ``distill.transfer_data_dirs``: none = ``data_cfg.data_dir``, one for all, or one per
    cache). The soft term covers every row, cross-entropy the labelled ones; an epoch is one
    pass over all rows.

    The student is ``model``: a built-in architecture's name, or your own as
    ``ModelSpec(factory="package.module:function", kwargs=...)`` (importable from the current folder or
    PYTHONPATH), called with ``kwargs`` (JSON values) plus whichever of num_classes, in_channels, image_size it
    takes. The checkpoint records both; loading it needs the same factory named again
    (kdcache.train.checkpoint.load_checkpoint).

    ``distill.topk_rebuild``: how a top-k cache's rows are rebuilt into soft targets (kd_loss); recorded
    in the request and the checkpoint when a cache is top-k.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec(arch=model)
    spec.check()
    d = distill
    data_cfg = data_from_cache(data_cfg, d.caches)
    data, _ = load_train_val(data_cfg.dataset, data_cfg.data_dir, data_cfg.limit, data_cfg.val_size, data_cfg.download,
                             **read_options(data_cfg))
    require_labels(data, "a student's labelled data (--dataset)")
    info = data.info
    batchnorm = bool(batchnorm_layers(spec.build(info.in_channels, info.num_classes, info.image_size)))
    cfg = resolve_train_config(cfg, STUDENT_TRAIN, is_lazy(data.images), len(data), batchnorm)
    check_unlabelled_rows(d.labels_limit, len(data), d.alpha, bool(d.transfer))
    opened = [open_cache(p) for p in d.caches]
    opened_transfer: list[LogitCache] = []
    try:
        opened_transfer.extend(open_cache(p) for p in d.transfer)
        records = [cache_record(c) for c in opened]
        topk = d.alpha > 0 and any(c.meta.topk for c in opened)
        transfer_records = [cache_record(c) for c in opened_transfer]
        sets = open_transfer_sets(opened_transfer, d.transfer_data_dirs, data, opened, data_cfg)
        rows_data = concat_data([mask_labels(data, d.labels_limit)] + [s.data for s in sets])
        targets = student_targets(opened, data, sets, d, views, io, cfg.seed)
        transfer_info = [{**cache_record(c), **r} for s in sets for c, r in zip(s.caches, s.record())]
    finally:
        for c in opened + opened_transfer:
            c.close()
    more = {} if targets.view_record is None else {"augment": targets.view_record}  # absent, not None: old requests
    if topk:  # a top-k run trained by another rebuild is another run (and old top-k runs were "bucket" ones)
        more["topk_rebuild"] = d.topk_rebuild
    unlabelled_rows = {} if d.labels_limit is None else {"labels_limit": d.labels_limit}  # likewise
    if d.transfer:
        unlabelled_rows["transfer"] = [r["content_sha256"] for r in transfer_records]
    streamed = targets.streamed
    ensemble = d.ensemble if len(d.caches) > 1 else None
    if targets.block_rows is not None:  # the order of a run over a cache: absent (a permutation) in older requests
        more["order"] = {"block_rows": targets.block_rows, "buffer_blocks": DEFAULT_BUFFER_BLOCKS}
    request = _request("student", spec, data, data_cfg, cfg, temperature=d.temperature if d.alpha > 0 else None,
                       alpha=d.alpha, caches=[r["content_sha256"] for r in records] if d.alpha > 0 else [],
                       ensemble=ensemble, **more, **unlabelled_rows)  # in memory or streamed: the same run
    extra = {"temperature": d.temperature, "alpha": d.alpha, "caches": records, "ensemble": ensemble,
             "cache_streamed": streamed, **more, "labels_limit": d.labels_limit, "transfer": transfer_info,
             "num_labelled": rows_data.num_labelled, "num_unlabelled": len(rows_data) - rows_data.num_labelled,
             "job_config": {"distill": asdict(d), "views": asdict(views), "io": asdict(io), "data": asdict(data_cfg)}}
    workers = data_cfg.workers if data_cfg.workers is not None or not streamed else (io.workers or None)

    def batches(device: torch.device) -> BatchSource:
        rows = CachedDataset.from_targets(rows_data, targets.targets, targets.plan, targets.block_rows)
        return make_loader(rows, replace(train_loader(cfg, data_cfg, device), workers=workers))
    job = _Training("student", spec, rows_data, data_cfg, cfg, distillation_loss(d.temperature, d.alpha, d.topk_rebuild),
                    batches, request, extra)
    try:
        return _train_and_save(job, out, run)
    except Diverged as e:
        if d.alpha > 0 and d.temperature > HIGH_TEMPERATURE:
            raise Diverged(f"{e.reason}) at T={d.temperature:g} (at a temperature this high the soft loss T²·KL is "
                           "logit matching: half the mean squared difference of the centred logits, Hinton et al. "
                           "2015 §2.1, whose gradients grow with the student-teacher logit gap",
                           "use --T 20 or lower, or a much lower --lr") from None
        raise


def evaluate_checkpoint(path: str | os.PathLike, *, split: str = "test", data_cfg: DataConfig = DataConfig(),
                        device: str = "auto", batch_size: int = EVAL_BATCH_SIZE,
                        student_factory: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy, loss and per-class accuracy of a checkpoint on a dataset split.

    ``data_cfg``: where the data is (``dataset`` None: the checkpoint's), how much of it (``eval_limit`` for the
    test split, ``limit`` for the train split) and how many ``workers`` decode it.

    ``student_factory`` must name the factory of a checkpoint trained with one (your
    consent to import and call it; a checkpoint alone never makes kdcache run code).
    """
    model, config = load_checkpoint(path, factory=student_factory)
    transform = config.get("input_transform")
    workers, limit = data_cfg.workers, data_cfg.eval_limit if split == "test" else data_cfg.limit
    skip = inherited_skip(data_cfg.skip_unreadable, recorded_reading(config))  # files the training left out
    data = require_labels(load_dataset(data_cfg.dataset or config["dataset"], split, data_cfg.data_dir, limit,
                                       **read_options(replace(data_cfg, image_size=InputTransform.from_record(
                                           transform), skip_unreadable=skip))),
                          "evaluated on")
    check_model_fits_data(config, data.info, path)
    metrics = evaluate(model, data, batch_size=batch_size, device=resolve_device(device), progress=progress,
                       workers=workers)
    return {"checkpoint": str(path), "arch": config["arch"], "dataset": data.info.name, "split": split, **metrics}
