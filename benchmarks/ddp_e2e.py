"""A whole `kdcache train-student`, 2 torchrun ranks vs 1 process: wall time, and where it goes.

    .venv/bin/python -m benchmarks.ddp_e2e --out benchmarks/ddp-e2e.json            # ~10 min on 2 quiet cores
    .venv/bin/python -m benchmarks.ddp_e2e --smoke --out /tmp/ddp-e2e.json          # ~1 min (tests/test_benchmarks.py)

The cache of the first --rows Fashion-MNIST training images is dumped once (an untrained
teacher-cnn: the speed is what is measured). Then, alternating, --repeats times each:

- one process: `python -m kdcache train-student --cache C --limit N --epochs E` (torch's own thread count);
- two ranks:   `OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m kdcache train-student ...`.

Each command's wall time is timed from outside (start-up, data loading and alignment, training, the
final evaluation, writing); the training loop's own time is the sum of the epochs' ``train_seconds``
(each epoch's evaluation excluded). Rows:
the whole command, 2 ranks / 1 process (target <= 0.9x); the loop's speed-up (1 process loop / 2-rank
loop) against a bare DDP step's (benchmarks.ddp_step: one process at the full batch vs 2 DDP ranks
at half of it, no kdcache collectives), target >= 0.95x of it; and the rest (wall - loop) of each.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"wall": 0.9, "loop_vs_bare": 0.95}


def _env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train(ranks: int, cache: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Wall seconds of one whole train-student command and its loop's seconds (the checkpoint's train_seconds)."""
    flags = ["train-student", "--cache", str(cache), "--data-dir", args.data_dir, "--limit", str(args.rows),
             "--epochs", str(args.epochs), "--out", str(out), "--overwrite", "--eval-limit", str(args.eval_limit)]
    if ranks == 1:
        cmd, env = [sys.executable, "-m", "kdcache", *flags], _env(None)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "kdcache", *flags]
        env = _env(1)
    t0 = time.perf_counter()
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if job.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{job.stderr[-2000:]}")
    metrics = json.loads(out.with_name(out.stem + ".metrics.json").read_text())
    return {"wall": wall, "loop": sum(float(h["train_seconds"]) for h in metrics["history"])}


def bare_step(args: argparse.Namespace) -> dict[str, float]:
    """ms per step of a bare loop: one process at the full batch, 2 DDP ranks at half (benchmarks.ddp_step)."""
    out = {}
    for ranks in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "benchmarks.ddp_step", "--steps", str(args.steps)]
        job = subprocess.run(cmd, cwd=REPO, env=_env(1), capture_output=True, text=True, check=True)
        out[ranks] = float(re.search(r"DDP only ([0-9.]+) ms", job.stdout).group(1))
    return {"one_ms": out[1], "two_ms": out[2], "speedup": out[1] / out[2]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-limit", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=150, help="steps of the bare DDP step")
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--work", default=str(REPO / "runs" / "bench-ddp-e2e"))
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the tests")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.epochs, args.eval_limit, args.repeats, args.steps = 2048, 1, 500, 1, 10
    from benchmarks.folder import cpu_model
    from kdcache.config import DataConfig, DumpConfig, RunOptions
    from kdcache.jobs.dump import dump_logits
    from kdcache.train.checkpoint import model_config, save_checkpoint
    from kdcache.train.models import build_model
    from kdcache.data.datasets import load_dataset

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = load_dataset("fashion-mnist", "train", args.data_dir, limit=1).info
    teacher = save_checkpoint(work / "teacher.pt", build_model("teacher-cnn"), model_config("teacher-cnn", info),
                              overwrite=True)
    cache = work / f"train-{args.rows}.h5"
    dump_logits(teacher, cache, data_cfg=DataConfig(data_dir=args.data_dir, limit=args.rows),
                dump=DumpConfig(device="cpu"), run=RunOptions(reuse=True))
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for r in range(args.repeats):
        for ranks in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate which goes first
            runs[ranks].append(train(ranks, cache, work / f"student-{ranks}.pt", args))
            print(f"{ranks} rank(s): {runs[ranks][-1]}", file=sys.stderr, flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "loop")} for k, v in runs.items()}
    bare = bare_step(args)
    loop_speedup = med[1]["loop"] / med[2]["loop"]
    result = {
        "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "rows": args.rows, "epochs": args.epochs,
        "eval_limit": args.eval_limit, "repeats": args.repeats, "runs": {str(k): v for k, v in runs.items()},
        "median": {str(k): v for k, v in med.items()},
        "wall_ratio": med[2]["wall"] / med[1]["wall"], "wall_target": TARGETS["wall"],
        "loop_speedup": loop_speedup, "bare_step": bare, "loop_vs_bare": loop_speedup / bare["speedup"],
        "loop_vs_bare_target": TARGETS["loop_vs_bare"],
        "rest_seconds": {str(k): v["wall"] - v["loop"] for k, v in med.items()},
    }
    result["met"] = {"wall": result["wall_ratio"] <= TARGETS["wall"],
                     "loop_vs_bare": result["loop_vs_bare"] >= TARGETS["loop_vs_bare"]}
    print(json.dumps({k: result[k] for k in ("wall_ratio", "loop_speedup", "loop_vs_bare", "rest_seconds", "met")}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
