"""`kdcache verify`: is this cache intact, and does it belong to my data (and teacher)?

Checks, each reported as one line (ok / FAIL / skip):

- schema: format, schema version, ``complete`` marker, every attribute and dataset,
  dtypes and shapes (kdcache.cache's reader rules);
- checksums: every chunk of every dataset is read, so HDF5 verifies each chunk's
  fletcher32 checksum; a damaged chunk is named by its row range;
- values: no NaN/Inf and no implausible magnitude (|z| > MAX_ABS_LOGIT) among the logits;
  in a top-k cache every row is a valid encoding (TopK.invalid_rows);
- content: the content hash recomputed from every value equals the one stored at write time;
- alignment (with data): dataset, split, classes and fingerprint match, and every row
  matches the sample at its index by label and content id (LogitCache.align's rule); a
  cache without labelled rows is compared with the data read unlabelled (``ignore_labels``),
  so its rows are checked by index and content id (docs/cache-format.md, "Unlabelled rows");
- views (with data, for a cache with views): the policy is one this kdcache can replay and
  every stored view parameter is a valid view of the data's images;
- teacher (with a teacher): a random sample of rows is re-computed and compared to
  the stored logits within a tolerance that depends on the storage dtype; for a cache with
  views the teacher re-runs on every view of those rows, replayed from the stored parameters,
  so a changed parameter is caught (it shows the teacher another image); for a top-k
  cache, the stored classes' logits and the tail's statistics recomputed from the teacher's
  full row (each moves by at most the largest logit error, so the same tolerance holds), and
  the stored classes must be the teacher's top k (ties within the tolerance pass).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.cache import MAX_ABS_LOGIT, LogitCache, check_readable, open_cache
from kdcache.cache.lowrank import DEFAULT_KL_BUDGET, KL_TEMPERATURES, VERIFY_KL_FACTOR, VERIFY_KL_SLACK, mean_kl
from kdcache.cache.schema import REDUMP
from kdcache.cache.targets import TAIL_T2, TopK
from kdcache.config import VERIFY_SAMPLE
from kdcache.data.augment import policy_from_record
from kdcache.data.datasets import load_dataset
from kdcache.data.folders import folder_dataset_name
from kdcache.data.hf import source_keys
from kdcache.data.images import InputTransform, from_files
from kdcache.data.replay import view_images
from kdcache.data.samples import ImageData
from kdcache.device import resolve_device
from kdcache.errors import CacheError
from kdcache.identity import UNLABELLED
from kdcache.train.teacher import TeacherSpec, load_teacher

# |stored - recomputed| <= TOLERANCE * max(1, max |z| of the row). float32 leaves room for another
# machine's kernels: a GPU runs fp32 convolutions in TF32 by default, which moved the main job's
# teacher-cnn logits by up to 1.3e-3 x max|z| (emulated on CPU, 2,000 rows), so 5e-3 is ~4x that;
# float16 adds its rounding (2^-11 relative); a teacher that ran at bf16 (8-bit mantissa) moved
# teacher-cnn's logits by up to 3.1e-2 x max|z| (99.9th percentile 1.6e-2; 8,000 views of the views
# study's teacher, benchmarks.bf16_error), so 5e-2 is 1.6x the largest and 3x the 99.9th percentile
# of what verify's sampled rows meet. Logits from another teacher, row or view differ by O(max |z|).
TOLERANCE = {"float32": 5e-3, "float16": 6e-3}
BF16_TOLERANCE = 5e-2


def tolerance_for(logits_dtype: str, teacher_precision: str) -> float:
    """The relative tolerance (x max(1, max |z|) of a row) for logits stored as ``logits_dtype``."""
    return BF16_TOLERANCE if teacher_precision == "bf16" else TOLERANCE[logits_dtype]


def tolerance_bound(reference: np.ndarray, base: float) -> np.ndarray:
    """Per row of ``reference`` logits (n, C): the largest allowed |difference|, ``base * max(1, max |z|)``."""
    return base * np.maximum(1.0, np.abs(reference.astype(np.float32)).max(axis=-1))


@dataclass(frozen=True)
class Check:
    name: str  # schema | checksums | values | content | alignment | teacher
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
                 data_dir: str | None = None, teacher: TeacherSpec | None = None, sample: int = VERIFY_SAMPLE,
                 seed: int = 0, device: str = "cpu") -> VerifyReport:
    """Run every check on ``path``; rows are compared with data when ``dataset``, ``data_dir`` or a teacher is given.

    Raises CacheError only when the file cannot be opened at all (missing, not HDF5,
    truncated); every other problem is a failed check in the returned report.
    """
    p = Path(path)
    report = VerifyReport(str(p))
    check_readable(p)  # unreadable file: nothing else can be checked (raises)
    try:
        cache = open_cache(p)
    except CacheError as e:
        report.add("schema", "fail", str(e))
        return report
    with cache:
        m = cache.meta
        kind = f"top-{m.topk}" if m.topk else f"low-rank {m.lowrank_rank} {m.lowrank_code_dtype} codes of" \
            if m.targets == "lowrank" else "full"
        views = f", {m.num_views} views" if m.has_views else ""
        report.add("schema", "ok", f"{m.attrs['format']} {m.schema_version}, complete, {m.num_samples} rows x "
                                   f"{m.num_classes} classes, {kind} {m.logits_dtype} logits{views}, "
                                   f"{len(m.attrs)} attributes")
        intact = _check_scan(cache, report)
        if dataset is None and split is None and data_dir is None and teacher is None:
            report.add("alignment", "skip", "not checked; pass --data-dir (and --dataset/--split) to compare rows "
                                            "with your copy of the data")
            return report
        if not intact:
            report.add("alignment", "skip", "not checked: the index datasets are damaged (see above)")
            return report
        transform = m.input_transform
        data = load_dataset(dataset or folder_dataset_name(m.dataset), split or m.split, data_dir or "data",
                            ignore_labels=m.unlabelled, image_size=InputTransform.from_record(transform),
                            keys=source_keys(m.data_source),  # a Hugging Face dataset: the columns the dump read
                            skip_unreadable=bool(m.skipped_files))  # the files the dump read, as it read them
        aligned = _check_alignment(cache, data, report)
        views_ok = _check_views(cache, data, report) if m.has_views else True
        if teacher is None:
            return report
        if not aligned:
            report.add("teacher", "skip", "not re-run: rows do not align with the data (see above)")
            return report
        if not views_ok:
            report.add("teacher", "skip", "not re-run: the view parameters cannot be replayed (see above)")
            return report
        _check_teacher(cache, data, teacher, sample, seed, device, report)
    return report


def _check_scan(cache: LogitCache, report: VerifyReport) -> bool:
    """checksums, values and content; True when the index datasets read cleanly."""
    scan = cache.scan()
    lines = [f"/{name} was written without fletcher32 checksums, so corruption cannot be detected; {REDUMP}"
             for name in scan.unprotected]
    for name, (total, bad) in scan.chunks.items():
        if bad:
            spans = ", ".join(f"{r.start}:{r.stop}" for r in bad[:3]) + (", ..." if len(bad) > 3 else "")
            lines.append(f"/{name} rows {spans} ({len(bad)} of {total} chunks) fail their fletcher32 checksum: the "
                         f"file was damaged on disk or in transit; {REDUMP}")
    for line in lines:
        report.add("checksums", "fail", line)
    if not lines:
        report.add("checksums", "ok", f"read all {sum(t for t, _ in scan.chunks.values())} chunks of "
                                      f"{len(scan.chunks)} datasets; every fletcher32 checksum matches")
    if cache.meta.targets == "lowrank":
        if not any(bad for _, bad in scan.chunks.values()):
            _check_lowrank(cache, report)
    elif scan.nonfinite_rows:
        report.add("values", "fail", f"{len(scan.nonfinite_rows)} row(s) of logits hold NaN/Inf (first: row "
                                     f"{scan.nonfinite_rows[0]}); {REDUMP} (with --dtype float32 if float16 overflowed)")
    if scan.implausible_rows:
        report.add("values", "fail", f"{len(scan.implausible_rows)} row(s) hold logits of implausible magnitude "
                                     f"(max |z| {scan.max_abs:.3g} > {MAX_ABS_LOGIT:g}; first: row "
                                     f"{scan.implausible_rows[0]}): corrupt values or a broken teacher; {REDUMP}")
    if cache.meta.targets != "lowrank" and not (scan.nonfinite_rows or scan.implausible_rows):
        report.add("values", "ok", f"every logit is finite and plausible (max |z| {scan.max_abs:.2f})")
        if cache.kind == "topk" and not any(bad for _, bad in scan.chunks.values()):
            _check_topk_rows(cache, report)
    stored = cache.meta.content_sha256
    if scan.content_sha256 is None:
        report.add("content", "skip", "not recomputed: some chunks are unreadable (see checksums)")
    elif stored is None:
        report.add("content", "skip", f"schema {cache.meta.schema_version} stores no content hash; recomputed "
                                      f"{scan.content_sha256[:16]}...")
    elif stored != scan.content_sha256:
        report.add("content", "fail", f"content hash {scan.content_sha256[:16]}... != the stored "
                                      f"{stored[:16]}...: values were changed after the file was written; {REDUMP}")
    else:
        report.add("content", "ok", f"content hash recomputed from every value matches ({stored[:16]}...)")
    return not any(bad for name, (_, bad) in scan.chunks.items() if name in ("labels", "indices", "sample_ids"))


def _check_lowrank(cache: LogitCache, report: VerifyReport) -> None:
    """The basis (finite, orthonormal components) and every decoded row (finite, plausible logits)."""
    try:
        basis = cache.basis
    except CacheError as e:
        report.add("basis", "fail", str(e))
        return
    v = basis.components.astype(np.float64)
    off = float(np.abs(v @ v.T - np.eye(basis.rank)).max())
    packing = "" if basis.packing is None else (f"; packing of {int(basis.packing.bits.astype(np.int64).sum())} bits "
                                                 f"a row, every component <= 16 bits, steps finite and > 0")
    report.add("basis", "ok", f"mean ({basis.num_classes},) and {basis.rank} components finite, orthonormal "
                              f"(max |V Vᵀ - I| {off:.1e}){packing}")
    max_abs = 0.0
    try:
        for _, block in cache.blocks():
            max_abs = max(max_abs, float(np.abs(block).max()) if block.size else 0.0)
    except CacheError as e:
        report.add("values", "fail", str(e))
        return
    codes = "every packed code decodes" if basis.packing is not None else "every code and scale is finite"
    report.add("values", "ok", f"{codes}; every decoded logit is finite and plausible "
                               f"(max |z| {max_abs:.2f})")


def _check_topk_rows(cache: LogitCache, report: VerifyReport) -> None:
    """Every top-k row against the encoding's invariants (TopK.invalid_rows), one line per kind of problem."""
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    try:
        for rows, block in cache.blocks():
            for reason, mask in block.invalid_rows().items():
                if mask.any():
                    first.setdefault(reason, rows.start + int(np.flatnonzero(mask)[0]))
                    count[reason] = count.get(reason, 0) + int(mask.sum())
    except CacheError as e:  # the reader refuses class ids out of range before we get to see them
        report.add("values", "fail", str(e))
        return
    for reason, row in first.items():
        report.add("values", "fail", f"{count[reason]} top-k row(s) hold {reason} (first: row {row}): the top-k "
                                     f"encoding is corrupt; {REDUMP}")
    if not first:
        report.add("values", "ok", f"every top-{cache.meta.topk} row is a valid encoding: distinct class ids in range, "
                                   "values descending, tail consistent with them")


def _check_alignment(cache: LogitCache, data: ImageData, report: VerifyReport) -> bool:
    """Every row against the data sample at its index: the rule LogitCache.align applies for training."""
    info, idx = data.info, cache.indices
    in_range = (idx >= 0) & (idx < len(data)) if len(data) == info.num_samples else np.zeros(len(idx), bool)
    labels = data.labels.numpy()[np.where(in_range, idx, 0)]
    ids = data.sample_ids[np.where(in_range, idx, 0)]
    if data.keys is not None and cache.meta.dataset_fingerprint != info.fingerprint:  # files: name the changed ones
        _, problems = cache.alignment_problems(data.indices.numpy(), sample_ids=data.sample_ids, info=info,
                                               keys=data.keys)
    else:
        _, problems = cache.alignment_problems(idx, labels=labels, sample_ids=ids, info=info)
    for problem in problems:
        report.add("alignment", "fail", problem)
    if problems:
        return False
    unlabelled = int((cache.labels == UNLABELLED).sum())
    labelled = len(idx) - unlabelled
    how = ", ".join(([f"{labelled} labelled by label and content id"] if labelled else []) +
                    ([f"{unlabelled} unlabelled by content id"] if unlabelled else []))
    report.add("alignment", "ok", f"all {len(idx)} rows match {info.name}/{info.split} at their index ({how}); "
                                  "dataset fingerprint matches")
    return True


def _check_views(cache: LogitCache, data: ImageData, report: VerifyReport) -> bool:
    """The view policy is replayable and every stored parameter is a valid view of the data's images."""
    m = cache.meta
    try:
        policy = policy_from_record(m.view_policy, where=str(cache.path))
        params = cache.read_view_params()
    except CacheError as e:
        report.add("views", "fail", str(e))
        return False
    h, w = data.info.image_size
    if policy.FROM_FILE and not from_files(data.images):
        report.add("views", "fail", f"{policy} views are cut from the original image files, but {data.info.name} is "
                                    "not read from files; verify against the image folder the cache was dumped from")
        return False
    problem = policy.problem(params, (h, w))
    if problem:
        report.add("views", "fail", f"/view_params: {problem}: they cannot be views of {h}x{w} images; {REDUMP}")
        return False
    original = ", view 0 un-augmented" if m.view_policy.get("include_original") else ""
    report.add("views", "ok", f"{m.num_samples} x {m.num_views} view parameters are valid {policy} views of {h}x{w} "
                              f"images{original}")
    return True


def _flatten_views(t: Any, views: int) -> Any:
    """(k, V, ...) targets -> (k * V, ...), so each view is compared as a row."""
    if isinstance(t, TopK):
        return t.map(lambda a: a.reshape(-1, *a.shape[2:]))
    return t.reshape(len(t) * views, -1)


def _check_teacher(cache: LogitCache, data: ImageData, spec: TeacherSpec, sample: int, seed: int, device: str,
                   report: VerifyReport) -> None:
    m = cache.meta
    info = data.info if data.info.class_names else replace(data.info, class_names=m.class_names)  # unlabelled images
    teacher = load_teacher(spec, info)
    dev = resolve_device(device)
    k = min(sample, m.num_samples)
    rows = np.sort(np.random.default_rng(seed).choice(m.num_samples, size=k, replace=False))
    stored = cache.read(rows)
    positions = torch.from_numpy(cache.indices[rows])
    teacher.model.to(dev)  # re-run as dump-logits runs it (Teacher.logits: fp32 with TF32 off on CUDA)
    if m.has_views:  # every view of each row, replayed from its stored parameters by the one replayer
        policy = policy_from_record(m.view_policy)
        params = torch.from_numpy(cache.read_view_params(rows))  # (k, V, P)
        fresh = torch.cat([teacher.view_logits(view_images(data.images, i, p, policy), dev)
                           for i, p in zip(positions.split(256), params.split(256))]).numpy()  # (k, V, C)
        fresh, stored = fresh.reshape(-1, fresh.shape[-1]), _flatten_views(stored, m.num_views)
        rows = np.repeat(rows, m.num_views)  # the row of each compared view
    else:
        fresh = torch.cat([teacher.logits(data.images[i], dev) for i in positions.split(256)]).numpy()  # (k, C)
    if m.targets == "lowrank":
        _check_lowrank_teacher(cache, fresh, stored, rows, k, teacher.sha256 == m.teacher_sha256, report)
        return
    base = tolerance_for(m.logits_dtype, m.teacher_precision)
    kind = "bf16 teacher" if m.teacher_precision == "bf16" else m.logits_dtype  # which tolerance applies
    tol = tolerance_bound(fresh, base)  # (k,) the same rule for full and top-k rows
    if isinstance(stored, TopK):
        got, ref, not_top = topk_vs_logits(stored, fresh, tol)
    else:
        got, ref, not_top = fresh, stored.astype(np.float32), np.zeros(len(fresh), dtype=bool)
    row_err = np.abs(got - ref).max(axis=-1)  # (k,)
    over = row_err > tol
    note = "" if teacher.sha256 == m.teacher_sha256 else " (note: the teacher file's SHA-256 differs from the one recorded)"
    v = m.num_views if m.has_views else 1
    what = f"{len(over)} views of {k} random rows" if m.has_views else f"{k} random rows"
    if not_top.any():
        first = int(np.flatnonzero(not_top)[0])
        where = f"row {int(rows[first])}" + (f" view {first % v}" if m.has_views else "")
        report.add("teacher", "fail", f"{int(not_top.sum())} of {what} store classes that are not the re-run "
                                      f"teacher's top {m.topk} (first: {where}): the cache was not made by this "
                                      f"teacher, or its top-k encoding is wrong{note}")
    if over.any():
        worst = int(np.argmax(row_err - tol))
        where = f"row {int(rows[worst])}" + (f" view {worst % v}" if m.has_views else "")
        views = ", or the stored view parameters were changed" if m.has_views else ""
        report.add("teacher", "fail", f"{int(over.sum())} of {what} differ from the re-run teacher "
                                      f"beyond the {kind} tolerance (worst: {where}, max |diff| "
                                      f"{row_err[worst]:.3g} > {tol[worst]:.3g}): the logits do not come from this "
                                      f"teacher on this data, or their rows are shuffled{views}{note}")
    if not (over.any() or not_top.any()):
        values = f"; top-{m.topk} logits, their classes and the tail's statistics match" if m.topk else ""
        report.add("teacher", "ok", f"{what} re-computed{values}; max |diff| {float(row_err.max()):.3g} within "
                                    f"the {kind} tolerance ({base:g} x max(1, max |z|)){note}")


def _check_lowrank_teacher(cache: LogitCache, fresh: np.ndarray, stored: np.ndarray, rows: np.ndarray, k: int,
                           same_file: bool, report: VerifyReport) -> None:
    """Rebuilt rows against the re-run teacher: mean KL at each T within the stated error (lowrank.VERIFY_KL_*)."""
    recorded = (cache.meta.lowrank_kl or {}).get("kl") or {}
    note = "" if same_file else " (note: the teacher file's SHA-256 differs from the one recorded)"
    kl = mean_kl(fresh, stored, KL_TEMPERATURES)
    limits = {T: VERIFY_KL_FACTOR * recorded.get(f"{T:g}", DEFAULT_KL_BUDGET) + VERIFY_KL_SLACK for T in kl}
    over = [T for T in kl if kl[T] > limits[T]]
    shown = ", ".join(f"T={T:g}: {kl[T]:.2g} (limit {limits[T]:.2g})" for T in kl)
    if over:
        report.add("teacher", "fail", f"{k} random rows rebuilt from the low-rank codes are further from the re-run "
                                      f"teacher than the cache states: mean KL {shown}: the codes do not come from "
                                      f"this teacher on this data, or their rows are shuffled{note}")
    else:
        report.add("teacher", "ok", f"{k} random rows re-computed; rebuilt from the codes within the stated error: "
                                    f"mean KL {shown}{note}")


def topk_vs_logits(stored: TopK, fresh: np.ndarray, tol: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compare top-k rows with the full logits ``fresh`` (n, C) they should encode.

    Returns (recomputed, stored) values per row, (n, k + 3): the logits of the stored
    classes, then the tail's log-sum-exp at T = 1 and 2 and its mean over the other classes,
    computed from ``fresh``. An error δ in every logit moves each of these by at most max |δ|,
    so the full cache's tolerance applies unchanged. Also returns (n,) True where a stored
    class is not among the top k of ``fresh`` by more than ``tol`` (near-ties at the k-th place pass).
    """
    classes = stored.classes.astype(np.int64)
    got = np.take_along_axis(fresh, classes, axis=-1).astype(np.float64)  # (n, k)
    ref = stored.logits.astype(np.float64)
    kept = np.zeros(fresh.shape, dtype=bool)
    np.put_along_axis(kept, classes, True, axis=-1)
    not_top = np.zeros(len(fresh), dtype=bool)
    if stored.k < stored.num_classes:
        tail = np.where(kept, -np.inf, fresh.astype(np.float64))  # (n, C)
        top = tail.max(-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(tail - top).sum(-1))
        lse2 = top[:, 0] / TAIL_T2 + np.log(np.exp((tail - top) / TAIL_T2).sum(-1))
        mean = np.where(kept, 0.0, fresh).sum(-1, dtype=np.float64) / (stored.num_classes - stored.k)
        got = np.concatenate([got, lse[:, None], lse2[:, None], mean[:, None]], axis=-1)
        ref = np.concatenate([ref, stored.tail_logsumexp[:, None], stored.tail_logsumexp_t2[:, None],
                              stored.tail_mean[:, None]], axis=-1)
        not_top = got[:, :stored.k].min(-1) < top[:, 0] - tol
    return got, ref, not_top
