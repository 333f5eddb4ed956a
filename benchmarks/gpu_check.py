"""On a CUDA machine: are GPU-dumped logits the CPU's within verify's tolerance, and what does bf16 buy a teacher epoch?

    bash scripts/gpu-check.sh [--out runs/gpu-check.json]        # < 5 minutes on one GPU (mostly the CPU dump)

1. trains teacher-cnn for one epoch on the GPU (bf16: what train-teacher's --precision auto picks on a GPU with bf16) to get a
   teacher with realistic logits, timing that epoch and one at fp32 (same data, batch 128),
   after a short warm-up of each;
2. dumps the first --compare-rows training images with that teacher on the GPU (fp32, which
   turns TF32 off, so the values are true fp32) and on the CPU;
3. compares the two caches row by row with verify's rule: |gpu - cpu| <= TOLERANCE[float32]
   x max(1, max |z|) for every row (kdcache.jobs.verify.tolerance_for / tolerance_bound), and reports
   the largest error relative to that bound, so the documented tolerance can be checked.

Exit status 1 when a row is outside the tolerance. ``--device cpu`` runs the same steps on
the CPU (both "devices" are then the CPU): that is how the test suite exercises it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.cache import open_cache
from kdcache.config import TEACHER_TRAIN, DataConfig, DumpConfig, RunOptions
from benchmarks import train_batches
from kdcache.data.datasets import load_dataset
from kdcache.data.samples import ImageData
from kdcache.jobs.dump import dump_logits
from kdcache.jobs.verify import tolerance_bound, tolerance_for
from kdcache.train.checkpoint import model_config, save_checkpoint
from kdcache.train.loop import build_optimizer, cross_entropy_loss, train_one_epoch
from kdcache.train.models import build_model


def compare_caches(test: str | Path, reference: str | Path) -> dict[str, Any]:
    """``test``'s logits against ``reference``'s (same rows), by verify's tolerance rule."""
    with open_cache(test) as a, open_cache(reference) as b:
        if not np.array_equal(a.indices, b.indices):
            raise ValueError(f"{test} and {reference} hold different rows")
        got, ref = a.read(), b.read()
        base = tolerance_for(b.meta.logits_dtype, b.meta.teacher_precision)
    err = np.abs(got.astype(np.float32) - ref.astype(np.float32)).max(axis=-1)  # (n,)
    tol = tolerance_bound(ref, base)  # verify's rule, with the CPU dump as the reference
    worst = int(np.argmax(err / tol))
    return {"rows": len(ref), "tolerance": base, "max_abs_diff": float(err.max()),
            "max_diff_over_bound": float((err / tol).max()), "worst_row": worst,
            "max_rel_diff": float((err / np.maximum(1.0, np.abs(ref).max(axis=-1))).max()),
            "rows_over": int((err > tol).sum()), "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "ok": bool((err <= tol).all())}


def epoch_seconds(model: torch.nn.Module, data: ImageData, device: torch.device, precision: str,
                  batch_size: int = 128, warmup: int = 10) -> float:
    """Seconds for one training epoch of ``model`` over ``data`` (after ``warmup`` untimed steps)."""
    model.to(device)
    if precision == "bf16":
        model.to(memory_format=torch.channels_last)
    batches = train_batches(data, batch_size, device=device, channels_last=precision == "bf16")
    cfg = TEACHER_TRAIN
    opt, sched = build_optimizer(model, cfg, len(batches) + warmup)
    warm = train_batches(data.head(batch_size * warmup), batch_size, device=device, channels_last=precision == "bf16")
    train_one_epoch(model, warm, cross_entropy_loss, (opt, sched), device, precision)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(model, batches, cross_entropy_loss, (opt, sched), device, precision)  # ends with a sync (.item)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--workdir", default="runs/gpu-check")
    p.add_argument("--train-rows", type=int, default=None, help="Training images per epoch (default: all 60,000).")
    p.add_argument("--compare-rows", type=int, default=10_000, help="Rows dumped on both devices.")
    p.add_argument("--batch-size", type=int, default=128, help="Teacher training batch.")
    p.add_argument("--warmup", type=int, default=10, help="Untimed steps before each timed epoch.")
    p.add_argument("--out", default=None, help="Also write the results as JSON here.")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: scripts/gpu-check.sh needs one (or pass --device cpu for a dry run)")
    device = torch.device(args.device)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist", "train", args.data_dir, args.train_rows)
    info = data.info

    torch.manual_seed(0)
    teacher = build_model("teacher-cnn", info.in_channels, info.num_classes, info.image_size)
    timing = dict(batch_size=args.batch_size, warmup=args.warmup)
    bf16 = epoch_seconds(teacher, data, device, "bf16", **timing)  # trains the teacher the checks below dump with
    torch.manual_seed(0)
    fp32 = epoch_seconds(build_model("teacher-cnn", info.in_channels, info.num_classes, info.image_size), data,
                         device, "fp32", **timing)
    ckpt = save_checkpoint(work / "teacher.pt", teacher.float().to(memory_format=torch.contiguous_format).cpu(),
                           model_config("teacher-cnn", info), overwrite=True)

    common = dict(data_cfg=DataConfig(data_dir=args.data_dir, limit=args.compare_rows), run=RunOptions(overwrite=True))
    on_device = dump_logits(ckpt, work / f"dump-{args.device}.h5", **common, dump=DumpConfig(device=args.device))
    on_cpu = dump_logits(ckpt, work / "dump-cpu-reference.h5", **common, dump=DumpConfig(device="cpu"))
    comparison = compare_caches(on_device["cache"], on_cpu["cache"])
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": str(torch.__version__),
              "teacher_epoch": {"rows": len(data), "batch_size": args.batch_size, "fp32_s": fp32, "bf16_s": bf16,
                                "bf16_speedup": fp32 / bf16},
              "dump": {"device_s": on_device["seconds"], "cpu_s": on_cpu["seconds"], "rows": args.compare_rows},
              "comparison": comparison}
    c = comparison
    print(f"teacher epoch ({len(data):,} images, batch {args.batch_size}) on {result['device']}: fp32 {fp32:.2f}s, "
          f"bf16 autocast {bf16:.2f}s ({fp32 / bf16:.2f}x)")
    print(f"{args.device} dump (fp32, TF32 off) vs CPU dump, {c['rows']:,} rows: max |diff| {c['max_abs_diff']:.3g}, "
          f"max relative {c['max_rel_diff']:.3g} = {c['max_diff_over_bound']:.1%} of the float32 tolerance "
          f"({c['tolerance']:g} x max(1, max |z|)); top-1 agreement {c['top1_agreement']:.2%}; "
          + ("within tolerance" if c["ok"] else f"{c['rows_over']} rows OUTSIDE the tolerance (first: row {c['worst_row']})"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not c["ok"]:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
