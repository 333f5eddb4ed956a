"""Commands that run many students: pipeline (the main job), sweep, report."""
from __future__ import annotations

from typing import Any

import click

from kdcache.cli.group import main, summary, warn
from kdcache.cli.options import (
    DATASET_HELP,
    config_from,
    precision_note,
    quiet_option,
    train_config,
    train_options,
)
from kdcache.config import (
    DEFAULT_ALPHA,
    DEFAULT_DATA_DIR,
    DEFAULT_DATASET,
    DEFAULT_TEMPERATURE,
    DEVICES,
    DUMP_PRECISION,
    PIPELINE_CACHE,
    PIPELINE_SCARCE_ALPHA,
    PIPELINE_SCARCE_EPOCHS,
    PIPELINE_TEACHER,
    PIPELINE_WORKDIR,
    STUDENT_ARCH,
    STUDENT_TRAIN,
    PipelineConfig,
)


@main.command("pipeline")
@click.option("--workdir", default=PIPELINE_WORKDIR, show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoints and metrics go.")
@click.option("--cache", "cache_path", default=PIPELINE_CACHE, show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--teacher-epochs", type=click.IntRange(min=1), default=PIPELINE_TEACHER.epochs, show_default=True)
@click.option("--student-epochs", type=click.IntRange(min=1), default=STUDENT_TRAIN.epochs, show_default=True)
@click.option("--T", "--temperature", "temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True)
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N training samples (quick runs).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="First N test samples (quick runs).")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scarce-labels", type=click.IntRange(min=0), default=None,
              help="The scarce-label rows: a student on the first N labels alone, and one on the same N labels plus "
                   "every other training image as unlabelled rows (0: skip them). Default: a twelfth of the "
                   "training samples (5,000 of Fashion-MNIST's 60,000; 83 of --limit 1000).")
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
    from kdcache.device import describe_precision, resolve_device, resolve_precision
    from kdcache.experiments.pipeline import format_table, run_pipeline
    from kdcache.files import write_json

    fresh, cfg = kw.pop("fresh"), config_from(PipelineConfig, kw)
    r = run_pipeline(cfg, fresh=fresh, progress=not quiet)
    for row in r["rows"]:
        warn(row, prefix=f"{row['stage']}: ")
    if json_out:
        write_json(json_out, r)
    click.echo(format_table(r))
    dev = resolve_device(cfg.device)
    summary(quiet, f"precision: teacher {describe_precision(PIPELINE_TEACHER.precision, dev)}, students "
                   f"{resolve_precision(STUDENT_TRAIN.precision, dev)}, "
                   f"dump-logits {resolve_precision(DUMP_PRECISION, dev)}")


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
@click.option("--labels-limit", "labels_limits", default=None,
              help="Comma-separated labelled counts N, e.g. 1000,5000 (a transfer-set sweep): per N, the baseline "
                   "trains on the first N samples alone and each (T, alpha) on every sample (or --limit) with only "
                   "the first N labelled.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep folder (table, checkpoints, report).")
@click.option("--arch", default=STUDENT_ARCH, show_default=True, help="Student architecture.")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help=DATASET_HELP)
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--eval-limit", type=click.IntRange(min=1), default=None,
              help="Evaluate on only the first N test samples (quick runs).")
@click.option("--val-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold out the last N training samples as a validation split; the report picks configurations on it.")
@train_options(STUDENT_TRAIN)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (default: torch's choice; 1 is fastest on cores shared with other jobs).")
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@quiet_option
def sweep_cmd(cache: str, temperatures: str, alphas: str, seeds: int, limits: str | None, labels_limits: str | None,
              out: str, arch: str,
              dataset: str, data_dir: str, eval_limit: int | None, val_size: int, threads: int | None, no_report: bool,
              quiet: bool,
              **kw: Any) -> None:
    """Train a student for every (limit, T, alpha, seed) plus the labels-only baseline, from one cache.

    Results are saved after every run to <out>/results.json and .csv; rerunning skips
    finished runs. Writes the report (`kdcache report`) at the end.
    """
    from kdcache.config import DataConfig
    from kdcache.experiments.sweep import SweepGrid, parse_numbers, run_sweep

    first = kw["seed"]  # --seed is the first of the --seeds seeds
    grid = SweepGrid(temperatures=parse_numbers(temperatures, "--T"), alphas=parse_numbers(alphas, "--alpha"),
                     seeds=tuple(range(first, first + seeds)),
                     limits=parse_numbers(limits, "--limit", int) if limits else (),
                     labels_limits=parse_numbers(labels_limits, "--labels-limit", int) if labels_limits else ())
    cfg = train_config(kw)
    data_cfg = DataConfig(dataset=dataset, data_dir=data_dir, eval_limit=eval_limit, val_size=val_size)
    if threads:  # a process setting, so the command's, not the sweep's: 1 is fastest on cores shared with other jobs
        import torch

        torch.set_num_threads(threads)
    r = run_sweep(out, cache, grid, arch=arch, data_cfg=data_cfg, cfg=cfg, progress=not quiet, report=not no_report)
    summary(quiet, f"sweep: {r['ran']} runs trained, {r['skipped']} already done, {r['total']} in all, at "
                   f"{precision_note(cfg.precision, cfg.device)}, in {r['seconds']:.0f}s -> {r['table']}"
                   + (f", report {r['report']['markdown']}" if "report" in r else ""))


@main.command("report")
@click.argument("sweep_dir", type=click.Path(file_okay=False))
@quiet_option
def report_cmd(sweep_dir: str, quiet: bool) -> None:
    """Write report.md and PNG figures (accuracy vs T, training curves) for a sweep folder."""
    from kdcache.experiments.report import write_report

    r = write_report(sweep_dir)
    summary(quiet, f"report -> {r['markdown']} ({r['accuracy_figure']}, {r['curves_figure']})")
