"""Scaling out on torchrun, measured in one run: sharded dumps and DDP students, 2 ranks vs 1.

    .venv/bin/python -m benchmarks.dist --out benchmarks/dist.json        # ~8 min on 2 quiet cores
    .venv/bin/python -m benchmarks.dist --smoke --out /tmp/dist.json      # ~40 s (tests/test_benchmarks.py)

Rows (targets from issue 12); every rank runs on 1 torch thread (OMP_NUM_THREADS=1):
1. dump-logits throughput, 2 ranks vs 1 (teacher-cnn over the first --rows Fashion-MNIST
   training images, --batch-size 1000 per rank)                                             >= 1.7x
   and the assembly step's share of the 2-rank dump's time                                  <= 5%
2. DDP student epoch, samples/s, 2 ranks vs 1 at the same global batch (128)                >= 1.5x
3. DDP student's test accuracy minus the one-process student's, same settings
   (mean over --repeats seeds)                                                               |diff| <= 0.3 pp

One rank is a plain process (what `torchrun --nproc_per_node 1` runs too); two ranks are a
`torchrun --standalone --nproc_per_node 2` job; each job dumps the cache, then trains a
student from it. The times are the jobs' own, not start-up:
the dump from the moment every rank is ready to the verified cache (shards, assembly and
its check included), the student's training time per epoch (median over epochs; the
evaluation is excluded). The 1- and 2-rank jobs alternate, so drift hits both alike. The
1- and 2-rank caches are also compared: their content hashes must be equal (bit for bit).
Without --teacher an untrained teacher-cnn is timed (same speed as a trained one); give
--teacher runs/pipeline/teacher.pt for a meaningful student accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdcache.config import DataConfig, DistillConfig, DumpConfig, RunOptions

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"dump": 1.7, "assembly_share": 0.05, "student": 1.5, "accuracy_pp": 0.3}


# -- the worker: one job, run as a plain process or as every rank of a torchrun job --------------------


def worker(argv: list[str]) -> None:
    """One job: dump the cache, then train a student from it (plain process, or every rank under torchrun)."""
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000)
    a = p.parse_args(argv)
    import torch

    from kdcache import dist
    from kdcache.cache import read_meta
    from kdcache.config import STUDENT_TRAIN
    from kdcache.files import write_json
    from kdcache.jobs.dump import dump_logits
    from kdcache.jobs.training import train_student

    torch.set_num_threads(1)
    with dist.launch(report=lambda line: print(f"Error: {line}", file=sys.stderr, flush=True)) as ctx:
        d = dump_logits(a.teacher, a.cache, dump=DumpConfig(batch_size=a.batch_size, device="cpu"), data_cfg=DataConfig(data_dir=a.data_dir, limit=a.limit), run=RunOptions(overwrite=True))
        s = train_student(a.student, data_cfg=DataConfig(data_dir=a.data_dir, limit=a.limit), cfg=replace(STUDENT_TRAIN, epochs=a.epochs, seed=a.seed, device="cpu"), distill=DistillConfig(caches=[a.cache]), run=RunOptions(overwrite=True))
        if ctx.is_main:
            write_json(a.json, {"ranks": ctx.world_size, "rows": d["rows"], "dump_seconds": d["seconds"],
                                "assemble_seconds": d.get("assemble_seconds"),
                                "content_sha256": read_meta(a.cache).content_sha256,
                                "samples": s["config"]["num_train_samples"], "test_accuracy": s["test"]["accuracy"],
                                "epoch_seconds": [h["train_seconds"] for h in s["history"]]})


def job(ranks: int, work: Path, log, **options: Any) -> dict[str, Any]:
    """Run one worker job on ``ranks`` processes; returns its summary."""
    out_json = work / f"job-{ranks}-{time.monotonic_ns()}.json"
    args = ["-m", "benchmarks.dist", "worker", "--json", str(out_json)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(ranks)]
    shown = "python" if ranks == 1 else f"torchrun --standalone --nproc_per_node {ranks}"
    log(f"$ OMP_NUM_THREADS=1 {shown} {' '.join(args)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"job on {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    result = json.loads(out_json.read_text())
    out_json.unlink()
    return result


def measure(args: argparse.Namespace, work: Path, teacher: Path, log) -> list[dict[str, Any]]:
    """``--repeats`` pairs of jobs (1 rank, 2 ranks; the order alternates), repeat i training with seed + i."""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(args.repeats):
        for ranks in ((1, 2) if i % 2 == 0 else (2, 1)):
            runs[ranks].append(job(ranks, work, log, cache=work / f"cache-{ranks}.h5",
                                   student=work / f"student-{ranks}.pt", data_dir=args.data_dir, limit=args.rows,
                                   teacher=teacher, epochs=args.epochs, seed=args.seed + i,
                                   batch_size=args.batch_size))
    dump = {k: statistics.median(x["dump_seconds"] for x in runs[k]) for k in (1, 2)}
    share = statistics.median(x["assemble_seconds"] / x["dump_seconds"] for x in runs[2])
    epoch = {k: statistics.median(s for x in runs[k] for s in x["epoch_seconds"]) for k in (1, 2)}
    acc = {k: [x["test_accuracy"] for x in runs[k]] for k in (1, 2)}
    samples = runs[1][0]["samples"]
    dump_speedup, student_speedup = dump[1] / dump[2], epoch[1] / epoch[2]  # same work: throughput ratios
    diff_pp = 100 * (statistics.mean(acc[2]) - statistics.mean(acc[1]))
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    return [
        {"row": "1. dump-logits, 2 ranks vs 1", "rows": args.rows, "one_rank_s": dump[1], "two_ranks_s": dump[2],
         "one_rank_rows_per_s": args.rows / dump[1], "two_ranks_rows_per_s": args.rows / dump[2],
         "speedup": dump_speedup, "assembly_share": share,
         "bit_identical": all(x["content_sha256"] == runs[1][0]["content_sha256"] for k in (1, 2) for x in runs[k]),
         "target": f">= {TARGETS['dump']}x, assembly <= {TARGETS['assembly_share']:.0%}",
         "met": dump_speedup >= TARGETS["dump"] and share <= TARGETS["assembly_share"]},
        {"row": "2. DDP student epoch, 2 ranks vs 1, global batch 128", "samples": samples,
         "one_rank_epoch_s": epoch[1], "two_ranks_epoch_s": epoch[2],
         "one_rank_samples_per_s": samples / epoch[1], "two_ranks_samples_per_s": samples / epoch[2],
         "speedup": student_speedup, "target": f">= {TARGETS['student']}x", "met": student_speedup >= TARGETS["student"]},
        {"row": "3. DDP student test accuracy vs one process", "seeds": args.repeats, "epochs": args.epochs,
         "one_rank_accuracy": statistics.mean(acc[1]), "one_rank_std": sd(acc[1]),
         "two_ranks_accuracy": statistics.mean(acc[2]), "two_ranks_std": sd(acc[2]), "diff_pp": diff_pp,
         "target": f"|diff| <= {TARGETS['accuracy_pp']} pp", "met": abs(diff_pp) <= TARGETS["accuracy_pp"],
         "runs": runs}]


def format_table(result: dict[str, Any]) -> str:
    lines = ["| measurement | 1 rank | 2 ranks | ratio / difference | target | met |", "|---|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        if r["row"].startswith("1."):
            lines.append(f"| {r['row']} ({r['rows']:,} rows) | {r['one_rank_rows_per_s']:,.0f} rows/s | "
                         f"{r['two_ranks_rows_per_s']:,.0f} rows/s | {r['speedup']:.2f}x (assembly "
                         f"{r['assembly_share']:.1%}; bit-identical: {r['bit_identical']}) | {r['target']} | "
                         f"{'yes' if r['met'] else 'no'} |")
        elif r["row"].startswith("2."):
            lines.append(f"| {r['row']} ({r['samples']:,} samples) | {r['one_rank_samples_per_s']:,.0f} samples/s | "
                         f"{r['two_ranks_samples_per_s']:,.0f} samples/s | {r['speedup']:.2f}x | {r['target']} | "
                         f"{'yes' if r['met'] else 'no'} |")
        else:
            lines.append(f"| {r['row']} ({r['seeds']} seeds, {r['epochs']} epochs) | "
                         f"{r['one_rank_accuracy']:.2%} ± {r['one_rank_std']:.2%} | "
                         f"{r['two_ranks_accuracy']:.2%} ± {r['two_ranks_std']:.2%} | {r['diff_pp']:+.2f} pp | "
                         f"{r['target']} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        worker(argv[1:])
        return {}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="Write the results as JSON here.")
    p.add_argument("--workdir", default="runs/bench-dist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--teacher", default=None, help="Teacher checkpoint (default: an untrained teacher-cnn).")
    p.add_argument("--rows", type=int, default=20_000, help="Training images dumped (and the student's samples).")
    p.add_argument("--batch-size", type=int, default=1000, help="Dump batch size (each rank's batches).")
    p.add_argument("--repeats", type=int, default=3, help="Jobs per rank count (each dumps, then trains seed + i).")
    p.add_argument("--epochs", type=int, default=10, help="Student epochs.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the first repeat's student.")
    p.add_argument("--smoke", action="store_true", help="Tiny: 1,000 rows, dump batch 250, 1 repeat, 1 epoch.")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.batch_size, args.repeats, args.epochs = 1000, 250, 1, 1
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    teacher = _teacher(args, work)
    rows = measure(args, work, teacher, log)
    import torch

    result = {"torch": str(torch.__version__), "cpus": os.cpu_count(), "threads_per_rank": 1,
              "teacher": str(teacher), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not args.quiet:
        print(format_table(result))
    return result


def _teacher(args: argparse.Namespace, work: Path) -> Path:
    from benchmarks.run import make_teacher
    from kdcache.data.datasets import load_dataset

    return make_teacher(work / "teacher-untrained.pt", load_dataset("fashion-mnist", "train", args.data_dir, 256),
                        args.teacher)


if __name__ == "__main__":
    main()
