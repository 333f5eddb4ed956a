"""The main job: train a teacher, dump its cache, train a baseline and a distilled student.

Stages whose outputs already exist are reused (their recorded times are shown), so a
second run is fast; ``fresh=True`` redoes everything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cache import read_meta, sha256_file
from .dump import dump_logits
from .files import write_json
from .jobs import DataConfig, metrics_path_for, train_student, train_teacher
from .loss import check_alpha, check_temperature
from .train import TrainConfig


def _reuse(out: Path, fresh: bool) -> dict[str, Any] | None:
    metrics = metrics_path_for(out)
    if fresh or not (out.exists() and metrics.exists()):
        return None
    return json.loads(metrics.read_text())


def run_pipeline(*, workdir: str = "runs/pipeline", cache_path: str = "data/caches/fmnist-train.h5",
                 teacher_epochs: int = 3, student_epochs: int = 10, temperature: float = 4.0, alpha: float = 0.5,
                 limit: int | None = None, eval_limit: int | None = None, data_dir: str = "data", device: str = "auto", seed: int = 0,
                 fresh: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run (or reuse) the four stages; returns one row per stage with test accuracy and seconds."""
    check_temperature(temperature)
    check_alpha(alpha)
    work = Path(workdir)
    data_cfg = DataConfig(data_dir=data_dir, limit=limit, eval_limit=eval_limit)
    rows: list[dict[str, Any]] = []

    teacher = work / "teacher.pt"
    r = reused = _reuse(teacher, fresh)
    if r is None:
        r = train_teacher(teacher, data_cfg=data_cfg, overwrite=True, progress=progress, cfg=TrainConfig(
            epochs=teacher_epochs, batch_size=128, lr=0.05, precision="bf16", device=device, seed=seed))
    rows.append({"stage": "teacher", "test_accuracy": r["test"]["accuracy"], "seconds": r["seconds"],
                 "reused": reused is not None})

    cache = Path(cache_path)
    dump_record = work / "dump.json"
    cache_fresh = (fresh or not cache.exists() or not dump_record.exists()
                   or read_meta(cache).teacher_sha256 != sha256_file(teacher))
    if cache_fresh:
        d = dump_logits(teacher, cache, split="train", data_dir=data_dir, limit=limit, device=device,
                        overwrite=True, progress=progress)
        write_json(dump_record, d)
    else:
        d = json.loads(dump_record.read_text())
    rows.append({"stage": "dump-logits", "test_accuracy": None, "seconds": d["seconds"], "reused": not cache_fresh})

    student_cfg = TrainConfig(epochs=student_epochs, batch_size=128, lr=0.02, device=device, seed=seed)
    for name, a in (("baseline", 0.0), ("distilled", alpha)):
        out = work / f"student-{name}.pt"
        r = reused = None if cache_fresh else _reuse(out, fresh)
        if r is None:
            r = train_student(out, caches=[cache], temperature=temperature, alpha=a, data_cfg=data_cfg,
                              cfg=student_cfg, overwrite=True, progress=progress)
        label = "student, labels only (alpha 0)" if a == 0 else f"student, KD T={temperature:g} alpha={a:g}"
        rows.append({"stage": label, "test_accuracy": r["test"]["accuracy"], "seconds": r["seconds"],
                     "reused": reused is not None})
    return {"rows": rows, "workdir": str(work), "cache": str(cache), "limit": limit,
            "teacher_epochs": teacher_epochs, "student_epochs": student_epochs}


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of stage, test accuracy and seconds."""
    lines = [f"{'stage':<34} {'test acc':>9} {'time':>8}", "-" * 53]
    for row in result["rows"]:
        acc = f"{row['test_accuracy']:.2%}" if row["test_accuracy"] is not None else "-"
        sec = f"{row['seconds']:.0f}s" if row["seconds"] is not None else "-"
        note = "  (reused)" if row.get("reused") else ""
        lines.append(f"{row['stage']:<34} {acc:>9} {sec:>8}{note}")
    return "\n".join(lines)
