"""Commands that make and check caches: dump-logits, info, verify."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from kdcache.cli.group import main, summary
from kdcache.cli.options import (
    AUGMENT_HELP,
    DATASET_HELP,
    PRECISION_HELP,
    config_from,
    precision_note,
    quiet_option,
    read_options,
    teacher_factory_options,
)
from kdcache.config import (
    DEFAULT_DATA_DIR,
    DEVICES,
    DUMP_BATCH_SIZE,
    DUMP_PRECISION,
    LOGIT_DTYPES,
    PRECISIONS,
    SPLITS,
    VERIFY_SAMPLE,
    VIEW_SEED,
    DataConfig,
    DumpConfig,
    RunOptions,
    ViewConfig,
)
from kdcache.errors import ConfigError, DataError
from kdcache.files import format_bytes
from kdcache.jobs.recorded import checkpoint_reading, with_recorded_folder


@main.command("dump-logits")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="Teacher checkpoint (kdcache).")
@teacher_factory_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Cache file to write (.h5).")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--dataset", default=None, help="Dataset (default: the teacher's). " + DATASET_HELP)
@click.option("--dataset-factory", default=None, metavar="MODULE:FUNCTION",
              help="Your own data: a function returning a map-style torch Dataset of (image, label) items, e.g. a "
                   "torchvision ImageFolder with transform Resize+CenterCrop+PILToTensor (instead of --dataset).")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples of the split.")
@click.option("--arch", default=None, help="Refuse a teacher checkpoint of any other architecture.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DUMP_BATCH_SIZE, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=DUMP_PRECISION, show_default=True,
              help="Precision the teacher runs at; fp32 keeps cached logits exact. " + PRECISION_HELP)
@click.option("--dtype", type=click.Choice(LOGIT_DTYPES), default=None,
              help="Storage dtype of the logit values. Default: float32 for full logits (float16 halves them), "
                   "float16 for --top-k values (docs/cache-format.md gives both errors).")
@click.option("--top-k", "topk", type=int, default=None, metavar="K",
              help="Store only each row's K largest logits, their classes and three numbers about the rest (their "
                   "exact log-sum-exp at T=1 and T=2, their mean): for many classes, e.g. 1,000 classes at K=10 takes "
                   "76 bytes a row instead of 2,024 with float16 logits. Students train from it at any --T; what "
                   "that costs: docs/cache-format.md, Top-k caches.")
@click.option("--codec", default=None, metavar="lowrank[:rank=R][,dtype=D][,bits=B][,encoder=E]",
              help="Store low-rank codes: the teacher first runs over a sample of rows, a PCA basis is fitted on "
                   "them, then every row is coded with it (1,000 classes at rank 121, packed at 5 bits a component: "
                   "76 bytes a row). Without rank=R the smallest rank meeting --kl-budget. Codes minimise each row's "
                   "KL at T = 1, 2, 4 (encoder=kl) or project its logits (encoder=projection); dtype=int8|float16 "
                   "store 8 or 16 bits a component. docs/cache-format.md, Low-rank caches.")
@click.option("--kl-budget", type=float, default=None,
              help="With --codec lowrank: the largest mean KL(p_T || rebuilt_T) allowed at T = 1, 2, 4 (default 0.01).")
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
@read_options
@click.option("--overwrite", is_flag=True,
              help="Replace an existing cache (and, under torchrun, discard shards left by a different dump).")
@quiet_option
def dump_logits_cmd(teacher: str | None, out: str, quiet: bool, class_names_file: str | None,
                    dataset_factory: str | None, **kw: Any) -> None:
    """Run the teacher once over a split and write its raw logits (or their top-k) to an HDF5 cache.

    The teacher is a kdcache checkpoint (--teacher) or your own model
    (--teacher-factory MODULE:FUNCTION --weights FILE).

    \b
    On several processes or machines, with the same flags:
      torchrun --nproc_per_node N [--nnodes M --node_rank I --master_addr HOST] -m kdcache dump-logits ...
    Each rank writes its rows to a hidden shard next to --out; rank 0 assembles the one
    cache. Re-running the same command after a failure keeps every finished, valid shard.
    """
    from kdcache.jobs.dump import dump_logits
    from kdcache.train.teacher import TeacherSpec, read_class_names

    names = read_class_names(class_names_file) if class_names_file else None
    dataset = None
    if dataset_factory is not None:
        from kdcache.jobs.dump import dataset_from_factory

        if kw["dataset"] is not None:
            raise ConfigError("name the data once: --dataset NAME or --dataset-factory MODULE:FUNCTION")
        dataset = dataset_from_factory(dataset_factory)
    spec = TeacherSpec(checkpoint=teacher, factory=kw.pop("teacher_factory"), weights=kw.pop("weights"),
                       arch=kw.pop("arch"))
    dump, views = config_from(DumpConfig, {**kw, "class_names": names}), config_from(ViewConfig, kw, seed="view_seed")
    data_cfg = config_from(DataConfig, kw)
    try:
        r = dump_logits(spec, out, data_cfg=data_cfg, dataset=dataset, dump=dump, views=views,
                        run=RunOptions(overwrite=kw.pop("overwrite"), progress=not quiet))
    except DataError as e:  # a folder not where it is looked for: name the one the teacher was trained on
        raise with_recorded_folder(e, data_cfg.data_dir, checkpoint_reading(teacher), f"the teacher {teacher}") \
            from None
    shown = f" x {r['views']} views" if views.augment else ""
    agreement = r["teacher_label_agreement"]
    what = f"top-{r['topk']} of {r['num_classes']}" if r["topk"] else f"{r['num_classes']}"
    if "lowrank_rank" in r:
        what = f"rank-{r['lowrank_rank']} codes of {r['num_classes']}"
    ranks = (f"; {r['world_size']} ranks: {r['shards_written']} shard(s) written, {r['shards_reused']} reused, "
             f"assembled in {r['assemble_seconds']:.1f}s") if "world_size" in r else ""
    summary(quiet, f"cached {r['rows']}{shown} x {what} {r['dtype']} logits, teacher at "
                   f"{precision_note(dump.precision, dump.device)}, in {r['seconds']:.1f}s -> "
                   f"{r['cache']} ({format_bytes(r['bytes'])}, " + (
                       f"teacher agrees with labels on {agreement:.2%}" if agreement is not None
                       else "unlabelled rows") + f"{ranks})")


@main.command("info")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def info_cmd(cache: str, as_json: bool) -> None:
    """What to check before training from CACHE: teacher, data, classes, dtype, size, softness of the targets."""
    from kdcache.cache.info import cache_info, format_info

    r = cache_info(cache)
    click.echo(json.dumps(r, indent=2) if as_json else format_info(r))


@main.command("verify")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None, help="Compare rows with this dataset (default: the cache's). " + DATASET_HELP)
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Split to compare with (default: the cache's).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder holding the data; giving it (or --dataset) turns on the row-by-row comparison.")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False),
              help="Re-run this teacher checkpoint on --sample random rows and compare logits.")
@teacher_factory_options
@click.option("--sample", type=click.IntRange(min=1), default=VERIFY_SAMPLE, show_default=True, help="Rows the teacher re-runs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing the sampled rows.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (exit status as without).")
@quiet_option
def verify_cmd(cache: str, teacher: str | None, teacher_factory: str | None, weights: str | None, as_json: bool,
               quiet: bool, **kw: Any) -> None:
    """Check CACHE: schema, every chunk's checksum, finite logits, rows vs your data, logits vs the teacher.

    Prints one line per check (`ok`, `skip`, or `Error:` for a failure) and exits 0
    only if every check passes.
    """
    from kdcache.jobs.verify import verify_cache
    from kdcache.train.teacher import TeacherSpec

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


@main.command("compress")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--codec", default="lowrank", show_default=True, metavar="lowrank[:rank=R][,dtype=D][,bits=B][,encoder=E]",
              help="Low-rank codes: one PCA basis per cache, R numbers a row, each chosen to keep the row's KL at "
                   "T = 1, 2, 4 small (encoder=kl) or projected (encoder=projection), stored packed (B bits a "
                   "component on average, default 5, more where codes vary most), or as int8 with a per-row scale, "
                   "or float16 (dtype=). Without rank=R the smallest rank meeting --kl-budget on held-out rows.")
@click.option("--kl-budget", type=float, default=None,
              help="Largest mean KL(p_T || rebuilt_T), in nats, allowed at T = 1, 2 and 4 on held-out rows "
                   "(default: kdcache.cache.lowrank.DEFAULT_KL_BUDGET, 0.01).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Low-rank cache to write (.h5).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--allow-larger", is_flag=True,
              help="Write --out even where it comes out no smaller than CACHE (few classes or rows; refused without "
                   "this, before writing): to try a codec on a small cache.")
@quiet_option
def compress_cmd(cache: str, codec: str, kl_budget: float | None, out: str, overwrite: bool, allow_larger: bool,
                 quiet: bool) -> None:
    """Write CACHE (full logits) as a compact low-rank cache, read as logits at any T.

    At 1,000 classes a 20x smaller cache (rank 121, packed) trained students within 0.1 points of
    the full cache's, on a teacher whose logits are not low-rank too: docs/results/lowrank.md.

    \b
    e.g. kdcache compress full.h5 --out small.h5               # rank for the KL budget
         kdcache compress full.h5 --codec lowrank:rank=121 --out small.h5
         kdcache compress full.h5 --codec lowrank:rank=64,dtype=int8 --out small.h5
    """
    from kdcache.cache.lowrank import DEFAULT_KL_BUDGET, describe_bytes, parse_codec
    from kdcache.jobs.compress import compress_cache, describe_kl

    r = compress_cache(cache, out, codec=parse_codec(codec), overwrite=overwrite, allow_larger=allow_larger,
                       kl_budget=DEFAULT_KL_BUDGET if kl_budget is None else kl_budget)
    how = f"for KL budget {r['budget']:g}" if r["rank_chosen_by"] == "budget" else "as stated"
    summary(quiet, f"compressed {r['rows']} rows x {r['num_classes']} classes to rank {r['rank']} {r['code_dtype']} "
                   f"codes of {describe_bytes(r['row_bytes'])} ({how}; held-out {describe_kl(r['kl'])}) in {r['seconds']:.1f}s -> {r['cache']} "
                   f"({format_bytes(r['bytes'])}, {_size_change(r['source_bytes'], r['bytes'])})")


def _size_change(before: int, after: int) -> str:
    """"22.0x smaller", or "1.4x larger" where codes and basis outweigh the logits (few classes, few rows)."""
    if after <= before:
        return f"{before / max(after, 1):.1f}x smaller"
    return f"{after / max(before, 1):.1f}x larger: with this few classes or rows full logits are smaller"
