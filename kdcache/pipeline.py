"""The main job: train a teacher, dump its cache, train a baseline and a distilled student.

A stage is reused only when its output was made by exactly the configuration asked for
(the request stored in each checkpoint, the teacher/data/settings stored in the cache),
so a second run with the same options takes seconds and a run with other options (say
``--T 8``) retrains what they change; ``fresh=True`` redoes everything.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, PIPELINE_TEACHER, STUDENT_TRAIN, DataConfig
from .dump import dump_logits
from .files import write_json
from .jobs import train_student, train_teacher
from .loss import check_alpha, check_temperature


def run_pipeline(*, workdir: str = "runs/pipeline", cache_path: str = "data/caches/fmnist-train.h5",
                 teacher_epochs: int = PIPELINE_TEACHER.epochs, student_epochs: int = STUDENT_TRAIN.epochs,
                 temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA, limit: int | None = None,
                 eval_limit: int | None = None, data_dir: str = "data", device: str = "auto", seed: int = 0,
                 fresh: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run (or reuse) the four stages; returns one row per stage with test accuracy and seconds."""
    check_temperature(temperature)
    check_alpha(alpha)
    work = Path(workdir)
    data_cfg = DataConfig(data_dir=data_dir, limit=limit, eval_limit=eval_limit)
    reuse = not fresh
    rows: list[dict[str, Any]] = []

    teacher = work / "teacher.pt"
    r = train_teacher(teacher, data_cfg=data_cfg, overwrite=True, progress=progress, reuse=reuse,
                      cfg=replace(PIPELINE_TEACHER, epochs=teacher_epochs, device=device, seed=seed))
    rows.append({"stage": "teacher", "test_accuracy": r["test"]["accuracy"], "seconds": r["seconds"],
                 "reused": r["reused"]})

    cache, record = Path(cache_path), work / "dump.json"
    d = dump_logits(teacher, cache, split="train", data_dir=data_dir, limit=limit, device=device,
                    overwrite=True, progress=progress, reuse=reuse)
    if d["reused"]:  # the time of the dump that made this very cache, if we recorded it
        old = json.loads(record.read_text()) if record.exists() else {}
        d["seconds"] = old.get("seconds") if old.get("request") == d["request"] else None
    else:
        write_json(record, d)
    rows.append({"stage": "dump-logits", "test_accuracy": None, "seconds": d["seconds"], "reused": d["reused"]})

    student_cfg = replace(STUDENT_TRAIN, epochs=student_epochs, device=device, seed=seed)
    for name, a in (("baseline", 0.0), ("distilled", alpha)):
        r = train_student(work / f"student-{name}.pt", caches=[cache], temperature=temperature, alpha=a,
                          data_cfg=data_cfg, cfg=student_cfg, overwrite=True, progress=progress, reuse=reuse)
        label = "student, labels only (alpha 0)" if a == 0 else f"student, KD T={temperature:g} alpha={a:g}"
        rows.append({"stage": label, "test_accuracy": r["test"]["accuracy"], "seconds": r["seconds"],
                     "reused": r["reused"]})
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
