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
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from kdcache import __version__, dist
from kdcache.cache import LogitCache, open_cache, read_meta
from kdcache.cache.ensemble import ENSEMBLE_METHODS, check_members, combine_logits
from kdcache.cache.targets import Targets, as_tensors, concat
from kdcache.config import (
    CACHE_MEMORY_LIMIT_MB,
    DEFAULT_DATA_DIR,
    DEFAULT_DATASET,
    STUDENT_ARCH,
    STUDENT_TRAIN,
    TEACHER_ARCH,
    TEACHER_TRAIN,
    DataConfig,
    TrainConfig,
    default_lr,
)
from kdcache.data.batches import Batch, BatchSource, MemoryBatches
from kdcache.data.datasets import (
    load_dataset,
    load_train_val,
    read_options,
    require_labels,
)
from kdcache.data.images import InputTransform, is_lazy
from kdcache.data.samples import ImageData
from kdcache.data.views import fresh_views, student_views
from kdcache.device import resolve_device, resolve_precision
from kdcache.errors import CheckpointError, ConfigError, Interrupted
from kdcache.files import check_output, write_json
from kdcache.identity import UNLABELLED
from kdcache.jobs.transfer import (
    TransferSet,
    check_unlabelled_rows,
    concat_data,
    mask_labels,
    open_transfer_sets,
    transfer_views,
)
from kdcache.train.checkpoint import (
    check_model_fits_data,
    load_checkpoint,
    model_config,
    read_checkpoint,
    save_checkpoint,
)
from kdcache.train.health import chance_warnings, loss_warnings
from kdcache.train.loop import Diverged, cross_entropy_loss, evaluate, fit
from kdcache.train.loss import (
    DEFAULT_TOPK_REBUILD,
    check_alpha,
    check_temperature,
    check_topk_rebuild,
    kd_loss,
)
from kdcache.train.models import ModelSpec, count_parameters
from kdcache.train.resume import matching_state, resume_path_for, save_resume_state


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


def _train_and_save(role: str, spec: ModelSpec, train_data: ImageData, data_cfg: DataConfig, cfg: TrainConfig,
                    out: str | os.PathLike, overwrite: bool, progress: bool, loss_fn: Callable,
                    request: dict[str, Any], extra: dict[str, Any],
                    make_batches: Callable[[torch.device], BatchSource], reuse: bool = False,
                    resume: bool = False) -> dict[str, Any]:
    """Shared by train_teacher / train_student: build, fit, evaluate on test, save checkpoint + metrics.

    With ``reuse``, an existing ``out`` made by the same ``request`` is returned instead
    (its metrics, with ``"reused": True``); one made by another request is retrained.

    After every epoch rank 0 saves a resume state next to ``out`` (kdcache.train.resume); one made by
    the same ``request`` is continued from (``resume``: it must exist), one made by another is
    refused naming what differs (discarded with ``reuse``), and ``overwrite`` discards it.
    """
    start_over = overwrite and not reuse  # the user's --overwrite, not reuse's "retrain"
    if resume and start_over:
        raise ConfigError("--resume continues a run and --overwrite starts over: pass one of them")
    if reuse:
        found = find_reusable(out, request)
        if found is not None:
            return {**found, "reused": True}
        overwrite = True
    out = check_output(out, overwrite)
    metrics_out = check_output(metrics_path_for(out), overwrite)
    ctx = dist.current()
    state_path = resume_path_for(out)
    state = None if start_over else matching_state(state_path, request, resume, refuse_other=not reuse)
    if start_over and ctx.is_main:
        state_path.unlink(missing_ok=True)
    device = ctx.local_device(resolve_device(cfg.device))
    test_data = load_dataset(data_cfg.dataset, "test", data_cfg.data_dir, data_cfg.eval_limit, data_cfg.download,
                             **read_options(data_cfg))
    val_data = _val_data(data_cfg)
    info = train_data.info
    torch.manual_seed(cfg.seed)
    model = spec.build(info.in_channels, info.num_classes, info.image_size)
    batches = make_batches(device)
    saved: list[int] = [] if state is None else [int(state["epoch"])]  # the epochs whose state is on disk

    def save_state(s: dict) -> None:
        save_resume_state(state_path, {**s, "request": request})
        saved.append(s["epoch"])
    try:  # Ctrl-C or SIGTERM (the CLI's handler) keeps the last epoch's state: say so
        t0 = time.perf_counter()
        try:
            history = fit(model, batches, loss_fn, cfg, eval_data=val_data if val_data is not None else test_data,
                          eval_name="val" if val_data is not None else "test", progress=progress,
                          desc=f"{role} {spec.name}", resume=state,
                          save_state=save_state)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        seconds = time.perf_counter() - t0
        result = None
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
                "train_seconds": seconds, "world_size": ctx.world_size, "kdcache_version": __version__,
                "torch_version": str(torch.__version__),
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra,
                "request": request,
            }
            save_checkpoint(out, model.cpu(), config, overwrite=True)
            result = {"checkpoint": str(out), "metrics": str(metrics_out), "config": config, "history": history,
                      "test": final, "val": val, "parameters": count_parameters(model), "seconds": seconds,
                      "reused": False,
                      "warnings": chance_warnings(final["accuracy"], test_data) + loss_warnings(history)}
            write_json(metrics_out, result)
            state_path.unlink(missing_ok=True)  # the run is done: nothing to resume
    except KeyboardInterrupt as e:
        if ctx.is_main and saved and not isinstance(e, Interrupted) and state_path.exists():
            raise Interrupted(f"{_epochs(saved[-1])} of {cfg.epochs} saved in {state_path}; run the same command "
                              "again to resume") from None
        raise
    ctx.check()  # rank 0's evaluation and files (or everyone hears why not)
    return ctx.broadcast(result)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _val_data(data_cfg: DataConfig) -> ImageData | None:
    return load_train_val(data_cfg.dataset, data_cfg.data_dir, data_cfg.limit, data_cfg.val_size,
                          data_cfg.download, **read_options(data_cfg))[1]


def resolve_train_config(cfg: TrainConfig, role_default: TrainConfig, image_files: bool) -> TrainConfig:
    """``cfg`` with what it leaves open resolved, so requests, checkpoints and sweep tables record what ran:
    precision for its device ("auto" -> fp32 or bf16: "auto" on two kinds of hardware is not one setting), and
    a learning rate of None -> the role's default for this data (kdcache.config.default_lr)."""
    lr = cfg.lr if cfg.lr is not None else default_lr(float(role_default.lr), image_files)
    return replace(cfg, precision=resolve_precision(cfg.precision, resolve_device(cfg.device)), lr=lr)


def _request(role: str, spec: ModelSpec, data: ImageData, data_cfg: DataConfig, cfg: TrainConfig, **more: Any) -> dict:
    """What determines a run's result. Keys that only some runs have are absent, not None, elsewhere, so
    requests stored before such a key existed still compare equal."""
    train = {k: v for k, v in cfg.to_dict().items() if k != "device"}  # the device does not change the result
    model = spec.record() if spec.factory else {"arch": spec.arch}  # (requests made before factories compare equal)
    ranks = dist.current().world_size
    return {"role": role, **model, "dataset": data.info.name, "dataset_fingerprint": data.info.fingerprint,
            "limit": data_cfg.limit, "val_size": data_cfg.val_size, "eval_limit": data_cfg.eval_limit,
            "train": train, **({"world_size": ranks} if ranks > 1 else {}), **more}


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
    return replace(data_cfg, dataset=data_cfg.dataset or meta.dataset,
                   image_size=data_cfg.image_size or InputTransform.from_record(transform),
                   skip_unreadable=data_cfg.skip_unreadable or bool(meta.skipped_files))  # as the dump read them


def train_teacher(out: str | os.PathLike, *, arch: str = TEACHER_ARCH, data_cfg: DataConfig = DataConfig(),
                  cfg: TrainConfig = TEACHER_TRAIN, overwrite: bool = False, progress: bool = False,
                  reuse: bool = False, augment: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``arch`` with cross-entropy on hard labels; writes ``out`` and its metrics JSON.

    ``augment`` (a kdcache.data.augment policy, e.g. "shift-flip") draws fresh views every epoch,
    so the teacher learns the views it will later label (``dump-logits --augment``).
    ``reuse``: return an existing ``out`` trained with the same request instead (find_reusable).
    A stopped run continues from its resume state (``_train_and_save``; ``resume``: there must be one).
    """
    spec = ModelSpec(arch=arch)
    spec.check()  # unknown arch fails before any data is read
    data, _ = load_train_val(data_cfg.dataset, data_cfg.data_dir, data_cfg.limit, data_cfg.val_size, data_cfg.download,
                             **read_options(data_cfg))
    require_labels(data, "a teacher's training data")
    cfg = resolve_train_config(cfg, TEACHER_TRAIN, is_lazy(data.images))
    views = fresh_views(augment, data, cfg.seed)
    more = {} if views is None else {"augment": views.policy.describe()}  # absent, not None: old requests still match

    def batches(device: torch.device) -> BatchSource:
        ctx = dist.current()
        return MemoryBatches(data, cfg.batch_size, shuffle=True, seed=cfg.seed, device=device,
                             channels_last=cfg.precision == "bf16", views=views, rank=ctx.rank,
                             world_size=ctx.world_size)
    return _train_and_save("teacher", spec, data, data_cfg, cfg, out, overwrite, progress, cross_entropy_loss,
                           _request("teacher", spec, data, data_cfg, cfg, **more), dict(more), batches, reuse,
                           resume)


def distillation_loss(temperature: float, alpha: float, topk_rebuild: str = DEFAULT_TOPK_REBUILD
                      ) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
    """A LossFn that distils from ``batch.teacher_logits`` (cached) with kd_loss (``topk_rebuild``: see kd_loss).

    Under torchrun it averages over the global batch (kd_loss's ``counts``, one small
    all-reduce a step), so ranks holding different numbers of labelled rows still give
    exactly one process's gradient.
    """
    def loss_fn(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        ctx = dist.current()
        counts = None
        if ctx.distributed:
            rows, labelled = ctx.sum([len(batch.labels), int((batch.labels != UNLABELLED).sum())])
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


def train_student(out: str | os.PathLike, *, caches: Sequence[str | os.PathLike] = (), temperature: float = 4.0,
                  alpha: float = 0.5, arch: str = STUDENT_ARCH, data_cfg: DataConfig = DataConfig(),
                  cfg: TrainConfig = STUDENT_TRAIN, ensemble: str = "mean-probs", overwrite: bool = False,
                  progress: bool = False, cache_memory_limit_mb: float = CACHE_MEMORY_LIMIT_MB,
                  cache_workers: int = 0, reuse: bool = False, augment: str | None = None,
                  allow_inconsistent: bool = False, cache_views: int | None = None, labels_limit: int | None = None,
                  transfer: Sequence[str | os.PathLike] = (), transfer_data_dirs: Sequence[str] = (),
                  student_factory: str | None = None, student_kwargs: Mapping[str, Any] | None = None,
                  resume: bool = False, topk_rebuild: str = DEFAULT_TOPK_REBUILD) -> dict[str, Any]:
    """Train a student from images + cached teacher targets. Never loads or runs a teacher.

    Every cache is checked against the training samples (LogitCache.align: dataset, split,
    fingerprint, index coverage, labels and content ids row by row) before training starts.
    Several caches distil from an ensemble (kdcache.cache.ensemble). ``alpha = 0`` trains on labels
    alone and needs no cache. A single teacher's caches whose targets (as float32) exceed
    ``cache_memory_limit_mb`` are streamed from disk (kdcache.cache.stream, read in ``cache_workers``
    processes) instead of loaded whole. ``reuse``: return an existing ``out`` made by the same
    request (same data, settings, T, alpha and cache contents) instead of training again.

    Augmentation (kdcache.data.views): a cache with views is replayed (each epoch every image shows
    one stored view and learns that view's logits; ``cache_views`` uses only the first K');
    ``augment`` without one draws fresh views (labels-only students, ``alpha = 0``), and with a
    single-view cache while distilling is refused unless ``allow_inconsistent``.

    Unlabelled rows (kdcache.jobs.transfer): ``labels_limit`` keeps the labels of the first N
    training samples only; ``transfer`` adds the rows of caches of other images (their data
    read from ``transfer_data_dirs``: none = ``data_cfg.data_dir``, one for all, or one per
    cache). The soft term covers every row, cross-entropy the labelled ones; an epoch is one
    pass over all rows.

    The student is ``arch`` (a built-in architecture), or your own: ``student_factory``
    ("package.module:function", importable from the current folder or PYTHONPATH) called with
    ``student_kwargs`` (JSON values) plus whichever of num_classes, in_channels, image_size it
    takes. The checkpoint records both; loading it needs the same factory named again
    (kdcache.train.checkpoint.load_checkpoint).

    ``topk_rebuild``: how a top-k cache's rows are rebuilt into soft targets (kd_loss); recorded
    in the request and the checkpoint when a cache is top-k.
    """
    check_temperature(temperature)
    check_alpha(alpha)
    check_topk_rebuild(topk_rebuild)
    if student_factory is not None and arch != STUDENT_ARCH:
        raise ConfigError(f"name the student once: --arch {arch} or --student-factory {student_factory}")
    spec = ModelSpec(arch=arch, factory=student_factory, kwargs=student_kwargs or {})
    spec.check()
    if ensemble not in ENSEMBLE_METHODS:
        raise ConfigError(f"unknown ensemble method {ensemble!r}; choose one of: {', '.join(ENSEMBLE_METHODS)}")
    if alpha > 0 and not caches:
        raise ConfigError("alpha > 0 distils from a teacher: pass --cache (or use --alpha 0 for labels only)")
    data_cfg = data_from_cache(data_cfg, caches)
    data, _ = load_train_val(data_cfg.dataset, data_cfg.data_dir, data_cfg.limit, data_cfg.val_size, data_cfg.download,
                             **read_options(data_cfg))
    require_labels(data, "a student's labelled data (--dataset)")
    cfg = resolve_train_config(cfg, STUDENT_TRAIN, is_lazy(data.images))
    check_unlabelled_rows(labels_limit, len(data), alpha, bool(transfer))
    opened = [open_cache(p) for p in caches]
    opened_transfer: list[LogitCache] = []
    try:
        opened_transfer.extend(open_cache(p) for p in transfer)
        records = [cache_record(c) for c in opened]
        topk = alpha > 0 and any(c.meta.topk for c in opened)
        transfer_records = [cache_record(c) for c in opened_transfer]
        sets = open_transfer_sets(opened_transfer, transfer_data_dirs, data, opened, data_cfg)
        rows_data = concat_data([mask_labels(data, labels_limit)] + [s.data for s in sets])
        targets, batches, views = _student_targets(opened, data, cfg, temperature, ensemble, cache_memory_limit_mb,
                                                   cache_workers, alpha, augment, allow_inconsistent, cache_views,
                                                   sets, rows_data)
        transfer_info = [{**cache_record(c), **r} for s in sets for c, r in zip(s.caches, s.record())]
    finally:
        for c in opened + opened_transfer:
            c.close()
    plan, view_record = views
    more = {} if view_record is None else {"augment": view_record}  # absent, not None: old requests still match
    if topk:  # a top-k run trained by another rebuild is another run (and old top-k runs were "bucket" ones)
        more["topk_rebuild"] = topk_rebuild
    unlabelled_rows = {} if labels_limit is None else {"labels_limit": labels_limit}  # likewise
    if transfer:
        unlabelled_rows["transfer"] = [r["content_sha256"] for r in transfer_records]
    request = _request("student", spec, data, data_cfg, cfg, temperature=temperature if alpha > 0 else None,
                       alpha=alpha, caches=[r["content_sha256"] for r in records] if alpha > 0 else [],
                       ensemble=ensemble if len(caches) > 1 else None, **more, **unlabelled_rows,
                       **({"cache_streamed": True} if batches is not None else {}))  # another order, another run
    extra = {"temperature": temperature, "alpha": alpha, "caches": records,
             "ensemble": ensemble if len(caches) > 1 else None, "cache_streamed": batches is not None, **more,
             "labels_limit": labels_limit, "transfer": transfer_info,
             "num_labelled": rows_data.num_labelled, "num_unlabelled": len(rows_data) - rows_data.num_labelled}
    if batches is None:
        def batches(device: torch.device) -> BatchSource:
            ctx = dist.current()
            return MemoryBatches(rows_data, cfg.batch_size, shuffle=True, seed=cfg.seed, device=device,
                                 teacher_logits=targets, channels_last=cfg.precision == "bf16", views=plan,
                                 rank=ctx.rank, world_size=ctx.world_size, workers=data_cfg.workers)
    try:
        return _train_and_save("student", spec, rows_data, data_cfg, cfg, out, overwrite, progress,
                               distillation_loss(temperature, alpha, topk_rebuild), request, extra, batches, reuse,
                               resume)
    except Diverged as e:
        if alpha > 0 and temperature > HIGH_TEMPERATURE:
            raise ConfigError(f"{str(e).split(';')[0]} at T={temperature:g}: at a temperature this high the soft "
                              "loss T²·KL is logit matching (half the mean squared difference of the centred "
                              "logits, Hinton et al. 2015 §2.1), whose gradients grow with the student-teacher "
                              "logit gap; use --T 20 or lower, or a much lower --lr") from None
        raise


HIGH_TEMPERATURE = 20.0  # the usual range of T ends here; far above it the soft loss behaves like logit matching


def _student_targets(caches: Sequence[LogitCache], data: ImageData, cfg: TrainConfig, temperature: float,
                     ensemble: str, limit_mb: float, workers: int, alpha: float = 0.0, augment: str | None = None,
                     allow_inconsistent: bool = False, cache_views: int | None = None,
                     transfer: Sequence[TransferSet] = (), rows_data: ImageData | None = None
                     ) -> tuple[Targets | None, Callable[[torch.device], BatchSource] | None, tuple]:
    """Targets aligned with ``rows_data`` (``data``'s rows, then each transfer set's), in memory, or (None, a
    streaming batch source factory) when the caches exceed ``limit_mb``; and the run's (ViewPlan, record)
    (kdcache.data.views), its stored views extended to the transfer rows."""
    rows_data = data if rows_data is None else rows_data
    if len(caches) > 1:
        check_members(caches)
    rows = [c.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids, info=data.info,
                    keys=data.keys)
            for c in caches]
    plan, record = student_views(caches, rows, data, augment=augment, alpha=alpha,
                                 allow_inconsistent=allow_inconsistent, cache_views=cache_views, seed=cfg.seed)
    views = (transfer_views(plan, transfer), record)
    if not caches:
        return None, None, views
    sources = [(list(caches), rows)] + [(s.caches, s.rows) for s in transfer]  # per source: a cache per teacher
    need_mb = sum(c.target_bytes() for cs, _ in sources for c in cs) / 2**20
    if need_mb > limit_mb:
        if len(caches) > 1:
            raise ConfigError(f"the ensemble's caches need {need_mb:.0f} MB in memory, over --cache-memory-limit "
                              f"{limit_mb:g}; streaming serves one cache only: raise the limit or use one cache")
        from kdcache.data.streaming import StreamingBatches

        paths, source_rows = [cs[0].path for cs, _ in sources], [rs[0] for _, rs in sources]
        if len(paths) == 1:
            paths, source_rows = paths[0], source_rows[0]
        ctx = dist.current()
        return None, lambda device: StreamingBatches(rows_data, paths, source_rows, cfg.batch_size, seed=cfg.seed,
                                                     device=device, num_workers=workers,
                                                     channels_last=cfg.precision == "bf16", views=views[0],
                                                     rank=ctx.rank, world_size=ctx.world_size), views
    # per teacher: its targets of every row, in rows_data's order
    members = [as_tensors(concat([cs[e].read(rs[e]) for cs, rs in sources])) for e in range(len(caches))]
    if views[1] is not None and views[1]["mode"] == "replay":
        members = [m[:, :views[1]["views"]] for m in members]  # (N, K', ...): the views in use
    if len(members) == 1:
        return members[0], None, views
    return combine_logits(members, ensemble, temperature), None, views  # once per run: depends on T only


def evaluate_checkpoint(path: str | os.PathLike, *, split: str = "test", dataset: str | None = None,
                        data_dir: str = DEFAULT_DATA_DIR, limit: int | None = None, device: str = "auto",
                        batch_size: int = 1000, progress: bool = False,
                        student_factory: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Accuracy, loss and per-class accuracy of a checkpoint on a dataset split.

    ``student_factory`` must name the factory of a checkpoint trained with one (your
    consent to import and call it; a checkpoint alone never makes kdcache run code).
    """
    model, config = load_checkpoint(path, factory=student_factory)
    transform = config.get("input_transform")
    data = require_labels(load_dataset(dataset or config["dataset"], split, data_dir, limit,
                                       image_size=InputTransform.from_record(transform), workers=workers),
                          "evaluated on")
    check_model_fits_data(config, data.info, path)
    metrics = evaluate(model, data, batch_size=batch_size, device=resolve_device(device), progress=progress,
                       workers=workers)
    return {"checkpoint": str(path), "arch": config["arch"], "dataset": data.info.name, "split": split, **metrics}
