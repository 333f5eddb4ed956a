"""The main job: train a teacher, dump its cache, train a baseline and a distilled student, then the
scarce-label case: a student on the first N labels alone, and one on the same N labels plus every
other training image as an unlabelled transfer set (soft targets from the same cache).

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

from kdcache.config import (
    DEFAULT_ALPHA,
    DEFAULT_DATA_DIR,
    DEFAULT_TEMPERATURE,
    PIPELINE_CACHE,
    PIPELINE_SCARCE_ALPHA,
    PIPELINE_SCARCE_EPOCHS,
    PIPELINE_SCARCE_LABELS,
    PIPELINE_TEACHER,
    PIPELINE_WORKDIR,
    STUDENT_TRAIN,
    DataConfig,
)
from kdcache.errors import ConfigError
from kdcache.files import write_json
from kdcache.jobs.dump import dump_logits
from kdcache.jobs.training import train_student, train_teacher
from kdcache.train.loss import check_alpha, check_temperature


def run_pipeline(*, workdir: str = PIPELINE_WORKDIR, cache_path: str = PIPELINE_CACHE,
                 teacher_epochs: int = PIPELINE_TEACHER.epochs, student_epochs: int = STUDENT_TRAIN.epochs,
                 temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA, limit: int | None = None,
                 eval_limit: int | None = None, data_dir: str = DEFAULT_DATA_DIR, device: str = "auto", seed: int = 0,
                 fresh: bool = False, progress: bool = False, scarce_labels: int = PIPELINE_SCARCE_LABELS,
                 scarce_epochs: int = PIPELINE_SCARCE_EPOCHS, scarce_alpha: float = PIPELINE_SCARCE_ALPHA
                 ) -> dict[str, Any]:
    """Run (or reuse) the stages; returns one row per stage with test accuracy and seconds.

    ``scarce_labels`` N > 0 adds two students: CE on the first N training images alone
    (``scarce_epochs`` epochs), and KD at ``temperature``/``scarce_alpha`` on all training
    images of which only those N keep their labels (``labels_limit``; ``student_epochs``).
    """
    check_temperature(temperature)
    check_alpha(alpha)
    check_alpha(scarce_alpha)
    if scarce_labels < 0 or (scarce_labels and limit is not None and scarce_labels >= limit):
        raise ConfigError(f"--scarce-labels {scarce_labels} must be below the training samples (--limit {limit}); "
                          "use fewer, or 0 to skip the scarce-label rows")
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
    if scarce_labels:
        rows += _scarce_label_rows(work, cache, data_cfg, student_cfg, scarce_labels, scarce_epochs, temperature,
                                   scarce_alpha, progress, reuse)
    return {"rows": rows, "workdir": str(work), "cache": str(cache), "limit": limit,
            "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "scarce_labels": scarce_labels,
            "scarce_epochs": scarce_epochs}


def _scarce_label_rows(work: Path, cache: Path, data_cfg: DataConfig, student_cfg: Any, labels: int, epochs: int,
                       temperature: float, alpha: float, progress: bool, reuse: bool) -> list[dict[str, Any]]:
    """The first ``labels`` training images alone (CE), then with every other training image as unlabelled rows (KD)."""
    alone = train_student(work / f"student-{labels}-labels.pt", alpha=0.0, data_cfg=replace(data_cfg, limit=labels),
                          cfg=replace(student_cfg, epochs=epochs), overwrite=True, progress=progress, reuse=reuse)
    mixed = train_student(work / f"student-{labels}-labels-transfer.pt", caches=[cache], temperature=temperature,
                          alpha=alpha, data_cfg=data_cfg, cfg=student_cfg, labels_limit=labels, overwrite=True,
                          progress=progress, reuse=reuse)
    rest = mixed["config"]["num_unlabelled"]
    return [{"stage": f"student, {labels:,} labels only (alpha 0)", "test_accuracy": alone["test"]["accuracy"],
             "seconds": alone["seconds"], "reused": alone["reused"]},
            {"stage": f"student, {labels:,} labels + {rest:,} unlabelled, KD T={temperature:g} alpha={alpha:g}",
             "test_accuracy": mixed["test"]["accuracy"], "seconds": mixed["seconds"], "reused": mixed["reused"]}]


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of stage, test accuracy and seconds."""
    width = max([34] + [len(row["stage"]) for row in result["rows"]])
    lines = [f"{'stage':<{width}} {'test acc':>9} {'time':>8}", "-" * (width + 19)]
    for row in result["rows"]:
        acc = f"{row['test_accuracy']:.2%}" if row["test_accuracy"] is not None else "-"
        sec = f"{row['seconds']:.0f}s" if row["seconds"] is not None else "-"
        note = "  (reused)" if row.get("reused") else ""
        lines.append(f"{row['stage']:<{width}} {acc:>9} {sec:>8}{note}")
    return "\n".join(lines)
