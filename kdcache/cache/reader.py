"""Reading a cache: ``open_cache(path) -> LogitCache``, the one object the rest of kdcache reads caches through."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from kdcache.cache import lowrank as _lowrank
from kdcache.cache.schema import (
    DATASETS,
    FORMAT_NAME,
    MAX_ABS_LOGIT,
    REDUMP,
    TARGET_DATASETS,
    CacheMeta,
    check_values,
    class_id_dtype,
    content_hash,
    meta_from,
    open_h5,
)
from kdcache.cache.targets import Targets, TopK
from kdcache.errors import CacheError
from kdcache.identity import UNLABELLED, USER_DATASET, DatasetInfo


def read_meta(path: str | os.PathLike) -> CacheMeta:
    """Open, validate the schema, and return the root attributes (reads no rows)."""
    with open_cache(path) as c:
        return c.meta


def check_readable(path: str | os.PathLike) -> None:
    """Raise CacheError if ``path`` is missing, not HDF5, or truncated (before looking at what it holds)."""
    open_h5(path).close()


def open_cache(path: str | os.PathLike, *, rdcc_nbytes: int | None = None) -> "LogitCache":
    """Open a cache read-only (a context manager); nothing but the attributes is read until asked.

        with kdcache.open_cache("fmnist-train.h5") as cache:
            print(len(cache), cache.class_names, cache.meta.teacher_arch)
            rows = cache.align(data_indices, labels=data_labels)   # refuses a cache of other data
            logits = cache.read(rows)                              # (n, C) numpy, as stored
    """
    return LogitCache(path, rdcc_nbytes=rdcc_nbytes)


class LogitCache:
    """An open cache file: typed metadata, the index columns, soft targets by row, block reads, and ``align``.

    Not shared across processes: h5py handles must not cross a fork, so code that reads in
    DataLoader workers opens its own ``LogitCache`` in each worker (kdcache.cache.stream does).
    """

    def __init__(self, path: str | os.PathLike, *, rdcc_nbytes: int | None = None, file_format: str = FORMAT_NAME):
        self.path = Path(path)
        self._f: h5py.File | None = open_h5(self.path, rdcc_nbytes=rdcc_nbytes)
        try:
            self.meta = meta_from(self._f, self.path, file_format)
        except BaseException:
            self.close()
            raise
        self._pid = os.getpid()

    # -- life cycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "LogitCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:
        raise TypeError("a LogitCache holds an open HDF5 handle and cannot be pickled; open the cache in each "
                        "process (kdcache.CachedDataset loads what it needs instead)")

    @property
    def file(self) -> h5py.File:
        if self._f is None:
            raise CacheError(f"{self.path} is closed")
        if self._pid != os.getpid():
            raise CacheError(f"{self.path} was opened in another process; open the cache again in this one")
        return self._f

    def __repr__(self) -> str:
        m = self.meta
        views = f", {m.num_views} views ({m.view_policy['name']})" if m.has_views else ""
        kind = f"top-{m.topk}" if m.targets == "topk" else \
            f"low-rank {m.lowrank_rank} {m.lowrank_code_dtype} codes of" if m.targets == "lowrank" else "logits"
        return (f"LogitCache({str(self.path)!r}, {m.num_samples} rows x {m.num_classes} classes, {kind} "
                f"{m.logits_dtype}{views}, {m.dataset}/{m.split}, teacher {m.teacher_arch})")

    # -- identity -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.meta.num_samples

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def dtype(self) -> str:
        return self.meta.logits_dtype

    @property
    def kind(self) -> str:
        """What ``read`` returns: 'logits' (dense rows; a low-rank cache's are decoded) or 'topk' (a TopK).

        ``meta.targets`` says what is stored ('logits', 'topk' or 'lowrank').
        """
        return "logits" if self.meta.targets == "lowrank" else self.meta.targets

    @cached_property
    def basis(self) -> "_lowrank.Basis":
        """A low-rank cache's basis (read once, checked: shapes, finite, orthonormal rows; CacheError if corrupt)."""
        if self.meta.targets != "lowrank":
            raise CacheError(f"{self.path} holds {self.meta.targets} targets, not low-rank codes")
        packing = _lowrank.Packing(self._read("lowrank_bits", slice(None)), self._read("lowrank_steps", slice(None))) \
            if self.meta.lowrank_code_dtype == "packed" else None
        basis = _lowrank.Basis(self._read("lowrank_mean", slice(None)), self._read("lowrank_components", slice(None)),
                               packing)
        _lowrank.check_basis(basis, self.path)
        return basis

    @property
    def chunk_rows(self) -> int:
        """Rows per HDF5 chunk of the target datasets: a block read of this many rows is one chunk read."""
        ds = self.file[self.meta.target_datasets[0]]
        return int(ds.chunks[0]) if ds.chunks else 65536

    def target_bytes(self, as_float32: bool = True) -> int:
        """Bytes the targets of every row take in memory (as float32 values, or as stored)."""
        m = self.meta
        per = m.num_views * ((m.topk * (4 + 8) + 12) if m.topk else m.num_classes * 4)
        if not as_float32 and m.targets == "lowrank":
            per = m.num_views * (self.file["lowrank_codes"].shape[-1] if m.lowrank_code_dtype == "packed"
                                 else _lowrank.code_bytes(m.lowrank_rank, m.lowrank_code_dtype))
        elif not as_float32:
            ids = np.dtype(class_id_dtype(m.num_classes)).itemsize
            per = m.num_views * ((m.topk * (np.dtype(m.logits_dtype).itemsize + ids) + 12) if m.topk
                                 else m.num_classes * np.dtype(m.logits_dtype).itemsize)
        return m.num_samples * per

    # -- the index columns --------------------------------------------------------------------------

    @cached_property
    def indices(self) -> np.ndarray:
        """(N,) int64: the dataset index of each row."""
        return self._read_all("indices")

    @cached_property
    def labels(self) -> np.ndarray:
        """(N,) int64: each row's label, UNLABELLED (-1) where the sample has none."""
        return self._read_all("labels")

    @cached_property
    def sample_ids(self) -> np.ndarray:
        """(N,) uint64: each row's content id."""
        return self._read_all("sample_ids")

    def _read_all(self, name: str) -> np.ndarray:
        return self._read(name, slice(None))

    def _read(self, name: str, sel: Any, out: np.ndarray | None = None) -> np.ndarray:
        try:
            if out is not None:
                self.file[name].read_direct(out, source_sel=sel)
                return out
            return self.file[name][sel]
        except OSError as e:
            raise CacheError(f"{self.path}: reading /{name} failed ({str(e).splitlines()[0]}): the file is corrupt "
                             f"(checksum mismatch); {REDUMP}") from None

    def rows_of(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The cache row of each dataset index (CacheError naming the first one not in the cache)."""
        rows, problems = self._positions(np.asarray(indices, dtype=np.int64), self.meta.dataset_num_samples)
        if problems:
            raise CacheError(problems[0])
        return rows

    # -- soft targets -------------------------------------------------------------------------------

    def read(self, rows: slice | np.ndarray | Sequence[int] | None = None, views: np.ndarray | None = None,
             check: bool = True) -> Targets:
        """Soft targets of cache ``rows`` (numpy, stored dtypes): logits (n, [V,] C) or a TopK.

        ``views`` (n,) picks one view per row (the views axis disappears); None keeps them all.
        ``check`` refuses NaN/Inf and implausible logits, naming the row.
        """
        sel, order = _selection(rows, self.meta.num_samples)
        arrays = {name: self._read(name, sel) for name in self.meta.target_datasets}
        if order is not None:
            arrays = {k: v[order] for k, v in arrays.items()}
        if not check:
            return self._targets(arrays, views, None)
        if isinstance(sel, slice):  # the row numbers, for naming a bad row (no N-long array per read)
            start, stop, step = sel.indices(self.meta.num_samples)
            numbers = np.arange(start, stop, step)
        else:
            numbers = np.asarray(sel)
        return self._targets(arrays, views, numbers if order is None else numbers[order])

    def read_span(self, start: int, stop: int, out: np.ndarray | None = None) -> Targets:
        """Rows ``start:stop`` in one read per dataset (``out``: a buffer for full logits, saves a copy)."""
        stored = self.meta.targets
        arrays = {name: self._read(name, np.s_[start:stop], out=out if stored == "logits" else None)
                  for name in self.meta.target_datasets}
        targets = self._targets(arrays, None, start)
        if stored == "lowrank" and out is not None:
            out[...] = targets
            return out
        return targets

    def read_codes(self, start: int, stop: int) -> "_lowrank.Codes":
        """Rows ``start:stop`` of a low-rank cache as stored (not decoded): for copying them into another cache."""
        if self.meta.targets != "lowrank":
            raise CacheError(f"{self.path} holds {self.meta.targets} targets, not low-rank codes")
        scales = None if self.meta.lowrank_code_dtype == "packed" else self._read("lowrank_scales", np.s_[start:stop])
        return _lowrank.Codes(self._read("lowrank_codes", np.s_[start:stop]), scales)

    def decode_codes(self, codes: "_lowrank.Codes", rows: Any = None) -> np.ndarray:
        """Float32 logits of codes read with ``read_codes`` (``rows``: their cache rows, to check and name a bad one)."""
        arrays = {"lowrank_codes": codes.codes}
        if codes.scales is not None:
            arrays["lowrank_scales"] = codes.scales
        return self._decode(arrays, rows)

    def _targets(self, arrays: dict[str, np.ndarray], views: np.ndarray | None, rows: Any) -> Targets:
        if views is not None:
            if not self.meta.has_views:
                raise CacheError(f"{self.path} has no views; read it without views=")
            v = np.asarray(views, dtype=np.int64)
            arrays = {k: np.take_along_axis(a, v.reshape(-1, 1, *([1] * (a.ndim - 2))), axis=1)[:, 0]
                      for k, a in arrays.items()}
        if self.meta.targets == "lowrank":
            return self._decode(arrays, rows)
        values = arrays["logits" if self.kind == "logits" else "topk_logits"]
        if rows is not None:
            check_values("logits" if self.kind == "logits" else "topk_logits", values, rows, self.path)
        if self.kind == "logits":
            return values
        classes = arrays["topk_classes"]
        if rows is not None and classes.size and (int(classes.max()) >= self.num_classes or int(classes.min()) < 0):
            bad = ((classes >= self.num_classes) | (classes < 0)).reshape(len(classes), -1).any(-1)
            i = int(np.flatnonzero(bad)[0])
            row = rows + i if isinstance(rows, (int, np.integer)) else int(rows[i])
            raise CacheError(f"{self.path}: /topk_classes row {row} holds a class id outside 0..{self.num_classes - 1}; "
                             f"the cache is corrupt, {REDUMP}")
        return TopK(values, classes, arrays["tail_logsumexp"], arrays["tail_mean"], self.num_classes,
                    arrays["tail_logsumexp_t2"])

    def _decode(self, arrays: dict[str, np.ndarray], rows: Any, block: int = 8192) -> np.ndarray:
        """Low-rank codes -> float32 logits (n, [V,] C), a block of rows at a time (2·r·C FLOPs a row)."""
        codes, scales = arrays["lowrank_codes"], arrays.get("lowrank_scales")
        if rows is not None and scales is not None and not (np.isfinite(scales).all() and (
                codes.dtype == np.int8 or np.isfinite(codes).all())):
            bad = ~(np.isfinite(scales).reshape(len(scales), -1).all(1) & np.isfinite(codes.astype(np.float32))
                    .reshape(len(codes), -1).all(1))
            i = int(np.flatnonzero(bad)[0])
            row = rows + i if isinstance(rows, (int, np.integer)) else int(rows[i])
            raise CacheError(f"{self.path}: /lowrank_codes or /lowrank_scales row {row} holds NaN/Inf; the cache is "
                             f"corrupt, {REDUMP}")
        basis = self.basis
        out = np.empty((*codes.shape[:-1], self.num_classes), dtype=np.float32)
        for s in range(0, len(codes), block):
            part = None if scales is None else scales[s:s + block]
            out[s:s + block] = _lowrank.decode(codes[s:s + block], part, basis).numpy()
        if rows is not None:  # a decoded row out of bounds: the codes, scales or basis (packing) are corrupt
            check_values("lowrank_codes (decoded)", out, rows, self.path)
        return out

    def read_view_params(self, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """(n, V, P) float32 parameters of the stored views of ``rows``."""
        if not self.meta.has_views:
            raise CacheError(f"{self.path} stores no augmentation views")
        sel, order = _selection(rows, self.meta.num_samples)
        params = self._read("view_params", sel)
        return params if order is None else params[order]

    def blocks(self, block_rows: int | None = None) -> Iterator[tuple[slice, Targets]]:
        """``(rows, targets)`` for consecutive chunk-aligned blocks of rows, each read once (never all at once)."""
        step = block_rows or self.chunk_rows
        for start in range(0, self.meta.num_samples, step):
            stop = min(start + step, self.meta.num_samples)
            yield slice(start, stop), self.read_span(start, stop)

    def chunk_byte_ranges(self, start: int, stop: int) -> list[tuple[int, int]]:
        """(file offset, size) of the chunks holding rows ``start:stop`` of the targets (for readahead hints)."""
        out = []
        for name in self.meta.target_datasets:
            ds = self.file[name]
            chunk = ds.chunks[0]
            for r in range(start // chunk * chunk, stop, chunk):
                info = ds.id.get_chunk_info_by_coord((r,) + (0,) * (ds.ndim - 1))
                if info.byte_offset is not None and info.size:
                    out.append((int(info.byte_offset), int(info.size)))
        return out

    # -- alignment: the one rule ---------------------------------------------------------------------

    def align(self, indices: Sequence[int] | np.ndarray, *, labels: np.ndarray | None = None,
              sample_ids: np.ndarray | None = None, info: DatasetInfo | None = None,
              keys: Sequence[str] | None = None) -> np.ndarray:
        """The cache row of each sample, given each sample's dataset index (and label, content id, dataset identity).

        Refuses, with the reason and the fix, a cache of another dataset, split, class set or
        data version (``info``), an /indices column with values outside the split or repeats,
        any sample the cache does not cover, and rows whose label or content id differ from the
        sample's (a reordered, relabelled or edited dataset). ``labels``/``sample_ids`` are
        compared where given. ``keys`` (image files: each sample's relative path) name the files
        that changed when the data is not the data the cache was made from.
        """
        rows, problems = self.alignment_problems(indices, labels=labels, sample_ids=sample_ids, info=info, keys=keys)
        if problems:
            raise CacheError(problems[0])
        assert rows is not None
        return rows

    def alignment_problems(self, indices: Sequence[int] | np.ndarray, *, labels: np.ndarray | None = None,
                           sample_ids: np.ndarray | None = None, info: DatasetInfo | None = None,
                           keys: Sequence[str] | None = None) -> tuple[np.ndarray | None, list[str]]:
        """Like ``align``, but returns ``(rows or None, every problem found)`` instead of raising the first."""
        m, p, problems = self.meta, self.path, []
        if info is not None:
            # a user's dataset ("dataset:<class>", e.g. an ImageFolder dumped from Python before it was recorded as
            # imagefolder) under another name: the fingerprint, which hashes every sample, says whether it is the same
            user = USER_DATASET in (m.dataset[:len(USER_DATASET)], info.name[:len(USER_DATASET)])
            same_data = user and m.dataset_fingerprint == info.fingerprint
            if (m.dataset, m.split) != (info.name, info.split) and not same_data:
                return None, [f"{p} was made from {m.dataset}/{m.split}, but the data is {info.name}/{info.split}; "
                              f"dump a cache of {info.name}/{info.split} (or use the data the cache was made from)"]
            if info.class_names and list(m.class_names) != list(info.class_names):
                return None, [f"{p} has {m.num_classes} classes {list(m.class_names)[:4]}..., the data has "
                              f"{info.num_classes} {list(info.class_names)[:4]}...; the cache is for another label set"]
            if m.dataset_fingerprint != info.fingerprint and m.num_labelled == 0 and labels is not None \
                    and (np.asarray(labels) != UNLABELLED).any():  # ids and fingerprint hash -1, the data its labels
                return None, [f"{p} holds no labels (dumped with --no-labels), so its rows cannot be matched with "
                              f"labelled {info.name}/{info.split} data; dump the split with its labels (train-student "
                              "--labels-limit N then keeps the labels of the first N samples only)"]
            if m.dataset_fingerprint != info.fingerprint and keys is not None and sample_ids is not None:
                return None, [self._changed_files(np.asarray(sample_ids), keys, len(indices) == info.num_samples)]
            if m.dataset_fingerprint != info.fingerprint:
                problems.append(f"{p} was made from different {info.name}/{info.split} data (dataset fingerprint "
                                f"{m.dataset_fingerprint[:12]}... != {info.fingerprint[:12]}...); re-dump the cache "
                                "on this data, or use the data it was made from")
        want = np.asarray(indices, dtype=np.int64)
        rows, missing = self._positions(want, info.num_samples if info is not None else m.dataset_num_samples)
        problems += missing
        if rows is None:
            return None, problems
        bad_label = np.zeros(len(rows), dtype=bool) if labels is None else self.labels[rows] != np.asarray(labels)
        bad_id = np.zeros(len(rows), dtype=bool) if sample_ids is None else self.sample_ids[rows] != np.asarray(sample_ids)
        wrong = bad_label | bad_id
        if wrong.any():
            first = int(np.flatnonzero(wrong)[0])
            named = f", {keys[first]}" if keys is not None else ""  # image files: the file, by relative path
            problems.append(f"{p}: {int(wrong.sum())} of {len(rows)} rows disagree with the data sample at their index "
                            f"({int(bad_label.sum())} by label, {int(bad_id.sum())} by content id; first: dataset index "
                            f"{int(want[first])}{named}): rows shuffled or data changed; re-dump the cache on this "
                            "data")
        return (None if problems else rows), problems

    def _changed_files(self, sample_ids: np.ndarray, keys: Sequence[str], whole_split: bool) -> str:
        """One line naming the files that differ from the cache's rows (ids hash path, bytes and label)."""
        new = np.flatnonzero(~np.isin(sample_ids, self.sample_ids))
        first = ", ".join(keys[i] for i in new[:3]) + (", ..." if len(new) > 3 else "")
        gone = np.flatnonzero(~np.isin(self.sample_ids, sample_ids)) if whole_split else np.zeros(0, np.int64)
        what = [f"{len(new)} file(s) added or changed (first: {first})"] if len(new) else []
        if len(gone):
            where = "; ".join(self._where_gone(gone[:3], sample_ids, keys))
            what += [f"{len(gone)} row(s) of the cache have no such file any more (removed, renamed or changed; "
                     f"{'first: ' if len(gone) > 3 else ''}{where})"]
        if not what:
            what = ["the files are the same but their order or labels differ"]
        return (f"{self.path}: the images changed since the dump: {'; '.join(what)}; re-dump the cache on these "
                "images, or use the images it was made from")

    def _where_gone(self, gone: np.ndarray, sample_ids: np.ndarray, keys: Sequence[str]) -> list[str]:
        """Where each cache row ``gone`` (whose file is no longer in the data) lay: the cache keeps no file names, so
        each is named by its neighbours still in the data (rows are in the data's sorted file order)."""
        by_id = {int(s): i for i, s in enumerate(sample_ids)}
        order = np.argsort(self.indices)  # cache rows in dataset-index order
        ids = self.sample_ids
        out = []
        for row in gone:
            pos = int(np.flatnonzero(order == row)[0])
            before = next((keys[by_id[int(ids[r])]] for r in order[:pos][::-1] if int(ids[r]) in by_id), None)
            after = next((keys[by_id[int(ids[r])]] for r in order[pos + 1:] if int(ids[r]) in by_id), None)
            between = " and ".join(k for k in (before, after) if k)
            out.append(f"dataset index {int(self.indices[row])}"
                       + (f", the file {'between' if before and after else 'next to'} {between}" if between else ""))
        return out

    def _positions(self, want: np.ndarray, split_size: int) -> tuple[np.ndarray | None, list[str]]:
        idx, p = self.indices, self.path
        outside = (idx < 0) | (idx >= split_size)
        if outside.any():
            return None, [f"{p}: {int(outside.sum())} row(s) of /indices lie outside 0..{split_size - 1} (first: row "
                          f"{int(np.flatnonzero(outside)[0])}); the cache is for a larger split or corrupt; {REDUMP}"]
        pos = np.full(split_size, -1, dtype=np.int64)
        pos[idx] = np.arange(len(idx))
        if (pos >= 0).sum() != len(idx):
            dup = len(idx) - int((pos >= 0).sum())
            return None, [f"{p}: /indices repeats dataset indices ({dup} duplicate(s)), so some rows are ambiguous; "
                          f"the cache is corrupt; {REDUMP}"]
        if len(want) and (want.min() < 0 or want.max() >= split_size):
            return None, [f"{p} covers a split of {split_size} samples, but dataset indices up to {int(want.max())} "
                          f"were asked for: the dataset has more items than the cache's split (another split, or "
                          "other data?)"]
        rows = pos[want]
        if (rows < 0).any():
            n_missing = int((rows < 0).sum())
            return None, [f"{p} covers {self.meta.num_samples} samples but {n_missing} of the {len(want)} asked for "
                          f"are not in it (first missing dataset index {int(want[rows < 0][0])}); dump a cache that "
                          "covers them (fewer --limit here, or more in dump-logits)"]
        return rows, []

    # -- integrity (kdcache verify) -------------------------------------------------------------------

    def scan(self) -> "ScanResult":
        """Read every chunk of every dataset once: checksum failures, bad values, and the content hash recomputed."""
        r = ScanResult()
        value_name = TARGET_DATASETS[self.meta.targets][0] if self.meta.targets != "lowrank" else None  # decoded rows
        # of a low-rank cache are checked by kdcache.verify
        for name in sorted(self.file.keys()):
            ds = self.file[name]
            if name not in DATASETS:
                continue
            if not ds.fletcher32:
                r.unprotected.append(name)
            h, bad, total = hashlib.sha256(), [], 0
            step = ds.chunks[0] if ds.chunks else 65536
            for start in range(0, ds.shape[0], step):
                rows = slice(start, min(start + step, ds.shape[0]))
                total += 1
                try:
                    block = ds[rows]
                except OSError:  # HDF5 refused the chunk: its fletcher32 checksum does not match
                    bad.append(rows)
                    continue
                h.update(block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes())
                if name == value_name:
                    v = block.reshape(len(block), -1).astype(np.float32)
                    finite = np.isfinite(v).all(axis=1)
                    r.nonfinite_rows.extend((start + np.flatnonzero(~finite)).tolist())
                    if finite.any():
                        row_max = np.abs(v[finite]).max(axis=1)
                        r.max_abs = max(r.max_abs, float(row_max.max()))
                        r.implausible_rows.extend((start + np.flatnonzero(finite)[row_max > MAX_ABS_LOGIT]).tolist())
            r.chunks[name] = (total, bad)
            r.digests[name] = h.hexdigest()
        r.content_sha256 = None if any(b for _, b in r.chunks.values()) else content_hash(r.digests)
        return r


@dataclass
class ScanResult:
    """What ``LogitCache.scan`` found."""

    chunks: dict[str, tuple[int, list[slice]]] = field(default_factory=dict)  # dataset -> (chunks, failing row ranges)
    digests: dict[str, str] = field(default_factory=dict)  # dataset -> SHA-256 of its values
    unprotected: list[str] = field(default_factory=list)  # datasets written without fletcher32
    nonfinite_rows: list[int] = field(default_factory=list)
    implausible_rows: list[int] = field(default_factory=list)  # |z| > MAX_ABS_LOGIT
    max_abs: float = 0.0
    content_sha256: str | None = None  # recomputed; None when a checksum failed


def _selection(rows: Any, n: int) -> tuple[Any, np.ndarray | None]:
    """An h5py selection for ``rows`` and the order that restores the caller's order (None if already in it)."""
    if rows is None:
        return slice(None), None
    if isinstance(rows, slice):
        return rows, None
    r = np.asarray(rows, dtype=np.int64)
    if len(r) and (r.min() < 0 or r.max() >= n):
        raise CacheError(f"asked for cache rows outside 0..{n - 1}")
    if len(r) == 0:
        return np.s_[0:0], None
    lo, hi = int(r.min()), int(r.max()) + 1
    if hi - lo <= 4 * len(r):  # dense enough: one contiguous read, then pick in memory
        return np.s_[lo:hi], r - lo
    uniq, inverse = np.unique(r, return_inverse=True)  # h5py wants increasing, unique indices
    return uniq, inverse
