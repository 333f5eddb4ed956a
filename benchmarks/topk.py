"""Top-k caches: what they cost in bytes, in soft-target error, and in student accuracy.

    .venv/bin/python -m benchmarks.topk --out runs/topk                      # both parts, ~42 min on 2 cores
    .venv/bin/python -m benchmarks.topk --out runs/topk --part synthetic     # (a) only, ~23 min
    .venv/bin/python -m benchmarks.topk --out runs/topk --part fmnist        # (b) only, ~19 min
    .venv/bin/python -m benchmarks.topk --out runs/topk --smoke              # seconds (tests)

(Runtimes: one student run took ~37 s (a) and ~35 s (b) on the shared 2-core VM at one
thread; 33 runs per part, plus ~3 min for (a)'s teacher, caches and KL table.)

(a) **1,000 classes** (benchmarks/topk_task.py: a hierarchical synthetic task, an MLP teacher
trained here in about a minute). Its logits over the training rows go into a full float16 and
float32 cache and top-K caches (K = 5, 10, 20, 50, 100, float16 values; K = 10 also float32),
written by the same CacheWriter dump-logits uses. Tables:
  - bytes per row (whole file / rows) and the ratio to the float16 full cache;
  - the error of the rebuilt teacher distribution, in float64 against the full float32 logits,
    at T = 1, 2, 4, 20: mean KL(p_T ‖ bucket) (what the bucket loss trains on: the k kept classes + one
    tail bucket; only the tail-mass approximation shows here, 0 at T = 1 and 2 but for float16
    rounding), the same without the stored T = 2 sum (the quadratic fallback, for comparison),
    and mean KL(p_T ‖ dense) (the distribution rebuilt over all C classes with the tail's mass
    spread evenly, as TinyViT and ml-dr rebuild theirs: it adds the tail's shape, which no top-k
    keeps);
  - students (an MLP on 20,000 labelled rows, 3 seeds) from the full float16 cache, top-5 and
    top-10 caches, labels only, and a random-sampling prototype at top-10's bytes (top-5 + 5 tail
    classes drawn from the tail's distribution at T, Anshumann et al. 2025; built in memory, not
    a cache kind);
    T picked per condition on a validation split; written as a sweep table, so that
    `kdcache report OUT/synthetic` renders it; the issue's target (>= 20x smaller than float16
    logits, <= 0.2 pp below the full cache's students) checked per condition.
(b) **Fashion-MNIST**, 5,000 labelled samples (--val-size 5000): student-cnn from top-K caches
(K = 1, 2, 3, 5) derived from the main job's full cache (TopK.encode of its float32 rows, which
is byte for byte what `dump-logits --top-k K` writes), against the full cache and labels only;
T picked on validation; one RunSpec per run through kdcache.experiments.sweep.run_sweep, so `kdcache
report OUT/fmnist` makes the table and it resumes where it stopped.

Everything is resumable (finished runs are skipped) and uses one torch thread by default.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmarks.topk_caches import (
    INDEX_BYTES,
    cache_attrs,
    derive_topk_cache,
    kl_table,
    size_table,
    write_caches,
)
from benchmarks.topk_task import TaskConfig, logits_of, make_task, mlp
from kdcache.cache import open_cache
from kdcache.config import DEFAULT_TOPK_REBUILD, STUDENT_TRAIN, DataConfig, TrainConfig
from benchmarks import train_batches
from kdcache.data.samples import ImageData
from kdcache.experiments.report import summarize, write_report
from kdcache.experiments.results import (
    RESULTS_FORMAT,
    RESULTS_JSON,
    load_results,
    save_results,
)
from kdcache.experiments.sweep import RunSpec, run_sweep
from kdcache.files import sha256_file, write_json
from kdcache.jobs.student_targets import distillation_loss
from kdcache.train.loop import cross_entropy_loss, evaluate, fit

SIZE_TARGET, ACCURACY_TARGET = 20.0, 0.002  # the issue's: >= 20x smaller than float16 logits, <= 0.2 pp lost


@dataclass(frozen=True)
class SyntheticPlan:
    task: TaskConfig = TaskConfig()
    val_size: int = 10_000  # last rows of the train split: students pick T/alpha on them, the teacher never sees them
    teacher_hidden: tuple[int, ...] = (512, 512)
    teacher_train: TrainConfig = TrainConfig(epochs=6, batch_size=256, lr=0.1, device="cpu")
    kl_ks: tuple[int, ...] = (5, 10, 20, 50, 100)
    kl_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 20.0)
    kl_rows: int = 20_000
    student_hidden: tuple[int, ...] = (256,)
    student_limit: int = 20_000  # labelled rows the students train on
    student_train: TrainConfig = TrainConfig(epochs=15, batch_size=128, lr=0.05, device="cpu")
    student_ks: tuple[int, ...] = (5, 10)
    sampled: tuple[int, int] | None = (5, 5)  # prototype: top-5 + 5 sampled tail classes, top-10's bytes (None: skip)
    sampled_temperatures: tuple[float, ...] = (2.0,)  # the full cache's best T in a one-seed pilot
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0)
    alphas: tuple[float, ...] = (0.9,)
    seeds: tuple[int, ...] = (0, 1, 2)


SMOKE_SYNTHETIC = SyntheticPlan(
    task=TaskConfig(train_per_class=3, test_per_class=1), val_size=500, teacher_hidden=(32,),
    teacher_train=TrainConfig(epochs=1, batch_size=256, lr=0.1, device="cpu"), kl_ks=(5, 10), kl_rows=500,
    kl_temperatures=(1.0, 4.0), student_hidden=(16,), student_limit=1000,
    student_train=TrainConfig(epochs=1, batch_size=256, lr=0.05, device="cpu"), student_ks=(10,), sampled=(2, 3),
    sampled_temperatures=(4.0,), temperatures=(4.0,), seeds=(0,))


# ----------------------------------------------------------------------------------- part (a): students


def _teacher(plan: SyntheticPlan, train: ImageData, val: ImageData, test: ImageData, out: Path
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    path = out / "teacher.pt"
    model = mlp(plan.teacher_hidden, plan.task.classes, plan.task.dim)
    made_by = teacher_plan(plan)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        # another task, split or teacher is not this benchmark's teacher (a file from before plans were recorded
        # is taken if its weights fit)
        if _comparable(saved.get("plan", made_by)) != _comparable(made_by) or not _fits(model, saved["state_dict"]):
            raise SystemExit(f"{path} was trained for another plan ({saved.get('plan')}, now {made_by}); "
                             "use a new --out")
        model.load_state_dict(saved["state_dict"])
        return model, saved["summary"]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    fit(model, train_batches(train, plan.teacher_train.batch_size, seed=0), cross_entropy_loss, plan.teacher_train)
    summary = {"arch": "mlp-" + "-".join(map(str, (plan.task.dim, *plan.teacher_hidden, plan.task.classes))),
               "train_seconds": time.perf_counter() - t0, "test_accuracy": evaluate(model, test)["accuracy"],
               "val_accuracy": evaluate(model, val)["accuracy"], "train_rows": len(train)}
    torch.save({"state_dict": model.state_dict(), "summary": summary, "plan": made_by}, path)
    return model, summary


def _fits(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


# TaskConfig fields added after teachers were saved: compared only where they differ from these defaults, so the
# teachers saved before still match their plan
_LATER_TASK_FIELDS = {"dim": 64, "centre_scale": None}


def _comparable(plan: dict[str, Any]) -> dict[str, Any]:
    task = {k: v for k, v in plan.get("task", {}).items() if _LATER_TASK_FIELDS.get(k, object()) != v}
    return {**plan, "task": task}


def teacher_plan(plan: SyntheticPlan) -> dict[str, Any]:
    """What the synthetic teacher depends on (plain JSON values): its task, split, network and training."""
    return json.loads(json.dumps({"task": asdict(plan.task), "val_size": plan.val_size,
                                  "teacher_hidden": plan.teacher_hidden, "teacher_train": plan.teacher_train.to_dict()}))


def _student_run(plan: SyntheticPlan, data: ImageData, val: ImageData, test: ImageData, targets: Any,
                 T: float | None, alpha: float, seed: int, topk_rebuild: str = DEFAULT_TOPK_REBUILD,
                 loss_fn: Any = None) -> dict[str, Any]:
    cfg = replace(plan.student_train, seed=seed)
    torch.manual_seed(seed)
    model = mlp(plan.student_hidden, plan.task.classes, plan.task.dim)
    batches = train_batches(data, cfg.batch_size, seed=seed, targets=targets)
    loss = loss_fn or (distillation_loss(T or 1.0, alpha, topk_rebuild) if alpha > 0 else cross_entropy_loss)
    t0 = time.perf_counter()
    history = fit(model, batches, loss, cfg, eval_data=val, eval_name="val")
    seconds = time.perf_counter() - t0
    ev, vv = evaluate(model, test), evaluate(model, val)
    return {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"], "val_accuracy": vv["accuracy"],
            "train_seconds": round(seconds, 3), "eval_samples": ev["num_samples"], "checkpoint": None,
            "history": history}


def run_synthetic(out: Path, plan: SyntheticPlan, progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    full, test = make_task(plan.task)
    keep = len(full) - plan.val_size
    train, val = full.take(slice(0, keep)), full.take(slice(keep, len(full)))
    teacher, summary = _teacher(plan, train, val, test, out)
    logits = logits_of(teacher, full)  # (N, C): every row of the train split, as dump-logits would cover it
    attrs = cache_attrs(full, summary["arch"], summary["test_accuracy"], sha256_file(out / "teacher.pt"))
    paths = write_caches(out, full, logits, attrs, sorted(set(plan.kl_ks) | set(plan.student_ks)))
    sizes = size_table(paths)
    kl = kl_table(logits[:plan.kl_rows], paths, plan.kl_temperatures)
    p = torch.softmax(torch.from_numpy(logits[:plan.kl_rows]).double(), 1)
    summary["cache_top1_probability"] = p.max(1).values.mean().item()
    summary["cache_entropy_nats"] = (-(p * p.clamp_min(1e-300).log()).sum(1)).mean().item()
    students = _synthetic_students(out / "synthetic", plan, full, train.head(plan.student_limit), val, test,
                                   paths, summary, progress)
    result = {"plan": asdict(plan), "teacher": summary, "sizes": sizes, "kl": kl, "students": students,
              "verdict": verdict(sizes, students, plan)}
    write_json(out / "synthetic.json", result)
    return result


def _synthetic_students(out: Path, plan: SyntheticPlan, full: ImageData, data: ImageData, val: ImageData,
                        test: ImageData, paths: dict[str, Path], teacher: dict[str, Any], progress: bool) -> list:
    """Every (condition, T, alpha, seed) student, saved after each run as a sweep table (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = plan.student_train
    with open_cache(paths["full-float16"]) as c:  # identifies the teacher's logits every condition derives from
        content = c.meta.content_sha256
    settings = {"cache_content_sha256": content, "arch": "mlp-" + "-".join(map(str, (64, *plan.student_hidden,
                                                                                     plan.task.classes))),
                "dataset": full.info.name, "eval_limit": None, "val_size": plan.val_size,
                "train": {k: v for k, v in cfg.to_dict().items() if k not in ("epochs", "seed", "device")}}
    results = load_results(out) if (out / RESULTS_JSON).exists() else \
        {"format": RESULTS_FORMAT, "version": 1, "cache": str(paths["full-float16"]), "settings": settings,
         "teacher": teacher, "rows": []}
    if results["settings"].get("cache_content_sha256") is None:  # a table from before the hash was recorded
        results["settings"]["cache_content_sha256"] = content
    if json.loads(json.dumps(results["settings"])) != json.loads(json.dumps(settings)):
        raise SystemExit(f"{out / RESULTS_JSON} holds runs made with other settings ({results['settings']}, now "
                         f"{settings}); use a new --out")
    done = {r["key"] for r in results["rows"]}
    conditions = [("full float16", "full-float16")] + [(f"top-{k}", f"top{k}-float16") for k in plan.student_ks]
    if plan.sampled:
        conditions.append((f"top-{plan.sampled[0]} + {plan.sampled[1]} sampled (prototype)", "sampled"))
    specs = [(RunSpec.make(len(data), None, 0.0, s, cfg.epochs, "labels only"), None) for s in plan.seeds]
    specs += [(RunSpec.make(len(data), T, a, s, cfg.epochs, cond), source) for cond, source in conditions
              for a in plan.alphas for T in (plan.sampled_temperatures if source == "sampled" else plan.temperatures)
              for s in plan.seeds]
    targets: dict[Any, Any] = {}
    for i, (spec, source) in enumerate(specs):
        if spec.key in done:
            continue
        if source == "sampled":  # built in memory from the full logits, per T: not a cache kind (see the docstring)
            key = (source, spec.temperature)
            if key not in targets:
                with open_cache(paths["full-float32"]) as c:
                    z = c.read(c.align(data.indices.numpy(), sample_ids=data.sample_ids, info=full.info))
                targets[key] = sampled_tail_targets(z, *plan.sampled, spec.temperature)
        else:
            key = source
            if source is not None and source not in targets:
                with open_cache(paths[source]) as c:  # the real path: align the cache to the data, read its rows
                    targets[source] = c.read(c.align(data.indices.numpy(), labels=data.labels.numpy(),
                                                      sample_ids=data.sample_ids, info=full.info))
        r = _student_run(plan, data, val, test, targets.get(key), spec.temperature, spec.alpha, spec.seed)
        results["rows"].append({**spec.to_row(), **r})
        save_results(out, results)
        if progress:
            print(f"[{i + 1}/{len(specs)}] {spec.key}: val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} "
                  f"({r['train_seconds']:.0f}s)", flush=True)
    write_report(out)
    return best_per_condition(results["rows"])


def sampled_tail_targets(logits: np.ndarray, k: int, samples: int, temperature: float, seed: int = 0) -> torch.Tensor:
    """Random-sampled soft targets in the spirit of Anshumann et al. 2025, as pseudo-logits (n, C) for kd_loss.

    The top k classes keep their exact probability at T; the tail's exact mass is split over
    ``samples`` tail classes drawn with replacement from the tail's own distribution at T, in
    proportion to how often each was drawn. Over the draws its expectation is the teacher's
    distribution at T, so the tail's shape is not lost, only made noisy. One draw per row (a
    cache would store it once), the same for every student seed. Storage it would need: k + samples
    class ids and values per row, so ~ (k + samples) x 4 bytes + the tail's statistics.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32)).double() / temperature
    p = torch.softmax(z, dim=1)
    top = torch.topk(z, k, dim=1).indices
    tail = p.scatter(1, top, 0.0)
    mass = tail.sum(1, keepdim=True)
    drawn = torch.multinomial(tail / mass, samples, replacement=True, generator=g)  # (n, samples)
    target = torch.zeros_like(p).scatter(1, top, p.gather(1, top))
    target.scatter_add_(1, drawn, (mass / samples).expand(-1, samples).contiguous())
    return (temperature * torch.log(target.clamp_min(1e-30))).float()  # softmax(./T) = target; 1e-30: ~0 mass


def best_per_condition(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each condition's configuration with the best mean validation accuracy, and its test accuracy over seeds."""
    out = []
    for g in summarize(rows):
        best = g.best if g.configs else g.baseline
        vals = best.values
        out.append({"condition": g.condition, "T": best.temperature, "alpha": best.alpha, "seeds": len(vals),
                    "test_mean": statistics.fmean(vals), "test_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "val_mean": best.val_mean})
    return out


def verdict(sizes: list[dict[str, Any]], students: list[dict[str, Any]], plan: SyntheticPlan) -> list[dict[str, Any]]:
    """Per sparse condition: size ratio and accuracy cost against the full float16 cache, and whether both targets hold.

    The sampled prototype has no cache kind; its size is estimated as a top-(k + samples) row
    of float16 values and uint16 ids plus the same tail statistics and index columns.
    """
    full = next((s for s in students if s["condition"] == "full float16"), None)
    per_row = {r["cache"]: r["bytes_per_row"] for r in sizes}
    rows = []
    for s in students:
        cond = s["condition"]
        if full is None or not cond.startswith("top-"):
            continue
        if "sampled" in cond:
            k, n = plan.sampled
            size, estimated = INDEX_BYTES + (k + n) * (2 + 2) + 12, True
        else:
            size, estimated = per_row[f"top{cond[4:]}-float16"], False
        smaller, lost = per_row["full-float16"] / size, full["test_mean"] - s["test_mean"]
        rows.append({"condition": cond, "smaller_than_full": smaller, "size_estimated": estimated,
                     "accuracy_lost": lost, "met": smaller >= SIZE_TARGET and lost <= ACCURACY_TARGET})
    return rows


# ------------------------------------------------------------------------------- part (b): Fashion-MNIST


@dataclass(frozen=True)
class FmnistPlan:
    cache: str = "data/caches/fmnist-train.h5"  # the main job's full float32 cache (kdcache pipeline)
    data_dir: str = "data"
    limit: int = 5000
    val_size: int = 5000
    eval_limit: int | None = None
    ks: tuple[int, ...] = (1, 2, 3, 5)
    temperatures: tuple[float, ...] = (2.0, 4.0)
    alphas: tuple[float, ...] = (0.9,)  # the best alpha at 5,000 labels in the README's sweep (with alpha 1)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = STUDENT_TRAIN.epochs


def run_fmnist(out: Path, plan: FmnistPlan, progress: bool = True, threads: int | None = 1) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    caches = {k: str(derive_topk_cache(plan.cache, out / f"fmnist-top{k}.h5", k)) for k in plan.ks}
    specs = [RunSpec.make(plan.limit, None, 0.0, s, plan.epochs, "labels only") for s in plan.seeds]
    conditions = [("full", str(plan.cache))] + [(f"top-{k}", caches[k]) for k in plan.ks]
    specs += [RunSpec.make(plan.limit, T, a, s, plan.epochs, cond, caches=[path]) for cond, path in conditions
              for a in plan.alphas for T in plan.temperatures for s in plan.seeds]
    data_cfg = DataConfig(data_dir=plan.data_dir, val_size=plan.val_size, eval_limit=plan.eval_limit)
    if threads:
        torch.set_num_threads(threads)
    run_sweep(out / "fmnist", plan.cache, specs, data_cfg=data_cfg, cfg=replace(STUDENT_TRAIN, device="cpu"),
              progress=progress)
    students = best_per_condition(load_results(out / "fmnist")["rows"])
    sizes = size_table({"full-float32": Path(plan.cache), **{f"top{k}-float16": Path(caches[k]) for k in plan.ks}},
                       base="full-float32")
    return {"plan": asdict(plan), "students": students, "sizes": sizes}


# --------------------------------------------------------------------------------------------- output


def _e(x: float) -> str:
    return f"{x:.1e}" if x else "0"


def format_tables(result: dict[str, Any]) -> str:
    lines = []
    syn = result.get("synthetic")
    if syn:
        t = syn["teacher"]
        lines += [f"## (a) 1,000 classes: teacher {t['arch']}, test accuracy {100 * t['test_accuracy']:.2f}%, on its "
                  f"cached rows mean top-1 probability {t['cache_top1_probability']:.3f}, entropy "
                  f"{t['cache_entropy_nats']:.2f} nats", "",
                  "| cache | target bytes per row | bytes per row at scale (+ index) | float16 full / this | "
                  "this file's bytes per row |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['cache']} | {r['target_bytes_per_row']:.0f} | {r['bytes_per_row']:.0f} | "
                  f"{r['smaller_than_full']:.1f}x | {r['file_bytes_per_row']:.1f} |" for r in syn["sizes"]]
        temps = sorted({r["T"] for r in syn["kl"]})
        lines += ["", "Mean KL(p_T ‖ rebuilt), nats. bucket = what the bucket loss trains on (k classes + tail bucket); "
                      "no T=2 sum = the same from L and the mean alone; dense = tail spread evenly over its classes.", "",
                  "| cache | " + " | ".join(f"T={T:g} tail mass | bucket | no T=2 sum | dense" for T in temps) + " |",
                  "|---|" + "---:|" * (4 * len(temps))]
        by_cache: dict[str, dict[float, dict]] = {}
        for r in syn["kl"]:
            by_cache.setdefault(r["cache"], {})[r["T"]] = r
        for name, per_t in by_cache.items():
            cells = []
            for T in temps:
                r = per_t[T]
                cells += ([f"{r['tail_mass']:.3f}", _e(r["kl_bucket"]), _e(r["kl_bucket_without_t2"]), _e(r["kl_dense"])]
                          if "kl_bucket" in r else ["-", "-", "-", _e(r["kl_dense"])])
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", _students_table(syn["students"]), "", "| condition | float16 full / this | accuracy lost | "
                  f"target (>= {SIZE_TARGET:g}x, <= {100 * ACCURACY_TARGET:g} pp) |", "|---|---:|---:|---|"]
        lines += [f"| {v['condition']} | {v['smaller_than_full']:.1f}x{' (est.)' if v['size_estimated'] else ''} | "
                  f"{100 * v['accuracy_lost']:+.2f} pp | "
                  f"{'met' if v['met'] else 'not met'} |" for v in syn["verdict"]]
    fm = result.get("fmnist")
    if fm:
        lines += ["", f"## (b) Fashion-MNIST, {fm['plan']['limit']:,} labelled samples, student-cnn", "",
                  "| cache | target bytes per row | bytes per row at scale (+ index) | float32 full / this |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {r['cache']} | {r['target_bytes_per_row']:.0f} | {r['bytes_per_row']:.0f} | "
                  f"{r['smaller_than_full']:.2f}x |" for r in fm["sizes"]]
        lines += ["", _students_table(fm["students"])]
    return "\n".join(lines) + "\n"


def _students_table(students: list[dict[str, Any]]) -> str:
    rows = ["| condition | picked on validation | val accuracy | test accuracy (mean ± std) | seeds |",
            "|---|---|---:|---:|---:|"]
    for s in students:
        config = "labels only" if s["T"] is None else f"T={s['T']:g}, alpha={s['alpha']:g}"
        val = "-" if s["val_mean"] is None else f"{100 * s['val_mean']:.2f}%"
        rows.append(f"| {s['condition']} | {config} | {val} | {100 * s['test_mean']:.2f} ± {100 * s['test_std']:.2f}% "
                    f"| {s['seeds']} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="Folder for caches, tables and sweep results (resumable).")
    ap.add_argument("--part", choices=["synthetic", "fmnist", "all"], default="all")
    ap.add_argument("--fmnist-cache", default=FmnistPlan.cache, help="Full float32 Fashion-MNIST train cache.")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on shared cores).")
    ap.add_argument("--smoke", action="store_true", help="Tiny sizes, one seed, one epoch: checks it runs.")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args.part in ("synthetic", "all"):
        result["synthetic"] = run_synthetic(args.out, SMOKE_SYNTHETIC if args.smoke else SyntheticPlan(),
                                            progress=not args.quiet)
    if args.part in ("fmnist", "all"):
        plan = FmnistPlan(cache=args.fmnist_cache, data_dir=args.data_dir)
        if args.smoke:
            plan = replace(plan, limit=200, val_size=100, eval_limit=100, ks=(1, 3), temperatures=(4.0,), seeds=(0,),
                           epochs=1)
        result["fmnist"] = run_fmnist(args.out, plan, progress=not args.quiet, threads=args.threads)
    result["seconds"] = time.perf_counter() - t0
    write_json(args.out / "topk.json", result)
    text = format_tables(result)
    (args.out / "topk.md").write_text(text)
    if not args.quiet:
        print(text)
    return result


if __name__ == "__main__":
    main()
