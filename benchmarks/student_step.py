"""One student training step (kd_loss, SGD) at a batch and at half of it, one thread: does the compute halve?

    .venv/bin/python -m benchmarks.student_step [--arch student-cnn] [--batch-size 128] [--steps 100] [--repeats 5]

What a DDP rank saves when 2 ranks split a global batch, before any communication: the
README's scaling-out section compares it with the 2-rank step time of benchmarks.dist.
The two batch sizes alternate; each number is the median over repeats of the mean step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdcache.train.loss import kd_loss
from kdcache.train.models import build_model


def step_ms(arch: str, batch_size: int, steps: int, repeats: int) -> dict[int, float]:
    torch.manual_seed(0)
    model = build_model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sizes = (batch_size, batch_size // 2)

    def step(b: int) -> None:
        x, t, y = torch.randn(b, 1, 28, 28), torch.randn(b, 10), torch.randint(0, 10, (b,))
        loss = kd_loss(model(x), t, y, 4.0, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(20):  # warm-up
        for b in sizes:
            step(b)
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(repeats):
        for b in sizes:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(b)
            times[b].append((time.perf_counter() - t0) / steps * 1e3)
    return {b: statistics.median(v) for b, v in times.items()}


def main(argv: list[str] | None = None) -> dict[int, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="student-cnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    r = step_ms(a.arch, a.batch_size, a.steps, a.repeats)
    full, half = a.batch_size, a.batch_size // 2
    print(f"{a.arch}: {r[full]:.2f} ms per step at batch {full}, {r[half]:.2f} ms at {half} "
          f"({r[full] / r[half]:.2f}x); one thread, median of {a.repeats} x {a.steps} steps")
    return r


if __name__ == "__main__":
    main()
