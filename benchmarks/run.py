"""kdcache's speed, measured as ratios of two things timed in the same run (median of repeats).

    .venv/bin/python -m benchmarks.run [--scale 1] [--repeats 3] [--out benchmarks/results.json]

Rows (targets from issue 4):
1. student epoch, cached KD vs plain cross-entropy (same student, data, batch size)   <= 1.05x
2. student epoch, online KD (teacher run on every batch) vs cached KD: the speed-up
3. dump-logits vs pure teacher inference over the same samples                         <= 1.05x
4. out-of-core: a synthetic ImageNet-shaped cache (1,281,167 x 1000 float16 at scale 1)
   read in a fresh shuffled epoch order by train-student's reader vs one sequential
   pass; from disk (page cache dropped for that file) and warm                         >= 0.7x, RSS < 1 GB
5. cache size: bytes per sample, float32 / float16 (/ gzip, not offered: for reference)

Each A/B pair alternates which side runs first in each repeat, so drift on a shared
machine hits both sides alike. --scale shrinks every sample count (tests use ~0.002).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.synthetic import IMAGENET_CLASSES, IMAGENET_ROWS, write_synthetic_cache
from kdcache import cache
from kdcache.config import DataConfig, DumpConfig, RunOptions, TrainConfig
from benchmarks import train_batches
from kdcache.data.samples import Batch
from kdcache.data.datasets import load_dataset
from kdcache.data.samples import ImageData
from kdcache.jobs.dump import dump_logits
from kdcache.jobs.student_targets import distillation_loss
from kdcache.train.checkpoint import save_checkpoint
from kdcache.train.loop import build_optimizer, cross_entropy_loss, train_one_epoch
from kdcache.train.models import build_model

FMNIST_TRAIN = 60_000
CPU = torch.device("cpu")


def median_pair(repeats: int, a: Callable[[int], float], b: Callable[[int], float]) -> tuple[float, float, list, list]:
    """Median seconds of ``a`` and ``b``, run alternately (a-b, b-a, ...); each gets the repeat number."""
    ta, tb = [], []
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            (ta if which == 0 else tb).append((a if which == 0 else b)(r))
    return statistics.median(ta), statistics.median(tb), ta, tb


def row(name: str, a_name: str, a_s: float, b_name: str, b_s: float, target: str | None, met: bool | None,
        **extra: Any) -> dict[str, Any]:
    return {"row": name, "a": a_name, "a_seconds": a_s, "b": b_name, "b_seconds": b_s, "ratio": a_s / b_s,
            "target": target, "met": met, **extra}


# ------------------------------------------------------------------------------- student epochs (1, 2)


def student_epoch(data: ImageData, batch_size: int, loss_fn, teacher_logits=None, teacher=None, seed: int = 0) -> float:
    """Seconds for one training epoch of a fresh student (the timed part is train_one_epoch only)."""
    torch.manual_seed(seed)
    model = build_model("student-cnn", data.info.in_channels, data.info.num_classes, data.info.image_size)
    batches = train_batches(data, batch_size, seed=seed, targets=teacher_logits)
    if teacher is not None:
        batches = OnlineTeacher(batches, teacher)
    opt, sched = build_optimizer(model, TrainConfig(epochs=1, batch_size=batch_size, device="cpu"), len(batches))
    t0 = time.perf_counter()
    train_one_epoch(model, batches, loss_fn, (opt, sched), CPU)
    return time.perf_counter() - t0


class OnlineTeacher:
    """Online KD, the thing the cache replaces: run the teacher (eval mode) on every batch."""

    def __init__(self, batches: Any, teacher: torch.nn.Module):
        self.batches, self.teacher = batches, teacher.eval()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            with torch.inference_mode():
                t = self.teacher(b.images)
            yield Batch(b.images, b.labels, t.clone())


# --------------------------------------------------------------------------------------- dump (3)


def make_teacher(path: Path, data: ImageData, source: str | None) -> Path:
    """The teacher checkpoint to time: ``source`` if it exists, else an untrained teacher-cnn (same speed)."""
    if source and Path(source).exists():
        return Path(source)
    if not path.exists():
        info = data.info
        torch.manual_seed(0)
        model = build_model("teacher-cnn", info.in_channels, info.num_classes, info.image_size)
        save_checkpoint(path, model, {"arch": "teacher-cnn", "in_channels": info.in_channels,
                                      "num_classes": info.num_classes, "image_size": list(info.image_size),
                                      "dataset": info.name, "mean": list(info.mean), "std": list(info.std),
                                      "class_names": list(info.class_names), "note": "untrained, for benchmarks"})
    return path


def teacher_inference(model: torch.nn.Module, data: ImageData, batch_size: int) -> float:
    """Seconds for the teacher alone over ``data``: the same batches dump-logits makes, no writing."""
    batches = train_batches(data, batch_size, shuffle=False)
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch.images).float()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ out-of-core (4)


def ooc_pass(path: Path, order: str, cold: bool, epoch: int = 0) -> dict[str, Any]:
    """One read pass in a fresh process (its own peak RSS): see benchmarks/ooc.py."""
    cmd = [sys.executable, "-m", "benchmarks.ooc", str(path), "--order", order, "--epoch", str(epoch)]
    out = subprocess.run(cmd + (["--cold"] if cold else []), check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def ooc_rows(path: Path, repeats: int) -> list[dict[str, Any]]:
    out = []
    for cold in (True, False):
        if not cold:
            ooc_pass(path, "sequential", False)  # warm the page cache
        runs: dict[str, list] = {"shuffled": [], "sequential": []}
        med_shuf, med_seq, _, _ = median_pair(
            repeats,
            lambda r: (runs["shuffled"].append(ooc_pass(path, "shuffled", cold, epoch=r)) or runs["shuffled"][-1]["seconds"]),
            lambda r: (runs["sequential"].append(ooc_pass(path, "sequential", cold)) or runs["sequential"][-1]["seconds"]))
        rows = runs["shuffled"][0]["rows"]
        assert rows == runs["sequential"][0]["rows"], "shuffled pass must read every row once"
        rss = max(r["peak_rss_mb"] for r in runs["shuffled"])
        mb = path.stat().st_size / 1e6
        ratio = med_seq / med_shuf  # throughput(shuffled) / throughput(sequential)
        where = "from disk (file dropped from page cache)" if cold else "warm (file in page cache)"
        out.append({"row": f"4. out-of-core read, {where}", "a": "shuffled epoch, train-student reader",
                    "a_seconds": med_shuf, "b": "one sequential pass", "b_seconds": med_seq,
                    "ratio": ratio, "ratio_means": "throughput shuffled / sequential",
                    "target": ">= 0.7x" + (", peak RSS < 1024 MB" if cold else ""),
                    "met": ratio >= 0.7 and (rss < 1024 or not cold), "peak_rss_mb": rss,
                    "import_rss_mb": runs["shuffled"][0]["import_rss_mb"], "rows": rows, "file_mb": mb,
                    "shuffled_MBps": mb / med_shuf, "sequential_MBps": mb / med_seq,
                    "runs": runs})
    return out


# ---------------------------------------------------------------------------------- sizes (5)


def rewrite(src: Path, dst: Path, dtype: str, compression: str | None = None) -> int:
    """Copy a cache with another logits dtype/compression; returns its size in bytes."""
    with cache.open_cache(src) as c:
        meta, logits = c.meta, c.read()
        labels, indices, ids = c.labels, c.indices, c.sample_ids
    keep = ("kdcache_version", "torch_version", "teacher_arch", "teacher_sha256", "teacher_precision", "dataset",
            "split", "dataset_num_samples", "dataset_fingerprint", "normalization_mean", "normalization_std")
    attrs = {k: meta.attrs[k] for k in keep}
    attrs["class_names"] = list(meta.class_names)
    layout = cache.CacheLayout(num_classes=meta.num_classes, dtype=dtype, compression=compression)
    with cache.CacheWriter(dst, layout, num_samples=meta.num_samples, attrs=attrs, overwrite=True) as w:
        w.write(0, logits, labels, indices, ids)
    return dst.stat().st_size


# ------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = max(256, round(FMNIST_TRAIN * args.scale))
    n_online = min(n, max(256, round(args.online_samples * args.scale)))
    n_dump = min(n, max(256, round(args.dump_samples * args.scale)))
    n_syn = max(4096, round(IMAGENET_ROWS * args.scale))
    data = load_dataset("fashion-mnist", "train", args.data_dir, limit=n)
    rows: list[dict[str, Any]] = []
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # 3. dump-logits vs teacher inference (first: it writes the cache rows 1-2 read)
    teacher_path = make_teacher(work / "teacher-untrained.pt", data, args.teacher)
    from kdcache.train.checkpoint import load_checkpoint
    teacher, _ = load_checkpoint(teacher_path)
    dump_path = work / f"fmnist-{n_dump}.h5"
    sub = data.head(n_dump)
    log(f"[3] dump-logits vs teacher inference over {n_dump} samples ...")
    dumps: list[dict] = []

    def do_dump(r: int) -> float:
        dumps.append(dump_logits(teacher_path, dump_path, dump=DumpConfig(split="train", device="cpu"), data_cfg=DataConfig(data_dir=args.data_dir, limit=n_dump), run=RunOptions(overwrite=True)))
        return dumps[-1]["seconds"]

    a, b, ta, tb = median_pair(args.repeats, do_dump, lambda r: teacher_inference(teacher, sub, 1000))
    rows.append(row("3. dump-logits vs teacher inference", "dump-logits (teacher + HDF5 write)", a,
                    "teacher inference only", b, "<= 1.05x", a / b <= 1.05, samples=n_dump,
                    samples_per_s=n_dump / a, a_runs=ta, b_runs=tb))

    # The student rows need logits for all n samples: the main job's cache if it covers them (so
    # row 5 measures the real Fashion-MNIST cache), else the dump row's, else a dump of n samples.
    cache_path = dump_path
    if args.fmnist_cache and Path(args.fmnist_cache).exists() and cache.read_meta(args.fmnist_cache).num_samples >= n:
        cache_path = Path(args.fmnist_cache)
    elif n_dump < n:
        cache_path = work / f"fmnist-{n}.h5"
        if not cache_path.exists() or cache.read_meta(cache_path).num_samples != n:
            log(f"    dumping {n} samples for the student rows ...")
            dump_logits(teacher_path, cache_path, dump=DumpConfig(split="train", device="cpu"), data_cfg=DataConfig(data_dir=args.data_dir, limit=n), run=RunOptions(overwrite=True))
    t0 = time.perf_counter()
    with cache.open_cache(cache_path) as c:
        teacher_logits = torch.from_numpy(c.read(c.align(data.indices.numpy(), labels=data.labels.numpy(),
                                                         sample_ids=data.sample_ids, info=data.info)))
    load_s = time.perf_counter() - t0

    # 1. cached KD vs CE
    log(f"[1] student epoch, cached KD vs cross-entropy, {n} samples ...")
    kd = distillation_loss(4.0, 0.5)
    a, b, ta, tb = median_pair(args.repeats, lambda r: student_epoch(data, args.batch_size, kd, teacher_logits, seed=r),
                               lambda r: student_epoch(data, args.batch_size, cross_entropy_loss, seed=r))
    rows.append(row("1. student epoch, cached KD vs cross-entropy", "cached KD (T=4, alpha=0.5)", a,
                    "cross-entropy only", b, "<= 1.05x", a / b <= 1.05, samples=n, batch_size=args.batch_size,
                    cache_load_seconds=load_s, cache=str(cache_path), a_runs=ta, b_runs=tb))

    # 2. online KD vs cached KD
    log(f"[2] student epoch, online KD vs cached KD, {n_online} samples ...")
    on = data.head(n_online)
    a, b, ta, tb = median_pair(args.repeats, lambda r: student_epoch(on, args.batch_size, kd, teacher=teacher, seed=r),
                               lambda r: student_epoch(on, args.batch_size, kd, teacher_logits[:n_online], seed=r))
    rows.append(row("2. student epoch, online KD vs cached KD", "online KD (teacher every batch)", a,
                    "cached KD", b, "speed-up well over 10x", a / b > 10, samples=n_online, a_runs=ta, b_runs=tb))

    # 4. out-of-core
    syn = Path(args.synthetic or (work / f"synthetic-imagenet-{n_syn}x{IMAGENET_CLASSES}-f16.h5"))
    log(f"[4] out-of-core read of {syn} ({n_syn} x {IMAGENET_CLASSES} float16) ...")
    t0 = time.perf_counter()
    write_synthetic_cache(syn, n_syn)
    write_s = time.perf_counter() - t0
    rows.extend(ooc_rows(syn, args.repeats))
    rows[-2]["write_or_reuse_seconds"] = write_s

    # 5. sizes
    log("[5] bytes per sample ...")
    n_fm = cache.read_meta(cache_path).num_samples
    sizes = {f"fmnist float32 ({n_fm} rows)": cache_path.stat().st_size / n_fm}
    sizes["fmnist float16"] = rewrite(cache_path, work / "size-f16.h5", "float16") / n_fm
    sizes["fmnist float32 gzip (not offered)"] = rewrite(cache_path, work / "size-gz.h5", "float32", "gzip") / n_fm
    sizes["synthetic-imagenet float16"] = syn.stat().st_size / n_syn
    n32 = min(n_syn, 50_000)
    s32 = write_synthetic_cache(work / f"synthetic-imagenet-{n32}-f32.h5", n32, dtype="float32")
    sizes[f"synthetic-imagenet float32 ({n32} rows)"] = s32.stat().st_size / n32
    for p in (work / "size-f16.h5", work / "size-gz.h5", s32):
        p.unlink()
    rows.append({"row": "5. cache size, bytes per sample", "sizes": sizes,
                 "raw_fmnist": {"float32": 10 * 4, "float16": 10 * 2}, "raw_imagenet": {"float32": 4000, "float16": 2000}})

    return {
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "machine": machine(), "torch_threads": torch.get_num_threads(), "scale": args.scale,
        "repeats": args.repeats, "rows": rows,
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "gpu": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def format_table(result: dict[str, Any]) -> str:
    lines = ["| benchmark | A | B | A (s) | B (s) | ratio | target | met |", "|---|---|---|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        if "sizes" in r:
            continue
        extra = f", peak RSS {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        lines.append(f"| {r['row']} | {r['a']} | {r['b']} | {r['a_seconds']:.2f} | {r['b_seconds']:.2f} | "
                     f"{r['ratio']:.2f}x{extra} | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    sizes = next(r["sizes"] for r in result["rows"] if "sizes" in r)
    lines += ["", "| cache | bytes / sample |", "|---|---:|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in sizes.items()]
    m = result["machine"]
    lines += ["", f"{m['cpu']}, {m['cores']} cores, GPU: {'yes' if m['gpu'] else 'no'}, torch {m['torch']} "
                  f"({result['torch_threads']} threads); scale {result['scale']}, median of {result['repeats']} repeats"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="Multiply every sample count (default 1: full size).")
    ap.add_argument("--repeats", type=int, default=3, help="Timed repeats per side; the median is reported.")
    ap.add_argument("--out", default="benchmarks/results.json", help="JSON results file.")
    ap.add_argument("--workdir", default="data/bench", help="Scratch folder: teacher, FMNIST caches, synthetic cache.")
    ap.add_argument("--synthetic", default=None, help="Synthetic cache path (reused if its shape matches).")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--teacher", default="runs/pipeline/teacher.pt",
                    help="Teacher checkpoint to time (default: the main job's, else an untrained teacher-cnn).")
    ap.add_argument("--fmnist-cache", default="data/caches/fmnist-train.h5",
                    help="Fashion-MNIST train cache for rows 1, 2, 5 (default: the main job's; else one is dumped).")
    ap.add_argument("--batch-size", type=int, default=128, help="Student batch size (train-student's default).")
    ap.add_argument("--online-samples", type=int, default=6000, help="Samples for row 2 at scale 1 (online KD is slow).")
    ap.add_argument("--dump-samples", type=int, default=10000, help="Samples for row 3 at scale 1.")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not args.quiet:
        print(format_table(result))
    return result


if __name__ == "__main__":
    main()
