"""Teacher step time at fp32 vs bf16 autocast + channels_last, in one run (the train-teacher default).

    .venv/bin/python -m benchmarks.precision [--batch-size 128] [--steps 10] [--repeats 3]

Prints the median seconds per training step and per inference batch for each precision and
their ratio. bf16 only pays off on CPUs with native bf16 (AVX-512 BF16 / AMX) or on GPUs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kdcache.device import autocast
from kdcache.train.models import build_model


def step_seconds(precision: str, batch_size: int, steps: int, train: bool) -> float:
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = build_model("teacher-cnn")
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    if precision == "bf16":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def one() -> None:
        if train:
            with autocast(cpu, precision):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast(cpu, precision):
                model.eval()(x)

    one(), one()  # warm-up (oneDNN picks kernels on first calls)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    result = {"torch": str(torch.__version__), "threads": torch.get_num_threads(), "batch_size": args.batch_size}
    for kind, train in (("train step", True), ("inference", False)):
        times = {"fp32": [], "bf16": []}
        for r in range(args.repeats):  # alternate order so drift hits both sides
            for prec in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                times[prec].append(step_seconds(prec, args.batch_size, args.steps, train))
        fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        result[kind] = {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}
        print(f"teacher {kind:<10} fp32 {fp32 * 1e3:7.1f} ms  bf16 {bf16 * 1e3:7.1f} ms  bf16 is {fp32 / bf16:.2f}x faster")
    return result


if __name__ == "__main__":
    main()
