"""Peak RSS of a dump and of a student epoch over an image folder must not grow with the folder (issue 23, item 4).

    .venv/bin/python -m benchmarks.memory [--images 25600] [--fraction 16] [--image-size 160] [--batch-size 100]
                                          [--workers 0 2] [--modes off on] [--work runs/bench-memory]
                                          [--out benchmarks/memory.json]

A folder of ``--images`` variable-size photos (benchmarks.folder.make_folder: 80-300 px, mostly RGB
JPEG) is made once under ``--work`` and reused; the small folder is the first 1/``--fraction`` of
each class, as hard links. For each worker count W and each allocator mode, in a fresh process
each (so one run's heap cannot help or hurt the next):

- ``dump``: ``kdcache.dump_logits`` over the folder (an untrained student-cnn teacher at S x S,
  batch B, W DataLoader workers);
- ``student``: one epoch of ``kdcache.train_student`` (student-cnn, KD from that dump's cache).

Peak RSS is the job's own: the main process's VmHWM, reset (/proc/self/clear_refs 5) just before
the job starts (its lifetime peak is torch's import), plus the largest worker's ru_maxrss.
Target: large <= small + 50 MB. Mode ``off``: ``KDCACHE_HEAP=default``, glibc's dynamic mmap
threshold (kdcache's default); ``on``: ``KDCACHE_HEAP=limit`` (kdcache.heap: 64 KB, set when a
process lists or decodes a folder); ``env``: ``MALLOC_MMAP_THRESHOLD_=65536`` set from outside (the
issue's reference); ``mmapN``: ``MALLOC_MMAP_THRESHOLD_=N`` (e.g. mmap256k, mmap1m), from process
start in every process. ``--teacher tiny --sides 120 320 --jobs dump``: the issue's decode-bound
setting. ``--repeat R`` runs each (job, folder, W) R times with the modes alternating; the table
gives the largest peak and the median seconds, and each mode's time over ``off``'s. Both folder sizes
have whole batches (``--images`` a multiple of ``fraction * 10 classes * B`` keeps them so).
``--smoke`` is a tiny run for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = {"off": {"KDCACHE_HEAP": "default"}, "on": {"KDCACHE_HEAP": "limit"}, "env": {"KDCACHE_HEAP": "default", "MALLOC_MMAP_THRESHOLD_": "65536"}}
JOBS = ("dump", "student")


def mode_env(mode: str) -> dict[str, str]:
    """A mode's environment: one of MODES, or ``mmapN`` (N bytes, or N k/m): glibc's threshold fixed at N from outside."""
    if mode in MODES:
        return MODES[mode]
    if mode.startswith("mmap"):
        n = mode[4:].lower()
        scale = {"k": 1024, "m": 1024 * 1024}.get(n[-1:], 1)
        return {"KDCACHE_HEAP": "default", "MALLOC_MMAP_THRESHOLD_": str(int(n.rstrip("km")) * scale)}
    raise argparse.ArgumentTypeError(f"unknown allocator mode {mode!r}: off, on, env or mmapN (e.g. mmap256k)")


class TinyTeacher:
    """``--teacher tiny``: 1 conv + pooling + linear, as the issue's ``--teacher-factory`` run (decode-bound)."""

    @staticmethod
    def build():
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(8, 10))


def make_jpeg_folder(root: Path, n: int, sides: tuple[int, int], seed: int = 0, test_per_class: int = 2) -> Path:
    """``--sides LO HI``: ROOT/train of ``n`` RGB JPEGs of random LO..HI px sides (gradient + noise), reused if made."""
    from PIL import Image
    import numpy as np

    from benchmarks.folder import CLASSES

    stamp = root / "made.json"
    want = {"images": n, "seed": seed, "sides": list(sides), "test_per_class": test_per_class, "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return root
    import shutil

    if root.exists():
        shutil.rmtree(root)
    g = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", test_per_class * len(CLASSES))):
        for i in range(count):
            d = root / split / CLASSES[i % len(CLASSES)]
            d.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in g.integers(sides[0], sides[1] + 1, size=2))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            a, b, c = g.uniform(-1, 1, size=(3, 3)) * 255
            base = np.stack([a[k] * xx / w + b[k] * yy / h + c[k] for k in range(3)], -1)
            arr = base + g.normal(0, 20, size=(h, w, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(d / f"img{i:06d}.jpg", quality=90)
    stamp.write_text(json.dumps(want))
    return root


def small_folder(root: Path, dst: Path, fraction: int) -> tuple[Path, int]:
    """The first 1/fraction of each class of ROOT/train (and all of ROOT/test) as hard links; its train count."""
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    count = 0
    for split in ("train", "test"):
        for cls in sorted((root / split).iterdir()):
            files = sorted(cls.iterdir())
            keep = files if split == "test" else files[: max(1, len(files) // fraction)]
            (dst / split / cls.name).mkdir(parents=True)
            for f in keep:
                os.link(f, dst / split / cls.name / f.name)
            count += split == "train" and len(keep)
    return dst, count


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(argv: list[str]) -> None:
    """``--child JOB ROOT CACHE TEACHER S W B``: one job in this fresh process; prints its peak RSS as JSON."""
    import torch

    from kdcache import DataConfig, DistillConfig, DumpConfig, RunOptions, TrainConfig, dump_logits, train_student
    import kdcache.heap

    job, root, cache, teacher, size, workers, batch = argv
    if teacher == "tiny":
        teacher = TinyTeacher.build()
    data_cfg = DataConfig(dataset="imagefolder", data_dir=root, image_size=int(size), workers=int(workers))
    run = RunOptions(progress=False, overwrite=True)
    try:  # reset this process's peak RSS (its ru_maxrss is torch's import-time peak): the job's own peak
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if job == "dump":
        s = dump_logits(teacher, cache, dump=DumpConfig(batch_size=int(batch), device="cpu"), data_cfg=data_cfg, run=run)
        rows = s["rows"]
    else:
        torch.manual_seed(0)
        s = train_student(Path(cache).with_suffix(".student.pt"), DistillConfig(caches=(cache,)), model="student-cnn",
                          data_cfg=data_cfg, run=run,
                          cfg=TrainConfig(epochs=1, batch_size=int(batch), device="cpu", precision="fp32"))
        rows = None
    seconds = time.perf_counter() - t0
    self_peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB; the largest worker
    print(json.dumps({"job": job, "rows": rows, "seconds": seconds, "rss_before_mb": before, "self_peak_mb": self_peak,
                      "peak_reset": reset, "worker_peak_mb": workers_mb,
                      "peak_mb": self_peak + (workers_mb if int(workers) > 0 else 0.0),
                      "heap_limited_in_main": kdcache.heap._applied}))


def run_child(job: str, root: Path, cache: Path, teacher: Path, args: argparse.Namespace, workers: int,
              mode: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("KDCACHE_HEAP", "MALLOC_MMAP_THRESHOLD_")}
    env.update(mode_env(mode))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", job, str(root), str(cache), str(teacher),
           str(args.image_size), str(workers), str(args.batch_size)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{job} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _pick(runs: list[dict[str, Any]], key: tuple[Any, ...]) -> dict[str, Any]:
    """The run of (W, mode, job, folder), with peaks the largest and seconds the median over ``--repeat``."""
    found = [r for r in runs if (r["workers"], r["mode"], r["job"], r["folder"]) == key]
    return {"peak_mb": max(r["peak_mb"] for r in found), "self_peak_mb": max(r["self_peak_mb"] for r in found),
            "worker_peak_mb": max(r["worker_peak_mb"] for r in found), "seconds": _median([r["seconds"] for r in found]),
            "all_seconds": [r["seconds"] for r in found]}


def summarize(runs: list[dict[str, Any]], workers_list: list[int], modes: list[str], n_small: int,
              n_large: int, jobs: tuple[str, ...] = JOBS) -> list[dict[str, Any]]:
    """One row per (job, W, mode): small vs large folder's peak RSS (also of a stopped run's partial JSON)."""
    rows = []
    for workers in workers_list:
        for mode in modes:
            for job in jobs:
                s, l = (_pick(runs, (workers, mode, job, f)) for f in ("small", "large"))
                off = ([_pick(runs, (workers, "off", job, f))["seconds"] for f in ("small", "large")]
                       if "off" in modes else [None, None])
                rows.append({"job": job, "workers": workers, "mode": mode, "small_images": n_small,
                             "large_images": n_large, "small_peak_mb": s["peak_mb"], "large_peak_mb": l["peak_mb"],
                             "growth_mb": l["peak_mb"] - s["peak_mb"], "met": l["peak_mb"] <= s["peak_mb"] + 50,
                             "small_main_mb": s["self_peak_mb"], "large_main_mb": l["self_peak_mb"],
                             "small_worker_mb": s["worker_peak_mb"], "large_worker_mb": l["worker_peak_mb"],
                             "small_seconds": s["seconds"], "large_seconds": l["seconds"],
                             "small_all_seconds": s["all_seconds"], "large_all_seconds": l["all_seconds"],
                             "large_time_vs_off": l["seconds"] / off[1] if off[1] else None,
                             "small_time_vs_off": s["seconds"] / off[0] if off[0] else None})
    return rows


def cpu_model() -> str:
    from benchmarks.folder import cpu_model as folder_cpu

    return folder_cpu()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.folder import make_folder, make_teacher

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.sides:
        name = f"jpegs-{args.sides[0]}-{args.sides[1]}-{args.images}"
        large = make_jpeg_folder(work / name, args.images, tuple(args.sides))
    else:
        name = f"folder-{args.images}"
        large = make_folder(work / name, args.images)
    small, n_small = small_folder(large, work / f"{name}-1of{args.fraction}", args.fraction)
    log(f"folders: {args.images} and {n_small} images ({time.perf_counter() - t0:.0f} s)")
    teacher = ("tiny" if args.teacher == "tiny" else
               make_teacher(work / f"teacher-student-cnn-{args.image_size}.pt", "student-cnn", args.image_size))
    jobs = tuple(args.jobs)
    runs: list[dict[str, Any]] = []
    # repeats and modes innermost, modes alternating (A B A B ...): a neighbour's load hits both sides alike
    for workers in args.workers:
        for job in jobs:
            for fname, root, n in (("small", small, n_small), ("large", large, args.images)):
                for rep in range(args.repeat):
                    for mode in (args.modes if rep % 2 == 0 else args.modes[::-1]):
                        cache = work / f"{name}-{fname}-W{workers}-{mode}-{args.teacher}.h5"
                        if job == "student" and "dump" not in jobs and rep == 0:  # its logits, once
                            run_child("dump", root, cache, teacher, args, workers, mode)
                        r = run_child(job, root, cache, teacher, args, workers, mode)
                        r.update(folder=fname, images=n, workers=workers, mode=mode, repeat=rep)
                        log(f"W={workers} {mode:>8} {job:>7} {n:>6} images: peak {r['peak_mb']:.0f} MB "
                            f"(main {r['self_peak_mb']:.0f}, worker {r['worker_peak_mb']:.0f}) in {r['seconds']:.1f} s")
                        runs.append(r)
                        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # so far, should a long run stop
                        Path(args.out).write_text(json.dumps({"partial": True, "runs": runs}, indent=2) + "\n")
    rows = summarize(runs, args.workers, args.modes, n_small, args.images, jobs)
    import torch

    return {"command": " ".join(["python -m benchmarks.memory", *(args.argv or [])]), "cpu": cpu_model(),
            "cores": os.cpu_count(), "torch": str(torch.__version__), "python": platform.python_version(),
            "libc": " ".join(platform.libc_ver()), "pillow": __import__("PIL").__version__,
            "images": args.images, "fraction": args.fraction, "image_size": args.image_size,
            "batch_size": args.batch_size, "teacher": args.teacher, "sides": args.sides or [80, 300],
            "repeat": args.repeat, "target": "large peak <= small peak + 50 MB",
            "modes": {m: mode_env(m) for m in args.modes}, "rows": rows, "runs": runs}


def format_table(result: dict[str, Any]) -> str:
    lines = ["| job | W | allocator | small | large | growth | met | large s (median) | vs off |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    names = {"off": "glibc default (KDCACHE_HEAP=default)", "on": "kdcache.heap on", "env": "MALLOC_MMAP_THRESHOLD_=65536"}
    for r in result["rows"]:
        name = names.get(r["mode"]) or f"MALLOC_MMAP_THRESHOLD_={mode_env(r['mode'])['MALLOC_MMAP_THRESHOLD_']}"
        ratio = r.get("large_time_vs_off")
        lines.append(f"| {r['job']} | {r['workers']} | {name} | {r['small_peak_mb']:.0f} MB "
                     f"({r['small_images']}) | {r['large_peak_mb']:.0f} MB ({r['large_images']}) | "
                     f"{r['growth_mb']:+.0f} MB | {'yes' if r['met'] else 'NO'} | {r['large_seconds']:.1f} | "
                     f"{'' if ratio is None else f'{ratio:.3f}'} |")
    lines += ["", f"`{result['command']}` — {result['cpu']}, {result['cores']} cores, torch {result['torch']}, "
                  f"{result['libc']}, Pillow {result['pillow']}; S={result['image_size']}, B={result['batch_size']}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=25600, help="Images in the large folder's train split (default 25600).")
    ap.add_argument("--fraction", type=int, default=16, help="The small folder is 1/F of each class (default 16).")
    ap.add_argument("--image-size", type=int, default=160, help="S: the square input side (default 160).")
    ap.add_argument("--batch-size", type=int, default=100, help="B (default 100).")
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader worker counts to run (default 0).")
    ap.add_argument("--modes", nargs="+", default=["off", "on"], type=lambda m: (mode_env(m), m)[1],
                    help="Allocator modes: off (KDCACHE_HEAP=default), on (as shipped), env (MALLOC_MMAP_THRESHOLD_=65536), "
                         "mmapN (MALLOC_MMAP_THRESHOLD_=N, e.g. mmap256k, mmap1m; kdcache.heap off).")
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS, help="Jobs to run (default both).")
    ap.add_argument("--teacher", default="student-cnn", choices=("student-cnn", "tiny"),
                    help="The dump's teacher: an untrained student-cnn checkpoint, or tiny (1 conv + pool + linear, "
                         "an nn.Module: the issue's --teacher-factory run, decode-bound).")
    ap.add_argument("--sides", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                    help="Make an all-RGB-JPEG folder of LO..HI px sides (gradient + noise; the issue's was 120 320) "
                         "instead of benchmarks.folder's mixed 80-300 px photos.")
    ap.add_argument("--repeat", type=int, default=1, help="Runs per (job, folder, W, mode), modes alternating; "
                    "seconds are the median, peaks the largest (default 1).")
    ap.add_argument("--work", default="runs/bench-memory", help="Scratch folder: the images, teacher, caches.")
    ap.add_argument("--out", default="benchmarks/memory.json", help="JSON results file.")
    ap.add_argument("--smoke", action="store_true", help="Tiny run (160 images, S=32, W=0) for the tests.")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:  # both folders still whole batches: 40 and 160 images of batch 20
        args.images, args.fraction, args.image_size, args.batch_size, args.workers = 160, 4, 32, 20, [0]
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return {}
    args = parse_args(argv)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not args.quiet:
        print(format_table(result))
    return result


if __name__ == "__main__":
    main()
