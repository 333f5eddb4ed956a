"""Sweeps over (data limit, T, alpha, seed) from one cache, with a resumable results table.

One teacher pass, many students: every run trains a student from the cache only (the
alpha = 0 baseline from the labels alone) and evaluates it on the test split. After each
run the whole table is rewritten atomically to ``<out>/results.json`` (rows with per-epoch
history, for curves) and ``<out>/results.csv`` (one flat line per run), so an interrupted
sweep loses nothing and running it again skips the runs already in the table.

Example::

    grid = SweepGrid(temperatures=(1, 4), alphas=(0.9,), seeds=(0, 1), limits=(5000,))
    run_sweep("runs/sweep1", "data/caches/fmnist-train.h5", grid, cfg=TrainConfig(epochs=10))
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from kdcache.cache import open_cache, read_meta
from kdcache.config import (
    STUDENT_ARCH,
    STUDENT_TRAIN,
    CacheIO,
    DataConfig,
    DistillConfig,
    RunOptions,
    TrainConfig,
    ViewConfig,
    check_alpha,
    check_temperature,
)
from kdcache.data.datasets import reads_files
from kdcache.data.folders import folder_dataset_name
from kdcache.errors import ConfigError, Diverged
from kdcache.experiments.report import write_report
from kdcache.experiments.results import (
    RESULTS_CSV,
    RESULTS_FORMAT,
    RESULTS_JSON,
    load_results,
    save_results,
)
from kdcache.jobs.student_targets import cache_record
from kdcache.jobs.training import resolve_train_config, train_student
from kdcache.progress import counter
from kdcache.train.models import ModelSpec


def parse_numbers(text: str | Sequence[float], option: str, kind: type = float) -> tuple:
    """'1,2,4' -> (1.0, 2.0, 4.0) (or ints with ``kind=int``); duplicates dropped, order kept.

    Raises ConfigError naming ``option`` for an empty list or an entry that is not a number.
    """
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if not parts or all(p == "" for p in parts):
        raise ConfigError(f"{option}: empty list; give comma-separated numbers, e.g. {option} 1,2,4")
    values = []
    for p in parts:
        try:
            v = kind(p)
        except (TypeError, ValueError):
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{option}: {p!r} is not {what}; give comma-separated values, e.g. {option} 1,2,4") from None
        if v not in values:
            values.append(v)
    return tuple(values)


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep. alpha = 0 (labels only) is the baseline, run once per (limit, seed)."""

    temperatures: tuple[float, ...]
    alphas: tuple[float, ...]  # soft-loss weights > 0; include 1 for soft-targets-only runs
    seeds: tuple[int, ...] = (0,)
    limits: tuple[int, ...] = ()  # first N labelled training samples; () = every row of the cache
    baseline: bool = True
    # transfer sets: per N, the baseline trains on the first N samples alone ("labels only") and each
    # distilled run on all ``limits`` samples of which only the first N keep their labels ("transfer")
    labels_limits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, values in (("--T", self.temperatures), ("--alpha", self.alphas), ("--seeds", self.seeds)):
            if not values:
                raise ConfigError(f"{name}: empty list; give at least one value")
        for t in self.temperatures:
            try:
                check_temperature(t)
            except ConfigError as e:
                raise ConfigError(f"--T: {e}") from None
        for a in self.alphas:
            try:
                check_alpha(a)
            except ConfigError as e:
                raise ConfigError(f"--alpha: {e}") from None
        if any(not isinstance(n, int) or n < 1 for n in self.limits):
            raise ConfigError(f"--limit: every limit must be a whole number >= 1, got {list(self.limits)}")
        if any(not isinstance(n, int) or n < 1 for n in self.labels_limits):
            raise ConfigError("--labels-limit: every count must be a whole number >= 1, "
                              f"got {list(self.labels_limits)}")
        if self.labels_limits and len(self.limits) > 1:
            raise ConfigError("--labels-limit takes at most one --limit (the samples its transfer runs train on)")

    def runs(self, limits: Sequence[int], epochs: int) -> list["RunSpec"]:
        """Every run, smallest limit first; per seed the baseline, then each (alpha, T)."""
        specs = []
        if self.labels_limits:
            return self._transfer_runs(limits[0], epochs)
        for limit in limits:
            for seed in self.seeds:
                if self.baseline or 0 in self.alphas:
                    specs.append(RunSpec(limit, None, 0.0, seed, epochs))
                for alpha in self.alphas:
                    if alpha > 0:
                        specs.extend(RunSpec(limit, float(t), float(alpha), seed, epochs) for t in self.temperatures)
        return specs

    def _transfer_runs(self, limit: int, epochs: int) -> list["RunSpec"]:
        """Per labelled count N (smallest first) and seed: CE on the first N, then each (alpha, T) on all
        ``limit`` rows with only the first N labelled."""
        too_many = [n for n in self.labels_limits if n > limit]
        if too_many:
            raise ConfigError(f"--labels-limit {too_many[0]} is more than the {limit} training rows; "
                              f"use counts <= {limit}")
        specs = []
        for n in sorted(self.labels_limits):
            for seed in self.seeds:
                if self.baseline or 0 in self.alphas:
                    specs.append(RunSpec.make(n, None, 0.0, seed, epochs, "labels only"))
                for alpha in self.alphas:
                    if alpha > 0:
                        specs.extend(RunSpec.make(limit, float(t), float(alpha), seed, epochs, "transfer",
                                                  labels_limit=n) for t in self.temperatures)
        return specs


@dataclass(frozen=True)
class RunSpec:
    """One student: ``temperature`` is None for the labels-only baseline (alpha = 0).

    ``condition`` names a setting beyond the grid axes (e.g. "transfer", "views K=4") and
    ``options`` holds it: train-student's options by flag name (``caches``, ``labels_limit``, ``transfer``,
    ``augment``, ``cache_views``, ``student_factory``, ``student_kwargs``, ...) as sorted (name, value) pairs of
    JSON values, as results tables store them; ``student_options`` turns them into train_student's
    configuration objects (``caches`` replaces the sweep's cache). The plain T x alpha grid has neither.
    Benchmarks build lists of these for their tables and run them with ``run_sweep``.
    """

    limit: int
    temperature: float | None
    alpha: float
    seed: int
    epochs: int
    condition: str = ""
    options: tuple = ()

    @staticmethod
    def make(limit: int, temperature: float | None, alpha: float, seed: int, epochs: int, condition: str = "",
             **options: Any) -> "RunSpec":
        return RunSpec(limit, temperature, alpha, seed, epochs, condition,
                       tuple(sorted((k, _freeze(v)) for k, v in options.items())))

    @property
    def options_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.options}

    @property
    def key(self) -> str:
        """condition_n{limit}[_l{labels_limit}]_T{T}_a{alpha}_s{seed}_e{epochs}: the labelled count is an axis too."""
        t = "-" if self.temperature is None else f"{self.temperature:g}"
        prefix = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in self.condition) + "_" if self.condition else ""
        labels = self.options_dict.get("labels_limit")
        labelled = "" if labels is None else f"_l{labels}"
        return f"{prefix}n{self.limit}{labelled}_T{t}_a{self.alpha:g}_s{self.seed}_e{self.epochs}"

    def to_row(self) -> dict[str, Any]:
        return {"key": self.key, "limit": self.limit, "temperature": self.temperature, "alpha": self.alpha,
                "seed": self.seed, "epochs": self.epochs, "condition": self.condition, "options": self.options_dict}

    def cost(self, eval_samples: int) -> float:
        """Relative compute, for the time-left estimate (measured on CPU: for this small student a
        test sample in the per-epoch evaluation costs about as much as a training sample)."""
        return self.epochs * (self.limit + eval_samples)


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


def sweep_settings(cache: str | os.PathLike, arch: str, data_cfg: DataConfig, cfg: TrainConfig) -> dict[str, Any]:
    """Everything that must be the same for two runs to share one table (all but the grid axes)."""
    train = {k: v for k, v in cfg.to_dict().items() if k not in ("epochs", "seed", "device")}
    with open_cache(cache) as c:
        content = cache_record(c)["content_sha256"]
    return {"cache_content_sha256": content, "arch": arch, "dataset": data_cfg.dataset,
            "eval_limit": data_cfg.eval_limit, "val_size": data_cfg.val_size, "train": train}


def teacher_summary(cache: str | os.PathLike) -> dict[str, Any]:
    """The teacher's recorded test accuracy etc., from the cache's attributes (no teacher is loaded)."""
    meta = read_meta(cache)
    tc = meta.config.get("teacher_config") or {}
    return {"arch": meta.teacher_arch, "sha256": meta.teacher_sha256, "test_accuracy": tc.get("test_accuracy"),
            "eval_limit": tc.get("eval_limit"), "epochs": tc.get("epochs"),
            "num_train_samples": tc.get("num_train_samples")}


def _check_same_settings(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise ConfigError(f"{path} holds runs made with different {', '.join(diff)} "
                          f"(was {[old.get(k) for k in diff]}, now {[new.get(k) for k in diff]}); "
                          "use a new --out, or the same settings to resume")


def _row(spec: RunSpec, r: dict[str, Any]) -> dict[str, Any]:
    config = r["config"]
    labelled = config.get("num_labelled", config.get("num_train_samples"))
    return {**spec.to_row(), "test_accuracy": r["test"]["accuracy"], "test_loss": r["test"]["loss"],
            "num_labelled": labelled, "num_unlabelled": config.get("num_unlabelled", 0),
            "cache_contents": [c["content_sha256"] for c in config.get("caches", []) + config.get("transfer", [])],
            "val_accuracy": r["val"]["accuracy"] if r.get("val") else None,
            "train_seconds": round(r["seconds"], 3), "eval_samples": r["test"]["num_samples"],
            "checkpoint": r["checkpoint"], "history": r["history"]}


def _check_option_caches(path: Path, specs: Sequence[RunSpec], finished: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume a run whose own caches (``caches``/``transfer`` options) now hold other values.

    The sweep's settings identify the sweep's cache by content; a run's option caches are named by
    path, so a cache dumped again at the same path would otherwise mix old and new runs in one table.
    """
    contents: dict[str, str | None] = {}
    for s in specs:
        options, recorded = s.options_dict, finished[s.key].get("cache_contents")
        paths = [str(p) for p in options.get("caches", []) + options.get("transfer", [])]
        if recorded is None or not paths:  # the sweep's own cache (checked by the settings), or an older table
            continue
        for p in paths:
            if p not in contents:
                with open_cache(p) as c:
                    contents[p] = cache_record(c)["content_sha256"]
        if any(contents[p] not in recorded for p in paths):  # (transfer caches are recorded in teacher order)
            raise ConfigError(f"{path} holds run {s.key} trained from other values of {', '.join(paths)} (dumped "
                              "again since); use a new --out")


def _time_left(seconds: float, done_cost: float, left_cost: float) -> str:
    if done_cost <= 0:
        return "time left ?"
    s = int(seconds / done_cost * left_cost)
    return f"time left {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_sweep(out_dir: str | os.PathLike, cache: str | os.PathLike, grid: SweepGrid | Sequence[RunSpec], *,
              arch: str = STUDENT_ARCH, data_cfg: DataConfig = DataConfig(), cfg: TrainConfig = STUDENT_TRAIN,
              progress: bool = False, report: bool = True) -> dict[str, Any]:
    """Train every run of ``grid`` (or every RunSpec given) not yet in ``out_dir``'s table, saving the table after each.

    With a grid, ``cfg.epochs`` applies to every run and ``grid.limits`` (default: all
    trainable rows of the cache) sets the training samples; each RunSpec carries its own
    limit, epochs, seed and options. ``cfg.seed`` and ``data_cfg.limit`` are always replaced.
    Returns counts (ran, skipped, total), the table path and, with ``report``, the report's paths.
    """
    meta = read_meta(cache)  # a missing or broken cache fails here, before anything is written
    data_cfg = replace(data_cfg, dataset=data_cfg.dataset or folder_dataset_name(meta.dataset))  # what it labelled
    available = min(meta.num_samples, meta.dataset_num_samples - data_cfg.val_size)  # trainable rows
    limits = (grid.limits or (available,)) if isinstance(grid, SweepGrid) else sorted({s.limit for s in grid})
    too_many = [n for n in limits if n > available]
    if too_many:
        held = f" once --val-size {data_cfg.val_size} are held out" if data_cfg.val_size else ""
        raise ConfigError(f"--limit {too_many[0]} is more than the {available} training rows of {cache}{held}; "
                          f"use limits <= {available}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    # the table records fp32 or bf16 (a resume on other hardware is checked) and the learning rate that ran
    cfg = resolve_train_config(cfg, STUDENT_TRAIN, reads_files(data_cfg.dataset))
    settings = sweep_settings(cache, arch, data_cfg, cfg)
    if (out / RESULTS_JSON).exists():
        results = load_results(out)
        _check_same_settings(out / RESULTS_JSON, results["settings"], settings)
    else:
        results = {"format": RESULTS_FORMAT, "version": 1, "cache": str(cache), "settings": settings,
                   "teacher": teacher_summary(cache), "rows": []}
    done = {row["key"] for row in results["rows"]}
    specs = grid.runs(limits, cfg.epochs) if isinstance(grid, SweepGrid) else list(grid)
    if len({s.key for s in specs}) != len(specs):
        raise ConfigError("two runs of the sweep share a key (same condition, limit, T, alpha, seed, epochs)")
    finished = {row["key"]: row for row in results["rows"]}
    for s in specs:
        if s.key in finished and finished[s.key].get("options", {}) != s.options_dict:
            raise ConfigError(f"{out / RESULTS_JSON} holds run {s.key} made with other options "
                              f"({finished[s.key].get('options')}); use a new --out")
    _check_option_caches(out / RESULTS_JSON, [s for s in specs if s.key in finished], finished)
    todo = [s for s in specs if s.key not in done]
    eval_n = data_cfg.eval_limit or 10_000
    left_cost = sum(s.cost(eval_n) for s in todo)
    t_start = time.perf_counter()
    bar = counter(len(specs), initial=len(specs) - len(todo), desc="sweep", unit="run", enabled=progress)
    bar.set_postfix_str(_time_left(0, 0, left_cost))
    out.mkdir(parents=True, exist_ok=True)
    try:
        _run_all(out, cache, todo, results, arch, data_cfg, cfg, bar, eval_n, left_cost)
    finally:
        bar.close()
    if not (out / RESULTS_CSV).exists():
        save_results(out, results)
    summary = {"out": str(out), "table": str(out / RESULTS_JSON), "ran": len(todo), "skipped": len(specs) - len(todo),
               "total": len(specs), "seconds": time.perf_counter() - t_start}
    if report:
        summary["report"] = write_report(out)
    return summary


def student_options(options: dict[str, Any], arch: str) -> tuple[ModelSpec, ViewConfig, CacheIO, dict[str, Any]]:
    """A RunSpec's options (named as train-student's flags, as results tables store them) as train_student's
    configuration: (model, views, cache I/O, the DistillConfig fields beyond caches, T and alpha)."""
    o = dict(options)
    model = ModelSpec(arch=o.pop("arch", arch), factory=o.pop("student_factory", None),
                      kwargs=o.pop("student_kwargs", None) or {})
    views = ViewConfig(**{k: o.pop(k) for k in ("augment", "cache_views", "allow_inconsistent") if k in o})
    io = CacheIO(**{field: o.pop(k) for k, field in (("cache_memory_limit_mb", "memory_limit_mb"),
                                                      ("cache_workers", "workers")) if k in o})
    more = {k: o.pop(k) for k in ("ensemble", "topk_rebuild", "labels_limit", "transfer", "transfer_data_dirs")
            if k in o}
    if o:
        raise ConfigError(f"unknown run options {sorted(o)}; a RunSpec takes train-student's options by name")
    return model, views, io, more


def _run_all(out: Path, cache: str | os.PathLike, todo: list[RunSpec], results: dict[str, Any], arch: str,
             data_cfg: DataConfig, cfg: TrainConfig, bar: Any, eval_n: int, left_cost: float) -> None:
    """Train each pending run and rewrite the table after each one."""
    done_cost, t_start = 0.0, time.perf_counter()
    for spec in todo:
        bar.set_description_str(f"sweep {spec.key}")
        options = spec.options_dict
        caches = options.pop("caches", [] if spec.alpha == 0 else [cache])
        model, views, io, more = student_options(options, arch)
        distill = DistillConfig(caches=caches, temperature=spec.temperature or 1.0, alpha=spec.alpha, **more)
        try:  # a checkpoint without a table row is from an interrupted run: overwrite it
            r = train_student(out / "runs" / f"{spec.key}.pt", distill, model=model,
                              data_cfg=replace(data_cfg, limit=spec.limit),
                              cfg=replace(cfg, seed=spec.seed, epochs=spec.epochs), views=views, io=io,
                              run=RunOptions(overwrite=True))
            row = _row(spec, r)
        except Diverged as e:
            # A diverged run is a result (this T/alpha is unstable at this lr), not a reason to stop the sweep.
            row = {**spec.to_row(), "test_accuracy": None, "test_loss": None, "error": str(e)}
        results["rows"].append(row)
        save_results(out, results)
        done_cost += spec.cost(eval_n)
        left_cost -= spec.cost(eval_n)
        bar.set_postfix_str(_time_left(time.perf_counter() - t_start, done_cost, max(left_cost, 0.0)))
        bar.update(1)
