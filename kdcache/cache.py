"""The logit cache: one HDF5 file per (teacher, dataset split). The schema lives here and only here.

Layout (schema 1.x; docs/cache-format.md is the reference for other tools):

    /logits      (N, C) float32|float16  raw teacher logits, chunked by rows, fletcher32
    /labels      (N,)   int64            dataset label of each row
    /indices     (N,)   int64            position of each row in the dataset split
    /sample_ids  (N,)   uint64           64-bit content hash of each row's pixels + label
    root attributes  see ROOT_ATTRS; ``complete`` is written last

Raw logits, never probabilities: softmax(z/T) for any T is computed from them at
training time, so one cache serves every temperature.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from .errors import CacheError
from .files import temp_path_for

FORMAT_NAME = "kdcache-logits"
SCHEMA_VERSION = "1.0"  # major.minor: readers refuse a newer major, accept any minor

# name -> (numpy dtype or None for "as stored", number of dimensions)
DATASETS: dict[str, tuple[str | None, int]] = {
    "logits": (None, 2),
    "labels": ("int64", 1),
    "indices": ("int64", 1),
    "sample_ids": ("uint64", 1),
}
LOGIT_DTYPES = ("float32", "float16")

# Root attributes every cache carries, with their meaning (also rendered into docs/cache-format.md).
ROOT_ATTRS: dict[str, str] = {
    "format": f"always {FORMAT_NAME!r}",
    "schema_version": "'MAJOR.MINOR' of this layout",
    "complete": "1 once every row is written; written last",
    "created_utc": "ISO-8601 UTC time the file was finished",
    "kdcache_version": "version of kdcache that wrote the file",
    "torch_version": "version of torch that ran the teacher",
    "teacher_arch": "architecture name of the teacher",
    "teacher_sha256": "SHA-256 of the teacher checkpoint file",
    "teacher_precision": "'fp32' or 'bf16': the precision the teacher ran at",
    "dataset": "dataset name, e.g. 'fashion-mnist'",
    "split": "'train' or 'test'",
    "dataset_num_samples": "number of samples in the whole split",
    "dataset_fingerprint": "SHA-256 over the whole split's pixels (uint8) and labels (int64 LE)",
    "num_samples": "N, rows in this file",
    "num_classes": "C, columns of /logits",
    "class_names": "JSON list of C class names, in logit column order",
    "normalization_mean": "per-channel mean the teacher's inputs were standardised with",
    "normalization_std": "per-channel std the teacher's inputs were standardised with",
    "logits_dtype": "'float32' or 'float16': storage dtype of /logits",
    "config_json": "JSON object with all of the above plus the teacher's training config",
}

DEFAULT_CHUNK_BYTES = 1 << 20  # ~1 MiB per chunk: one read per chunk, fletcher32 per chunk


def _version_tuple(v: str) -> tuple[int, int]:
    try:
        major, minor = str(v).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise CacheError(f"unreadable schema_version {v!r}") from None


def chunk_rows_for(num_classes: int, dtype: str, num_samples: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so one chunk of /logits is about ``chunk_bytes``."""
    itemsize = np.dtype(dtype).itemsize
    return int(max(1, min(num_samples, chunk_bytes // (num_classes * itemsize))))


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CacheWriter:
    """Write a cache row block by row block, atomically.

    Rows go to a hidden temp file in the target folder; on a clean exit the
    ``complete`` marker is set and the file is renamed over ``path``. On an error
    (or a kill) the target is untouched and the temp file removed (or left hidden).

        with CacheWriter(path, num_samples=N, num_classes=C, attrs=meta) as w:
            w.write(0, logits, labels, indices, sample_ids)
    """

    def __init__(
        self, path: str | os.PathLike, *, num_samples: int, num_classes: int, attrs: Mapping[str, Any],
        dtype: str = "float32", overwrite: bool = False, chunk_rows: int | None = None,
        compression: str | None = None,
    ):
        self.path = Path(path)
        if dtype not in LOGIT_DTYPES:
            raise CacheError(f"unsupported logits dtype {dtype!r}; choose one of: {', '.join(LOGIT_DTYPES)}")
        if num_samples < 1 or num_classes < 2:
            raise CacheError(f"a cache needs N >= 1 rows and C >= 2 classes, got N={num_samples}, C={num_classes}")
        if self.path.exists() and not overwrite:
            raise CacheError(f"{self.path} already exists; pass --overwrite to replace it")
        if self.path.is_dir():
            raise CacheError(f"{self.path} is a directory; give a file path ending in .h5")
        self.num_samples, self.num_classes, self.dtype = num_samples, num_classes, dtype
        self.chunk_rows = chunk_rows or chunk_rows_for(num_classes, dtype, num_samples)
        self.compression = compression  # None (default, see docs/cache-format.md) or "gzip" for measurements
        self.attrs = dict(attrs)
        self._written = np.zeros(num_samples, dtype=bool)
        self._tmp: Path | None = None
        self._f: h5py.File | None = None

    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        # libver earliest..v110: readable by HDF5 1.8/1.10 tools and older h5py.
        self._f = h5py.File(self._tmp, "w", libver=("earliest", "v110"))
        n, c = self.num_samples, self.num_classes
        self._f.create_dataset("logits", shape=(n, c), dtype=self.dtype, chunks=(self.chunk_rows, c), fletcher32=True,
                               compression=self.compression)
        rows = min(n, max(self.chunk_rows, 4096))
        for name in ("labels", "indices", "sample_ids"):
            self._f.create_dataset(name, shape=(n,), dtype=DATASETS[name][0], chunks=(rows,), fletcher32=True)
        return self

    def write(self, start: int, logits: Any, labels: Any, indices: Any, sample_ids: Any) -> None:
        """Write rows ``start .. start+len(logits)``; refuses non-finite logits."""
        assert self._f is not None, "use CacheWriter as a context manager"
        with np.errstate(over="ignore"):  # overflow to inf is reported below
            logits = _to_numpy(logits).astype(self.dtype, copy=False)
        stop = start + logits.shape[0]
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or stop > self.num_samples:
            raise CacheError(f"logit block of shape {logits.shape} does not fit rows {start}:{stop} x {self.num_classes}")
        if not np.isfinite(logits).all():
            hint = " (float16 overflows above 65504: use --dtype float32)" if self.dtype == "float16" else ""
            raise CacheError(f"teacher produced NaN/Inf logits in rows {start}:{stop}{hint}; nothing was written")
        self._f["logits"][start:stop] = logits
        self._f["labels"][start:stop] = _to_numpy(labels)
        self._f["indices"][start:stop] = _to_numpy(indices)
        self._f["sample_ids"][start:stop] = _to_numpy(sample_ids)
        self._written[start:stop] = True

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._f is not None and self._tmp is not None
        try:
            if exc_type is None:
                if not self._written.all():
                    missing = int((~self._written).sum())
                    raise CacheError(f"internal: {missing} rows of {self.path} were never written")
                self._write_attrs()
                self._f.attrs["complete"] = np.int8(1)  # last: a reader trusts nothing without it
                self._f.flush()
            self._f.close()
            if exc_type is None:
                with open(self._tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()

    def _write_attrs(self) -> None:
        a = self.attrs
        root = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "logits_dtype": self.dtype,
            **{k: v for k, v in a.items() if k != "extra_config"},
        }
        if len(root["class_names"]) != self.num_classes:
            raise CacheError(f"{len(root['class_names'])} class names for {self.num_classes} logit columns")
        config = dict(root, **({"teacher_config": a["extra_config"]} if "extra_config" in a else {}))
        for key, value in root.items():
            if key == "class_names":
                value = json.dumps(list(value))
            elif key in ("normalization_mean", "normalization_std"):
                value = np.asarray(value, dtype=np.float64)
            self._f.attrs[key] = value
        self._f.attrs["config_json"] = json.dumps(config, sort_keys=True, default=_json_default)
        missing = set(ROOT_ATTRS) - set(self._f.attrs) - {"complete"}
        if missing:
            raise CacheError(f"internal: cache attributes missing: {sorted(missing)}")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    return str(o)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def write_cache(path: str | os.PathLike, logits: Any, labels: Any, indices: Any, sample_ids: Any,
                attrs: Mapping[str, Any], dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write a whole cache at once (see CacheWriter). Returns the path."""
    logits = _to_numpy(logits)
    with CacheWriter(path, num_samples=logits.shape[0], num_classes=logits.shape[1], attrs=attrs,
                     dtype=dtype, overwrite=overwrite) as w:
        w.write(0, logits, labels, indices, sample_ids)
    return Path(path)


# ----------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CacheMeta:
    """Validated root attributes of a cache."""

    path: Path
    schema_version: str
    num_samples: int
    num_classes: int
    dataset: str
    split: str
    dataset_fingerprint: str
    class_names: tuple[str, ...]
    teacher_arch: str
    teacher_sha256: str
    logits_dtype: str
    attrs: dict[str, Any]  # every root attribute, decoded

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.attrs["config_json"])


@dataclass(frozen=True)
class CacheArrays:
    """A whole cache in memory."""

    meta: CacheMeta
    logits: np.ndarray  # (N, C) as stored
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) int64
    sample_ids: np.ndarray  # (N,) uint64


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def open_h5(path: str | os.PathLike, rdcc_nbytes: int | None = None) -> h5py.File:
    """Open a cache file read-only, turning every way it can fail into a CacheError.

    ``rdcc_nbytes`` sets HDF5's chunk cache (None: h5py's 1 MiB default); readers that
    read whole chunks in one call gain nothing from a bigger one (docs/cache-format.md).
    """
    p = Path(path)
    if not p.exists():
        raise CacheError(f"cache {p} not found; create it with `kdcache dump-logits --out {p}`")
    if p.is_dir():
        raise CacheError(f"cache {p} is a directory, not an HDF5 file")
    try:
        if not h5py.is_hdf5(p):
            raise CacheError(f"{p} is not an HDF5 file (not a kdcache cache); check the path")
        return h5py.File(p, "r", rdcc_nbytes=rdcc_nbytes)
    except OSError as e:
        raise CacheError(f"cannot open cache {p}: {str(e).splitlines()[0]}; the file is truncated or corrupt, "
                         "re-create it with dump-logits") from None


def _meta_from(f: h5py.File, path: Path) -> CacheMeta:
    attrs = {k: _decode(v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT_NAME:
        raise CacheError(f"{path} is an HDF5 file but not a kdcache cache (format attribute is {attrs.get('format')!r})")
    version = str(attrs.get("schema_version", ""))
    major, _ = _version_tuple(version)
    ours, _ = _version_tuple(SCHEMA_VERSION)
    if major > ours:
        raise CacheError(f"{path} has cache schema {version}, newer than this kdcache reads ({SCHEMA_VERSION}); "
                         "upgrade kdcache")
    if int(attrs.get("complete", 0)) != 1:
        raise CacheError(f"{path} is incomplete (the writer did not finish); re-create it with dump-logits")
    missing = [k for k in ROOT_ATTRS if k not in attrs]
    if missing:
        raise CacheError(f"{path} lacks attribute(s) {', '.join(missing)}; re-create it with dump-logits")
    n, c = int(attrs["num_samples"]), int(attrs["num_classes"])
    for name, (dtype, ndim) in DATASETS.items():
        if name not in f:
            raise CacheError(f"{path} lacks the /{name} dataset; re-create it with dump-logits")
        ds = f[name]
        want = (n, c) if ndim == 2 else (n,)
        if ds.shape != want:
            raise CacheError(f"{path}: /{name} has shape {ds.shape}, expected {want}")
        if dtype is not None and ds.dtype != np.dtype(dtype):
            raise CacheError(f"{path}: /{name} has dtype {ds.dtype}, expected {dtype}")
    if str(f["logits"].dtype) not in LOGIT_DTYPES:
        raise CacheError(f"{path}: /logits has dtype {f['logits'].dtype}, expected one of {LOGIT_DTYPES}")
    try:
        class_names = tuple(json.loads(attrs["class_names"]))
        json.loads(attrs["config_json"])
    except (TypeError, ValueError):
        raise CacheError(f"{path}: class_names/config_json attributes are not valid JSON") from None
    if len(class_names) != c:
        raise CacheError(f"{path}: {len(class_names)} class names for {c} logit columns")
    return CacheMeta(
        path=path, schema_version=version, num_samples=n, num_classes=c, dataset=str(attrs["dataset"]),
        split=str(attrs["split"]), dataset_fingerprint=str(attrs["dataset_fingerprint"]), class_names=class_names,
        teacher_arch=str(attrs["teacher_arch"]), teacher_sha256=str(attrs["teacher_sha256"]),
        logits_dtype=str(f["logits"].dtype), attrs=attrs,
    )


def read_meta(path: str | os.PathLike) -> CacheMeta:
    """Open, validate the schema, and return the root attributes (reads no rows)."""
    with open_h5(path) as f:
        return _meta_from(f, Path(path))


def read_dataset(f: h5py.File, name: str, sel: Any = slice(None), out: np.ndarray | None = None) -> np.ndarray:
    """Read ``f[name][sel]`` (into ``out`` when given, a C-contiguous array of the selection's shape,
    saving a copy); a checksum failure or truncation becomes a CacheError."""
    try:
        if out is not None:
            f[name].read_direct(out, source_sel=sel)
            return out
        return f[name][sel]
    except OSError as e:
        raise CacheError(f"{f.filename}: reading /{name} failed ({str(e).splitlines()[0]}): the file is corrupt "
                         "(checksum mismatch); re-create it with dump-logits or fetch it again") from None


def load_cache(path: str | os.PathLike) -> CacheArrays:
    """Read a whole cache into memory, checking schema, checksums and finiteness."""
    p = Path(path)
    with open_h5(p) as f:
        meta = _meta_from(f, p)
        arrays = {name: read_dataset(f, name) for name in DATASETS}
    bad = ~np.isfinite(arrays["logits"]).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise CacheError(f"{p}: {len(rows)} row(s) of /logits hold NaN/Inf (first: row {rows[0]}); "
                         "the cache is corrupt, re-create it with dump-logits")
    return CacheArrays(meta=meta, **arrays)


def align_to_data(cache: CacheArrays, data: "ImageData") -> torch.Tensor:  # noqa: F821 (kdcache.data.ImageData)
    """Teacher logits for every row of ``data``, in ``data``'s order, as float32 (N, C).

    Refuses, with the reason, a cache made from another dataset, split or class set,
    one that does not cover every sample of ``data``, or one whose rows disagree
    with the data (labels or content ids), e.g. a reordered dataset.
    """
    rows = align_rows(cache, data)
    return torch.from_numpy(np.ascontiguousarray(cache.logits[rows], dtype=np.float32))


def load_cache_index(path: str | os.PathLike) -> CacheArrays:
    """Like load_cache, but without /logits (``logits`` is None): enough for align_rows on any size of cache."""
    p = Path(path)
    with open_h5(p) as f:
        meta = _meta_from(f, p)
        arrays = {name: read_dataset(f, name) for name in DATASETS if name != "logits"}
    return CacheArrays(meta=meta, logits=None, **arrays)  # type: ignore[arg-type]


def align_rows(cache: CacheArrays, data: "ImageData") -> np.ndarray:  # noqa: F821 (kdcache.data.ImageData)
    """The cache row of every sample of ``data``, in ``data``'s order (N,) int64, after the checks of align_to_data.

    Reads only ``cache.meta``, ``indices``, ``labels`` and ``sample_ids`` (see load_cache_index).
    """
    m, info, p = cache.meta, data.info, cache.meta.path
    if m.dataset != info.name or m.split != info.split:
        raise CacheError(f"{p} was made from {m.dataset}/{m.split}, but training uses {info.name}/{info.split}; "
                         f"dump a cache of {info.name}/{info.split}")
    if m.num_classes != info.num_classes or list(m.class_names) != list(info.class_names):
        raise CacheError(f"{p} has {m.num_classes} classes {list(m.class_names)[:4]}..., the data has "
                         f"{info.num_classes} {list(info.class_names)[:4]}...; the cache is for another label set")
    if m.dataset_fingerprint != info.fingerprint:
        raise CacheError(f"{p} was made from different {info.name}/{info.split} data (fingerprint "
                         f"{m.dataset_fingerprint[:12]} != {info.fingerprint[:12]}); re-dump the cache on this data")
    want = data.indices.numpy()
    pos = np.full(info.num_samples, -1, dtype=np.int64)
    ok = (cache.indices >= 0) & (cache.indices < info.num_samples)
    if not ok.all():
        raise CacheError(f"{p}: /indices holds values outside 0..{info.num_samples - 1}; the cache is corrupt")
    pos[cache.indices] = np.arange(len(cache.indices))
    rows = pos[want]
    if (rows < 0).any():
        missing = int((rows < 0).sum())
        raise CacheError(f"{p} covers {m.num_samples} samples but {missing} of the {len(want)} being trained on "
                         f"are not in it (first missing index {int(want[rows < 0][0])}); dump a cache that covers "
                         "them (fewer --limit here, or more in dump-logits)")
    if not np.array_equal(cache.labels[rows], data.labels.numpy()):
        bad = int(np.flatnonzero(cache.labels[rows] != data.labels.numpy())[0])
        raise CacheError(f"{p}: label of dataset index {int(want[bad])} differs between cache and data (rows "
                         "shuffled, or another dataset); re-dump the cache on this data with dump-logits")
    if not np.array_equal(cache.sample_ids[rows], data.sample_ids):
        bad = int(np.flatnonzero(cache.sample_ids[rows] != data.sample_ids)[0])
        raise CacheError(f"{p}: content of dataset index {int(want[bad])} differs between cache and data "
                         "(rows reordered or data changed); re-dump the cache on this data")
    return rows
