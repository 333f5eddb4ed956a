"""The kdcache command line: thin wrappers that parse options, call one library function,
and turn kdcache's named errors into one-line messages with exit status 1."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from .config import (CACHE_MEMORY_LIMIT_MB, DEFAULT_ALPHA, DEFAULT_TEMPERATURE, DEVICES, DUMP_BATCH_SIZE,
                     OPTIMIZERS, PIPELINE_SCARCE_ALPHA, PIPELINE_SCARCE_EPOCHS, PIPELINE_SCARCE_LABELS,
                     PIPELINE_TEACHER, PRECISIONS, SCHEDULES, STUDENT_ARCH, STUDENT_TRAIN, TEACHER_ARCH,
                     TEACHER_TRAIN, VIEW_SEED, TrainConfig)
from .errors import KDCacheError

AUGMENT_HELP = ("Augmentation policy: shift-flip (pad-and-crop shift + horizontal flip, small images) or crop-flip "
                "(random-resized crop + flip); settings as NAME:key=value,..., e.g. shift-flip:pad=4.")
DATASET_HELP = ("fashion-mnist, mnist, imagefolder (your images: --data-dir ROOT with ROOT/train/<class>/* and "
                "ROOT/test/<class>/*), or unlabelled (every image under --data-dir ROOT, no labels: a transfer set)")


DIST_COMMANDS = ("dump-logits", "train-teacher", "train-student")  # the commands torchrun can run on several ranks


class KDCacheGroup(click.Group):
    """Maps KDCacheError (and file-system errors) to `Error: <one line>` and exit 1, never a traceback.

    Under torchrun (WORLD_SIZE > 1) the command runs as one rank of the job (kdcache.dist):
    a failure on any rank ends every rank with exit status 1 and one `Error: rank R: ...`
    line for the whole job.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from .dist import launched

        if launched():
            return self._invoke_as_rank(ctx)
        try:
            return super().invoke(ctx)
        except KDCacheError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # permission denied, disk full, ... on an output path
            raise click.ClickException(_os_error(e)) from None

    def _invoke_as_rank(self, ctx: click.Context) -> Any:
        from .dist import RankFailed, Terminated, launch

        try:
            with launch(report=lambda line: click.echo(f"Error: {line}", err=True)):
                try:
                    return super().invoke(ctx)
                except click.exceptions.Exit as e:  # --help: every rank printed it
                    if e.exit_code:
                        raise KDCacheError(f"exit status {e.exit_code}") from None
                    return None
                except click.ClickException as e:  # a usage error: the same on every rank
                    raise KDCacheError(e.format_message()) from None
                except OSError as e:
                    raise KDCacheError(_os_error(e)) from None
        except RankFailed:  # reported once for the job already
            raise click.exceptions.Exit(1) from None
        except Terminated:  # torchrun stopped this worker because another one failed
            raise click.exceptions.Exit(143) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        from .dist import launched

        name, cmd, rest = super().resolve_command(ctx, args)
        if launched() and name not in DIST_COMMANDS:
            raise KDCacheError(f"`kdcache {name}` runs in one process: run it without torchrun (torchrun runs "
                               f"{', '.join(DIST_COMMANDS)})")
        return name, cmd, rest


def _os_error(e: OSError) -> str:
    return f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")


def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary line.")(f)


def data_options(f: Callable) -> Callable:
    f = click.option("--download", is_flag=True, help="Download the dataset with torchvision if missing (needs internet).")(f)
    f = click.option("--eval-limit", type=click.IntRange(min=1), default=None,
                     help="Evaluate on only the first N test samples (quick runs).")(f)
    f = click.option("--val-size", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Hold out N training samples as a validation split (the last N; for imagefolder, each class's last in proportion; never trained on; "
                          "evaluated every epoch, for choosing configurations).")(f)
    f = click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N training samples (after --val-size are held out).")(f)
    f = click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
                     help="Folder that holds the datasets.")(f)
    return click.option("--dataset", default="fashion-mnist", show_default=True, help=DATASET_HELP)(f)


def train_options(defaults: TrainConfig) -> Callable:
    """Options that map onto TrainConfig fields, with the role's defaults (kdcache.config)."""
    def deco(f: Callable) -> Callable:
        d = defaults
        opts = [
            click.option("--epochs", type=click.IntRange(min=1), default=d.epochs, show_default=True),
            click.option("--batch-size", type=click.IntRange(min=1), default=d.batch_size, show_default=True,
                         help="Global batch size (split across ranks under torchrun)."),
            click.option("--lr", type=float, default=d.lr, show_default=True, help="Peak learning rate."),
            click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=d.optimizer, show_default=True),
            click.option("--schedule", type=click.Choice(SCHEDULES), default=d.schedule, show_default=True),
            click.option("--weight-decay", type=float, default=d.weight_decay, show_default=True),
            click.option("--seed", type=int, default=d.seed, show_default=True),
            click.option("--device", type=click.Choice(DEVICES), default=d.device, show_default=True),
            click.option("--precision", type=click.Choice(PRECISIONS), default=d.precision,
                         show_default=True, help="bf16 = autocast + channels_last (much faster on CPUs with AVX-512 bf16)."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def _train_config(kw: dict[str, Any]):
    from .config import TrainConfig

    keys = ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "seed", "device", "precision")
    return TrainConfig(**{k: kw.pop(k) for k in keys})


def _data_config(kw: dict[str, Any]):
    from .config import DataConfig

    return DataConfig(dataset=kw.pop("dataset"), data_dir=kw.pop("data_dir"), limit=kw.pop("limit"),
                      eval_limit=kw.pop("eval_limit"), download=kw.pop("download"), val_size=kw.pop("val_size"))


def teacher_factory_options(f: Callable) -> Callable:
    """A team's own teacher: --teacher-factory package.module:function + --weights state_dict.pt."""
    f = click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="State dict for --teacher-factory (torch.save(model.state_dict()); loaded weights_only).")(f)
    return click.option("--teacher-factory", default=None, metavar="MODULE:FUNCTION",
                        help="Your own teacher: a function returning a torch.nn.Module (gets num_classes, "
                             "in_channels, image_size if it takes them). Use with --weights.")(f)


def summary(quiet: bool, text: str) -> None:
    from .dist import current

    if not quiet and current().is_main:  # under torchrun, rank 0 speaks for the job
        click.echo(text)


@click.group(cls=KDCacheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdcache")
def main() -> None:
    """Knowledge distillation from an offline cache of teacher logits.

    Train a teacher, dump its raw logits once, then train students at any
    temperature and alpha from the cache, without the teacher.
    """


@main.command("train-teacher")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--arch", default=TEACHER_ARCH, show_default=True, help="Model architecture.")
@data_options
@train_options(TEACHER_TRAIN)
@click.option("--augment", default=None, metavar="POLICY",
              help=AUGMENT_HELP + " Fresh views every epoch, so the teacher learns the views it will label.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@quiet_option
def train_teacher_cmd(out: str, arch: str, augment: str | None, overwrite: bool, quiet: bool, **kw: Any) -> None:
    """Train the teacher on hard labels; writes a checkpoint and <out>.metrics.json.

    Data-parallel with `torchrun --nproc_per_node N -m kdcache train-teacher ...` (DDP;
    --batch-size stays the global batch, so the same flags give the same optimisation).
    """
    from .jobs import train_teacher

    cfg, data_cfg = _train_config(kw), _data_config(kw)
    r = train_teacher(out, arch=arch, data_cfg=data_cfg, cfg=cfg, overwrite=overwrite, progress=not quiet,
                      augment=augment)
    summary(quiet, f"teacher {arch}: test accuracy {r['test']['accuracy']:.4f}, {cfg.epochs} epochs in "
                   f"{r['seconds']:.0f}s -> {r['checkpoint']} (metrics {r['metrics']})")


@main.command("dump-logits")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="Teacher checkpoint (kdcache).")
@teacher_factory_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Cache file to write (.h5).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--dataset", default=None, help="Dataset (default: the teacher's). " + DATASET_HELP)
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples of the split.")
@click.option("--arch", default=None, help="Refuse a teacher checkpoint of any other architecture.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DUMP_BATCH_SIZE, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Precision the teacher runs at; fp32 keeps cached logits exact.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default=None,
              help="Storage dtype of the logit values. Default: float32 for full logits (float16 halves them), "
                   "float16 for --top-k values (docs/cache-format.md gives both errors).")
@click.option("--top-k", "topk", type=int, default=None, metavar="K",
              help="Store only each row's K largest logits, their classes and three numbers about the rest (their "
                   "exact log-sum-exp at T=1 and T=2, their mean): for many classes, e.g. 1,000 classes at K=10 takes "
                   "76 bytes a row instead of 2,024 with float16 logits. Students train from it at any --T; what "
                   "that costs: docs/cache-format.md, Top-k caches.")
@click.option("--views", type=click.IntRange(min=1), default=1, show_default=True,
              help="Augmented views stored per image (with --augment): each view's parameters and the teacher's logits.")
@click.option("--augment", default=None, metavar="POLICY", help=AUGMENT_HELP)
@click.option("--include-original", is_flag=True, help="View 0 of each image is the un-augmented image.")
@click.option("--view-seed", type=int, default=VIEW_SEED, show_default=True,
              help="Seed of the views' parameters (a pure function of it, the view number and the dataset index).")
@click.option("--no-labels", "ignore_labels", is_flag=True,
              help="Ignore the split's labels: every row is stored as unlabelled (-1), ids and fingerprint hash -1 "
                   "(a transfer set made from a labelled dataset).")
@click.option("--class-names", "class_names_file", default=None, type=click.Path(dir_okay=False),
              help="Text file, one class name per line in logit order: the classes of a --teacher-factory teacher "
                   "over unlabelled images (a kdcache checkpoint names its own).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing cache (and, under torchrun, discard shards left by a different dump).")
@quiet_option
def dump_logits_cmd(teacher: str | None, out: str, quiet: bool, class_names_file: str | None, **kw: Any) -> None:
    """Run the teacher once over a split and write its raw logits (or their top-k) to an HDF5 cache.

    The teacher is a kdcache checkpoint (--teacher) or your own model
    (--teacher-factory MODULE:FUNCTION --weights FILE).

    \b
    On several processes or machines, with the same flags:
      torchrun --nproc_per_node N [--nnodes M --node_rank I --master_addr HOST] -m kdcache dump-logits ...
    Each rank writes its rows to a hidden shard next to --out; rank 0 assembles the one
    cache. Re-running the same command after a failure keeps every finished, valid shard.
    """
    from .dump import dump_logits
    from .teacher import read_class_names

    names = read_class_names(class_names_file) if class_names_file else None
    r = dump_logits(teacher, out, progress=not quiet, class_names=names, **kw)
    views = f" x {r['views']} views" if kw.get("augment") else ""
    agreement = r["teacher_label_agreement"]
    what = f"top-{r['topk']} of {r['num_classes']}" if r["topk"] else f"{r['num_classes']}"
    ranks = (f"; {r['world_size']} ranks: {r['shards_written']} shard(s) written, {r['shards_reused']} reused, "
             f"assembled in {r['assemble_seconds']:.1f}s") if "world_size" in r else ""
    summary(quiet, f"cached {r['rows']}{views} x {what} {r['dtype']} logits in {r['seconds']:.1f}s -> "
                   f"{r['cache']} ({r['bytes'] / 1e6:.1f} MB, " + (
                       f"teacher agrees with labels on {agreement:.2%}" if agreement is not None
                       else "unlabelled rows") + f"{ranks})")


@main.command("train-student")
@click.option("--cache", "caches", multiple=True, type=click.Path(dir_okay=False),
              help="Logit cache of the training split (from dump-logits). Not needed with --alpha 0.")
@click.option("--T", "--temperature", "temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True,
              help="Softmax temperature T > 0 for the soft targets.")
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
              help="Weight of the soft loss in [0, 1]; 0 = hard labels only.")
@click.option("--ensemble", type=click.Choice(["mean-probs", "mean-logits"]), default="mean-probs", show_default=True,
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
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@quiet_option
def train_student_cmd(caches: tuple[str, ...], temperature: float, alpha: float, ensemble: str, out: str, arch: str,
                      student_factory: str | None, student_kwargs: str | None, cache_memory_limit_mb: float,
                      cache_workers: int, augment: str | None, allow_inconsistent: bool,
                      cache_views: int | None, labels_limit: int | None, transfer: tuple[str, ...],
                      transfer_data_dirs: tuple[str, ...], overwrite: bool, quiet: bool, **kw: Any) -> None:
    """Train a student from images + cached teacher logits (the teacher is never loaded).

    A cache with augmentation views (dump-logits --views K --augment POLICY) is replayed:
    each epoch every image shows one of its stored views and learns that view's logits.
    Rows without labels (--labels-limit, --transfer) get the soft term only; an epoch is
    one pass over every row, labelled or not. The student is --arch, or your own model:
    --student-factory MODULE:FUNCTION [--student-kwargs JSON].

    Data-parallel with `torchrun --nproc_per_node N -m kdcache train-student ...` (DDP;
    --batch-size stays the global batch, so the same flags give the same optimisation).
    """
    from .jobs import train_student
    from .models import parse_kwargs

    cfg, data_cfg = _train_config(kw), _data_config(kw)
    r = train_student(out, caches=caches, temperature=temperature, alpha=alpha, arch=arch, data_cfg=data_cfg,
                      cfg=cfg, ensemble=ensemble, overwrite=overwrite, progress=not quiet,
                      cache_memory_limit_mb=cache_memory_limit_mb, cache_workers=cache_workers, augment=augment,
                      allow_inconsistent=allow_inconsistent, cache_views=cache_views, labels_limit=labels_limit,
                      transfer=transfer, transfer_data_dirs=transfer_data_dirs, student_factory=student_factory,
                      student_kwargs=parse_kwargs(student_kwargs))
    c = r["config"]
    rows = f", {c['num_labelled']} labelled + {c['num_unlabelled']} unlabelled rows" if c["num_unlabelled"] else ""
    summary(quiet, f"student {c['arch']} (T={temperature:g}, alpha={alpha:g}{rows}): test accuracy "
                   f"{r['test']['accuracy']:.4f}, {cfg.epochs} epochs in {r['seconds']:.0f}s -> {r['checkpoint']}")


@main.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--dataset", default=None, help="Dataset (default: the checkpoint's).")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--student-factory", default=None, metavar="MODULE:FUNCTION",
              help="For a checkpoint made with train-student --student-factory: name that factory again "
                   "(kdcache never imports or calls code just because a checkpoint names it).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@quiet_option
def evaluate_cmd(model_path: str, as_json: bool, quiet: bool, **kw: Any) -> None:
    """Accuracy, loss and per-class accuracy of a checkpoint on a split."""
    from .jobs import evaluate_checkpoint

    r = evaluate_checkpoint(model_path, progress=not (quiet or as_json), **kw)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    if not quiet:
        width = max(len(n) for n in r["per_class_accuracy"])
        for name, acc in r["per_class_accuracy"].items():
            click.echo(f"  {name:<{width}}  {acc:.4f}" if acc is not None else f"  {name:<{width}}  -")
    summary(quiet, f"{r['arch']} on {r['dataset']}/{r['split']} ({r['num_samples']} samples): "
                   f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}")


@main.command("info")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def info_cmd(cache: str, as_json: bool) -> None:
    """What to check before training from CACHE: teacher, data, classes, dtype, size, softness of the targets."""
    from .info import cache_info, format_info

    r = cache_info(cache)
    click.echo(json.dumps(r, indent=2) if as_json else format_info(r))


@main.command("verify")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None, help="Compare rows with this dataset (default: the cache's). " + DATASET_HELP)
@click.option("--split", type=click.Choice(["train", "test"]), default=None, help="Split to compare with (default: the cache's).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder holding the data; giving it (or --dataset) turns on the row-by-row comparison.")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False),
              help="Re-run this teacher checkpoint on --sample random rows and compare logits.")
@teacher_factory_options
@click.option("--sample", type=click.IntRange(min=1), default=256, show_default=True, help="Rows the teacher re-runs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing the sampled rows.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (exit status as without).")
@quiet_option
def verify_cmd(cache: str, teacher: str | None, teacher_factory: str | None, weights: str | None, as_json: bool,
               quiet: bool, **kw: Any) -> None:
    """Check CACHE: schema, every chunk's checksum, finite logits, rows vs your data, logits vs the teacher.

    Prints one line per check (`ok`, `skip`, or `Error:` for a failure) and exits 0
    only if every check passes.
    """
    from .teacher import TeacherSpec
    from .verify import verify_cache

    spec = None
    if teacher is not None or teacher_factory is not None or weights is not None:
        spec = TeacherSpec(checkpoint=teacher, factory=teacher_factory, weights=weights)
    r = verify_cache(cache, teacher=spec, **kw)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
    for c in r.checks:
        if c.status == "fail" and not as_json:
            click.echo(f"Error: {c.line()}", err=True)
        elif not (quiet or as_json):
            click.echo(f"{c.status:<5} {c.line()}")
    if r.ok:
        summary(quiet or as_json, f"{cache}: verified, {sum(c.status == 'ok' for c in r.checks)} checks passed")
    else:
        sys.exit(1)


@main.command("pipeline")
@click.option("--workdir", default="runs/pipeline", show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoints and metrics go.")
@click.option("--cache", "cache_path", default="data/caches/fmnist-train.h5", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--teacher-epochs", type=click.IntRange(min=1), default=PIPELINE_TEACHER.epochs, show_default=True)
@click.option("--student-epochs", type=click.IntRange(min=1), default=STUDENT_TRAIN.epochs, show_default=True)
@click.option("--T", "--temperature", "temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True)
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N training samples (quick runs).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="First N test samples (quick runs).")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scarce-labels", type=click.IntRange(min=0), default=PIPELINE_SCARCE_LABELS, show_default=True,
              help="The scarce-label rows: a student on the first N labels alone, and one on the same N labels plus "
                   "every other training image as unlabelled rows (0: skip them).")
@click.option("--scarce-epochs", type=click.IntRange(min=1), default=PIPELINE_SCARCE_EPOCHS, show_default=True,
              help="Epochs of the student on the N labels alone (the other students: --student-epochs).")
@click.option("--scarce-alpha", type=float, default=PIPELINE_SCARCE_ALPHA, show_default=True,
              help="alpha of the student on N labels + unlabelled rows.")
@click.option("--fresh", is_flag=True, help="Redo every stage, even those whose outputs exist.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the table as JSON.")
@quiet_option
def pipeline_cmd(quiet: bool, json_out: str | None, **kw: Any) -> None:
    """The main job: teacher -> cache -> baseline and distilled students, then the scarce-label case
    (N labels alone vs the same N labels + the rest of the cache as unlabelled rows), with a results table."""
    from .files import write_json
    from .pipeline import format_table, run_pipeline

    r = run_pipeline(progress=not quiet, **kw)
    if json_out:
        write_json(json_out, r)
    click.echo(format_table(r))


@main.command("sweep")
@click.option("--cache", required=True, type=click.Path(dir_okay=False), help="Logit cache of the training split.")
@click.option("--T", "--temperature", "temperatures", default="1,2,4,8,16", show_default=True,
              help="Comma-separated temperatures, each > 0.")
@click.option("--alpha", "alphas", default="0.5,0.9", show_default=True,
              help="Comma-separated soft-loss weights in (0, 1]; 1 = soft targets only. The alpha 0 baseline is always run.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per configuration: --seed, --seed+1, ..., --seed+N-1.")
@click.option("--limit", "limits", default=None, help="Comma-separated numbers of labelled training samples "
              "(first N), e.g. 5000,60000. Default: every row of the cache.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep folder (table, checkpoints, report).")
@click.option("--arch", default=STUDENT_ARCH, show_default=True, help="Student architecture.")
@click.option("--dataset", default="fashion-mnist", show_default=True, help=DATASET_HELP)
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option("--eval-limit", type=click.IntRange(min=1), default=None,
              help="Evaluate on only the first N test samples (quick runs).")
@click.option("--val-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold out the last N training samples as a validation split; the report picks configurations on it.")
@train_options(STUDENT_TRAIN)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (default: torch's choice; 1 is fastest on cores shared with other jobs).")
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@quiet_option
def sweep_cmd(cache: str, temperatures: str, alphas: str, seeds: int, limits: str | None, out: str, arch: str,
              dataset: str, data_dir: str, eval_limit: int | None, val_size: int, threads: int | None, no_report: bool,
              quiet: bool,
              **kw: Any) -> None:
    """Train a student for every (limit, T, alpha, seed) plus the labels-only baseline, from one cache.

    Results are saved after every run to <out>/results.json and .csv; rerunning skips
    finished runs. Writes the report (`kdcache report`) at the end.
    """
    from .config import DataConfig
    from .sweep import SweepGrid, parse_numbers, run_sweep

    first = kw["seed"]  # --seed is the first of the --seeds seeds
    grid = SweepGrid(temperatures=parse_numbers(temperatures, "--T"), alphas=parse_numbers(alphas, "--alpha"),
                     seeds=tuple(range(first, first + seeds)),
                     limits=parse_numbers(limits, "--limit", int) if limits else ())
    cfg = _train_config(kw)
    data_cfg = DataConfig(dataset=dataset, data_dir=data_dir, eval_limit=eval_limit, val_size=val_size)
    r = run_sweep(out, cache, grid, arch=arch, data_cfg=data_cfg, cfg=cfg, progress=not quiet, report=not no_report,
                  threads=threads)
    summary(quiet, f"sweep: {r['ran']} runs trained, {r['skipped']} already done, {r['total']} in all, "
                   f"in {r['seconds']:.0f}s -> {r['table']}" + (f", report {r['report']['markdown']}" if "report" in r else ""))


@main.command("report")
@click.argument("sweep_dir", type=click.Path(file_okay=False))
@quiet_option
def report_cmd(sweep_dir: str, quiet: bool) -> None:
    """Write report.md and PNG figures (accuracy vs T, training curves) for a sweep folder."""
    from .report import write_report

    r = write_report(sweep_dir)
    summary(quiet, f"report -> {r['markdown']} ({r['accuracy_figure']}, {r['curves_figure']})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
