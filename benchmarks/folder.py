"""Image folders read lazily: what streaming files costs kdcache, against the plain torchvision loop.

    .venv/bin/python -m benchmarks.folder [--images 5000] [--image-size 64] [--workers 2] [--batch-size 128]
                                          [--repeats 3] [--work runs/bench-folder] [--out benchmarks/folder.json]

A folder of ``--images`` photos (sides 80-300 px; mostly RGB JPEG, a few PNG, greyscale,
CMYK and palette images) in ImageFolder layout, 10 classes, is made once under ``--work``
and reused. Rows (the same W workers, B batch size and S image size on both sides):

a. dump-logits over the folder (kdcache.jobs.dump.dump_logits, whole call: listing, teacher load, each
   file read once in the workers, hashed for its row id and decoded, HDF5 write) vs the plain loop
   ``DataLoader(ImageFolder(root, Resize + CenterCrop + PILToTensor), B, num_workers=W)`` + the same
   model's forward on normalised float batches under inference_mode                      <= 1.05x
   The hashing pass the dump no longer makes (load_dataset: list + hash; train-student and verify still
   make it at start-up) is also timed alone, listing alone too, and dump-logits' own loop time (what it
   reports as ``seconds``: read + hash + decode + teacher + write) is compared too.
b. one student epoch streaming the images (kdcache's loader over the lazy
   folder, decoded in W workers) with cached logits (KD, T=4, alpha=0.5) vs the same epoch
   with labels only (cross-entropy, no targets)                                          <= 1.05x
c. peak RSS of a dump in a fresh process (the main process's VmHWM, reset just before the dump, since
   its ru_maxrss is torch's import-time peak; + the largest worker's ru_maxrss), N/4 vs N images:
   memory must not grow with the folder                                          4x <= 1x + 50 MB

Each A/B pair alternates which side runs first in each repeat (median of ``--repeats``), so
drift on a shared machine hits both sides alike. ``--smoke`` is a tiny run for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdcache.config import STUDENT_TRAIN, DataConfig, DumpConfig, RunOptions, TrainConfig, default_lr
from kdcache.data.datasets import load_dataset
from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD
from kdcache.data.images import InputTransform
from kdcache.jobs.dump import dump_logits
from kdcache.train.checkpoint import load_checkpoint, save_checkpoint
from kdcache.train.models import build_model

CPU = torch.device("cpu")
CLASSES = tuple(f"class{k}" for k in range(10))
REPO = Path(__file__).resolve().parents[1]
FOLDER_VERSION = 1  # bump when make_folder changes what it writes


def median_pair(repeats: int, a: Callable[[int], float], b: Callable[[int], float]) -> tuple[float, float, list, list]:
    """Median seconds of ``a`` and ``b``, run alternately (a-b, b-a, ...); each gets the repeat number."""
    ta, tb = [], []
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            (ta if which == 0 else tb).append((a if which == 0 else b)(r))
    return statistics.median(ta), statistics.median(tb), ta, tb


# ---------------------------------------------------------------------------------- the folder


def save_photo(path: Path, g: np.random.Generator, i: int, level: float) -> None:
    """A smooth photo-like image (blurry blobs + a little noise, as JPEG compresses real photos) of random size.

    Every 25 images: one greyscale JPEG, one CMYK JPEG, one palette PNG, one RGB PNG; the rest RGB JPEG.
    """
    from PIL import Image

    w, h = int(g.integers(80, 301)), int(g.integers(80, 301))
    coarse = np.clip(g.normal(level, 60, size=(6, 6, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.int16) + g.integers(-8, 9, size=(h, w, 3), dtype=np.int16)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    kind = i % 25
    if kind == 0:
        im.convert("L").save(path.with_suffix(".jpg"), quality=90)
    elif kind == 1:
        im.convert("CMYK").save(path.with_suffix(".jpg"), quality=90)
    elif kind == 2:
        im.quantize(64).save(path.with_suffix(".png"))
    elif kind == 3:
        im.save(path.with_suffix(".png"))
    else:
        im.save(path.with_suffix(".jpg"), quality=90)


def make_folder(root: Path, n: int, seed: int = 0, test_per_class: int = 2) -> Path:
    """ROOT/train (``n`` images over 10 classes) and ROOT/test; reused when a previous call made the same one."""
    stamp = root / "made.json"
    want = {"images": n, "seed": seed, "test_per_class": test_per_class, "version": FOLDER_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return root
    if root.exists():
        shutil.rmtree(root)
    g = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", test_per_class * len(CLASSES))):
        for i in range(count):
            k = i % len(CLASSES)
            d = root / split / CLASSES[k]
            d.mkdir(parents=True, exist_ok=True)
            save_photo(d / f"img{i:06d}.jpg", g, i // len(CLASSES), 40 + 18 * k)
    stamp.write_text(json.dumps(want))
    return root


def quarter_folder(root: Path, dst: Path) -> tuple[Path, int]:
    """A folder of the first quarter of each class of ROOT/train, as hard links (no pixels copied)."""
    if dst.exists():
        shutil.rmtree(dst)
    count = 0
    for cls in sorted((root / "train").iterdir()):
        files = sorted(cls.iterdir())
        (dst / "train" / cls.name).mkdir(parents=True)
        for f in files[: max(1, len(files) // 4)]:
            os.link(f, dst / "train" / cls.name / f.name)
            count += 1
    return dst, count


def make_teacher(path: Path, arch: str, size: int) -> Path:
    """An untrained ``arch`` saved as a kdcache checkpoint for 3 x S x S inputs (same speed as a trained one)."""
    torch.manual_seed(0)
    model = build_model(arch, 3, len(CLASSES), (size, size))
    config = {"arch": arch, "in_channels": 3, "num_classes": len(CLASSES), "image_size": [size, size],
              "dataset": "imagefolder", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
              "class_names": list(CLASSES), "input_transform": InputTransform(size).record(),
              "note": "untrained, for benchmarks"}
    return save_checkpoint(path, model, config, overwrite=True)


# ----------------------------------------------------------------------------------- a. dump


def plain_loop(root: Path, model: torch.nn.Module, size: int, workers: int, batch_size: int) -> float:
    """Seconds for torchvision's ImageFolder through a DataLoader + the model's forward: no hashing, no writing."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    tf = transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size),
                             transforms.PILToTensor()])
    loader = DataLoader(datasets.ImageFolder(str(root / "train"), transform=tf), batch_size=batch_size,
                        num_workers=workers)
    model.eval()
    with torch.inference_mode():
        for x, _ in loader:
            model((x.float().div_(255.0) - mean) / std).float()
    return time.perf_counter() - t0


def dump_rows(args: argparse.Namespace, root: Path, teacher: Path, cache: Path) -> dict[str, Any]:
    model, _ = load_checkpoint(teacher)
    loops: list[float] = []

    def dump(r: int) -> float:
        t0 = time.perf_counter()
        s = dump_logits(teacher, cache, dump=DumpConfig(batch_size=args.batch_size, device="cpu"), data_cfg=DataConfig(dataset="imagefolder", data_dir=str(root), image_size=args.image_size, workers=args.workers), run=RunOptions(progress=False, overwrite=True))
        wall = time.perf_counter() - t0
        assert s["rows"] == args.images
        loops.append(s["seconds"])
        return wall

    a, b, ta, tb = median_pair(args.repeats, dump,
                               lambda r: plain_loop(root, model, args.image_size, args.workers, args.batch_size))
    hashes, lists = [], []
    for _ in range(args.repeats):
        for defer, times in ((False, hashes), (True, lists)):  # the pass; listing alone (what the dump does first)
            t0 = time.perf_counter()
            load_dataset("imagefolder", "train", str(root), image_size=args.image_size, workers=args.workers,
                         defer_identity=defer)
            times.append(time.perf_counter() - t0)
    loop = statistics.median(loops)
    return {"row": "a. dump-logits vs plain ImageFolder loop + forward",
            "a": "kdcache dump_logits (list + read, hash and decode in workers + teacher + HDF5)", "a_seconds": a,
            "b": "torchvision ImageFolder DataLoader + forward", "b_seconds": b, "ratio": a / b,
            "target": "<= 1.05x", "met": a / b <= 1.05,
            "hash_seconds": statistics.median(hashes), "hash_runs": hashes,
            "list_seconds": statistics.median(lists), "list_runs": lists,
            "dump_loop_seconds": loop, "dump_loop_runs": loops, "ratio_loop_only": loop / b,
            "images_per_s": args.images / a, "a_runs": ta, "b_runs": tb}


# ------------------------------------------------------------------------------- b. student epoch


def student_epoch(data, args: argparse.Namespace, loss_fn, teacher_logits=None, seed: int = 0) -> float:
    """Seconds for one epoch of a fresh student-cnn streaming the folder (the loader over FileImages)."""
    from benchmarks import train_batches
    from kdcache.train.loop import build_optimizer, train_one_epoch

    torch.manual_seed(seed)
    model = build_model("student-cnn", 3, len(CLASSES), (args.image_size, args.image_size))
    batches = train_batches(data, args.batch_size, seed=seed, targets=teacher_logits, workers=args.workers)
    lr = default_lr(STUDENT_TRAIN.lr, image_files=True)  # what train-student uses on a folder (0.05 diverges)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=lr, device="cpu")
    opt, sched = build_optimizer(model, cfg, len(batches))
    t0 = time.perf_counter()
    train_one_epoch(model, batches, loss_fn, (opt, sched), CPU)
    return time.perf_counter() - t0


def student_rows(args: argparse.Namespace, root: Path, cache: Path) -> dict[str, Any]:
    from kdcache import cache as kcache
    from kdcache.jobs.student_targets import distillation_loss
    from kdcache.train.loop import cross_entropy_loss

    data = load_dataset("imagefolder", "train", str(root), image_size=args.image_size, workers=args.workers)
    with kcache.open_cache(cache) as c:
        logits = torch.from_numpy(c.read(c.align(data.indices.numpy(), labels=data.labels.numpy(),
                                                 sample_ids=data.sample_ids, info=data.info)))
    kd = distillation_loss(4.0, 0.5)
    a, b, ta, tb = median_pair(args.repeats, lambda r: student_epoch(data, args, kd, logits, seed=r),
                               lambda r: student_epoch(data, args, cross_entropy_loss, seed=r))
    return {"row": "b. student epoch streaming images, cached KD vs labels only",
            "a": "cached KD (T=4, alpha=0.5)", "a_seconds": a, "b": "cross-entropy, labels only", "b_seconds": b,
            "ratio": a / b, "target": "<= 1.05x", "met": a / b <= 1.05, "student": "student-cnn",
            "a_runs": ta, "b_runs": tb}


# ------------------------------------------------------------------------------------ c. peak RSS


def rss_child(argv: list[str]) -> None:
    """``--rss-child TEACHER ROOT OUT S W B``: one dump in this fresh process; prints its peak RSS as JSON."""
    teacher, root, out, size, workers, batch = argv
    try:  # reset this process's peak RSS (VmHWM; ru_maxrss keeps the import-time peak): the dump's own peak
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _status_mb("VmRSS")
    s = dump_logits(teacher, out, dump=DumpConfig(batch_size=int(batch), device="cpu"), data_cfg=DataConfig(dataset="imagefolder", data_dir=root, image_size=int(size), workers=int(workers)), run=RunOptions(progress=False, overwrite=True))
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker's peak
    print(json.dumps({"rows": s["rows"], "self_mb": self_kb / 1024, "children_mb": child_kb / 1024,
                      "total_mb": (self_kb + child_kb) / 1024, "rss_before_dump_mb": before,
                      "dump_peak_self_mb": _status_mb("VmHWM") if reset else None}))


def _status_mb(key: str) -> float | None:
    """A /proc/self/status memory line (kB) in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def dump_rss(teacher: Path, root: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.folder", "--rss-child", str(teacher), str(root), str(out),
           str(args.image_size), str(args.workers), str(args.batch_size)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(res.stdout.strip().splitlines()[-1])


def rss_rows(args: argparse.Namespace, root: Path, work: Path, teacher: Path) -> dict[str, Any]:
    quarter, nq = quarter_folder(root, work / "quarter")
    small, full = [], []
    for r in range(args.repeats):  # alternate, as the timings do; peak RSS varies a little run to run
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            if which == 0:
                small.append(dump_rss(teacher, quarter, work / "rss-quarter.h5", args))
            else:
                full.append(dump_rss(teacher, root, work / "rss-full.h5", args))
    for x in small + full:  # the dump's own peak: the process's peak reset before it, plus the largest worker's
        x["dump_peak_mb"] = (x["dump_peak_self_mb"] if x["dump_peak_self_mb"] is not None else x["self_mb"]) \
            + x["children_mb"]
    s_mb = statistics.median(x["dump_peak_mb"] for x in small)
    f_mb = statistics.median(x["dump_peak_mb"] for x in full)
    return {"row": "c. dump peak RSS (self + largest worker), N/4 vs N images",
            "a": f"{nq} images", "a_rss_mb": s_mb, "b": f"{full[0]['rows']} images", "b_rss_mb": f_mb,
            "growth_mb": f_mb - s_mb, "note": "a_rss_mb/b_rss_mb: the main process's VmHWM, reset (/proc/self/clear_refs 5) "
            "just before the dump, plus the largest worker's ru_maxrss (children_mb). The main process's "
            "ru_maxrss (self_mb) is its lifetime peak, set while importing torch (1.0-1.4 GB here at any N), so "
            "it cannot see the dump; it is kept in the runs for reference",
            "a_lifetime_rss_mb": statistics.median(x["total_mb"] for x in small),
            "b_lifetime_rss_mb": statistics.median(x["total_mb"] for x in full),
            "a_dump_peak_self_mb": _median_or_none(x["dump_peak_self_mb"] for x in small),
            "b_dump_peak_self_mb": _median_or_none(x["dump_peak_self_mb"] for x in full), "target": "N images <= N/4 images + 50 MB", "met": f_mb <= s_mb + 50,
            "a_runs": small, "b_runs": full}


def _median_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------------ main


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"folder-{args.images}"
    t0 = time.perf_counter()
    log(f"folder of {args.images} images at {root} (made once, then reused) ...")
    make_folder(root, args.images)
    made_s = time.perf_counter() - t0
    teacher = make_teacher(work / f"teacher-{args.teacher_arch}-{args.image_size}.pt", args.teacher_arch,
                           args.image_size)
    cache = work / "bench.h5"
    log("[a] dump-logits vs plain ImageFolder loop ...")
    rows = [dump_rows(args, root, teacher, cache)]
    log("[b] student epoch, cached KD vs labels only ...")
    rows.append(student_rows(args, root, cache))
    log("[c] peak RSS, N/4 vs N images ...")
    rows.append(rss_rows(args, root, work, teacher))
    return {"command": " ".join(["python -m benchmarks.folder", *(args.argv or [])]),
            "cpu": cpu_model(), "cores": os.cpu_count(), "torch": str(torch.__version__),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "images": args.images, "image_size": args.image_size, "workers": args.workers,
            "batch_size": args.batch_size, "repeats": args.repeats, "teacher_arch": args.teacher_arch,
            "folder_seconds": made_s, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    a, b, c = result["rows"]
    lines = ["| benchmark | A | B | A | B | ratio | target | met |", "|---|---|---|---:|---:|---:|---|---|"]
    for r in (a, b):
        lines.append(f"| {r['row']} | {r['a']} | {r['b']} | {r['a_seconds']:.2f} s | {r['b_seconds']:.2f} s | "
                     f"{r['ratio']:.2f}x | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    lines.append(f"| {c['row']} | {c['a']} | {c['b']} | {c['a_rss_mb']:.0f} MB | {c['b_rss_mb']:.0f} MB | "
                 f"+{c['growth_mb']:.0f} MB | {c['target']} | {'yes' if c['met'] else 'NO'} |")
    if c["a_dump_peak_self_mb"] is not None:
        lines += ["", f"Row c: main process's peak RSS (VmHWM, reset just before the dump) + the largest worker's; "
                      f"the main process alone peaks at {c['a_dump_peak_self_mb']:.0f} MB ({c['a']}) and "
                      f"{c['b_dump_peak_self_mb']:.0f} MB ({c['b']}); ru_maxrss self + children (lifetime, "
                      f"import-time peak) {c['a_lifetime_rss_mb']:.0f} / {c['b_lifetime_rss_mb']:.0f} MB."]
    lines += ["", f"Of row a: listing the folder {a['list_seconds']:.2f} s; dump-logits' loop (read, hash and "
                  f"decode in workers + teacher + write) {a['dump_loop_seconds']:.2f} s = {a['ratio_loop_only']:.2f}x "
                  f"the plain loop. The hashing pass the dump no longer makes (list + hash; other jobs' start-up) "
                  f"{a['hash_seconds']:.2f} s.",
              "", f"`{result['command']}` — {result['cpu']}, {result['cores']} cores, torch {result['torch']} "
                  f"({result['torch_threads']} threads); N={result['images']} images, S={result['image_size']}, "
                  f"W={result['workers']} workers, B={result['batch_size']}, teacher {result['teacher_arch']} "
                  f"(untrained), median of {result['repeats']} repeats"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000, help="Images in the train split (default 5000).")
    ap.add_argument("--image-size", type=int, default=64, help="S: the square input side (default 64).")
    ap.add_argument("--workers", type=int, default=2, help="W: DataLoader workers on both sides (default 2).")
    ap.add_argument("--batch-size", type=int, default=128, help="B: batch size on both sides (default 128).")
    ap.add_argument("--repeats", type=int, default=3, help="Timed repeats per side; the median is reported.")
    ap.add_argument("--teacher-arch", default="student-cnn",
                    help="Untrained architecture timed as the teacher (default student-cnn: a light model, so the "
                         "input pipeline, what this measures, is most of the time; teacher-cnn takes ~3 s a batch here).")
    ap.add_argument("--work", default="runs/bench-folder", help="Scratch folder: the images, teacher, caches.")
    ap.add_argument("--out", default="benchmarks/folder.json", help="JSON results file.")
    ap.add_argument("--smoke", action="store_true", help="Tiny run (60 images, 1 repeat) for the tests.")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.repeats, args.image_size = 60, 1, min(args.image_size, 32)
        args.batch_size = min(args.batch_size, 16)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--rss-child"]:
        rss_child(argv[1:])
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
