"""Writing a cache: block by block, in row order, to a temp file renamed into place when complete."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from kdcache.cache import lowrank as _lowrank
from kdcache.cache.schema import (
    FORMAT_NAME,
    INDEX_DATASETS,
    LOGIT_DTYPES,
    LOWRANK_SCHEMA_VERSION,
    PACKED_SCHEMA_VERSION,
    PLAIN_SCHEMA_VERSION,
    ROOT_ATTRS,
    VIEWS_SCHEMA_VERSION,
    _to_numpy,
    check_values,
    chunk_rows_for,
    class_id_dtype,
    content_hash,
)
from kdcache.cache.targets import Targets, TopK
from kdcache.config import LOGITS_DTYPE
from kdcache.errors import CacheError, ConfigError, StorageError
from kdcache.files import disk_full_message, replace_durably, temp_path_for
from kdcache.identity import UNLABELLED


@dataclass(frozen=True)
class CacheLayout:
    """What each row of a cache holds and how the rows lie on disk: all CacheWriter needs to know besides the
    path, the number of rows and the root attributes.

    One object, because a sharded dump writes its shards and the cache assembled from them with the same
    layout (kdcache.cache.shards), and the writer's checks read it as a whole.

    ``topk`` > 0 stores the top-k encoding (dense logits given to ``write`` are encoded). ``view_policy``
    (a JSON-able dict with ``param_names``) with ``num_views`` stores V views per row: ``write`` then takes
    logits (n, V, C) and ``view_params`` (n, V, P). ``basis`` (kdcache.cache.lowrank.Basis) stores
    low-rank codes of ``code_dtype`` instead: the basis once, dense logits given to ``write`` encoded per
    row; ``lowrank_info`` (a JSON-able dict: the KL measured on held-out rows, the budget) is kept as
    ``lowrank_kl_json``. ``chunk_rows`` None sizes chunks from the row size; ``compression`` is None (the
    default, see docs/cache-format.md) or "gzip" for measurements. CacheWriter validates the layout.
    """

    num_classes: int
    dtype: str = LOGITS_DTYPE  # a low-rank cache decodes to float32, whatever this says
    topk: int = 0
    num_views: int = 1
    view_policy: Mapping[str, Any] | None = None
    basis: "_lowrank.Basis | None" = None
    code_dtype: str = "int8"
    lowrank_info: Mapping[str, Any] | None = None
    chunk_rows: int | None = None
    compression: str | None = None


class CacheWriter:
    """Write a cache block by block, in row order, atomically.

    Rows go to a hidden temp file in the target folder; on a clean exit the content hash
    and the ``complete`` marker are set and the file is renamed over ``path``. On an error
    (or a kill) the target is untouched and the temp file removed (or left hidden). A disk
    that fills up is a StorageError, with the temp file removed (see ``_abandon``).

        with CacheWriter(path, CacheLayout(num_classes=C), num_samples=N, attrs=meta) as w:
            w.write(0, logits, labels, indices, sample_ids)

    ``layout`` says what a row holds (CacheLayout); ``attrs`` are the root attributes only the
    caller knows (CALLER_ATTRS); ``file_format`` is FORMAT_NAME but for a dump's shards.
    """

    def __init__(self, path: str | os.PathLike, layout: CacheLayout, *, num_samples: int, attrs: Mapping[str, Any],
                 overwrite: bool = False, file_format: str = FORMAT_NAME):
        if not isinstance(layout, CacheLayout):
            raise TypeError(f"CacheWriter takes a CacheLayout, got {type(layout).__name__}")
        self.layout = layout
        num_classes, dtype, topk, num_views = layout.num_classes, layout.dtype, layout.topk, layout.num_views
        view_policy, basis, code_dtype = layout.view_policy, layout.basis, layout.code_dtype
        self.path = Path(path)
        if basis is not None:
            if topk:
                raise CacheError("a cache holds top-k or low-rank targets, not both")
            if code_dtype not in _lowrank.CODE_DTYPES:
                raise ConfigError(f"code dtype {code_dtype!r} cannot hold low-rank codes; choose one of "
                                  f"{', '.join(_lowrank.CODE_DTYPES)}")
            if basis.num_classes != num_classes:
                raise CacheError(f"internal: a basis of {basis.num_classes} classes for a cache of {num_classes}")
            _lowrank.check_basis(basis, self.path)
            if (code_dtype == "packed") != (basis.packing is not None):
                raise CacheError("internal: packed codes need a basis with a packing, and only they have one")
            dtype = "float32"  # what the codes decode to
        if dtype not in LOGIT_DTYPES:
            raise CacheError(f"unsupported logits dtype {dtype!r}; choose one of: {', '.join(LOGIT_DTYPES)}")
        if num_samples < 1 or num_classes < 2:
            raise CacheError(f"a cache needs N >= 1 rows and C >= 2 classes, got N={num_samples}, C={num_classes}")
        if not 0 <= topk <= num_classes:
            raise CacheError(f"top-k must be in 1..{num_classes} (the number of classes), got {topk}")
        if num_views < 1 or (num_views > 1 and view_policy is None):
            raise CacheError(f"{num_views} views need a view policy (and at least 1 view)")
        if self.path.is_dir():
            raise CacheError(f"{self.path} is a directory; give a file path ending in .h5")
        if self.path.exists() and not overwrite:
            raise CacheError(f"{self.path} already exists; pass --overwrite to replace it")
        self.num_samples, self.num_classes, self.dtype, self.topk = num_samples, num_classes, dtype, topk
        self.kind = "lowrank" if basis is not None else "topk" if topk else "logits"
        self.basis, self.code_dtype = basis, code_dtype
        self.lowrank_info = dict(layout.lowrank_info) if layout.lowrank_info is not None else None
        self.encoder = str((self.lowrank_info or {}).get("encoder", _lowrank.DEFAULT_ENCODER))
        if basis is not None:
            _lowrank.check_encoder(self.encoder)
        self.view_policy = dict(view_policy) if view_policy is not None else None
        self.num_views = num_views
        self.lead = (num_views,) if self.view_policy is not None else ()  # the views axis, when there is one
        self.param_width = len(self.view_policy["param_names"]) if self.view_policy is not None else 0
        row_bytes = int(np.prod(self.lead or (1,))) * (
            self._code_width * np.dtype(self._code_storage).itemsize if basis is not None
            else (topk or num_classes) * np.dtype(dtype).itemsize)
        self.chunk_rows = layout.chunk_rows or chunk_rows_for(row_bytes, num_samples)
        self.compression = layout.compression  # None (default, see docs/cache-format.md) or "gzip" for measurements
        self.attrs, self.file_format = caller_attrs(attrs, num_classes), file_format
        self._next, self._labelled = 0, 0
        self._hashes: dict[str, Any] = {}
        self._tmp: Path | None = None
        self._f: h5py.File | None = None
        self._ds: dict[str, h5py.Dataset] = {}  # held open: chunk writes fail (and are reported) in write()

    @property
    def _code_width(self) -> int:
        """The last dimension of /lowrank_codes: the rank, or a packed row's bytes."""
        assert self.basis is not None
        return self.basis.packing.row_bytes if self.basis.packing is not None else self.basis.rank

    def _schema_version(self, plain: bool) -> str:
        """The oldest layout that holds what this cache holds (docs/cache-format.md, 'Schema version')."""
        if plain:
            return PLAIN_SCHEMA_VERSION
        if self.kind == "lowrank":
            return PACKED_SCHEMA_VERSION if self.code_dtype == "packed" else LOWRANK_SCHEMA_VERSION
        return VIEWS_SCHEMA_VERSION

    @property
    def _code_storage(self) -> str:
        return "uint8" if self.code_dtype == "packed" else self.code_dtype

    def estimated_bytes(self) -> int:
        """About how big the finished file will be (for a free-space check before writing)."""
        if self.kind == "lowrank":
            per_row = 24 + self.num_views * (_lowrank.row_code_bytes(self.basis, self.code_dtype) + 4 * self.param_width)
            return self.num_samples * per_row + self.basis.components.nbytes + (1 << 20)
        per_row = 24 + int(np.prod(self.lead or (1,))) * (
            (self.topk * (np.dtype(self.dtype).itemsize + np.dtype(class_id_dtype(self.num_classes)).itemsize) + 12)
            if self.topk else self.num_classes * np.dtype(self.dtype).itemsize) + 4 * self.num_views * self.param_width
        return self.num_samples * per_row + (1 << 20)  # + room for the last partial chunks and metadata

    def _shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        n, lead, k = self.num_samples, self.lead, self.topk
        shapes = {"labels": ((n,), "int64"), "indices": ((n,), "int64"), "sample_ids": ((n,), "uint64")}
        if self.kind == "logits":
            shapes["logits"] = ((n, *lead, self.num_classes), self.dtype)
        elif self.kind == "lowrank":
            shapes["lowrank_codes"] = ((n, *lead, self._code_width), self._code_storage)
            if self.code_dtype != "packed":
                shapes["lowrank_scales"] = ((n, *lead), "float32")
        else:
            shapes.update(topk_logits=((n, *lead, k), self.dtype), topk_classes=((n, *lead, k), class_id_dtype(self.num_classes)),
                          tail_logsumexp=((n, *lead), "float32"), tail_mean=((n, *lead), "float32"),
                          tail_logsumexp_t2=((n, *lead), "float32"))
        if self.view_policy is not None:
            shapes["view_params"] = ((n, self.num_views, self.param_width), "float32")
        return shapes

    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        try:
            # libver earliest..v110: readable by HDF5 1.8/1.10 tools and older h5py.
            self._f = h5py.File(self._tmp, "w", libver=("earliest", "v110"))
            index_rows = chunk_rows_for(8, self.num_samples, max(self.chunk_rows, 4096) * 8)  # >= 4096 rows, evened
            for name, (shape, dtype) in self._shapes().items():
                rows = index_rows if name in INDEX_DATASETS else self.chunk_rows
                self._ds[name] = self._f.create_dataset(
                    name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]), fletcher32=True,
                    compression=None if name in INDEX_DATASETS else self.compression)
                self._hashes[name] = hashlib.sha256()
            if self.basis is not None:  # once per cache, whole (one chunk each), checksummed and hashed like the rows
                per_cache = [("lowrank_mean", self.basis.mean, "float32"), ("lowrank_components", self.basis.components, "float32")]
                if self.basis.packing is not None:
                    per_cache += [("lowrank_bits", self.basis.packing.bits, "uint8"),
                                  ("lowrank_steps", self.basis.packing.steps, "float32")]
                for name, arr, dt in per_cache:
                    arr = np.ascontiguousarray(arr, dtype=dt)
                    self._f.create_dataset(name, data=arr, chunks=arr.shape, fletcher32=True)
                    self._hashes[name] = hashlib.sha256(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        except BaseException as e:
            self._abandon()
            self._raise_storage_error(e)
            raise
        return self

    def write(self, start: int, targets: Targets, labels: Any, indices: Any, sample_ids: Any,
              view_params: Any = None) -> None:
        """Write rows ``start .. start + n`` (in order); refuses NaN/Inf or implausible logits."""
        assert self._f is not None, "use CacheWriter as a context manager"
        if start != self._next:
            raise CacheError(f"internal: rows must be written in order (expected row {self._next}, got {start})")
        arrays = self._target_arrays(targets)
        n = len(next(iter(arrays.values())))
        stop = start + n
        if stop > self.num_samples:
            raise CacheError(f"internal: rows {start}:{stop} do not fit a cache of {self.num_samples} rows")
        arrays.update(labels=_to_numpy(labels).astype(np.int64, copy=False),
                      indices=_to_numpy(indices).astype(np.int64, copy=False),
                      sample_ids=_to_numpy(sample_ids).astype(np.uint64, copy=False))
        if self.view_policy is not None:
            if view_params is None:
                raise CacheError("internal: a cache with views needs view_params for every row")
            arrays["view_params"] = _to_numpy(view_params).astype(np.float32, copy=False)
        for name, (shape, _) in self._shapes().items():
            if arrays[name].shape != (n, *shape[1:]):
                raise CacheError(f"internal: /{name} block of shape {arrays[name].shape} does not fit rows {start}:{stop} "
                                 f"of shape {shape}")
        for name, arr in arrays.items():
            ds = self._ds[name]
            arr = np.ascontiguousarray(arr, dtype=ds.dtype)
            try:
                ds[start:stop] = arr
            except (OSError, RuntimeError) as e:
                self._raise_storage_error(e)
                raise
            self._hashes[name].update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        self._labelled += int((arrays["labels"] != UNLABELLED).sum())
        self._next = stop

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Set root attributes known only once the rows are written (a dump that hashes its files as it reads them
        learns the split's ``dataset_fingerprint`` at the end), before the writer closes; checked as the
        constructor's."""
        self.attrs = caller_attrs({**self.attrs, **attrs}, self.num_classes)

    def _target_arrays(self, targets: Targets) -> dict[str, np.ndarray]:
        if self.kind == "lowrank":
            if isinstance(targets, _lowrank.Codes):  # already encoded with this basis (assembling shards)
                if targets.codes.dtype != np.dtype(self._code_storage) or targets.codes.shape[-1] != self._code_width:
                    raise CacheError(f"internal: {targets.codes.dtype} codes of width {targets.codes.shape[-1]} given "
                                     f"to a cache of rank {self.basis.rank} {self.code_dtype} codes")
                return _code_arrays(targets.codes, targets.scales)
            if isinstance(targets, TopK):
                raise CacheError("a top-k row cannot be encoded as a low-rank code: the other classes' logits are gone")
            z = _to_numpy(targets).astype(np.float32, copy=False)
            check_values("logits", z, self._next, self.path)
            return _code_arrays(*_lowrank.encode(z, self.basis, self.code_dtype, self.encoder))
        if self.kind == "logits":
            if isinstance(targets, TopK):
                raise CacheError("internal: a full-logit cache was given top-k targets")
            with np.errstate(over="ignore"):  # overflow to inf is reported by check_values
                z = _to_numpy(targets).astype(self.dtype, copy=False)
            check_values("logits", z, self._next, self.path, self.dtype)
            return {"logits": z}
        if not isinstance(targets, TopK):
            check_values("logits", _to_numpy(targets).astype(np.float32, copy=False), self._next, self.path)
            targets = TopK.encode(_to_numpy(targets), self.topk)
        if targets.k != self.topk or targets.num_classes != self.num_classes:
            raise CacheError(f"internal: top-{targets.k} of {targets.num_classes} classes given to a top-{self.topk} "
                             f"cache of {self.num_classes}")
        with np.errstate(over="ignore"):
            values = _to_numpy(targets.logits).astype(self.dtype, copy=False)
        check_values("topk_logits", values, self._next, self.path, self.dtype)
        if targets.tail_logsumexp_t2 is None:
            raise CacheError("internal: top-k targets without tail_logsumexp_t2; make them with TopK.encode")
        return {"topk_logits": values, "topk_classes": _to_numpy(targets.classes),
                "tail_logsumexp": _to_numpy(targets.tail_logsumexp).astype(np.float32),
                "tail_mean": _to_numpy(targets.tail_mean).astype(np.float32),
                "tail_logsumexp_t2": _to_numpy(targets.tail_logsumexp_t2).astype(np.float32)}

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._f is not None and self._tmp is not None
        try:
            if exc_type is None:
                if self._next != self.num_samples:
                    raise CacheError(f"internal: {self.num_samples - self._next} rows of {self.path} were never written")
                try:
                    self._write_attrs()
                    self._f.attrs["complete"] = np.int8(1)  # last: a reader trusts nothing without it
                    self._f.flush()
                    self._ds.clear()
                    self._f.close()
                    self._f = None
                except (OSError, RuntimeError) as e:
                    self._raise_storage_error(e)
                    raise
                replace_durably(self._tmp, self.path)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Drop an unfinished temp file: close HDF5's handle without writing to disk, delete the file.

        Closing an HDF5 file flushes its caches (the last chunks, metadata). After a disk
        filled up that flush fails again at every open object, and once crashed the
        interpreter at exit after thousands of lines of h5py tracebacks; so HDF5's file
        descriptor is first pointed at an anonymous in-memory file, where the flush lands
        harmlessly, and the temp file is deleted.
        """
        tmp = self._tmp
        if self._f is not None:
            _discard_further_writes(self._f)
            self._ds.clear()
            try:
                self._f.close()
            except Exception:  # noqa: BLE001 - the original error is what the caller sees
                pass
            self._f = None
        if tmp is not None and tmp.exists():
            tmp.unlink()

    def _raise_storage_error(self, e: BaseException) -> None:
        """Raise a one-line StorageError if ``e`` is the disk (or quota) filling up; else return."""
        message = disk_full_message(e, self.path, f"the cache {self.path.name}") if isinstance(e, Exception) else None
        if message is not None:
            raise StorageError(message) from None

    def _write_attrs(self) -> None:
        a = self.attrs
        if a["dataset_fingerprint"] is None:
            raise CacheError("internal: the dataset fingerprint was never set (CacheWriter.set_attrs)")
        plain = self.kind == "logits" and self.view_policy is None
        root = {
            "format": self.file_format,
            "schema_version": self._schema_version(plain),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_samples": self.num_samples, "num_classes": self.num_classes, "logits_dtype": self.dtype,
            "targets": self.kind, "topk": self.topk, "num_views": self.num_views,
            "view_policy": self.view_policy["name"] if self.view_policy else "",
            "view_policy_json": json.dumps(self.view_policy, sort_keys=True) if self.view_policy else "",
            "num_labelled": self._labelled,
            "content_sha256": content_hash({k: h.hexdigest() for k, h in self._hashes.items()}),
            **{k: v for k, v in a.items() if k != "extra_config"},
        }
        if self.kind == "lowrank":
            root.update(lowrank_rank=self.basis.rank, lowrank_code_dtype=self.code_dtype,
                        lowrank_kl_json=json.dumps(self.lowrank_info, sort_keys=True) if self.lowrank_info else "")
        config = dict(root, **({"teacher_config": a["extra_config"]} if "extra_config" in a else {}))
        for key, value in root.items():
            if key == "class_names":
                value = json.dumps(list(value))
            elif key in ("normalization_mean", "normalization_std"):
                value = np.asarray(value, dtype=np.float64)
            elif isinstance(value, (dict, list, tuple)):
                value = json.dumps(value, sort_keys=True, default=_json_default)
            self._f.attrs[key] = value
        self._f.attrs["config_json"] = json.dumps(config, sort_keys=True, default=_json_default)
        missing = set(ROOT_ATTRS) - set(self._f.attrs) - {"complete"}
        if missing:
            raise CacheError(f"internal: cache attributes missing: {sorted(missing)}")


# The root attributes the caller gives (the writer adds the rest): what each must be, and a test for it.
_STRING = ("a string", lambda v: isinstance(v, str))
_NUMBERS = ("a number or a list of numbers, one per channel",
            lambda v: _is_number(v) or (isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0
                                        and all(_is_number(x) for x in np.asarray(v).ravel())))
CALLER_ATTRS: dict[str, tuple[str, Any]] = {
    "kdcache_version": _STRING, "torch_version": _STRING, "teacher_arch": _STRING, "teacher_sha256": _STRING,
    "teacher_precision": _STRING, "dataset": _STRING, "split": _STRING,
    # None: not known yet (a dump that hashes files as it reads them), set with set_attrs before the writer closes
    "dataset_fingerprint": ("a string", lambda v: v is None or isinstance(v, str)),
    "dataset_num_samples": ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "class_names": ("a list of class-name strings", lambda v: isinstance(v, (list, tuple, np.ndarray))
                    and all(isinstance(x, str) for x in v)),
    "normalization_mean": _NUMBERS, "normalization_std": _NUMBERS,
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.number)) and not isinstance(v, (bool, np.bool_))


def _plain(value: Any) -> Any:
    """A str subclass (torch.__version__'s TorchVersion, numpy's str_) as a plain str, which h5py stores as
    UTF-8; h5py turns a subclass into a numpy unicode array it cannot store."""
    return str.__str__(value) if isinstance(value, str) else value


def caller_attrs(attrs: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """Check the caller's root attributes before any row is written: a missing or mistyped one is the
    caller's mistake (a ConfigError naming it), not a corrupt cache. Strings come back as plain str."""
    missing = [k for k in CALLER_ATTRS if k not in attrs]
    if missing:
        what = "; ".join(f"{k} ({ROOT_ATTRS[k]}: {CALLER_ATTRS[k][0]})" for k in missing)
        raise ConfigError(f"cache attrs lack {what}; add {'it' if len(missing) == 1 else 'them'} "
                          "(see docs/cache-format.md, 'Root attributes')")
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        expected, ok = CALLER_ATTRS.get(key, (None, None))
        if ok is not None and not ok(value):
            raise ConfigError(f"cache attribute {key} must be {expected} ({ROOT_ATTRS[key]}), "
                              f"got {type(value).__name__} {value!r:.60}")
        if key == "extra_config" and not isinstance(value, Mapping):
            raise ConfigError(f"cache attribute extra_config must be a dict (the teacher's config), "
                              f"got {type(value).__name__}")
        pending = key == "dataset_fingerprint" and value is None  # set with set_attrs before the writer closes
        if not pending and not isinstance(value, (str, numbers.Number, np.generic, np.ndarray, list, tuple, Mapping)):
            raise ConfigError(f"cache attribute {key} is {type(value).__name__} {value!r:.60}; give a string, a number "
                              "or a JSON-able list or dict")
        out[key] = [_plain(x) for x in value] if key == "class_names" else _plain(value)
    if len(out["class_names"]) != num_classes:
        raise ConfigError(f"cache attribute class_names has {len(out['class_names'])} names for {num_classes} "
                          "classes; give one name per logit column")
    return out


def _discard_further_writes(f: h5py.File) -> None:
    """Swap the descriptor under ``f`` (HDF5's default sec2 driver) for an in-memory file (or /dev/null)."""
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - another driver: its close may fail, and is ignored
        return
    sink = os.memfd_create("kdcache-discarded") if hasattr(os, "memfd_create") else os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(sink, fd)
    finally:
        os.close(sink)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    return str(o)


def write_cache(path: str | os.PathLike, logits: Targets, labels: Any, indices: Any, sample_ids: Any,
                attrs: Mapping[str, Any], *, overwrite: bool = False, **options: Any) -> Path:
    """Write a whole cache at once (see CacheWriter). Returns the path.

    ``attrs`` holds the root attributes only the caller knows (CALLER_ATTRS; docs/cache-format.md), plus
    optionally ``extra_config`` (a dict, stored as config_json's teacher_config). ``options`` are
    ``view_params`` (n, V, P) for a cache with views and any CacheLayout field but ``num_classes``, which
    ``logits`` gives: ``write_cache(path, z, labels, indices, ids, attrs, dtype="float16", topk=5)``.
    """
    view_params = options.pop("view_params", None)
    n = len(logits)
    c = logits.num_classes if isinstance(logits, TopK) else _to_numpy(logits).shape[-1]
    with CacheWriter(path, CacheLayout(num_classes=c, **options), num_samples=n, attrs=attrs, overwrite=overwrite) as w:
        w.write(0, logits, labels, indices, sample_ids, view_params=view_params)
    return Path(path)


def _code_arrays(codes: np.ndarray, scales: np.ndarray | None) -> dict[str, np.ndarray]:
    """The per-row datasets of low-rank codes: packed codes have no scales."""
    return {"lowrank_codes": codes} if scales is None else {"lowrank_codes": codes, "lowrank_scales": scales}
