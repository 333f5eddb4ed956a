"""Is this checkout slower than an older one? A cached-KD student epoch on Fashion-MNIST, two checkouts alternating.

    git worktree add /tmp/kdcache-old 8aa8403          # the revision to compare against
    .venv/bin/python -m benchmarks.revisions --old /tmp/kdcache-old --out benchmarks/revisions.json

Each repeat runs one child process per checkout (``PYTHONPATH`` = that checkout, the same venv), in
alternating order; a child loads the first --rows Fashion-MNIST training images, makes seeded random
teacher logits for them and times one epoch of student-cnn with kd_loss (T = 4, alpha = 0.5), batch
128, through that checkout's own batch source (``MemoryBatches`` before issue 23, the
CachedDataset + make_loader path after it). The ratio is new / old of the medians (target <= 1.03x).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
import numpy as np, torch
from kdcache.config import TrainConfig
from kdcache.data.datasets import load_dataset
from kdcache.jobs.student_targets import distillation_loss
from kdcache.train.loop import build_optimizer, train_one_epoch
from kdcache.train.models import build_model
rows, data_dir = int(sys.argv[1]), sys.argv[2]
data = load_dataset("fashion-mnist", "train", data_dir, limit=rows)
logits = torch.from_numpy(np.random.default_rng(0).normal(size=(len(data), 10)).astype(np.float32))
try:  # after issue 23: the CachedDataset through the one loader
    from kdcache.data.cached_dataset import CachedDataset
    from kdcache.data.loader import LoaderConfig, make_loader
    batches = make_loader(CachedDataset.from_targets(data, logits), LoaderConfig(128, shuffle=True, seed=0))
    new = True
except ImportError:  # before it
    from kdcache.data.batches import MemoryBatches
    batches, new = MemoryBatches(data, 128, seed=0, teacher_logits=logits), False
torch.manual_seed(0)
model = build_model("student-cnn")
opt, sched = build_optimizer(model, TrainConfig(epochs=1, batch_size=128, device="cpu"), len(batches))
loss = distillation_loss(4.0, 0.5)
t0 = time.perf_counter()
if new:
    train_one_epoch(model, batches, loss, (opt, sched), torch.device("cpu"))
else:
    train_one_epoch(model, batches, loss, opt, sched, torch.device("cpu"))
print(json.dumps({"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}))
"""


def epoch_seconds(checkout: Path, rows: int, data_dir: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    job = subprocess.run([sys.executable, "-c", PROBE, str(rows), data_dir], cwd=checkout, env=env,
                         capture_output=True, text=True)
    if job.returncode != 0:
        raise SystemExit(f"{checkout}: {job.stderr[-1500:]}")
    return float(json.loads(job.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="a checkout of the older revision (git worktree add ...)")
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="512 rows, one repeat (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.repeats = 512, 1
    from benchmarks.folder import cpu_model

    old, new = Path(args.old).resolve(), REPO
    times: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.repeats):
        for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
            times[side].append(epoch_seconds(old if side == "old" else new, args.rows, args.data_dir))
            print(f"{side}: {times[side][-1]:.2f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rev = subprocess.run(["git", "-C", str(old), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "rows": args.rows, "repeats": args.repeats,
              "old": str(old), "old_revision": rev.stdout.strip(), "seconds": times, "median": med,
              "ratio": med["new"] / med["old"], "target": 1.03, "met": med["new"] / med["old"] <= 1.03}
    print(json.dumps({k: result[k] for k in ("median", "ratio", "met")}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
