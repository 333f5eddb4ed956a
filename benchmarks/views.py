"""Stored augmentation views (issue 10): what they cost, and what they are worth.

    # speed (~6 min on 2 cores): cache size against K; dump time per view vs teacher inference per
    # image (target <= 1.05x); a student epoch replaying views vs a randomly augmented CE epoch (<= 1.10x)
    .venv/bin/python -m benchmarks.views speed --out runs/views/speed.json --threads 1

    # accuracy (~2.5 h on 2 cores): prepare once, then one sweep per student, side by side
    .venv/bin/python -m benchmarks.views prepare --out runs/views                  # teacher + 2 caches, ~25 min
    .venv/bin/python -m benchmarks.views plan --out runs/views                     # the run list and its time
    .venv/bin/python -m benchmarks.views accuracy --out runs/views --student student-cnn --threads 1 &
    .venv/bin/python -m benchmarks.views accuracy --out runs/views --student student-convpool --threads 1 --limits 5000 &
    wait; .venv/bin/python -m benchmarks.views table --out runs/views              # -> runs/views/table.md

Accuracy design (Fashion-MNIST, validation = the last 5,000 training images, never trained on):
one teacher-cnn trained with the policy (``--teacher-epochs``, fresh shift-flip views every
epoch), two caches of the 55,000 training rows dumped at ``--precision`` (bf16 by default:
16 views cost 16 teacher passes): a single-view cache and a ``--views``-view cache (16).
For each student, number of labelled images (5,000 and 55,000) and seed (3):

- ``labels only`` / ``labels only + aug``: cross-entropy, without / with fresh augmentation;
- ``(a) KD, no aug``: the single-view cache;
- ``(b) KD + aug, one view (inconsistent)``: augmented images, the original image's logits;
- ``(c) KD, K views``: views replayed from the view cache, K = 1, 4, 16. K < 16 uses the first
  K stored views (``train-student --cache-views K``), which *are* a K-view dump with the same
  seed: view parameters depend only on (seed, view, dataset index) (kdcache.data.view_schedule.sample_views),
  and the teacher's logits only on the view; so one dump serves every K.

Every distilled condition trains at each (T, alpha) of a small grid (alpha 0.9; T in {2, 4}
at 5,000 images, T = 4 at 55,000: the issue's anchor); ``table`` picks each condition's
configuration on the validation split and reports
its test accuracy, mean ± std over the seeds. Runs are RunSpecs trained by kdcache.experiments.sweep, so
an interrupted sweep resumes and ``kdcache report runs/views/<student>`` draws its curves.
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
import torch

from benchmarks.run import machine, make_teacher, median_pair, row, teacher_inference
from kdcache.cache import CacheLayout, CacheWriter
from kdcache.config import STUDENT_TRAIN, TEACHER_TRAIN, DataConfig, DumpConfig, RunOptions, ViewConfig
from kdcache.data.augment import parse_policy, view_record
from benchmarks import train_batches
from kdcache.data.datasets import load_dataset
from kdcache.data.replay import view_images
from kdcache.data.view_schedule import ViewPlan, sample_views
from kdcache.experiments.results import load_results
from kdcache.experiments.sweep import RunSpec, run_sweep
from kdcache.jobs.dump import cache_attrs, dump_logits
from kdcache.jobs.student_targets import distillation_loss
from kdcache.jobs.training import train_teacher
from kdcache.train.checkpoint import load_checkpoint
from kdcache.train.loop import build_optimizer, cross_entropy_loss, train_one_epoch
from kdcache.train.models import build_model
from kdcache.train.teacher import TeacherSpec, load_teacher

STUDENTS = ("student-cnn", "student-convpool")
CONDITIONS = ("labels only", "labels only + aug", "(a) KD, no aug", "(b) KD + aug, one view (inconsistent)")
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------- settings


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement's configuration (``--smoke``: a few seconds, for tests)."""
    if args.smoke:
        return {"smoke": True, "val_size": 64, "eval_limit": 50, "train_rows": 128, "limits": [64], "seeds": [0], "views": 2,
                "view_counts": [1, 2], "teacher_epochs": 1, "epochs": {64: 1}, "temperatures": {64: [4.0]},
                "alphas": [0.9], "policy": args.policy, "precision": "fp32", "lr": STUDENT_TRAIN.lr}
    return {"val_size": 5000, "eval_limit": None, "train_rows": 55_000, "limits": sorted(args.limits),
            "seeds": list(range(args.seeds)), "views": args.views, "view_counts": sorted({1, 4, args.views}),
            "teacher_epochs": args.teacher_epochs, "epochs": {5000: args.epochs_small, 55_000: args.epochs_large},
            "temperatures": {5000: args.T_small, 55_000: args.T_large}, "alphas": args.alpha, "policy": args.policy,
            "precision": args.precision, "lr": STUDENT_TRAIN.lr}


def paths(out: Path, s: dict[str, Any]) -> dict[str, Path]:
    return {"teacher": out / "teacher.pt", "plain": out / "caches" / "plain.h5",
            "views": out / "caches" / f"views{s['views']}.h5", "prepare": out / "prepare.json"}


# ------------------------------------------------------------------------------------ prepare


def prepare(out: Path, s: dict[str, Any], data_dir: str, log=print) -> dict[str, Any]:
    """Train (or reuse) the augmented teacher and dump (or reuse) both caches; returns what was made."""
    p = paths(out, s)
    data_cfg = DataConfig(data_dir=data_dir, val_size=s["val_size"], eval_limit=s["eval_limit"],
                          limit=s["train_rows"] if s["train_rows"] < 55_000 else None)
    log(f"teacher: teacher-cnn, {s['teacher_epochs']} epochs with --augment {s['policy']} ...")
    t = train_teacher(p["teacher"], data_cfg=data_cfg, cfg=replace(TEACHER_TRAIN, epochs=s["teacher_epochs"]), views=ViewConfig(augment=s["policy"]), run=RunOptions(reuse=True, overwrite=True))
    made = {"teacher": {"test_accuracy": t["test"]["accuracy"], "val_accuracy": (t.get("val") or {}).get("accuracy"),
                        "seconds": t["seconds"], "reused": t["reused"]}}
    made["teacher"]["test_accuracy_on_views"] = view_accuracy(p["teacher"], s, data_dir)
    for name, views in (("plain", None), ("views", s["views"])):
        log(f"cache {p[name]}: {s['train_rows']} rows" + (f" x {views} views" if views else "") + " ...")
        kw = {} if views is None else {"views": ViewConfig(views=views, augment=s["policy"])}
        d = dump_logits(p["teacher"], p[name], **kw, dump=DumpConfig(precision=s["precision"], device="auto"), data_cfg=DataConfig(data_dir=data_dir, limit=s["train_rows"]), run=RunOptions(reuse=True, overwrite=True))
        made[name] = {"path": str(p[name]), "seconds": d["seconds"], "bytes": d["bytes"], "reused": d["reused"]}
    from kdcache.files import write_json

    write_json(p["prepare"], {**made, "settings": s})
    return made


def view_accuracy(teacher_path: Path, s: dict[str, Any], data_dir: str) -> float:
    """The teacher's test accuracy on one random view of each test image (is it invariant to the policy?)."""
    test = load_dataset("fashion-mnist", "test", data_dir, s["eval_limit"])
    teacher = load_teacher(TeacherSpec(checkpoint=str(teacher_path)), test.info)
    policy = parse_policy(s["policy"])
    params = torch.from_numpy(sample_views(policy, test.indices.numpy(), 1, 12345, test.info.image_size))
    hits = 0
    for i in range(0, len(test), 1000):
        z = teacher.view_logits(view_images(test.images, range(i, min(i + 1000, len(test))), params[i:i + 1000],
                                            policy), CPU)[:, 0]
        hits += int((z.argmax(1) == test.labels[i:i + 1000]).sum())
    return hits / len(test)


# -------------------------------------------------------------------------------------- specs


def specs(s: dict[str, Any], p: dict[str, Path]) -> list[RunSpec]:
    """Every run of one student's sweep (conditions x limits x seeds x (T, alpha))."""
    aug, out = s["policy"], []
    for limit in s["limits"]:
        e = s["epochs"][limit]
        for seed in s["seeds"]:
            out.append(RunSpec.make(limit, None, 0.0, seed, e, CONDITIONS[0]))
            out.append(RunSpec.make(limit, None, 0.0, seed, e, CONDITIONS[1], augment=aug))
            for t in s["temperatures"][limit]:
                for a in s["alphas"]:
                    out.append(RunSpec.make(limit, t, a, seed, e, CONDITIONS[2]))
                    out.append(RunSpec.make(limit, t, a, seed, e, CONDITIONS[3], augment=aug, allow_inconsistent=True))
                    for k in s["view_counts"]:
                        out.append(RunSpec.make(limit, t, a, seed, e, f"(c) KD, views K={k}",
                                                caches=[str(p["views"])], cache_views=k))
    return out


def accuracy(out: Path, s: dict[str, Any], student: str, data_dir: str, threads: int | None,
             progress: bool) -> dict[str, Any]:
    p = paths(out, s)
    if not (p["plain"].exists() and p["views"].exists()):
        raise SystemExit(f"{p['plain']} / {p['views']} missing: run `python -m benchmarks.views prepare --out {out}` "
                         "first (once, before the per-student sweeps run side by side)")
    data_cfg = DataConfig(data_dir=data_dir, val_size=s["val_size"], eval_limit=s["eval_limit"])
    cfg = replace(STUDENT_TRAIN, lr=s["lr"])
    return run_sweep(out / student, p["plain"], specs(s, p), arch=student, data_cfg=data_cfg, cfg=cfg,
                     progress=progress, report=not s.get("smoke"))  # threads: set by main()


# -------------------------------------------------------------------------------------- table


def summarize(out: Path, students=STUDENTS) -> dict[str, Any]:
    """Per (student, condition, limit): the (T, alpha, epochs) best on validation, its test mean ± std."""
    cells: dict[tuple[str, str, int], dict[str, Any]] = {}
    conditions: list[str] = []
    for student in students:
        if not (out / student / "results.json").exists():
            continue
        rows = [r for r in load_results(out / student)["rows"] if r.get("test_accuracy") is not None]
        configs: dict[tuple, list[dict]] = {}
        for r in rows:
            configs.setdefault((r["condition"], r["limit"], r["temperature"], r["alpha"], r["epochs"]), []).append(r)
        for (cond, limit, t, a, e), rs in configs.items():
            if cond not in conditions:
                conditions.append(cond)
            val = statistics.fmean(r["val_accuracy"] for r in rs) if all(r["val_accuracy"] is not None for r in rs) \
                else None
            test = [r["test_accuracy"] for r in rs]
            cand = {"val": val, "mean": statistics.fmean(test), "std": statistics.stdev(test) if len(test) > 1 else None,
                    "seeds": len(test), "config": ("labels" if t is None else f"T={t:g} a={a:g}") + f" e={e}"}
            key = (student, cond, limit)
            if key not in cells or (cand["val"] or 0) > (cells[key]["val"] or 0):
                cells[key] = cand
    return {"cells": cells, "conditions": conditions}


def format_table(summary: dict[str, Any]) -> str:
    cells = summary["cells"]
    cols = sorted({(st, lim) for st, _, lim in cells}, key=lambda c: (STUDENTS.index(c[0]) if c[0] in STUDENTS
                                                                      else 9, c[1]))
    lines = ["| condition | " + " | ".join(f"{st}, {lim:,} labelled" for st, lim in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for cond in summary["conditions"]:
        out = []
        for st, lim in cols:
            c = cells.get((st, cond, lim))
            out.append("-" if c is None else f"{100 * c['mean']:.2f}" + (f" ± {100 * c['std']:.2f}" if c["std"]
                                                                         is not None else "") + f"% ({c['config']})")
        lines.append(f"| {cond} | " + " | ".join(out) + " |")
    lines += ["", "Test accuracy, mean ± std over seeds, of the configuration (T, alpha, epochs) with the best mean "
                  "accuracy on the validation split (held-out training images) in each condition."]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- speed


def epoch_seconds(arch: str, batches, loss_fn, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model(arch)
    opt, sched = build_optimizer(model, replace(STUDENT_TRAIN, epochs=1, device="cpu"), len(batches))
    t0 = time.perf_counter()
    train_one_epoch(model, batches, loss_fn, (opt, sched), CPU)
    return time.perf_counter() - t0


def cache_sizes(work: Path, data, policy, view_counts, dtype: str = "float32") -> dict[str, float]:
    """Bytes per image of a cache of ``data`` with no views and with each K (same layout as dump-logits writes)."""
    out, n = {}, len(data)
    teacher = make_teacher(work / "teacher-untrained.pt", data, None)
    attrs = cache_attrs(load_teacher(TeacherSpec(checkpoint=str(teacher)), data.info), data.info, "fp32")
    for k in [None, *view_counts]:
        z = np.random.default_rng(0).normal(0, 5, size=(n, *((k,) if k else ()), 10)).astype(np.float32)
        path = work / f"size-{k or 'plain'}.h5"
        record = None if k is None else view_record(policy, include_original=False, seed=0)
        layout = CacheLayout(num_classes=10, dtype=dtype, num_views=k or 1, view_policy=record)
        with CacheWriter(path, layout, num_samples=n, attrs=attrs, overwrite=True) as w:
            params = None if k is None else sample_views(policy, data.indices.numpy(), k, 0, data.info.image_size)
            w.write(0, z, data.labels, data.indices, data.sample_ids, view_params=params)
        out["no views (schema 1.1)" if k is None else f"K={k} views"] = path.stat().st_size / n
        path.unlink()
    return out


def speed(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = max(256, round(55_000 * args.scale))
    n_dump = max(64, round(2000 * args.scale))
    data = load_dataset("fashion-mnist", "train", args.data_dir, limit=n)
    policy = parse_policy(args.policy)
    rows: list[dict[str, Any]] = []
    teacher_path = make_teacher(work / "teacher-untrained.pt", data, args.teacher)
    teacher, _ = load_checkpoint(teacher_path)
    k = args.speed_views

    def dump(r: int) -> float:
        return dump_logits(teacher_path, work / "views.h5", dump=DumpConfig(device="cpu"), data_cfg=DataConfig(data_dir=args.data_dir, limit=n_dump), views=ViewConfig(views=k, augment=args.policy), run=RunOptions(overwrite=True))["seconds"]

    a, b, ta, tb = median_pair(args.repeats, dump, lambda r: teacher_inference(teacher, data.head(n_dump), 1000))
    rows.append(row(f"dump-logits --views {k}, per view, vs teacher inference per image", f"dump of {k} views",
                    a / k, "teacher inference", b, "<= 1.05x", a / k / b <= 1.05, images=n_dump, views=k,
                    seconds_per_view=a / (k * n_dump), a_runs=ta, b_runs=tb))

    v = args.views
    z = torch.from_numpy(np.random.default_rng(0).normal(0, 5, size=(n, v, 10)).astype(np.float32))
    stored = torch.from_numpy(sample_views(policy, data.indices.numpy(), v, 0, data.info.image_size))
    for arch in STUDENTS:
        def replay(r: int) -> float:
            plan = ViewPlan(policy, data.info.image_size, r, stored)
            return epoch_seconds(arch, train_batches(data, 128, seed=r, targets=z, views=plan),
                                 distillation_loss(4.0, 0.9), r)

        def fresh(r: int) -> float:
            plan = ViewPlan(policy, data.info.image_size, r)
            return epoch_seconds(arch, train_batches(data, 128, seed=r, views=plan), cross_entropy_loss, r)

        a, b, ta, tb = median_pair(args.repeats, replay, fresh)
        rows.append(row(f"{arch} epoch, {v} stored views replayed vs random augmentation", "replayed views + KD",
                        a, "fresh views + cross-entropy", b, "<= 1.10x", a / b <= 1.10, samples=n, a_runs=ta,
                        b_runs=tb))
    sizes = cache_sizes(work, data.head(min(n, 10_000)), policy, sorted({1, 4, 16, v}))
    return {"command": " ".join(["python -m benchmarks.views", *sys.argv[1:]]), "machine": machine(),
            "torch_threads": torch.get_num_threads(), "scale": args.scale, "repeats": args.repeats,
            "policy": args.policy, "rows": rows, "bytes_per_image": sizes}


def format_speed(r: dict[str, Any]) -> str:
    lines = ["| benchmark | A | B | A (s) | B (s) | ratio | target | met |", "|---|---|---|---:|---:|---:|---|---|"]
    lines += [f"| {x['row']} | {x['a']} | {x['b']} | {x['a_seconds']:.3g} | {x['b_seconds']:.3g} | {x['ratio']:.2f}x | "
              f"{x['target']} | {'yes' if x['met'] else 'NO'} |" for x in r["rows"]]
    lines += ["", "| cache (float32, 10 classes) | bytes / image |", "|---|---:|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in r["bytes_per_image"].items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- plan


def plan(out: Path, s: dict[str, Any], data_dir: str, threads: int | None) -> dict[str, Any]:
    """The run list and its estimated time, from one timed 2,000-image epoch per student (1 thread)."""
    torch.set_num_threads(threads or 1)
    data = load_dataset("fashion-mnist", "train", data_dir, limit=2000)
    policy = parse_policy(s["policy"])
    per_sample = {}
    for arch in STUDENTS:
        plan_ = ViewPlan(policy, data.info.image_size, 0)
        t = epoch_seconds(arch, train_batches(data, 128, views=plan_), cross_entropy_loss, 0)
        per_sample[arch] = t / len(data)
    runs = specs(s, paths(out, s))
    eval_n = (s["eval_limit"] or 10_000) + s["val_size"]
    total = {arch: sum(r.epochs * (r.limit + s["val_size"] / 3) * per_sample[arch] for r in runs)
             + len(runs) * eval_n / 3 * per_sample[arch] for arch in STUDENTS}
    return {"runs_per_student": len(runs), "seconds_per_train_sample": per_sample, "estimated_seconds": total}


# --------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("speed", "prepare", "plan", "accuracy", "table"))
    ap.add_argument("--out", default="runs/views", help="Folder (accuracy) or JSON file (speed).")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--policy", default="shift-flip")
    ap.add_argument("--student", choices=STUDENTS, default="student-cnn", help="accuracy: the sweep to run")
    ap.add_argument("--views", type=int, default=16, help="Views per image in the view cache (K = 1, 4 and this).")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--limits", type=int, nargs="+", choices=(5000, 55_000), default=[5000, 55_000],
                    help="Labelled-image counts to sweep (e.g. only 5000 for the slower student).")
    ap.add_argument("--T-small", type=float, nargs="+", default=[2.0, 4.0], help="Temperatures at 5,000 images.")
    ap.add_argument("--T-large", type=float, nargs="+", default=[4.0], help="Temperatures at 55,000 images.")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.9])
    ap.add_argument("--epochs-small", type=int, default=30, help="Epochs at 5,000 labelled images.")
    ap.add_argument("--epochs-large", type=int, default=10, help="Epochs at 55,000 labelled images.")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="The teacher's precision in dumps.")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="Tiny sizes (seconds), for tests.")
    # speed
    ap.add_argument("--scale", type=float, default=1.0, help="speed: multiply the sample counts.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed-views", type=int, default=4, help="speed: views per image in the timed dump.")
    ap.add_argument("--teacher", default=None, help="speed: teacher checkpoint to time (default: untrained teacher-cnn).")
    ap.add_argument("--workdir", default="data/bench-views", help="speed: scratch folder.")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    out = Path(args.out)
    if args.command == "speed":
        r = speed(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=2))
        print(format_speed(r))
        return r
    s = settings(args)
    if args.command == "prepare":
        r = prepare(out, s, args.data_dir, log)
        log(json.dumps(r, indent=2))
        return r
    if args.command == "plan":
        r = plan(out, s, args.data_dir, args.threads)
        for arch, sec in r["estimated_seconds"].items():
            print(f"{arch}: {r['runs_per_student']} runs, ~{sec / 3600:.1f} h on one core "
                  f"({1e3 * r['seconds_per_train_sample'][arch]:.3f} ms per augmented training image)")
        return r
    if args.command == "accuracy":
        return accuracy(out, s, args.student, args.data_dir, args.threads, not args.quiet)
    r = summarize(out)
    text = format_table(r)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return r


if __name__ == "__main__":
    main()
