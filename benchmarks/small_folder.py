"""A torchvision student on a small folder of real photographs, with kdcache's default settings.

The folder: crops of scikit-image's bundled photographs of brick, grass and gravel (one class per
photograph), 48-240 px a side, greyscale, RGB, palette and RGBA, JPEG and PNG. Train crops come from the
left 60% of each photograph, validation crops from the top of the right 40%, test crops from its bottom,
so no test pixel was ever trained on. ``--per-class 140 40 40``: 420 train, 120 validation, 120 test.

Each model (``--models``, torchvision factories) trains with labels only (``train_student`` alpha 0) at the
defaults (nothing but the seed given) for every seed; validation and test accuracy, mean ± std over seeds.
``--batch-size``, ``--lr``, ``--epochs`` override a default to compare settings on the validation split.

    pip install scikit-image     # for this benchmark only
    .venv/bin/python -m benchmarks.small_folder [--models resnet18 mobilenet_v3_small] [--seeds 0 1 2]
                                                [--work runs/small_folder] [--json benchmarks/small-folder.json]

``--merge A.json B.json --json OUT`` joins runs of one label made in separate processes (one per model and
seed, e.g. with OMP_NUM_THREADS=1 on a shared machine). ``--smoke`` is a tiny run for the tests.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.folder import cpu_model
from kdcache.config import STUDENT_TRAIN, DataConfig, DistillConfig, RunOptions
from kdcache.jobs.training import evaluate_checkpoint, train_student
from kdcache.train.models import ModelSpec

CLASSES = ("brick", "grass", "gravel")  # skimage.data photographs, bundled with scikit-image
MODES = ("L", "RGB", "P", "RGBA")


def make_folder(root: Path, per_class: tuple[int, int, int], seed: int = 0) -> tuple[Path, Path]:
    """(ROOT/photos, ROOT/photos-val): train and test, and the validation split as a test split (docstring)."""
    from PIL import Image
    from skimage import data as photos

    train_root, val_root = root / "photos", root / "photos-val"
    done = train_root / f"done-{'-'.join(map(str, per_class))}"
    if done.exists():
        return train_root, val_root
    g = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        src = getattr(photos, name)()  # (H, W) uint8 greyscale
        h, w = src.shape[:2]
        cut = int(0.6 * w)
        regions = {(train_root, "train"): (0, h, 0, cut), (val_root, "test"): (0, h // 2, cut, w),
                   (train_root, "test"): (h // 2, h, cut, w)}
        for ((base, split), (y0, y1, x0, x1)), n in zip(regions.items(), per_class):
            d = base / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ch = int(g.integers(48, min(240, y1 - y0) + 1))
                cw = int(g.integers(48, min(240, x1 - x0) + 1))
                top, left = int(g.integers(y0, y1 - ch + 1)), int(g.integers(x0, x1 - cw + 1))
                im = Image.fromarray(np.ascontiguousarray(src[top:top + ch, left:left + cw]), "L")
                mode = MODES[(i + k) % len(MODES)]
                im = im.convert(mode) if mode != "L" else im
                png = mode in ("P", "RGBA") or i % 3 == 0
                im.save(d / f"{name}_{i:04d}.{'png' if png else 'jpg'}", quality=90)
    done.write_text("ok")
    return train_root, val_root


def settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        return {"per_class": (8, 3, 3), "size": 32, "epochs": 1, "seeds": [0], "models": ["resnet18"]}
    return {"per_class": tuple(args.per_class), "size": 64, "epochs": args.epochs, "seeds": args.seeds,
            "models": args.models}


def run_one(model: str, seed: int, root: Path, val: Path, out: Path, s: dict, args: argparse.Namespace) -> dict:
    """Train one student at the defaults (plus any override); its accuracies and what it resolved to."""
    cfg = replace(STUDENT_TRAIN, seed=seed, batch_size=args.batch_size, lr=args.lr, precision=None,
                  **({} if s["epochs"] is None else {"epochs": s["epochs"]}))
    data_cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=s["size"])
    factory = f"torchvision.models:{model}"
    t0 = time.perf_counter()
    r = train_student(out / f"{model}-s{seed}.pt", DistillConfig(alpha=0.0), model=ModelSpec(factory=factory),
                      data_cfg=data_cfg, cfg=cfg, run=RunOptions(overwrite=True))
    seconds = time.perf_counter() - t0
    v = evaluate_checkpoint(r["checkpoint"], data_cfg=DataConfig(dataset="imagefolder", data_dir=str(val)),
                            student_factory=factory)
    train = r["config"]["train"]
    return {"model": model, "seed": seed, "val_accuracy": v["accuracy"], "test_accuracy": r["test"]["accuracy"],
            "train_accuracy": r["history"][-1]["train_accuracy"], "batch_size": train["batch_size"],
            "lr": train["lr"], "epochs": train["epochs"], "seconds": seconds, "warnings": r["warnings"]}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    s = settings(args)
    work = Path(args.work)
    root, val = make_folder(work, s["per_class"])
    slug = "".join(c if c.isalnum() else "-" for c in args.label)  # runs of one label in one folder
    rows, summary = [], {}
    for model in s["models"]:
        mine = []
        for seed in s["seeds"]:
            row = run_one(model, seed, root, val, work / "runs" / slug, s, args)
            log(f"{model} seed {seed}: val {row['val_accuracy']:.2%} test {row['test_accuracy']:.2%} train "
                f"{row['train_accuracy']:.2%} (batch {row['batch_size']}, lr {row['lr']:g}, {row['seconds']:.0f}s)")
            mine.append(row)
        summary.update(summarise(mine))
        log(f"{model}: val {summary[model]['val_accuracy']['mean']:.2%} ± {summary[model]['val_accuracy']['std']:.2%}, "
            f"test {summary[model]['test_accuracy']['mean']:.2%} ± {summary[model]['test_accuracy']['std']:.2%}")
        rows += mine
    return {"label": args.label, "cpu": cpu_model(), "command": "python -m benchmarks.small_folder " + " ".join(args.argv),
            "folder": {"train": s["per_class"][0] * len(CLASSES), "val": s["per_class"][1] * len(CLASSES),
                       "test": s["per_class"][2] * len(CLASSES), "image_size": s["size"]},
            "overrides": {"batch_size": args.batch_size, "lr": args.lr, "epochs": s["epochs"],
                          "settle_batchnorm": not args.no_settle},
            "summary": summary, "runs": rows}


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Mean ± std over seeds of each model's accuracies."""
    models = dict.fromkeys(r["model"] for r in rows)
    return {m: {k: mean_std([r[k] for r in rows if r["model"] == m])
                for k in ("val_accuracy", "test_accuracy", "train_accuracy")} for m in models}


def merge(paths: list[str]) -> dict[str, Any]:
    """One result of several runs of the same label (e.g. one process per model and seed): runs joined, re-summarised."""
    parts = [p for path in paths for p in json.loads(Path(path).read_text())]
    if len({p["label"] for p in parts}) != 1:
        raise SystemExit(f"merge: runs of one label only, got {sorted({p['label'] for p in parts})}")
    rows = sorted((r for p in parts for r in p["runs"]), key=lambda r: (r["model"], r["seed"]))
    return {**parts[0], "command": [p["command"] for p in parts], "summary": summarise(rows), "runs": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--per-class", nargs=3, type=int, default=[140, 40, 40], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--epochs", type=int, default=None, help="default: the student's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the student's rule")
    p.add_argument("--lr", type=float, default=None, help="default: the student's for image files")
    p.add_argument("--no-settle", action="store_true",
                   help="leave BatchNorm statistics as training left them (to measure what settling them does)")
    p.add_argument("--label", default="defaults", help="names this run in the JSON (e.g. the revision)")
    p.add_argument("--work", default="runs/small_folder")
    p.add_argument("--json", default=None, help="append this run to this JSON file (a list of runs)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="instead of running: join these files' runs of one label into one result (--json)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.merge:
        return append(args.json, merge(args.merge))
    if args.no_settle:
        import kdcache.train.batchnorm as batchnorm
        batchnorm.STALE_SHARE, share = 1.0, batchnorm.STALE_SHARE  # (1 - momentum) ** steps is never above 1
    try:
        result = run(args)
    finally:
        if args.no_settle:
            batchnorm.STALE_SHARE = share
    return append(args.json, result)


def append(path: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """Add ``result`` to the list of results in the JSON file ``path`` (none: do nothing); returns it."""
    if path:
        runs = json.loads(Path(path).read_text()) if Path(path).exists() else []
        Path(path).write_text(json.dumps(runs + [result], indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
