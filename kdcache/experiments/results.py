"""The table of a sweep: one row per trained student, saved after every run as JSON (full) and CSV (flat).

Written by kdcache.experiments.sweep, read by kdcache.experiments.report and by a resumed sweep.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

from kdcache.errors import ConfigError
from kdcache.files import write_json, write_text_atomic

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_FORMAT = "kdcache-sweep"
CSV_COLUMNS = ("key", "limit", "temperature", "alpha", "seed", "epochs", "val_accuracy", "test_accuracy", "test_loss",
               "train_seconds", "eval_samples", "error", "condition", "num_labelled", "num_unlabelled")


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The table of a sweep folder (ConfigError if there is none)."""
    path = Path(out_dir) / RESULTS_JSON
    if not path.is_file():
        raise ConfigError(f"{path} not found; run `kdcache sweep --out {out_dir} ...` first")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable sweep table ({e}); rerun the sweep into a new --out") from None
    if results.get("format") != RESULTS_FORMAT:
        raise ConfigError(f"{path} is not a kdcache sweep table (format {results.get('format')!r})")
    return results


def format_csv(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def save_results(out_dir: Path, results: dict[str, Any]) -> None:
    """Both tables, each atomically (the JSON last: it is what resume reads)."""
    write_text_atomic(out_dir / RESULTS_CSV, format_csv(results["rows"]))
    write_json(out_dir / RESULTS_JSON, results)
