"""How far a bf16 dump (`dump-logits --precision bf16`) moves the logits and soft targets, against fp32.

    .venv/bin/python -m benchmarks.bf16_error --teacher runs/pipeline/teacher.pt [--limit 10000] \
        [--views 4 --augment shift-flip] [--workdir runs/bf16-error] [--json out.json]

Dumps the same rows (and views) twice with `dump_logits`, once with the teacher at fp32 and
once at bf16 (autocast + channels_last), then compares in float64: the logit error, as an
absolute value and relative to the row's max(1, max |z|) (the measure `verify --teacher`
applies its tolerance to), and softmax(z/T) at T = 1, 4, 20 (max and mean |Δp|, KL(p32 ‖ pbf16)).
Also prints both dumps' seconds. On 2 CPU cores, ~1 minute per 10,000 teacher-cnn views.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from kdcache.cache import open_cache
from kdcache.config import DataConfig, DumpConfig, RunOptions, ViewConfig
from kdcache.jobs.dump import dump_logits

TEMPERATURES = (1.0, 4.0, 20.0)


def compare(z32: torch.Tensor, z16: torch.Tensor, temperatures=TEMPERATURES) -> dict[str, Any]:
    """Errors of logits ``z16`` (n, C) against ``z32`` (n, C), in float64."""
    z32, z16 = z32.double(), z16.double()
    err = (z16 - z32).abs().amax(1)  # (n,)
    rel = err / z32.abs().amax(1).clamp_min(1.0)
    out: dict[str, Any] = {
        "rows": len(z32), "max_abs_logit": float(z32.abs().max()), "max_abs_dz": float(err.max()),
        "mean_abs_dz": float((z16 - z32).abs().mean()), "max_rel_dz": float(rel.max()),
        "p999_rel_dz": float(torch.quantile(rel, 0.999)) if len(rel) > 1 else float(rel.max()),
        "top1_changed": int((z16.argmax(1) != z32.argmax(1)).sum()), "softmax": []}
    for t in temperatures:
        p, q = torch.softmax(z32 / t, 1), torch.softmax(z16 / t, 1)
        kl = (p * (torch.log_softmax(z32 / t, 1) - torch.log_softmax(z16 / t, 1))).sum(1)
        d = (p - q).abs()
        out["softmax"].append({"T": t, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                               "max_kl": float(kl.max()), "mean_kl": float(kl.mean())})
    return out


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{r['rows']} logit rows (views counted as rows), max |z| {r['max_abs_logit']:.1f}; "
             f"fp32 dump {r['seconds']['fp32']:.1f} s, bf16 dump {r['seconds']['bf16']:.1f} s",
             f"logits: max |dz| {r['max_abs_dz']:.2e}, mean |dz| {r['mean_abs_dz']:.2e}, max |dz| / max(1, max |z|) "
             f"{r['max_rel_dz']:.2e} (99.9th percentile {r['p999_rel_dz']:.2e}), top-1 changed on "
             f"{r['top1_changed']} rows", "",
             "| T | max \\|Δ softmax(z/T)\\| | mean \\|Δ\\| | max KL(p32 ‖ pbf16) | mean KL |", "|---|---|---|---|---|"]
    lines += [f"| {s['T']:g} | {s['max_abs']:.1e} | {s['mean_abs']:.1e} | {s['max_kl']:.1e} | {s['mean_kl']:.1e} |"
              for s in r["softmax"]]
    return "\n".join(lines)


def bf16_error(teacher: str, workdir: str | Path, *, data_dir: str = "data", limit: int | None = 10_000,
               views: int = 1, augment: str | None = None, batch_size: int = 1000) -> dict[str, Any]:
    work = Path(workdir)
    seconds, logits = {}, {}
    for precision in ("fp32", "bf16"):
        r = dump_logits(teacher, work / f"{precision}.h5", dump=DumpConfig(precision=precision, device="cpu", batch_size=batch_size), data_cfg=DataConfig(data_dir=data_dir, limit=limit), views=ViewConfig(views=views, augment=augment), run=RunOptions(overwrite=True))
        seconds[precision] = r["seconds"]
        with open_cache(r["cache"]) as c:
            z = torch.from_numpy(c.read())
        logits[precision] = z.reshape(-1, z.shape[-1])  # views as rows
    return {**compare(logits["fp32"], logits["bf16"]), "seconds": seconds, "teacher": str(teacher), "limit": limit,
            "views": views, "augment": augment}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="teacher checkpoint (kdcache)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--limit", type=int, default=10_000, help="rows of the train split (0: all)")
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--augment", default=None)
    ap.add_argument("--workdir", default="runs/bf16-error")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    r = bf16_error(args.teacher, args.workdir, data_dir=args.data_dir, limit=args.limit or None, views=args.views,
                   augment=args.augment)
    print(format_table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
