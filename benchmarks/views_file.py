"""crop-flip views cut from the original file (v3) vs from the decoded centre crop (v2), on real photographs.

The folder: crops of varied sizes (48–240 px a side) and modes (greyscale and RGB, JPEG and PNG) of
scikit-image's bundled photographs of textures, one class per photograph (``CLASSES``). Train crops
come from the left 60% of each photograph, validation crops from the top of the right 40%, test
crops from its bottom, so no test pixel was ever trained on. scikit-image is needed for this
benchmark only (``pip install scikit-image``; not a kdcache dependency).

``accuracy``: one teacher (teacher-cnn trained with fresh crop-flip views cut from the files, as
torchvision's RandomResizedCrop trains), two caches of K views of the training images, v3 (the box
cut from the file) and v2 (the box cut from the S×S centre crop), same view seed; a student per
cache and seed, same settings; validation and test accuracy, mean ± std over the seeds.

``speed``: the same dump of K views and the same student epoch replaying them, v3 vs v2,
alternating sides in one run (median of the repeats), with the CPU model recorded.

    pip install scikit-image     # for this benchmark only
    .venv/bin/python -m benchmarks.views_file accuracy --out runs/views_file --json docs/results/views_file.json
    .venv/bin/python -m benchmarks.views_file speed --out runs/views_file --json docs/results/views_file.json

(``--json`` adds this run's part to the file, so the two commands fill one file; ``all`` runs both.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.folder import cpu_model, median_pair
from kdcache.cache import open_cache
from kdcache.config import STUDENT_TRAIN, TEACHER_TRAIN, DataConfig, DistillConfig, DumpConfig, RunOptions, ViewConfig
from kdcache.data.augment import CropFlip, CropFlipFile
from kdcache.data.cached_dataset import CachedDataset
from kdcache.data.datasets import load_dataset
from kdcache.data.loader import LoaderConfig, make_loader
from kdcache.data.view_schedule import sample_views
from kdcache.files import write_json
from kdcache.jobs.dump import dump_logits
from kdcache.jobs.training import evaluate_checkpoint, train_student, train_teacher
from kdcache.train.loss import kd_loss
from kdcache.train.models import build_model

CLASSES = ("brick", "grass", "gravel", "cell")  # skimage.data photographs, bundled with scikit-image
POLICIES = {"v3": "crop-flip", "v2": CropFlip()}  # a name on files is v3; the v2 object is kept as given


def settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        return {"per_class": (6, 2, 3), "size": 32, "views": 2, "teacher_epochs": 1, "epochs": 1, "seeds": [0],
                "student": "student-cnn", "T": 4.0, "alpha": 0.9, "repeats": 1, "speed_per_class": (8, 1, 1)}
    return {"per_class": (100, 25, 50), "size": 64, "views": 8, "teacher_epochs": 15, "epochs": args.epochs,
            "seeds": [0, 1, 2], "student": args.student, "T": 4.0, "alpha": 0.9, "repeats": args.repeats,
            "speed_per_class": (500, 1, 1)}


def make_photos(root: Path, per_class: tuple[int, int, int], seed: int = 0) -> tuple[Path, Path]:
    """(ROOT, VAL): ROOT/train and ROOT/test, VAL/test (validation) of crops of real photographs (module docstring)."""
    from PIL import Image
    from skimage import data as photos

    train_root, val_root = root / "photos", root / "photos-val"
    if (train_root / "done").exists():
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
                kind = (i + k) % 4  # greyscale and RGB, JPEG and PNG
                im = im.convert("RGB") if kind in (1, 3) else im
                im.save(d / f"{i:04d}.{'jpg' if kind < 2 else 'png'}", quality=90)
    (train_root / "done").write_text("ok")
    return train_root, val_root


def prepare(out: Path, s: dict[str, Any], log=print) -> dict[str, Any]:
    """The folder, the teacher and the two caches (reused when already made)."""
    root, val = make_photos(out, s["per_class"])
    data_cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=s["size"])
    log(f"teacher on {root} ...")
    t = train_teacher(out / "teacher.pt", model="teacher-cnn", data_cfg=data_cfg,
                      cfg=replace(TEACHER_TRAIN, epochs=s["teacher_epochs"], lr=0.005, precision="fp32", seed=0),
                      views=ViewConfig(augment="crop-flip"), run=RunOptions(reuse=True, overwrite=True))
    made = {"folder": str(root), "val_folder": str(val), "teacher_test_accuracy": t["test"]["accuracy"]}
    for name, policy in POLICIES.items():
        log(f"cache {name}: {s['views']} views ...")
        d = dump_logits(out / "teacher.pt", out / f"{name}.h5", data_cfg=data_cfg, dump=DumpConfig(precision="fp32"),
                        views=ViewConfig(views=s["views"], augment=policy), run=RunOptions(reuse=True, overwrite=True))
        with open_cache(d["cache"]) as c:
            made[name] = {"cache": d["cache"], "version": c.meta.view_policy["version"], "seconds": d["seconds"]}
    assert made["v3"]["version"] == 3 and made["v2"]["version"] == 2, made
    return made


def accuracy(out: Path, s: dict[str, Any], log=print) -> dict[str, Any]:
    made = prepare(out, s, log)
    rows = []
    for seed in s["seeds"]:
        for name in (("v3", "v2") if seed % 2 == 0 else ("v2", "v3")):
            log(f"student {s['student']} seed {seed} on {name} views ...")
            path = out / f"student-{s['student']}-{name}-s{seed}.pt"
            r = train_student(path, DistillConfig(caches=(made[name]["cache"],), temperature=s["T"], alpha=s["alpha"]),
                              model=s["student"], data_cfg=DataConfig(data_dir=made["folder"]),
                              cfg=replace(STUDENT_TRAIN, epochs=s["epochs"], lr=0.002, seed=seed, precision="fp32"),
                              run=RunOptions(reuse=True, overwrite=True))
            v = evaluate_checkpoint(path, data_cfg=DataConfig(dataset="imagefolder", data_dir=made["val_folder"]),
                                    device="cpu")
            rows.append({"views": name, "seed": seed, "val_accuracy": v["accuracy"], "test_accuracy": r["test"]["accuracy"]})
    summary = {}
    for name in POLICIES:
        for split in ("val", "test"):
            acc = [r[f"{split}_accuracy"] for r in rows if r["views"] == name]
            summary[f"{name}_{split}"] = [statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0]
    diff = [a["test_accuracy"] - b["test_accuracy"] for a in rows if a["views"] == "v3"
            for b in rows if b["views"] == "v2" and b["seed"] == a["seed"]]
    summary["v3_minus_v2_test"] = [statistics.mean(diff), statistics.stdev(diff) if len(diff) > 1 else 0.0]
    return {"prepare": made, "rows": rows, "summary": summary, "settings": s}


def student_epoch(data, cache: str, arch: str, s: dict[str, Any], epoch: int) -> float:
    """Seconds of one student epoch replaying the cache's views (decode + cut in 2 workers, KD step)."""
    torch.manual_seed(epoch)
    model = build_model(arch, in_channels=3, num_classes=len(CLASSES), image_size=(s["size"], s["size"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    ds = CachedDataset(data, cache)
    loader = make_loader(ds, LoaderConfig(batch_size=64, shuffle=True, seed=epoch, workers=2))
    loader.set_epoch(epoch)
    t0 = time.perf_counter()
    for batch in loader:
        loss = kd_loss(model(batch.images), batch.teacher_logits, batch.labels, s["T"], s["alpha"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def replay_seconds(data, policy, size: int) -> float:
    """Seconds to build one view of every image of ``data`` (view_images) and standardise it, in this process."""
    from kdcache.data.replay import view_images
    from kdcache.data.samples import normalize, standardize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    params = torch.from_numpy(sample_views(policy, data.indices.numpy(), 1, 0, (size, size))[:, 0])
    mean, std = data.info.mean, data.info.std
    t0 = time.perf_counter()
    for b in range(0, len(data), 64):
        rows = torch.arange(b, min(b + 64, len(data)))
        v = view_images(data.images, rows, params[rows], policy)
        normalize(v, mean, std) if v.dtype == torch.uint8 else standardize(v, mean, std)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return seconds


def speed_teacher(path: Path, size: int) -> Path:
    """An untrained student-cnn as the dump's teacher (as benchmarks.folder does): a cheap forward, so reading and
    cutting the views, what v3 changes, is most of the time, and a ratio is the strictest."""
    from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD
    from kdcache.data.images import InputTransform
    from kdcache.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("student-cnn", 3, len(CLASSES), (size, size))
    config = {"arch": "student-cnn", "in_channels": 3, "num_classes": len(CLASSES), "image_size": [size, size],
              "dataset": "imagefolder", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
              "class_names": sorted(CLASSES), "input_transform": InputTransform(size).record(),
              "note": "untrained, for benchmarks"}
    return save_checkpoint(path, model, config, overwrite=True)


def speed(out: Path, s: dict[str, Any], log=print) -> dict[str, Any]:
    """Its own folder of the same kind (``speed_per_class`` training crops per photograph): each side dumps its
    cache, then a student epoch replays that cache."""
    root, _ = make_photos(out / "speed", s["speed_per_class"], seed=1)
    data = load_dataset("imagefolder", "train", root, image_size=s["size"], workers=2)
    teacher = speed_teacher(out / "speed-teacher.pt", s["size"])
    data_cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=s["size"], workers=2)

    def dump(name: str):
        def run(r: int) -> float:
            d = dump_logits(teacher, out / f"speed-{name}.h5", data_cfg=data_cfg,
                            dump=DumpConfig(precision="fp32", device="cpu"),
                            views=ViewConfig(views=s["views"], augment=POLICIES[name]), run=RunOptions(overwrite=True))
            return d["seconds"]
        return run

    log("speed: dump v3 vs v2 ...")
    d3, d2, d3s, d2s = median_pair(s["repeats"], dump("v3"), dump("v2"))
    log("speed: student epoch v3 vs v2 ...")
    e3, e2, e3s, e2s = median_pair(s["repeats"], lambda r: student_epoch(data, out / "speed-v3.h5", s["student"], s, r),
                                   lambda r: student_epoch(data, out / "speed-v2.h5", s["student"], s, r))
    log("speed: the replayer alone, one view per image, in this process ...")
    r3, r2, r3s, r2s = median_pair(s["repeats"], lambda r: replay_seconds(data, CropFlipFile(), s["size"]),
                                   lambda r: replay_seconds(data, CropFlip(), s["size"]))
    return {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "images": len(data), "views": s["views"],
            "replay_one_view": {"v3_s": r3, "v2_s": r2, "ratio": r3 / r2, "v3_runs": r3s, "v2_runs": r2s,
                                "what": "view_images + standardisation of every training image, batches of 64, "
                                        "no workers, 1 torch thread"},
            "dump_teacher": "untrained student-cnn",
            "image_size": s["size"], "workers": 2, "repeats": s["repeats"],
            "dump": {"v3_s": d3, "v2_s": d2, "ratio": d3 / d2, "v3_runs": d3s, "v2_runs": d2s},
            "student_epoch": {"v3_s": e3, "v2_s": e2, "ratio": e3 / e2, "v3_runs": e3s, "v2_runs": e2s,
                              "student": s["student"]}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("accuracy", "speed", "all"))
    ap.add_argument("--out", default="runs/views_file")
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--student", default="student-cnn")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a tiny folder and one epoch (tests)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings(args)
    result: dict[str, Any] = {}
    if args.what in ("accuracy", "all"):
        result["accuracy"] = accuracy(out, s, log)
        write_json(out / "accuracy.json", result["accuracy"])
    if args.what in ("speed", "all"):
        result["speed"] = speed(out, s, log)
        write_json(out / "speed.json", result["speed"])
    if args.json:  # merged into what an earlier part wrote there
        path = Path(args.json)
        import json

        earlier = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**earlier, **result})
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2, default=str))
