"""Low-rank codes vs top-k and full logits, at equal bytes, on two 1,000-class teachers.

    P=/work/main/.venv/bin/python
    $P -m benchmarks.lowrank prepare --out runs/lowrank --teacher a      # teacher, caches, basis, KL table
    $P -m benchmarks.lowrank run --out runs/lowrank --teacher a --worker 0 --workers 2 &
    $P -m benchmarks.lowrank run --out runs/lowrank --teacher a --worker 1 --workers 2 &
    $P -m benchmarks.lowrank summarize --out runs/lowrank --result docs/results/lowrank.json

Teacher ``a`` is benchmarks.topk's synthetic task (64-dimensional inputs, MLP 64-512-512-1000);
teacher ``b`` the same generator at 512 input dimensions (``TaskConfig.dim``), so the classes'
centres, and the teacher's logits, are not low-rank by construction (MLP 512-512-512-1000).
Students, split, training and runs are benchmarks.topk_rebuild's (its ``_split``, ``_student_run``,
``student_table``); only the soft targets differ. A low-rank condition trains on
``decode(encode(z))`` of each row with the encoder it names (``projection`` or ``kl``: see
kdcache.cache.lowrank), the basis fitted on FIT_ROWS sampled rows of the cache
(kdcache.cache.lowrank.sample_rows, as ``kdcache compress`` fits it): the float logits a
low-rank cache gives training. The KL table is measured on the HELDOUT_ROWS rows none of
the bases was fitted on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmarks.topk import SMOKE_SYNTHETIC, SyntheticPlan, _student_run, _teacher
from benchmarks.topk_caches import INDEX_BYTES, _topk_kl, cache_attrs, size_table, write_caches
from benchmarks.topk_rebuild import _split, student_table, table_markdown
from benchmarks.topk_task import TaskConfig, logits_of
from kdcache.cache import open_cache
from kdcache.cache.lowrank import (
    DEFAULT_KL_BUDGET,
    DEFAULT_PACKED_BITS,
    Basis,
    Codec,
    choose_rank,
    code_bytes,
    fit_basis,
    mean_kl,
    measure_kl,
    packing_sample,
    round_trip,
    sample_rows,
    with_packing,
)
from kdcache.cache.targets import TopK
from kdcache.errors import ConfigError
from kdcache.files import sha256_file, write_json

TEACHERS = {"a": SyntheticPlan(),
            "b": replace(SyntheticPlan(), task=replace(TaskConfig(), dim=512)),
            # b's centres 1.7x farther apart (scale (64/512)^(1/4) instead of (64/512)^(1/2)): b's teacher, 34% on
            # test, is worse than labels alone as a teacher; c's is a realistic one on 512-dim inputs
            "c": replace(SyntheticPlan(), task=replace(TaskConfig(), dim=512, centre_scale=(64 / 512) ** 0.25))}
RANKS = (32, 48, 64, 72)  # int8 codes: 36 / 52 / 68 / 76 target bytes a row (top-10 float16 takes 52); 72 is the
# largest rank at least 20x smaller than float16 full rows (100 bytes a row with the index columns: 20.2x)
PACKED_RANKS = (96, 121)  # packed codes at kdcache's default 5 bits a component: 60 and 76 target bytes a row (121 fills
# int8 rank 72's 76 bytes: 100 bytes with the index columns, 20.2x smaller than float16 full rows)
HYBRID = (5, 28)  # top-5 exact (float16 + uint16 id) + rank-28 int8 code: 52 target bytes, top-10's
KL_TEMPERATURES = (1.0, 2.0, 4.0)
# (condition, what, parameter, top-k rebuild): what = None (labels), "full", "topk", "lowrank", "hybrid"
CONDITIONS = [("labels only", None, None, None), ("full float16", "full", None, None),
              ("top-10 spread", "topk", 10, "spread"), ("top-10 bucket", "topk", 10, "bucket")]
ENCODERS = ("projection", "kl")  # kdcache.cache.lowrank's encoders: codes that project the logits / keep the KL small
CONDITIONS += [(f"lowrank-{r} int8 {e}", "lowrank", (r, e), None) for e in ENCODERS for r in RANKS]
CONDITIONS += [(f"lowrank-{r} packed kl", "packed", (r, "kl"), None) for r in PACKED_RANKS]
CONDITIONS += [(f"hybrid top-{HYBRID[0]} + lowrank-{HYBRID[1]}", "hybrid", HYBRID, None)]


def hybrid_round_trip(logits: np.ndarray, basis: Basis, k: int) -> torch.Tensor:
    """A candidate codec: the low-rank rebuild with each row's top-k classes put back exactly (float16 values)."""
    rebuilt = round_trip(logits, basis, encoder="projection")
    top = TopK.encode(logits, k)
    values = torch.from_numpy(top.logits.astype(np.float16).astype(np.float32))
    return rebuilt.scatter(-1, torch.from_numpy(top.classes.astype(np.int64)), values)


def _basis_path(out: Path) -> Path:
    return out / f"basis-{max(RANKS)}.npz"  # a prefix of r components is the rank-r basis (nested PCA)


def _load_basis(out: Path) -> Basis:
    with np.load(_basis_path(out), allow_pickle=False) as f:
        return Basis(f["mean"], f["components"])


def prepare(out: Path, plan: SyntheticPlan) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    full, train, val, test = _split(plan)
    teacher, summary = _teacher(plan, train, val, test, out)
    logits = logits_of(teacher, full)
    attrs = cache_attrs(full, summary["arch"], summary["test_accuracy"], sha256_file(out / "teacher.pt"))
    paths = write_caches(out, full, logits, attrs, (10,))
    fit, held = sample_rows(len(logits))
    t0 = time.perf_counter()
    basis = fit_basis(logits[fit], max(RANKS))
    fit_seconds = time.perf_counter() - t0
    np.savez(_basis_path(out), mean=basis.mean, components=basis.components)
    z = logits[held]
    kl: list[dict[str, Any]] = [{"codec": "full float16", "target_bytes": 2 * logits.shape[1],
                                 **_named(mean_kl(z, z.astype(np.float16).astype(np.float32), KL_TEMPERATURES))}]
    for k in (5, 10):
        t = TopK.encode(z, k)
        t = TopK(t.logits.astype(np.float16), t.classes, t.tail_logsumexp, t.tail_mean, t.num_classes,
                 t.tail_logsumexp_t2)
        for T in KL_TEMPERATURES:
            r = _topk_kl(t, (torch.log_softmax(torch.from_numpy(z).double() / T, -1)).numpy(), T)
            kl.append({"codec": f"top-{k} float16", "target_bytes": 4 * k + 12, "T": T, **r})
    for e in ENCODERS:
        for r in sorted(set(RANKS) | {8, 16, HYBRID[1]}):
            kl.append({"codec": f"lowrank-{r} int8 {e}", "target_bytes": code_bytes(r, "int8"),
                       **_named(measure_kl(z, basis.truncate(r), "int8", KL_TEMPERATURES, encoder=e))})
        kl.append({"codec": f"lowrank-{max(RANKS)} float16 {e}", "target_bytes": code_bytes(max(RANKS), "float16"),
                   **_named(measure_kl(z, basis, "float16", KL_TEMPERATURES, encoder=e))})
    k, r = HYBRID
    kl.append({"codec": f"hybrid top-{k} + lowrank-{r}", "target_bytes": 4 * k + code_bytes(r, "int8"),
               **_named(mean_kl(z, hybrid_round_trip(z, basis.truncate(r), k), KL_TEMPERATURES))})
    chosen: dict[str, Any] = {}
    for e in ENCODERS:
        try:
            choice = choose_rank(fit_basis(logits[fit], min(logits.shape[1], 512)), z, DEFAULT_KL_BUDGET, encoder=e)
            chosen[e] = {"rank": choice.rank, "kl": _named(choice.kl), "tried": choice.tried}
        except ConfigError as err:
            chosen[e] = {"error": str(err)}
    variance = _explained(logits[fit], basis)
    result = {"teacher": summary, "task": asdict(plan.task), "sizes": size_table(paths), "fit_rows": len(fit),
              "heldout_rows": len(held), "fit_seconds": fit_seconds, "explained_variance": variance,
              "kl_heldout": kl, "rank_for_default_budget": {"budget": DEFAULT_KL_BUDGET, "by_encoder": chosen}}
    write_json(out / "prepared.json", result)
    return result


def _named(kl: dict[float, float]) -> dict[str, float]:
    return {f"kl_T{T:g}": v for T, v in kl.items()}


def _explained(z: np.ndarray, basis: Basis) -> dict[str, float]:
    """Share of the centred logits' variance the first r components hold, for each benchmarked rank."""
    x = z.astype(np.float64) - basis.mean
    total = float((x * x).sum())
    c = x @ basis.components.T.astype(np.float64)
    return {str(r): float((c[:, :r] ** 2).sum() / total) for r in sorted({8, 16, *RANKS})}


def specs(plan: SyntheticPlan, conditions: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    known = {c[0]: c for c in CONDITIONS}
    for name in conditions:  # in the order given: the most wanted first, should time run out
        cond, what, param, rebuild = known[name]
        for T in ([None] if what is None else plan.temperatures):
            for s in plan.seeds:
                out.append({"key": f"{cond}|T={T}|seed={s}", "condition": cond, "what": what,
                            "param": param, "rebuild": rebuild, "T": T,
                            "alpha": 0.0 if what is None else plan.alphas[0], "seed": s})
    return out


def _targets(out: Path, spec: dict[str, Any], data, full, cache: dict[str, Any]) -> Any:
    what, param = spec["what"], spec["param"]
    if what is None:
        return None
    name = {"full": "full-float16", "topk": f"top{param}-float16"}.get(what, "full-float32")
    if name not in cache:
        with open_cache(out / f"{name}.h5") as c:  # the real path: align the cache to the data, read its rows
            cache[name] = c.read(c.align(data.indices.numpy(), labels=data.labels.numpy(),
                                         sample_ids=data.sample_ids, info=full.info))
    if what in ("full", "topk"):
        return cache[name]
    z = cache[name]
    basis = _load_basis(out)
    if what == "lowrank":
        rank, encoder = param
        return round_trip(z, basis.truncate(rank), encoder=encoder).numpy()
    if what == "packed":  # as `kdcache compress --codec lowrank:rank=R,dtype=packed` fits it: basis and packing
        rank, encoder = param
        return round_trip(z, packed_basis(out, rank, cache), "packed", encoder).numpy()
    return hybrid_round_trip(z, basis.truncate(param[1]), param[0]).numpy()


def packed_basis(out: Path, rank: int, cache: dict[str, Any]) -> Basis:
    """The rank-``rank`` basis and its 5-bit packing, fitted on the 60,000-row cache's sample as compress fits them."""
    key = f"packed-{rank}"
    if key not in cache:
        with open_cache(out / "full-float32.h5") as c:
            logits = c.read()
        fit, _ = sample_rows(len(logits))
        cache[key] = with_packing(fit_basis(logits[fit], rank), packing_sample(logits[fit]), DEFAULT_PACKED_BITS)
    return cache[key]


def run(out: Path, plan: SyntheticPlan, conditions: Sequence[str], worker: int, workers: int) -> None:
    full, train, val, test = _split(plan)
    data = train.head(plan.student_limit)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}
    for i, spec in enumerate(specs(plan, conditions)):
        path = out / "runs" / (spec["key"].replace("|", "_").replace(" ", "-") + ".json")
        if i % workers != worker or path.exists():
            continue
        targets = _targets(out, spec, data, full, cache)
        t0 = time.perf_counter()
        r = _student_run(plan, data, val, test, targets, spec["T"], spec["alpha"], spec["seed"],
                         spec["rebuild"] or "spread")
        r.pop("history", None)
        write_json(path, {**spec, **r, "epochs": plan.student_train.epochs, "rows": len(data)})
        print(f"{spec['key']}: val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)


def timing(out: Path, plan: SyntheticPlan, repeats: int = 5, threads: int = 1, compress: bool = True) -> dict[str, Any]:
    """``kdcache compress`` of the 60,000-row cache (from float32, as dump-logits writes it by default; from float16)
    with every core, as the CLI runs it, and one student epoch (``threads`` torch threads) from each compressed cache
    vs from the full one: targets held in memory (read, decoded once) and streamed (kdcache.cache.streamed_targets.StreamedTargets:
    read block by block as batches ask, decoded row by row), run alternately ``repeats`` times, medians. ``compress`` False reuses the files."""
    from benchmarks.folder import cpu_model
    from benchmarks.topk_task import mlp
    from benchmarks import train_batches
    from kdcache.cache.streamed_targets import StreamedTargets
    from kdcache.jobs.compress import compress_cache
    from kdcache.jobs.student_targets import distillation_loss
    from kdcache.train.loop import fit

    cores = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {"compress": [], "cpu": cpu_model(), "cores": cores, "compress_threads": cores,
                              "epoch_threads": threads}
    packed = Codec(rank=max(PACKED_RANKS), dtype="packed")
    torch.set_num_threads(cores)
    for src, codec in (("full-float32", Codec()), ("full-float32", Codec(rank=64)), ("full-float16", Codec(rank=64)),
                       ("full-float32", packed), ("full-float32", Codec(dtype="packed"))):
        if not compress:
            break
        dst = out / f"compressed-{src}-{codec.rank or 'budget'}{'-packed' if codec.dtype == 'packed' else ''}.h5"
        r = compress_cache(out / f"{src}.h5", dst, codec=codec, overwrite=True)
        result["compress"].append({"source": src, "codec": asdict(codec), "rank": r["rank"],
                                   "rank_chosen_by": r["rank_chosen_by"], "row_bytes": r["row_bytes"],
                                   "seconds": r["seconds"], "rows": r["rows"], "kl": r["kl"],
                                   "bytes": r["bytes"], "source_bytes": r["source_bytes"]})
        print(json.dumps(result["compress"][-1]), flush=True)
    torch.set_num_threads(threads)
    full, train, val, test = _split(plan)
    data = train.head(plan.student_limit)
    cfg = replace(plan.student_train, epochs=1)
    caches = {"full float16": out / "full-float16.h5", "lowrank-64 int8 kl": out / "compressed-full-float32-64.h5",
              f"lowrank-{packed.rank} packed kl": out / f"compressed-full-float32-{packed.rank}-packed.h5"}
    times: dict[str, dict[str, list[float]]] = {k: {"load": [], "memory_epoch": [], "streamed_epoch": []} for k in caches}
    for _ in range(repeats):
        for name, path in caches.items():
            t0 = time.perf_counter()
            with open_cache(path) as c:
                rows = c.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids,
                               info=full.info)
                targets, block_rows = c.read(rows), c.chunk_rows
            times[name]["load"].append(time.perf_counter() - t0)
            for mode in ("memory", "streamed"):
                torch.manual_seed(0)
                model = mlp(plan.student_hidden, plan.task.classes, plan.task.dim)
                source = targets if mode == "memory" else StreamedTargets([(path, rows)])
                batches = train_batches(data, cfg.batch_size, seed=0, targets=source, block_rows=block_rows)
                t0 = time.perf_counter()
                fit(model, batches, distillation_loss(2.0, 0.9), cfg)
                times[name][f"{mode}_epoch"].append(time.perf_counter() - t0)
                batches.dataset.close()
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    ratios = {name: {mode: med[name][f"{mode}_epoch"] / med["full float16"][f"{mode}_epoch"]
                     for mode in ("memory", "streamed")} for name in caches if name != "full float16"}
    result["epochs"] = {"rows": len(data), "repeats": repeats, "seconds": times, "median": med, "ratios": ratios}
    write_json(out / f"timing-{threads}-threads.json", result)
    print(json.dumps(result["epochs"]["median"]), "ratios to full float16:", json.dumps(ratios))
    return result


def summarize(root: Path, plans: dict[str, SyntheticPlan], result_path: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {"teachers": {}}
    text = []
    for name, plan in plans.items():
        out = root / name
        if not (out / "prepared.json").exists():
            continue
        runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
        table = student_table(runs, [c for c, *_ in CONDITIONS])
        prepared = json.loads((out / "prepared.json").read_text())
        result["teachers"][name] = {"plan": asdict(plan), "prepared": prepared, "students": table, "runs": runs}
        timings = sorted(out.glob("timing*.json"))
        if timings:
            result["teachers"][name]["timing"] = {p.stem: json.loads(p.read_text()) for p in timings}
        text.append(f"### teacher {name}: {prepared['teacher']['arch']}, test {100 * prepared['teacher']['test_accuracy']:.2f}%\n")
        text.append(kl_markdown(prepared))
        text.append(table_markdown(table, plan.temperatures))
        verdict = target_verdict(table)
        result["teachers"][name]["verdict"] = verdict
        text.append(verdict_markdown(verdict))
    if result_path:
        write_json(result_path, result)
    (root / "lowrank.md").write_text("\n".join(text))
    print("\n".join(text))
    return result


def _bytes(condition: str) -> int | None:
    """Bytes a row (targets + index columns) of a condition's cache, at 1,000 classes."""
    if condition.startswith("lowrank-"):
        return code_bytes(int(condition.split()[0].split("-")[1]), condition.split()[1]) + INDEX_BYTES
    if condition.startswith("top-10"):
        return 4 * 10 + 12 + INDEX_BYTES
    return 2 * 1000 + INDEX_BYTES if condition == "full float16" else None


def target_verdict(table: Sequence[dict[str, Any]], smaller: float = 20.0, best_pp: float = 0.3,
                   t4_pp: float = 0.5) -> list[dict[str, Any]]:
    """The issue's targets per codec: >= 20x smaller than float16 full rows, within 0.3 pp of full at the full cache's
    (validation-picked) best T and within 0.5 pp at T = 4 (test accuracy means over the seeds)."""
    rows = {r["condition"]: r for r in table}
    full = rows.get("full float16")
    if full is None:
        return []
    best = full["picked_T"]
    out = []
    for cond, r in rows.items():
        b = _bytes(cond)
        if b is None or cond == "full float16" or best not in r["per_T"] or "4.0" not in r["per_T"]:
            continue
        ratio = _bytes("full float16") / b
        d_best = 100 * (r["per_T"][best]["test_mean"] - full["per_T"][best]["test_mean"])
        d_t4 = 100 * (r["per_T"]["4.0"]["test_mean"] - full["per_T"]["4.0"]["test_mean"])
        out.append({"condition": cond, "bytes_per_row": b, "smaller": ratio, "full_best_T": best,
                    "diff_pp_at_best_T": d_best, "diff_pp_at_T4": d_t4,
                    "met": ratio >= smaller and d_best >= -best_pp and d_t4 >= -t4_pp})
    return out


def verdict_markdown(verdict: Sequence[dict[str, Any]]) -> str:
    lines = ["| codec | bytes/row | smaller | vs full at full's best T | vs full at T=4 | target met |",
             "|---|---:|---:|---:|---:|---|"]
    for v in verdict:
        lines.append(f"| {v['condition']} | {v['bytes_per_row']} | {v['smaller']:.1f}x | {v['diff_pp_at_best_T']:+.2f} pp "
                     f"(T={v['full_best_T']}) | {v['diff_pp_at_T4']:+.2f} pp | {'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def kl_markdown(prepared: dict[str, Any]) -> str:
    full_bytes = 2 * 1000 + INDEX_BYTES
    lines = ["| codec | bytes/row | smaller than full float16 | KL T=1 | KL T=2 | KL T=4 |", "|---|---:|---:|---:|---:|---:|"]
    rows: dict[str, dict[str, Any]] = {}
    for r in prepared["kl_heldout"]:
        row = rows.setdefault(r["codec"], {"bytes": r["target_bytes"] + INDEX_BYTES})
        if "T" in r:
            row[f"kl_T{r['T']:g}"] = r["kl_dense"]
        else:
            row.update({k: v for k, v in r.items() if k.startswith("kl_T")})
    for codec, r in rows.items():
        lines.append(f"| {codec} | {r['bytes']} | {full_bytes / r['bytes']:.1f}x | "
                     + " | ".join(f"{r[f'kl_T{T:g}']:.2e}" for T in KL_TEMPERATURES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["prepare", "run", "timing", "summarize"])
    ap.add_argument("--out", required=True, type=Path, help="folder; each teacher's files go under OUT/<teacher>")
    ap.add_argument("--teacher", choices=sorted(TEACHERS), default="a")
    ap.add_argument("--epochs", type=int, default=SyntheticPlan.student_train.epochs)
    ap.add_argument("--rows", type=int, default=SyntheticPlan.student_limit, help="labelled rows students train on")
    ap.add_argument("--T", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conditions", nargs="+", default=[c for c, *_ in CONDITIONS], choices=[c for c, *_ in CONDITIONS],
                    help="run these, in this order")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--result", type=Path, help="summarize: also write the JSON here (e.g. docs/results/lowrank.json)")
    ap.add_argument("--threads", type=int, default=1, help="timing: torch threads for the student epochs")
    ap.add_argument("--no-compress", action="store_true", help="timing: reuse the compressed caches of an earlier run")
    ap.add_argument("--smoke", action="store_true", help="benchmarks.topk's tiny plan for both teachers (tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    teachers = TEACHERS if not args.smoke else {
        "a": SMOKE_SYNTHETIC, "b": replace(SMOKE_SYNTHETIC, task=replace(SMOKE_SYNTHETIC.task, dim=512))}
    plans = {name: replace(p, student_limit=args.rows, student_train=replace(p.student_train, epochs=args.epochs),
                           temperatures=tuple(args.T), seeds=tuple(args.seeds)) for name, p in teachers.items()}
    if args.step == "summarize":
        summarize(args.out, plans, args.result)
        return
    out, plan = args.out / args.teacher, plans[args.teacher]
    if args.step == "timing":
        timing(out, plan, threads=args.threads, compress=not args.no_compress)
    elif args.step == "prepare":
        r = prepare(out, plan)
        print(json.dumps({k: r[k] for k in ("teacher", "explained_variance", "rank_for_default_budget")}, indent=1))
        print(kl_markdown(r))
    else:
        run(out, plan, args.conditions, args.worker, args.workers)


if __name__ == "__main__":
    main()
