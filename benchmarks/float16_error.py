"""How much float16 storage moves the soft targets softmax(z/T), against the float32 cache.

    .venv/bin/python -m benchmarks.float16_error [data/caches/fmnist-train.h5]

Casts the cache's float32 logits to float16 exactly as `dump-logits --dtype float16`
stores them and compares softmax(z/T) in float64 at T = 1, 4, 20.
"""
from __future__ import annotations

import sys

import torch

from kdcache.cache import open_cache


def float16_error(path: str, temperatures: tuple[float, ...] = (1.0, 4.0, 20.0)) -> list[dict[str, float]]:
    with open_cache(path) as cache:
        z = torch.from_numpy(cache.read()).double()
    z16 = z.float().half().double()
    rows = []
    for T in temperatures:
        p, q = torch.softmax(z / T, 1), torch.softmax(z16 / T, 1)
        kl = (p * (p.log() - q.log())).sum(1)  # KL(p32 || p16) per row
        d = (p - q).abs()
        rows.append({"T": T, "max_abs": d.max().item(), "mean_abs": d.mean().item(),
                     "max_kl": kl.max().item(), "mean_kl": kl.mean().item()})
    return rows


if __name__ == "__main__":
    for r in float16_error(sys.argv[1] if len(sys.argv) > 1 else "data/caches/fmnist-train.h5"):
        print(f"T={r['T']:g}: max|dp| {r['max_abs']:.1e}  mean|dp| {r['mean_abs']:.1e}  "
              f"max KL {r['max_kl']:.1e}  mean KL {r['mean_kl']:.1e}")
