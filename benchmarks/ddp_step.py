"""A DDP student step with and without kdcache's per-step collectives, under torchrun: what do they cost?

    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node 2 -m benchmarks.ddp_step [--steps 150]

Each rank trains student-cnn on its half of a 128-row global batch (random data; the step is
what is timed, not learning) in three modes, alternating twice: DDP alone; + the failure
protocol's status all-gather (kdcache.dist, once per batch); + the global-batch row counts
all-reduce that kdcache.jobs.student_targets.distillation_loss adds. Prints rank 0's mean ms per step.
With ``--nproc_per_node 1`` the same loop runs without DDP at the full batch, for comparison.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kdcache.train.loss import kd_loss
from kdcache.train.models import build_model

MODES = ("DDP only", "+ status check", "+ status check + row counts")


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=128, help="Global batch.")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    control = dist.new_group(backend="gloo")  # as kdcache.dist: status exchange on its own group
    torch.manual_seed(0)
    model = build_model("student-cnn")
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    rows = a.batch_size // world
    x, t, y = torch.randn(rows, 1, 28, 28), torch.randn(rows, 10), torch.randint(0, 10, (rows,))

    def step(mode: int) -> None:
        if mode >= 1:
            statuses = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
            dist.all_gather(statuses, torch.zeros(1, dtype=torch.int64), group=control)
            [int(s) for s in statuses]
        if mode >= 2:
            counts = torch.tensor([float(rows), float(rows)])
            dist.all_reduce(counts, group=control)
            counts.tolist()
        loss = kd_loss(net(x), t, y, 4.0, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(2):
        for i, m in enumerate(MODES):
            for _ in range(10):
                step(i)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(i)
            times[m].append((time.perf_counter() - t0) / a.steps * 1e3)
    result = {m: statistics.fmean(v) for m, v in times.items()}
    if dist.get_rank() == 0:
        print(f"{world} rank(s), {rows} rows per rank: " + ", ".join(f"{m} {v:.2f} ms" for m, v in result.items()))
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
