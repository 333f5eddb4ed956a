"""Commands that train and evaluate: train-teacher, train-student, evaluate."""
from __future__ import annotations

import json
from typing import Any

import click

from kdcache.cli.group import main, summary, warn
from kdcache.cli.options import (
    AUGMENT_HELP,
    config_from,
    data_config,
    data_options,
    precision_note,
    quiet_option,
    train_config,
    train_options,
)
from kdcache.config import (
    CACHE_MEMORY_LIMIT_MB,
    DEFAULT_ALPHA,
    DEFAULT_DATA_DIR,
    DEFAULT_ENSEMBLE,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOPK_REBUILD,
    DEVICES,
    ENSEMBLE_METHODS,
    SPLITS,
    STUDENT_ARCH,
    STUDENT_TRAIN,
    TEACHER_ARCH,
    TEACHER_TRAIN,
    TOPK_REBUILDS,
    CacheIO,
    DataConfig,
    DistillConfig,
    RunOptions,
    ViewConfig,
)
from kdcache.errors import ConfigError, DataError
from kdcache.jobs.recorded import cache_file_reading, checkpoint_reading, with_recorded_folder


@main.command("train-teacher")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--arch", default=TEACHER_ARCH, show_default=True, help="Model architecture.")
@data_options
@train_options(TEACHER_TRAIN)
@click.option("--augment", default=None, metavar="POLICY",
              help=AUGMENT_HELP + " Fresh views every epoch, so the teacher learns the views it will label.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint and discard a resume state.")
@click.option("--resume", is_flag=True,
              help="Continue a stopped run from its resume state (.<out name>.resume.pt, saved after every epoch); "
                   "an error if there is none. Without it a state made by the same request is continued anyway.")
@quiet_option
def train_teacher_cmd(out: str, arch: str, augment: str | None, overwrite: bool, resume: bool, quiet: bool,
                      **kw: Any) -> None:
    """Train the teacher on hard labels; writes a checkpoint and <out>.metrics.json.

    Data-parallel with `torchrun --nproc_per_node N -m kdcache train-teacher ...` (DDP;
    --batch-size stays the global batch; BatchNorm sees each rank's share of it).

    After every epoch it saves a resume state next to --out (hidden, .<name>.resume.pt;
    deleted when the checkpoint is written): the same command run again continues from the
    last finished epoch, to the same weights. Ctrl-C or SIGTERM stop it with status 130 or 143.
    """
    from kdcache.files import check_writable
    from kdcache.jobs.training import train_teacher

    check_writable(out)  # before the data is read and the teacher trains
    cfg, data_cfg = train_config(kw), data_config(kw)
    r = train_teacher(out, model=arch, data_cfg=data_cfg, cfg=cfg, views=ViewConfig(augment=augment),
                      run=RunOptions(overwrite=overwrite, resume=resume, progress=not quiet))
    warn(r)
    summary(quiet, f"teacher {arch}: test accuracy {r['test']['accuracy']:.4f}, {_ran(r, cfg.epochs)} at "
                   f"{precision_note(cfg.precision, cfg.device)}{_time(r)} -> {r['checkpoint']} (metrics {r['metrics']})")


@main.command("train-student")
@click.option("--cache", "caches", multiple=True, type=click.Path(dir_okay=False),
              help="Logit cache of the training split (from dump-logits). Not needed with --alpha 0.")
@click.option("--T", "--temperature", "temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True,
              help="Softmax temperature T > 0 for the soft targets.")
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
              help="Weight of the soft loss in [0, 1]; 0 = hard labels only.")
@click.option("--topk-rebuild", type=click.Choice(list(TOPK_REBUILDS)), default=DEFAULT_TOPK_REBUILD, show_default=True,
              help="How a top-k cache's rows become soft targets: spread (the tail's mass spread evenly over the "
                   "other classes, full-C KL) or bucket (KL over the k classes + one tail bucket).")
@click.option("--ensemble", type=click.Choice(ENSEMBLE_METHODS), default=DEFAULT_ENSEMBLE, show_default=True,
              help="How several --cache teachers are combined: mean of softmax(z/T), or mean of logits.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--arch", default=STUDENT_ARCH, show_default=True, help="Model architecture.")
@click.option("--student-factory", default=None, metavar="MODULE:FUNCTION",
              help="Your own student instead of --arch: a function returning a torch.nn.Module (gets num_classes, "
                   "in_channels, image_size if it takes them). evaluate needs it named again.")
@click.option("--student-kwargs", default=None, metavar="JSON",
              help="Keyword arguments for --student-factory as a JSON object, e.g. '{\"width\": 32}' "
                   "(JSON keeps their types; the checkpoint records them).")
@data_options
@train_options(STUDENT_TRAIN)
@click.option("--cache-memory-limit", "cache_memory_limit_mb", type=click.FloatRange(min=0), default=CACHE_MEMORY_LIMIT_MB,
              show_default=True, help="MB of logits (as float32) held in memory; a bigger cache is streamed from disk.")
@click.option("--cache-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes reading a streamed cache (0: read in the training process).")
@click.option("--augment", default=None, metavar="POLICY",
              help=AUGMENT_HELP + " A cache with views replays its own views without this option.")
@click.option("--allow-inconsistent", is_flag=True,
              help="Allow --augment with a single-view cache: augmented images learn the original image's logits "
                   "(inconsistent; kept to measure it).")
@click.option("--cache-views", type=click.IntRange(min=1), default=None,
              help="Use only the first K stored views of a cache with views (default: all).")
@click.option("--labels-limit", type=click.IntRange(min=0), default=None,
              help="Only the first N training samples keep their labels; the rest train as unlabelled rows "
                   "(soft targets only, from the same --cache).")
@click.option("--transfer", multiple=True, type=click.Path(dir_okay=False),
              help="Cache of other images (e.g. dump-logits --dataset unlabelled) added as a transfer set: soft "
                   "targets on every row, labels where it has them. Repeat for more sets, or one per teacher.")
@click.option("--transfer-data-dir", "transfer_data_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Where the --transfer images are (the dataset and split come from the cache); one for all, or "
                   "one per --transfer. Default: --data-dir.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint and discard a resume state.")
@click.option("--resume", is_flag=True,
              help="Continue a stopped run from its resume state (.<out name>.resume.pt, saved after every epoch); "
                   "an error if there is none. Without it a state made by the same request is continued anyway.")
@quiet_option
def train_student_cmd(out: str, arch: str, student_factory: str | None, student_kwargs: str | None, overwrite: bool,
                      resume: bool, quiet: bool, **kw: Any) -> None:
    """Train a student from images + cached teacher logits (the teacher is never loaded).

    A cache with augmentation views (dump-logits --views K --augment POLICY) is replayed:
    each epoch every image shows one of its stored views and learns that view's logits.
    Rows without labels (--labels-limit, --transfer) get the soft term only; an epoch is
    one pass over every row, labelled or not. The student is --arch, or your own model:
    --student-factory MODULE:FUNCTION [--student-kwargs JSON].

    Data-parallel with `torchrun --nproc_per_node N -m kdcache train-student ...` (DDP;
    --batch-size stays the global batch, so the same flags give the same optimisation).

    After every epoch it saves a resume state next to --out (hidden, .<name>.resume.pt;
    deleted when the checkpoint is written): the same command run again continues from the
    last finished epoch, to the same weights. Ctrl-C or SIGTERM stop it with status 130 or 143.
    """
    from kdcache.files import check_writable
    from kdcache.jobs.training import train_student
    from kdcache.train.models import ModelSpec, parse_kwargs

    check_writable(out)  # before the data and caches are read and the student trains

    if student_factory is not None and arch != STUDENT_ARCH:
        raise ConfigError(f"name the student once: --arch {arch} or --student-factory {student_factory}")
    model = ModelSpec(arch=arch, factory=student_factory, kwargs=parse_kwargs(student_kwargs))
    cfg, data_cfg = train_config(kw), data_config(kw, from_cache=True)
    distill = config_from(DistillConfig, kw)
    views, io = config_from(ViewConfig, kw), config_from(CacheIO, kw, memory_limit_mb="cache_memory_limit_mb",
                                                          workers="cache_workers")
    try:
        r = train_student(out, distill, model=model, data_cfg=data_cfg, cfg=cfg, views=views, io=io,
                          run=RunOptions(overwrite=overwrite, resume=resume, progress=not quiet))
    except DataError as e:  # a folder not where it is looked for: name the one the cache's teacher read
        first = distill.caches[0] if distill.caches else None
        raise with_recorded_folder(e, data_cfg.data_dir, cache_file_reading(first),
                                   f"the teacher of the cache {first}") from None
    warn(r)
    c = r["config"]
    rows = f", {c['num_labelled']} labelled + {c['num_unlabelled']} unlabelled rows" if c["num_unlabelled"] else ""
    how = "labels only" if distill.alpha == 0 else f"T={distill.temperature:g}, alpha={distill.alpha:g}"
    summary(quiet, f"student {c['arch']} ({how}{rows}): test accuracy {r['test']['accuracy']:.4f}, "
                   f"{_ran(r, cfg.epochs)} at {precision_note(cfg.precision, cfg.device)}{_time(r)} -> {r['checkpoint']}")


@main.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--dataset", default=None, help="Dataset (default: the checkpoint's; hf:PATH for a Hugging Face "
                                               "dataset on disk).")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples.")
@click.option("--image-column", "image_key", default=None, metavar="COLUMN",
              help="--dataset hf:PATH: the image column (default: its one Image feature).")
@click.option("--label-column", "label_key", default=None, metavar="COLUMN",
              help="--dataset hf:PATH: the label column (default: its ClassLabel feature).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers that decode images (default: one per available CPU for image folders).")
@click.option("--skip-unreadable", is_flag=True,
              help="Image folders: leave out files of the split that do not decode, naming them (files the "
                   "checkpoint's training left out are left out without being told).")
@click.option("--student-factory", default=None, metavar="MODULE:FUNCTION",
              help="For a checkpoint made with train-student --student-factory: name that factory again "
                   "(kdcache never imports or calls code just because a checkpoint names it).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@quiet_option
def evaluate_cmd(model_path: str, as_json: bool, quiet: bool, **kw: Any) -> None:
    """Accuracy, loss and per-class accuracy of a checkpoint on a split."""
    from kdcache.jobs.training import evaluate_checkpoint

    limit = kw.pop("limit")  # of the split asked for
    data_cfg = DataConfig(dataset=kw.pop("dataset"), data_dir=kw.pop("data_dir"), workers=kw.pop("workers"),
                          image_key=kw.pop("image_key"), label_key=kw.pop("label_key"),
                          skip_unreadable=kw.pop("skip_unreadable"),
                          **{"eval_limit" if kw["split"] == "test" else "limit": limit})
    try:
        r = evaluate_checkpoint(model_path, data_cfg=data_cfg, progress=not (quiet or as_json), **kw)
    except DataError as e:  # a folder not where it is looked for: name the one the checkpoint was trained on
        raise with_recorded_folder(e, data_cfg.data_dir, checkpoint_reading(model_path),
                                   f"the checkpoint {model_path}") from None
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    if not quiet:
        width = max(len(n) for n in r["per_class_accuracy"])
        for name, acc in r["per_class_accuracy"].items():
            click.echo(f"  {name:<{width}}  {acc:.4f}" if acc is not None else f"  {name:<{width}}  -")
    summary(quiet, f"{r['arch']} on {r['dataset']}/{r['split']} ({r['num_samples']} samples): "
                   f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}")


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _ran(r: dict[str, Any], epochs: int) -> str:
    """'10 epochs', or for a resumed run '20 epochs (resumed from epoch 9)'."""
    start = r.get("resumed_from_epoch")
    return _epochs(epochs) + ("" if start is None else f" (resumed from epoch {start})")


def _time(r: dict[str, Any]) -> str:
    """' in 30s': the time of the epochs this process ran, named as such when the run resumed."""
    if r.get("resumed_from_epoch") is None:
        return f" in {r['seconds']:.0f}s"
    return f"; {_epochs(r['epochs_run'])} run now in {r['seconds']:.0f}s"
