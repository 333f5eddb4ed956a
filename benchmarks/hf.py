"""A Hugging Face dataset read by kdcache, against the plain ``DataLoader(ds.with_transform(...))`` loop.

    .venv/bin/python -m benchmarks.hf [--images 5000] [--image-size 64] [--workers 2] [--batch-size 128]
                                      [--repeats 3] [--work runs/bench-hf] [--out benchmarks/hf.json]

The JPEG folder of benchmarks.folder (``--images`` photos, 80-300 px, mixed modes, 10 classes) is made once
under ``--work``, then saved once as a Hugging Face DatasetDict (``save_to_disk``; each row the file's bytes,
an ``Image`` and a ``ClassLabel`` feature). One row, the same W workers, B batch size and S image size on both
sides, an untrained student-cnn as the teacher so that reading images dominates:

a. dump-logits over ``hf:PATH`` (kdcache.jobs.dump.dump_logits, the whole call: opening the dataset, hashing every
   row's encoded bytes, teacher load, decoding in workers, HDF5 write) vs the plain loop
   ``DataLoader(load_from_disk(PATH)["train"].with_transform(Resize + CenterCrop + PILToTensor), B,
   num_workers=W)`` + the same model's forward on normalised float batches under inference_mode       <= 1.05x
   The hashing alone (load_dataset("hf:PATH")) and dump-logits' own loop (its ``seconds``) are timed too.

Each side runs once untimed first (the first read of the Arrow files fills the page cache: 6 s vs 0.6 s for 40
images here); then A/B alternate which side runs first in each repeat (median of ``--repeats``); the load
average before and after is recorded, since the machine may be shared. ``--smoke`` is a tiny run for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.folder import CLASSES, cpu_model, make_folder, make_teacher, median_pair
from kdcache.config import DataConfig, DumpConfig, RunOptions
from kdcache.data.datasets import load_dataset
from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD
from kdcache.files import write_json
from kdcache.jobs.dump import dump_logits
from kdcache.train.checkpoint import load_checkpoint

HF_VERSION = 1  # bump when make_hf changes what it writes


def make_hf(root: Path, dst: Path) -> Path:
    """ROOT (an ImageFolder of train/test) saved as a DatasetDict at ``dst``: the files' bytes, Image + ClassLabel."""
    import datasets

    stamp = dst / "made.json"
    want = {"folder": json.loads((root / "made.json").read_text()), "version": HF_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return dst
    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    splits = {}
    for split in ("train", "test"):
        files = [(f, k) for k, c in enumerate(CLASSES) for f in sorted((root / split / c).iterdir())]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _ in files], "label": [k for _, k in files]},
            features=features)
    datasets.DatasetDict(splits).save_to_disk(str(dst))
    stamp.write_text(json.dumps(want))
    return dst


class _Transform:
    """The plain loop's batch transform: decode, RGB, Resize + CenterCrop + PILToTensor (picklable for workers)."""

    def __init__(self, size: int):
        from torchvision import transforms

        self.tf = transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size),
                                      transforms.PILToTensor()])

    def __call__(self, batch: dict) -> dict:
        return {"image": [self.tf(im.convert("RGB")) for im in batch["image"]], "label": batch["label"]}


def plain_loop(path: Path, model: torch.nn.Module, size: int, workers: int, batch_size: int) -> float:
    """Seconds for the dataset's ``with_transform`` through a DataLoader + the model's forward (no hashing, no
    writing)."""
    import datasets
    from torch.utils.data import DataLoader

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    ds = datasets.load_from_disk(str(path))["train"].with_transform(_Transform(size))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            model((batch["image"].float().div_(255.0) - mean) / std).float()
    return time.perf_counter() - t0


def dump_row(args: argparse.Namespace, path: Path, teacher: Path, cache: Path) -> dict[str, Any]:
    model, _ = load_checkpoint(teacher)
    loops: list[float] = []
    data_cfg = DataConfig(dataset=f"hf:{path}", image_size=args.image_size, workers=args.workers)

    def dump(r: int) -> float:
        t0 = time.perf_counter()
        s = dump_logits(teacher, cache, dump=DumpConfig(batch_size=args.batch_size, device="cpu"), data_cfg=data_cfg,
                        run=RunOptions(progress=False, overwrite=True))
        wall = time.perf_counter() - t0
        assert s["rows"] == args.images
        loops.append(s["seconds"])
        return wall

    plain = lambda r: plain_loop(path, model, args.image_size, args.workers, args.batch_size)  # noqa: E731
    dump(-1), plain(-1)  # untimed warm-up of each side: the first read of the Arrow files pays the page cache
    loops.clear()
    a, b, ta, tb = median_pair(args.repeats, dump, plain)
    hashes = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        load_dataset(f"hf:{path}", "train", image_size=args.image_size, workers=args.workers)
        hashes.append(time.perf_counter() - t0)
    loop = statistics.median(loops)
    return {"row": "a. dump-logits hf:PATH vs plain DataLoader(ds.with_transform) + forward",
            "a": "kdcache dump_logits (open + hash bytes + decode + teacher + HDF5)", "a_seconds": a,
            "b": "DataLoader(load_from_disk(PATH)['train'].with_transform(...)) + forward", "b_seconds": b,
            "ratio": a / b, "target": "<= 1.05x", "met": a / b <= 1.05,
            "hash_seconds": statistics.median(hashes), "hash_runs": hashes,
            "dump_loop_seconds": loop, "dump_loop_runs": loops, "ratio_loop_only": loop / b,
            "a_runs": ta, "b_runs": tb}


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log(f"folder of {args.images} images, then the same as a Hugging Face dataset, under {work} (made once) ...")
    root = make_folder(work / f"folder-{args.images}", args.images)
    path = make_hf(root, work / f"hf-{args.images}")
    teacher = make_teacher(work / f"teacher-{args.teacher_arch}-{args.image_size}.pt", args.teacher_arch,
                           args.image_size)
    load_before = os.getloadavg()
    log("[a] dump-logits hf:PATH vs plain with_transform loop ...")
    row = dump_row(args, path, teacher, work / "bench-hf.h5")
    return {"command": " ".join(["python -m benchmarks.hf", *(args.argv or [])]),
            "cpu": cpu_model(), "cores": os.cpu_count(), "torch": str(torch.__version__),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
            "images": args.images, "image_size": args.image_size, "workers": args.workers,
            "batch_size": args.batch_size, "repeats": args.repeats, "teacher_arch": args.teacher_arch, "rows": [row]}


def format_table(result: dict[str, Any]) -> str:
    r = result["rows"][0]
    return (f"{result['images']} JPEGs as a Hugging Face dataset, S={result['image_size']}, W={result['workers']}, "
            f"B={result['batch_size']}, median of {result['repeats']} ({result['cpu']}, load "
            f"{result['loadavg_before'][0]:.2f} -> {result['loadavg_after'][0]:.2f})\n"
            f"{r['row']}: {r['a_seconds']:.2f} s vs {r['b_seconds']:.2f} s = {r['ratio']:.3f}x (target {r['target']}); "
            f"hashing alone {r['hash_seconds']:.2f} s; dump loop alone {r['dump_loop_seconds']:.2f} s = "
            f"{r['ratio_loop_only']:.3f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--teacher-arch", default="student-cnn")
    p.add_argument("--work", default="runs/bench-hf")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--smoke", action="store_true", help="a tiny run for the tests (40 images, 1 repeat, 0 workers)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.repeats, args.workers, args.batch_size = 40, 1, 0, 16
    args.argv = argv if argv is not None else sys.argv[1:]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    if args.out:
        write_json(args.out, result)
    if not args.quiet:
        print(format_table(result))
    return result


if __name__ == "__main__":
    main()
