"""`kdcache verify`: is this cache intact, and does it belong to my data (and teacher)?

Checks, each reported as one line (ok / FAIL / skip):

- schema: format, schema version, ``complete`` marker, every attribute and dataset,
  dtypes and shapes (kdcache.cache's reader rules);
- checksums: every chunk of every dataset is read, so HDF5 verifies each chunk's
  fletcher32 checksum; a damaged chunk is named by its row range;
- finite: no NaN/Inf in /logits;
- alignment (with data): dataset, split, classes and fingerprint match, and every row
  matches the sample at its index by label and content id;
- teacher (with a teacher): a random sample of rows is re-computed and compared to
  the stored logits within a tolerance that depends on the storage dtype.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .cache import DATASETS, CacheMeta, open_h5, read_dataset, read_meta
from .data import ImageData, load_dataset, normalize
from .errors import CacheError
from .info import row_blocks
from .teacher import TeacherSpec, load_teacher

# |stored - recomputed| <= TOLERANCE * max(1, max |z| of the row). float32 leaves room for another
# machine's kernels: a GPU runs fp32 convolutions in TF32 by default, which moved the main job's
# teacher-cnn logits by up to 1.3e-3 x max|z| (emulated on CPU, 2,000 rows), so 5e-3 is ~4x that;
# float16 adds its rounding (2^-11 relative); a teacher that ran at bf16 (8-bit mantissa) is
# compared far more loosely. Logits from another teacher or another row differ by O(max |z|).
TOLERANCE = {"float32": 5e-3, "float16": 6e-3}
BF16_TOLERANCE = 5e-2
REDUMP = "re-create it with dump-logits, or fetch it again"


@dataclass(frozen=True)
class Check:
    name: str  # schema | checksums | finite | alignment | teacher
    status: str  # ok | fail | skip
    message: str

    def line(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass
class VerifyReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def add(self, name: str, status: str, message: str) -> None:
        self.checks.append(Check(name, status, message))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def verify_cache(path: str | os.PathLike, *, dataset: str | None = None, split: str | None = None,
                 data_dir: str | None = None, teacher: TeacherSpec | None = None, sample: int = 256,
                 seed: int = 0, device: str = "cpu") -> VerifyReport:
    """Run every check on ``path``; rows are compared with data when ``dataset``, ``data_dir`` or a teacher is given.

    Raises CacheError only when the file cannot be opened at all (missing, not HDF5,
    truncated); every other problem is a failed check in the returned report.
    """
    p = Path(path)
    report = VerifyReport(str(p))
    open_h5(p).close()  # unreadable file: nothing else can be checked
    meta = _check_schema(p, report)
    columns = _check_chunks(p, meta, report)
    if dataset is None and split is None and data_dir is None and teacher is None:
        report.add("alignment", "skip", "not checked; pass --data-dir (and --dataset/--split) to compare rows "
                                        "with your copy of the data")
        return report
    if meta is None or columns is None:
        report.add("alignment", "skip", "not checked: the schema or the index datasets are broken (see above)")
        return report
    data = load_dataset(dataset or meta.dataset, split or meta.split, data_dir or "data")
    aligned = _check_alignment(meta, columns, data, report)
    if teacher is None:
        return report
    if not aligned:
        report.add("teacher", "skip", "not re-run: rows do not align with the data (see above)")
        return report
    _check_teacher(p, meta, columns, data, teacher, sample, seed, device, report)
    return report


def _check_schema(p: Path, report: VerifyReport) -> CacheMeta | None:
    try:
        meta = read_meta(p)
    except CacheError as e:
        report.add("schema", "fail", str(e))
        return None
    report.add("schema", "ok", f"{meta.attrs['format']} {meta.schema_version}, complete, {meta.num_samples} x "
                               f"{meta.num_classes} {meta.logits_dtype} logits, {len(meta.attrs)} attributes")
    return meta


def _read_chunks(f: Any, name: str) -> Iterator[tuple[slice, np.ndarray | None]]:
    """Read /name chunk by chunk, one at a time: (rows, block), or (rows, None) where the checksum fails."""
    ds = f[name]
    for rows in row_blocks(ds.shape[0], ds.chunks[0] if ds.chunks else None):
        try:
            yield rows, read_dataset(f, name, rows)
        except CacheError:  # HDF5 refused the chunk: its fletcher32 checksum does not match
            yield rows, None


def _check_chunks(p: Path, meta: CacheMeta | None, report: VerifyReport) -> dict[str, np.ndarray] | None:
    """Read every chunk of every dataset; report checksum failures and non-finite logits.

    Returns labels/indices/sample_ids in memory when they read cleanly, else None.
    """
    columns: dict[str, np.ndarray] = {}
    chunks_read, bad_lines, nonfinite_rows, max_abs = 0, [], [], 0.0
    with open_h5(p) as f:
        names = [n for n in DATASETS if n in f]
        for name in names:
            if not f[name].fletcher32:
                bad_lines.append(f"/{name} was written without fletcher32 checksums, so corruption cannot be "
                                 f"detected; {REDUMP}")
            bad, parts, total = [], [], 0
            for rows, block in _read_chunks(f, name):  # logits: (B, C) one chunk at a time, never all at once
                total += 1
                if block is None:
                    bad.append(rows)
                elif name == "logits":
                    finite = np.isfinite(block).all(axis=1)
                    nonfinite_rows.extend((rows.start + np.flatnonzero(~finite)).tolist())
                    if finite.any():
                        max_abs = max(max_abs, float(np.abs(block[finite].astype(np.float32)).max()))
                else:
                    parts.append(block)
            chunks_read += total - len(bad)
            if bad:
                spans = ", ".join(f"{r.start}:{r.stop}" for r in bad[:3]) + (", ..." if len(bad) > 3 else "")
                bad_lines.append(f"/{name} rows {spans} ({len(bad)} of {total} chunks) fail their fletcher32 "
                                 f"checksum: the file was damaged on disk or in transit; {REDUMP}")
            elif name != "logits":
                columns[name] = np.concatenate(parts)
    for line in bad_lines:
        report.add("checksums", "fail", line)
    if not bad_lines:
        report.add("checksums", "ok", f"read all {chunks_read} chunks of {len(names)} datasets; every fletcher32 "
                                      "checksum matches")
    if "logits" in names:
        if nonfinite_rows:
            report.add("finite", "fail", f"{len(nonfinite_rows)} row(s) of /logits hold NaN/Inf (first: row "
                                         f"{nonfinite_rows[0]}); {REDUMP} (with --dtype float32 if float16 "
                                         "overflowed)")
        else:
            report.add("finite", "ok", f"every logit read is finite (max |z| {max_abs:.2f})")
    if any(n not in columns for n in ("labels", "indices", "sample_ids")):
        return None
    return columns


def _check_alignment(meta: CacheMeta, columns: dict[str, np.ndarray], data: ImageData,
                     report: VerifyReport) -> bool:
    info, n_before = data.info, len(report.checks)
    if (meta.dataset, meta.split) != (info.name, info.split):
        report.add("alignment", "fail", f"the cache was made from {meta.dataset}/{meta.split}, the data is "
                                        f"{info.name}/{info.split}; verify with --dataset {meta.dataset} --split "
                                        f"{meta.split}, or dump a cache of {info.name}/{info.split}")
        return False
    if list(meta.class_names) != list(info.class_names):
        report.add("alignment", "fail", f"the cache has {meta.num_classes} classes {list(meta.class_names)[:4]}..., "
                                        f"the data has {info.num_classes} {list(info.class_names)[:4]}...: it is "
                                        "for another label set; dump a cache with a teacher for these classes")
        return False
    if meta.dataset_fingerprint != info.fingerprint:
        report.add("alignment", "fail", f"dataset fingerprint {meta.dataset_fingerprint[:12]}... != the data's "
                                        f"{info.fingerprint[:12]}...: the cache was made from different "
                                        f"{info.name}/{info.split} files; use the same data or re-dump the cache")
    idx = columns["indices"]
    outside = (idx < 0) | (idx >= info.num_samples)
    if outside.any():
        report.add("alignment", "fail", f"{int(outside.sum())} row(s) of /indices lie outside 0..{info.num_samples - 1} "
                                        f"(first: row {int(np.flatnonzero(outside)[0])}); the cache is for a larger "
                                        "split or corrupt; re-dump it on this data")
        return False
    if len(np.unique(idx)) != len(idx):
        report.add("alignment", "fail", f"/indices repeats dataset indices ({len(idx) - len(np.unique(idx))} "
                                        f"duplicates); the cache is corrupt; {REDUMP}")
    label_bad = columns["labels"] != data.labels.numpy()[idx]
    id_bad = columns["sample_ids"] != data.sample_ids[idx]
    wrong = label_bad | id_bad
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        report.add("alignment", "fail", f"{int(wrong.sum())} of {len(idx)} rows disagree with the data sample at "
                                        f"their index ({int(label_bad.sum())} by label, {int(id_bad.sum())} by "
                                        f"content id; first: row {first}, dataset index {int(idx[first])}): rows "
                                        "shuffled or data changed; re-dump the cache on this data")
    if len(report.checks) > n_before:
        return False
    report.add("alignment", "ok", f"all {len(idx)} rows match {info.name}/{info.split} at their index (label and "
                                  "content id); dataset fingerprint matches")
    return True


def _check_teacher(p: Path, meta: CacheMeta, columns: dict[str, np.ndarray], data: ImageData, spec: TeacherSpec,
                   sample: int, seed: int, device: str, report: VerifyReport) -> None:
    from .train import resolve_device

    teacher = load_teacher(spec, data.info)
    dev = resolve_device(device)
    k = min(sample, meta.num_samples)
    rows = np.sort(np.random.default_rng(seed).choice(meta.num_samples, size=k, replace=False))
    with open_h5(p) as f:
        stored = read_dataset(f, "logits", rows).astype(np.float32)  # (k, C)
    images = data.images[torch.from_numpy(columns["indices"][rows])]
    mean, std = tuple(meta.attrs["normalization_mean"]), tuple(meta.attrs["normalization_std"])
    model = teacher.model.to(dev).eval()
    with torch.inference_mode():
        fresh = torch.cat([model(normalize(x.to(dev), mean, std)).float().cpu() for x in images.split(256)])
    diff = np.abs(fresh.numpy() - stored)  # (k, C)
    base = BF16_TOLERANCE if meta.attrs.get("teacher_precision") == "bf16" else TOLERANCE[meta.logits_dtype]
    tol = base * np.maximum(1.0, np.abs(stored).max(axis=1))  # (k,)
    row_err = diff.max(axis=1)
    over = row_err > tol
    note = "" if teacher.sha256 == meta.teacher_sha256 else " (note: the teacher file's SHA-256 differs from the one recorded)"
    if over.any():
        worst = int(np.argmax(row_err - tol))
        report.add("teacher", "fail", f"{int(over.sum())} of {k} random rows differ from the re-run teacher beyond "
                                      f"the {meta.logits_dtype} tolerance (worst: row {int(rows[worst])}, max |diff| "
                                      f"{row_err[worst]:.3g} > {tol[worst]:.3g}): the logits do not come from this "
                                      f"teacher on this data, or their rows are shuffled{note}")
    else:
        report.add("teacher", "ok", f"{k} random rows re-computed; max |diff| {float(row_err.max()):.3g} within the "
                                    f"{meta.logits_dtype} tolerance ({base:g} x max(1, max |z|)){note}")
