"""Students from top-k rows under each soft-target rebuild (kd_loss's ``topk_rebuild``), on the 1,000-class task.

    .venv/bin/python -m benchmarks.topk_rebuild prepare --out runs/topk-rebuild      # teacher, caches, KL table
    .venv/bin/python -m benchmarks.topk_rebuild run --out runs/topk-rebuild --worker 0 --workers 2 &
    .venv/bin/python -m benchmarks.topk_rebuild run --out runs/topk-rebuild --worker 1 --workers 2 &
    .venv/bin/python -m benchmarks.topk_rebuild summarize --out runs/topk-rebuild    # results JSON + tables

Same task, teacher, split (validation = the last --val-size rows of the train split), students
and training as benchmarks.topk's part (a) (SyntheticPlan), its own caches (written by
CacheWriter, as dump-logits writes them) and its student run (benchmarks.topk._student_run);
only the rebuild of top-k soft targets varies. ``--epochs``/``--rows`` shrink every run alike.
Each run is one JSON file under OUT/runs (resumable; workers split the runs between them).
T is picked per condition by mean validation accuracy over the seeds; test accuracy is
reported as mean ± std (sample std) over the seeds at that T.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.topk import SMOKE_SYNTHETIC, SyntheticPlan, _student_run, _teacher
from benchmarks.topk_caches import cache_attrs, kl_table, size_table, write_caches
from benchmarks.topk_task import logits_of, make_task
from kdcache.cache import open_cache
from kdcache.cache.targets import TopK, to_float
from kdcache.files import sha256_file, write_json

# (condition, cache, rebuild): None cache = labels only
CONDITIONS = [("labels only", None, None), ("full float16", "full-float16", None),
              ("top-10 bucket", "top10-float16", "bucket"), ("top-10 spread", "top10-float16", "spread"),
              ("top-5 spread", "top5-float16", "spread"), ("top-5 bucket", "top5-float16", "bucket"),
              ("top-10 shaped (experimental)", "top10-float16", "shaped")]


def tail_entropy(t: TopK, T: float) -> torch.Tensor:
    """The entropy of the teacher's distribution within its tail at T, (B,), from the stored statistics.

    With f(b) = log Σ_tail exp(b z_j) (TopK.tail_log_mass at T = 1/b), the tail's own
    distribution at b has entropy f(b) - b f'(b); f is the cubic through log n, μ, L₂, L (the
    module docstring of kdcache.cache.targets), so H = log n - a b² - 2 c b³, clipped to [0, log n].
    """
    n, b = t.num_classes - t.k, 1.0 / T
    log_n = math.log(n)
    mu = torch.minimum(t.tail_mean, t.tail_logsumexp - log_n)
    r1, r2 = t.tail_logsumexp - log_n - mu, t.tail_logsumexp_t2 - log_n - mu / 2
    a, c = 8.0 * r2 - r1, 2.0 * r1 - 8.0 * r2
    return (log_n - a * b * b - 2.0 * c * b ** 3).clamp(0.0, log_n)


def shaped_loss(T: float, alpha: float, iterations: int = 12, gamma_max: float = 4.0):
    """Experimental rebuild: the tail's exact mass at T spread over the tail classes in the student's own order,
    p_j ∝ q_j^γ (detached), γ per row such that the tail's entropy is the teacher's (tail_entropy): γ = 0 is the
    even spread, γ = 1 leaves the student's tail shape as it is (the bucket loss's gradient)."""
    def loss_fn(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        t = to_float(batch.teacher_logits)
        s = outputs.float()
        kept = torch.zeros_like(s, dtype=torch.bool).scatter(1, t.classes, True)
        log_sup = torch.log_softmax(t.support_logits(T), dim=-1)  # (B, k + 1)
        x = s.detach() / T
        want = tail_entropy(t, T)
        lo, hi = torch.zeros(len(s)), torch.full((len(s),), gamma_max)
        for _ in range(iterations):
            g = (lo + hi) / 2
            log_pi = torch.log_softmax((g[:, None] * x).masked_fill(kept, -math.inf), dim=1)
            h = -(log_pi.exp() * log_pi.nan_to_num(0.0, 0.0, 0.0)).sum(1)
            lo, hi = torch.where(h > want, g, lo), torch.where(h > want, hi, g)
        log_pi = torch.log_softmax((((lo + hi) / 2)[:, None] * x).masked_fill(kept, -math.inf), dim=1)
        log_p = (log_sup[:, -1:] + log_pi).scatter(1, t.classes, log_sup[:, :-1])
        log_q = torch.log_softmax(s / T, dim=1)
        soft = (log_p.exp() * (log_p - log_q)).sum(1).mean() * (T * T)
        return (1 - alpha) * torch.nn.functional.cross_entropy(s, batch.labels) + alpha * soft
    return loss_fn


def plan_of(args: argparse.Namespace) -> SyntheticPlan:
    plan = SMOKE_SYNTHETIC if args.smoke else SyntheticPlan()
    return replace(plan, student_limit=args.rows, student_train=replace(plan.student_train, epochs=args.epochs),
                   temperatures=tuple(args.T), seeds=tuple(args.seeds))


def _split(plan: SyntheticPlan):
    full, test = make_task(plan.task)
    keep = len(full) - plan.val_size
    return full, full.take(slice(0, keep)), full.take(slice(keep, len(full))), test


def prepare(out: Path, plan: SyntheticPlan) -> None:
    out.mkdir(parents=True, exist_ok=True)
    full, train, val, test = _split(plan)
    teacher, summary = _teacher(plan, train, val, test, out)
    logits = logits_of(teacher, full)
    attrs = cache_attrs(full, summary["arch"], summary["test_accuracy"], sha256_file(out / "teacher.pt"))
    paths = write_caches(out, full, logits, attrs, (5, 10))
    kl = kl_table(logits[:5000], {k: paths[k] for k in ("full-float16", "top5-float16", "top10-float16")},
                  (1.0, 2.0, 4.0))
    write_json(out / "prepared.json", {"teacher": summary, "sizes": size_table(paths), "kl_5000_rows": kl})


def specs(plan: SyntheticPlan, conditions: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for cond, cache, rebuild in CONDITIONS:
        if cond not in conditions:
            continue
        for T in ([None] if cache is None else plan.temperatures):
            for s in plan.seeds:
                key = f"{cond}|T={T}|seed={s}"
                out.append({"key": key, "condition": cond, "cache": cache, "rebuild": rebuild, "T": T,
                            "alpha": 0.0 if cache is None else plan.alphas[0], "seed": s})
    return out


def run(out: Path, plan: SyntheticPlan, conditions: Sequence[str], worker: int, workers: int) -> None:
    full, train, val, test = _split(plan)
    data = train.head(plan.student_limit)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    targets: dict[str, Any] = {}
    for i, spec in enumerate(specs(plan, conditions)):
        path = out / "runs" / (spec["key"].replace("|", "_").replace(" ", "-") + ".json")
        if i % workers != worker or path.exists():
            continue
        cache = spec["cache"]
        if cache is not None and cache not in targets:
            with open_cache(out / f"{cache}.h5") as c:  # the real path: align the cache to the data, read its rows
                targets[cache] = c.read(c.align(data.indices.numpy(), labels=data.labels.numpy(),
                                                sample_ids=data.sample_ids, info=full.info))
        t0 = time.perf_counter()
        rebuild = spec["rebuild"] or "bucket"
        r = _student_run(plan, data, val, test, targets.get(cache), spec["T"], spec["alpha"], spec["seed"],
                         "bucket" if rebuild == "shaped" else rebuild,
                         shaped_loss(spec["T"], spec["alpha"]) if rebuild == "shaped" else None)
        r.pop("history", None)
        write_json(path, {**spec, **r, "epochs": plan.student_train.epochs, "rows": len(data)})
        print(f"{spec['key']}: val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)


def student_table(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per condition (in ``names`` order): each T's seeds, validation mean, test mean ± std, and the T picked on validation."""
    table = []
    for cond in names:
        mine = [r for r in runs if r["condition"] == cond]
        if not mine:
            continue
        per_t = {}
        for T in sorted({r["T"] for r in mine}, key=lambda t: -1 if t is None else t):
            rs = [r for r in mine if r["T"] == T]
            te = [r["test_accuracy"] for r in rs]
            per_t[str(T)] = {"seeds": len(rs), "val_mean": statistics.fmean(r["val_accuracy"] for r in rs),
                             "test_mean": statistics.fmean(te), "test_std": statistics.stdev(te) if len(te) > 1 else 0.0}
        best = max(per_t, key=lambda t: per_t[t]["val_mean"])
        table.append({"condition": cond, "picked_T": best, **per_t[best], "per_T": per_t})
    return table


def table_markdown(table: Sequence[dict[str, Any]], temperatures: Sequence[float]) -> str:
    """The student table as markdown: test mean ± std (validation mean) at each T, the picked T and its test accuracy."""
    temps = [str(T) for T in temperatures]
    lines = ["| condition | " + " | ".join(f"T={t} test (val)" for t in temps) + " | picked T | test mean ± std |",
             "|---|" + "---:|" * (len(temps) + 2)]
    for row in table:
        cells = [(f"{100 * row['per_T'][t]['test_mean']:.2f} ± {100 * row['per_T'][t]['test_std']:.2f} "
                  f"({100 * row['per_T'][t]['val_mean']:.2f})" if t in row["per_T"] else "-") for t in temps]
        if row["picked_T"] == "None":
            cells = ["-"] * len(temps)
        lines.append(f"| {row['condition']} | " + " | ".join(cells) + f" | {row['picked_T']} | "
                     f"{100 * row['test_mean']:.2f} ± {100 * row['test_std']:.2f} |")
    return "\n".join(lines) + "\n"


def summarize(out: Path, plan: SyntheticPlan, result_path: Path | None) -> dict[str, Any]:
    runs = [r for r in (json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))) if "condition" in r]
    table = student_table(runs, [c for c, _, _ in CONDITIONS])
    result = {"plan": asdict(plan), "prepared": json.loads((out / "prepared.json").read_text()),
              "students": table, "runs": runs}
    write_json(out / "rebuild.json", result)
    if result_path:
        write_json(result_path, result)
    text = table_markdown(table, plan.temperatures)
    (out / "rebuild.md").write_text(text)
    print(text)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["prepare", "run", "summarize"])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=SyntheticPlan.student_train.epochs)
    ap.add_argument("--rows", type=int, default=SyntheticPlan.student_limit, help="labelled rows students train on")
    ap.add_argument("--T", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conditions", nargs="+", default=[c for c, _, _ in CONDITIONS])
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--result", type=Path, help="also write the summary JSON here (e.g. docs/results/...)")
    ap.add_argument("--smoke", action="store_true", help="benchmarks.topk's tiny plan (tests): pass --epochs 1 --rows N")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    plan = plan_of(args)
    if args.step == "prepare":
        prepare(args.out, plan)
    elif args.step == "run":
        run(args.out, plan, args.conditions, args.worker, args.workers)
    else:
        summarize(args.out, plan, args.result)


if __name__ == "__main__":
    main()
