"""The cache format's names, versions and rules: datasets, attributes, and reading the root attributes.

docs/cache-format.md documents every name here (tests/test_format_doc.py checks both ways).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from kdcache.cache.lowrank import CODE_DTYPES  # storage dtypes of /lowrank_codes
STORED_CODE_DTYPES = {"int8": "int8", "float16": "float16", "packed": "uint8"}  # lowrank_code_dtype -> HDF5 dtype
from kdcache.config import LOGIT_DTYPES
from kdcache.errors import CacheError

FORMAT_NAME = "kdcache-logits"
SHARD_FORMAT = "kdcache-shard"  # a part of a cache written by one rank of a distributed dump; never trained from
SCHEMA_VERSION = "4.0"  # the newest MAJOR.MINOR this code reads and writes; readers refuse a newer major, accept any minor
VIEWS_SCHEMA_VERSION = "2.0"  # written for top-k caches and caches with views, which kdcache 2.x can still read
PLAIN_SCHEMA_VERSION = "1.1"  # written for full single-view caches, which kdcache 1.x can still read
LOWRANK_SCHEMA_VERSION = "3.0"  # low-rank caches: a new targets kind, so a new major (2.x readers refuse it)
PACKED_SCHEMA_VERSION = SCHEMA_VERSION  # packed low-rank codes: codes reinterpreted, no scales, so a new major
TARGET_KINDS = ("logits", "topk", "lowrank")
MAX_ABS_LOGIT = 1e4  # |z| above this is no teacher's output but a corrupt value or a broken teacher
REDUMP = "re-create it with dump-logits, or fetch it again"
REDUMP_LOWRANK = "re-create it (kdcache compress, or dump-logits --codec lowrank), or fetch it again"


@dataclass(frozen=True)
class DatasetSpec:
    dtype: str  # numpy dtype, or "logits" for the storage dtype (logits_dtype), "classes" for the class-id dtype
    shape: str  # as documented; "[V, ]" marks the views axis, present when the cache has a view policy
    kind: str | None  # None: every cache; else only caches of this targets kind ("logits"/"topk"/"views")
    meaning: str


DATASETS: dict[str, DatasetSpec] = {
    "labels": DatasetSpec("int64", "(N,)", None, "label of each row (class index), or -1 for an unlabelled sample"),
    "indices": DatasetSpec("int64", "(N,)", None, "position of each row's sample in the dataset split (0-based)"),
    "sample_ids": DatasetSpec("uint64", "(N,)", None, "64-bit content id of each row's sample"),
    "logits": DatasetSpec("logits", "(N, [V, ] C)", "logits", "raw teacher logits, columns in class_names order"),
    "topk_logits": DatasetSpec("logits", "(N, [V, ] k)", "topk", "the k largest raw logits of the row, descending"),
    "topk_classes": DatasetSpec("classes", "(N, [V, ] k)", "topk", "class index of each of topk_logits"),
    "tail_logsumexp": DatasetSpec("float32", "(N, [V])", "topk", "log Σ exp(z) over the other C - k classes "
                                                                  "(-inf when k = C)"),
    "tail_mean": DatasetSpec("float32", "(N, [V])", "topk", "mean logit of the other C - k classes (0 when k = C)"),
    "tail_logsumexp_t2": DatasetSpec("float32", "(N, [V])", "topk", "log Σ exp(z / 2) over the other C - k classes "
                                                                     "(-inf when k = C)"),
    "view_params": DatasetSpec("float32", "(N, V, P)", "views", "parameters of each stored view (view_policy_json "
                                                                "names the P columns)"),
    "lowrank_mean": DatasetSpec("float32", "(C,)", "lowrank", "mean raw logit of each class over the rows the basis "
                                                               "was fitted on"),
    "lowrank_components": DatasetSpec("float32", "(r, C)", "lowrank", "the r principal directions of the centred "
                                                                      "logits, orthonormal rows, largest first"),
    "lowrank_codes": DatasetSpec("codes", "(N, [V, ] r or B)", "lowrank", "each row's code: logits = mean + (codes · "
                                                                          "scales) @ components; packed: B bytes a row"),
    "lowrank_scales": DatasetSpec("float32", "(N, [V])", "lowrank", "each row's code scale (1 for float16 codes; "
                                                                    "absent for packed codes)"),
    "lowrank_bits": DatasetSpec("uint8", "(r,)", "lowrank", "packed codes only: bits of each component (0..16), laid "
                                                           "out in order, little-endian, in B = ceil(Σ bits / 8) bytes"),
    "lowrank_steps": DatasetSpec("float32", "(r,)", "lowrank", "packed codes only: a level v of component k is the code "
                                                              "value (v - 2^(bits-1) + 1/2) · steps[k]"),
}
INDEX_DATASETS = ("labels", "indices", "sample_ids")
TARGET_DATASETS = {"logits": ("logits",),
                   "topk": ("topk_logits", "topk_classes", "tail_logsumexp", "tail_mean", "tail_logsumexp_t2"),
                   "lowrank": ("lowrank_codes", "lowrank_scales")}  # the per-row ones; the basis is per cache
BASIS_DATASETS = ("lowrank_mean", "lowrank_components")
PACKING_DATASETS = ("lowrank_bits", "lowrank_steps")  # per cache, for packed codes (which have no /lowrank_scales)


def target_datasets(kind: str, code_dtype: str | None = None) -> tuple[str, ...]:
    """The per-row target datasets of a cache of ``kind`` (low-rank: of ``code_dtype``)."""
    return ("lowrank_codes",) if kind == "lowrank" and code_dtype == "packed" else TARGET_DATASETS[kind]

# Root attributes every cache carries (1.x names first), with their meaning (also in docs/cache-format.md).
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
    "num_classes": "C, the teacher's classes",
    "class_names": "JSON list of C class names, in logit column order",
    "normalization_mean": "per-channel mean the teacher's inputs were standardised with",
    "normalization_std": "per-channel std the teacher's inputs were standardised with",
    "logits_dtype": "'float32' or 'float16': storage dtype of the logit values",
    "config_json": "JSON object with all of the above plus the teacher's training config",
    # added in 1.1 / 2.0 (absent from 1.0 files; readers use the defaults in _V1_DEFAULTS)
    "targets": "'logits' (full rows) or 'topk'",
    "topk": "k, logits kept per row (0 for full logits)",
    "num_views": "V, views stored per sample (1 without a view policy)",
    "view_policy": "'' or the name of the augmentation policy of the views",
    "view_policy_json": "'' or JSON: policy name, version, settings, param_names, include_original, seed",
    "num_labelled": "rows with a label (the others hold -1)",
    "content_sha256": "SHA-256 of the stored values (see 'Content hash')",
}
# Optional attributes (absent where they do not apply, and from files written before they existed).
OPTIONAL_ATTRS: dict[str, str] = {
    "input_transform": "'' or JSON: how image files became the teacher's input (resize, centre crop, size, mode)",
    "skipped_files": "'' or JSON list of the relative paths left out as unreadable (--skip-unreadable)",
    "user_transform": "'' or JSON: what is known of a user's own Dataset transform (repr, Normalize mean/std)",
    "data_source": "'' or JSON: where the rows came from (a Hugging Face dataset: kind, image and label columns, "
                   "how rows are keyed)",
    "lowrank_rank": "r, components of a low-rank cache's basis",
    "lowrank_code_dtype": "'int8', 'float16' or 'packed' (uint8 bytes): storage dtype of /lowrank_codes",
    "lowrank_kl_json": "JSON: mean KL(p_T || rebuilt_T) measured on held-out rows at T = 1, 2, 4, the budget, rows used",
}
_V1_DEFAULTS = {"targets": "logits", "topk": 0, "num_views": 1, "view_policy": "", "view_policy_json": "",
                "num_labelled": None, "content_sha256": None}

DEFAULT_CHUNK_BYTES = 1 << 20  # ~1 MiB per chunk: one read per chunk, fletcher32 per chunk


def _version_tuple(v: str) -> tuple[int, int]:
    try:
        major, minor = str(v).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise CacheError(f"unreadable schema_version {v!r}") from None


def class_id_dtype(num_classes: int) -> str:
    """The smallest unsigned integer type that holds every class id."""
    return "uint8" if num_classes <= 256 else "uint16" if num_classes <= 65536 else "int32"


def chunk_rows_for(row_bytes: int, num_samples: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so one chunk of the main target dataset is at most about ``chunk_bytes``.

    The rows are spread evenly over the chunks that takes: HDF5 allocates every chunk in
    full, so a mostly empty last chunk would cost a whole chunk of disk (at 60,000 rows a
    top-10 cache took 134 bytes a row instead of 76).
    """
    most = int(max(1, min(num_samples, chunk_bytes // max(1, row_bytes))))
    chunks = -(-num_samples // most)
    return -(-num_samples // chunks)


def content_hash(digests: Mapping[str, str]) -> str:
    """The cache's content hash from each dataset's SHA-256 (docs/cache-format.md, 'Content hash')."""
    text = "".join(f"{name} {digests[name]}\n" for name in sorted(digests))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def values_ok(values: np.ndarray) -> bool:
    """True when every value is finite with |z| <= MAX_ABS_LOGIT: one integer pass over the bits (fast on big buffers).

    Clearing the sign bit makes the bit pattern of a float grow with its magnitude, and
    Inf/NaN have the largest patterns of all, so one max over the bits checks both.
    """
    if values.size == 0:
        return True
    for ftype, itype, mask in ((np.float16, np.uint16, 0x7FFF), (np.float32, np.uint32, 0x7FFFFFFF)):
        if values.dtype == ftype:
            limit = np.array(MAX_ABS_LOGIT, dtype=ftype).view(itype)
            return int(np.bitwise_and(np.ascontiguousarray(values).view(itype), mask).max()) <= int(limit)
    return bool(np.isfinite(values).all() and np.abs(values).max() <= MAX_ABS_LOGIT)


def check_values(name: str, values: np.ndarray, rows: int | np.ndarray, path: Any, dtype: str = "float32") -> None:
    """Refuse NaN/Inf or implausibly large logits, naming the first bad row (``rows``: first row number, or each row's)."""
    if values_ok(values):
        return
    v = values.reshape(len(values), -1)
    row_of = (lambda i: rows + i) if isinstance(rows, (int, np.integer)) else (lambda i: int(rows[i]))
    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        hint = " (float16 overflows above 65504: use --dtype float32)" if dtype == "float16" else ""
        raise CacheError(f"{path}: /{name} row {row_of(i)} holds NaN/Inf{hint}; the cache is corrupt, {REDUMP}")
    big = np.abs(v).max(axis=1) > MAX_ABS_LOGIT
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise CacheError(f"{path}: /{name} row {row_of(i)} holds a logit of magnitude {float(np.abs(v[i]).max()):.3g} "
                         f"(> {MAX_ABS_LOGIT:g}, no real teacher's output): the file is corrupt or the teacher "
                         f"broken; {REDUMP}")


@dataclass(frozen=True)
class CacheMeta:
    """Validated root attributes of a cache."""

    path: Path
    schema_version: str
    num_samples: int
    num_classes: int
    dataset: str
    split: str
    dataset_num_samples: int
    dataset_fingerprint: str
    class_names: tuple[str, ...]
    teacher_arch: str
    teacher_sha256: str
    teacher_precision: str
    logits_dtype: str
    targets: str  # "logits" | "topk"
    topk: int  # 0 for full logits
    num_views: int
    view_policy: dict[str, Any] | None  # name, version, settings, param_names, include_original, seed
    content_sha256: str | None  # None for 1.0 files
    num_labelled: int | None  # None for 1.0 files
    normalization_mean: tuple[float, ...]
    normalization_std: tuple[float, ...]
    attrs: dict[str, Any]  # every root attribute, decoded

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.attrs["config_json"])

    @property
    def input_transform(self) -> dict[str, Any] | None:
        """How image files became the teacher's input (kdcache.data.images.InputTransform.record), or None."""
        text = self.attrs.get("input_transform") or ""
        return json.loads(text) if text else None

    @property
    def user_transform(self) -> dict[str, Any] | None:
        """What is known of the transform of a user's own Dataset (kdcache.data.user_data.user_transform), or None."""
        text = self.attrs.get("user_transform") or ""
        return json.loads(text) if text else None

    @property
    def data_source(self) -> dict[str, Any] | None:
        """Where the rows came from when the dataset name does not say it all (kdcache.data.hf.source_record)."""
        text = self.attrs.get("data_source") or ""
        return json.loads(text) if text else None

    @property
    def skipped_files(self) -> list[str]:
        text = self.attrs.get("skipped_files") or ""
        return json.loads(text) if text else []

    @property
    def lowrank_rank(self) -> int:
        """r, the components of a low-rank cache's basis (0 for other caches)."""
        return int(self.attrs.get("lowrank_rank") or 0) if self.targets == "lowrank" else 0

    @property
    def lowrank_code_dtype(self) -> str | None:
        return str(self.attrs["lowrank_code_dtype"]) if self.targets == "lowrank" else None

    @property
    def lowrank_bits(self) -> float | None:
        """Packed codes' mean bits a component, as asked for (None for other codes and caches)."""
        if self.lowrank_code_dtype != "packed":
            return None
        return float((self.lowrank_kl or {}).get("bits", 0)) or None

    @property
    def target_datasets(self) -> tuple[str, ...]:
        """The per-row datasets holding this cache's targets."""
        return target_datasets(self.targets, self.lowrank_code_dtype)

    @property
    def lowrank_kl(self) -> dict[str, Any] | None:
        """What the writer measured on held-out rows: {'kl': {T: nats}, 'budget', 'fit_rows', 'heldout_rows'}, or None."""
        text = self.attrs.get("lowrank_kl_json") or ""
        return json.loads(text) if text else None

    @property
    def has_views(self) -> bool:
        return self.view_policy is not None

    @property
    def unlabelled(self) -> bool:
        """No row has a label (unlabelled images, or dumped with ``--no-labels``).

        Its content ids and fingerprint hash -1 in place of every label, so its rows match the
        data read with labels ignored (``load_dataset(..., ignore_labels=True)``), by index and content id.
        """
        return self.num_labelled == 0


# What each root attribute must be once decoded (a reader refuses any other type in one line, before using it:
# an integer where text belongs, or opaque bytes such as a pickle, is a corrupt or foreign file, never run).
_TEXT, _INTEGER, _NUMBERS = "text", "an integer", "a number or a list of numbers"
ATTR_TYPES: dict[str, str] = {
    **{k: _TEXT for k in ("format", "schema_version", "created_utc", "kdcache_version", "torch_version", "teacher_arch",
                          "teacher_sha256", "teacher_precision", "dataset", "split", "dataset_fingerprint",
                          "class_names", "logits_dtype", "config_json", "targets", "view_policy", "view_policy_json",
                          "content_sha256", "input_transform", "skipped_files", "lowrank_code_dtype",
                          "lowrank_kl_json")},
    **{k: _INTEGER for k in ("complete", "dataset_num_samples", "num_samples", "num_classes", "topk", "num_views",
                             "num_labelled", "lowrank_rank")},
    "normalization_mean": _NUMBERS, "normalization_std": _NUMBERS,
}
# JSON attributes and the JSON type each holds.
JSON_ATTR_TYPES: dict[str, type] = {"class_names": list, "config_json": dict, "view_policy_json": dict,
                                    "input_transform": dict, "skipped_files": list, "lowrank_kl_json": dict}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _has_type(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    return _is_number(value) or (isinstance(value, list) and len(value) > 0 and all(_is_number(x) for x in value))


def _type_name(value: Any) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes of binary data"
    return {str: "text", int: "an integer", float: "a number", list: "a list", bool: "a boolean"}.get(
        type(value), type(value).__name__) + f" ({value!r:.40})"


def check_attr_types(attrs: Mapping[str, Any], path: Any) -> None:
    """Refuse a root attribute of the wrong type (ATTR_TYPES; ``None`` stands for an absent 1.0 attribute), and a
    JSON attribute holding the wrong kind of JSON value, in one CacheError line naming it."""
    for key, kind in ATTR_TYPES.items():
        value = attrs.get(key)
        if value is None or (value == "" and key in OPTIONAL_ATTRS) or _has_type(value, kind):
            continue
        raise CacheError(f"{path}: attribute {key} is {_type_name(value)}, expected {kind} ({_meaning(key)}); the "
                         f"file is corrupt or not written by kdcache, {REDUMP}")
    for key, want in JSON_ATTR_TYPES.items():
        text = attrs.get(key) or ""
        try:
            value = json.loads(text) if text else want()
        except ValueError:
            continue  # malformed JSON: refused where it is parsed, with the others
        if not isinstance(value, want) or (want is list and not all(isinstance(x, str) for x in value)):
            what = "a JSON list of strings" if want is list else "a JSON object"
            raise CacheError(f"{path}: attribute {key} holds {type(value).__name__} JSON, expected {what} "
                             f"({_meaning(key)}); the file is corrupt or not written by kdcache, {REDUMP}")


def _meaning(key: str) -> str:
    return ROOT_ATTRS.get(key) or OPTIONAL_ATTRS.get(key, "")


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v  # not text: refused by check_attr_types, never unpickled or guessed at
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return _decode(v.item())  # an opaque (np.void) value: its bytes
    return v


def open_h5(path: str | os.PathLike, rdcc_nbytes: int | None = None) -> h5py.File:
    """Open an HDF5 file read-only, turning every way it can fail into a CacheError."""
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


def meta_from(f: h5py.File, path: Path, file_format: str = FORMAT_NAME) -> CacheMeta:
    try:
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except (OSError, TypeError, ValueError) as e:  # an attribute of a type h5py cannot read back
        raise CacheError(f"{path}: unreadable attribute ({str(e).splitlines()[0][:120]}); {REDUMP}") from None
    if attrs.get("format") != file_format:
        what = "a kdcache shard, not a cache (dump-logits assembles shards)" if attrs.get("format") == SHARD_FORMAT \
            else f"not a kdcache cache (format attribute is {attrs.get('format')!r})"
        raise CacheError(f"{path} is an HDF5 file but {what}")
    check_attr_types(attrs, path)  # before any value is used
    version = str(attrs.get("schema_version", ""))
    major, _ = _version_tuple(version)
    if major > _version_tuple(SCHEMA_VERSION)[0]:
        raise CacheError(f"{path} has cache schema {version}, newer than this kdcache reads ({SCHEMA_VERSION}); "
                         "upgrade kdcache")
    if int(attrs.get("complete", 0)) != 1:
        raise CacheError(f"{path} is incomplete (the writer did not finish); re-create it with dump-logits")
    required = [k for k in ROOT_ATTRS if major >= 2 or k not in _V1_DEFAULTS]
    missing = [k for k in required if k not in attrs]
    if missing:
        raise CacheError(f"{path} lacks attribute(s) {', '.join(missing)}; re-create it with dump-logits")
    for k, v in _V1_DEFAULTS.items():
        attrs.setdefault(k, v)
    for k in OPTIONAL_ATTRS:
        attrs.setdefault(k, "")
    n, c = int(attrs["num_samples"]), int(attrs["num_classes"])
    kind, k, views = str(attrs["targets"]), int(attrs["topk"]), int(attrs["num_views"])
    try:
        class_names = tuple(json.loads(attrs["class_names"]))
        json.loads(attrs["config_json"])
        policy = json.loads(attrs["view_policy_json"]) if attrs["view_policy_json"] else None
    except (TypeError, ValueError):
        raise CacheError(f"{path}: class_names/config_json/view_policy_json attributes are not valid JSON") from None
    rank = int(attrs["lowrank_rank"] or 0) if kind == "lowrank" else 0
    if kind not in TARGET_KINDS or not (0 <= k <= c) or (kind == "topk") != (k > 0) or views < 1 or \
            (views > 1 and policy is None) or (kind == "lowrank" and not 1 <= rank <= c):
        raise CacheError(f"{path}: inconsistent targets attributes (targets={kind!r}, topk={k}, num_views={views}); "
                         f"{REDUMP}")
    if len(class_names) != c:
        raise CacheError(f"{path}: {len(class_names)} class names for {c} classes")
    lead = (views,) if policy is not None else ()
    want = {"labels": (n,), "indices": (n,), "sample_ids": (n,)}
    if kind == "lowrank" and attrs["lowrank_code_dtype"] not in CODE_DTYPES:
        raise CacheError(f"{path}: lowrank_code_dtype {attrs['lowrank_code_dtype']!r} is not one of "
                         f"{', '.join(CODE_DTYPES)}; {REDUMP_LOWRANK}")
    if kind == "logits":
        want["logits"] = (n, *lead, c)
    elif kind == "lowrank" and attrs["lowrank_code_dtype"] == "packed":
        bits = f["lowrank_bits"] if "lowrank_bits" in f else None
        if bits is None or bits.shape != (rank,) or bits.dtype != np.uint8:
            raise CacheError(f"{path}: /lowrank_bits is missing or not ({rank},) uint8; {REDUMP_LOWRANK}")
        b = bits[()].astype(np.int64)
        if b.max() > 16 or b.sum() < 1:
            raise CacheError(f"{path}: /lowrank_bits gives a component {int(b.max())} bits (at most 16) or the row "
                             f"{int(b.sum())} bits in all (at least 1); the packing is corrupt, {REDUMP_LOWRANK}")
        row_bytes = -(-int(b.sum()) // 8)
        want.update(lowrank_mean=(c,), lowrank_components=(rank, c), lowrank_bits=(rank,), lowrank_steps=(rank,),
                    lowrank_codes=(n, *lead, row_bytes))
    elif kind == "lowrank":
        want.update(lowrank_mean=(c,), lowrank_components=(rank, c), lowrank_codes=(n, *lead, rank),
                    lowrank_scales=(n, *lead))
    else:
        want.update(topk_logits=(n, *lead, k), topk_classes=(n, *lead, k), tail_logsumexp=(n, *lead),
                    tail_mean=(n, *lead), tail_logsumexp_t2=(n, *lead))
    if policy is not None:
        want["view_params"] = (n, views, len(policy.get("param_names", ())))
    for name, shape in want.items():
        if name not in f:
            raise CacheError(f"{path} lacks the /{name} dataset; re-create it with dump-logits")
        ds, spec = f[name], DATASETS[name]
        if ds.shape != shape:
            raise CacheError(f"{path}: /{name} has shape {ds.shape}, expected {shape}")
        ok = LOGIT_DTYPES if spec.dtype == "logits" else (class_id_dtype(c),) if spec.dtype == "classes" else \
            (STORED_CODE_DTYPES.get(str(attrs["lowrank_code_dtype"]), ""),) if spec.dtype == "codes" else (spec.dtype,)
        if spec.dtype == "codes" and str(attrs["lowrank_code_dtype"]) not in CODE_DTYPES:
            raise CacheError(f"{path}: lowrank_code_dtype {attrs['lowrank_code_dtype']!r} is not one of "
                             f"{', '.join(CODE_DTYPES)}; {REDUMP_LOWRANK}")
        if str(ds.dtype) not in ok:
            raise CacheError(f"{path}: /{name} has dtype {ds.dtype}, expected {' or '.join(ok)}")
    values = f[{"logits": "logits", "topk": "topk_logits", "lowrank": "lowrank_mean"}[kind]]
    return CacheMeta(
        path=path, schema_version=version, num_samples=n, num_classes=c, dataset=str(attrs["dataset"]),
        split=str(attrs["split"]), dataset_num_samples=int(attrs["dataset_num_samples"]),
        dataset_fingerprint=str(attrs["dataset_fingerprint"]), class_names=class_names,
        teacher_arch=str(attrs["teacher_arch"]), teacher_sha256=str(attrs["teacher_sha256"]),
        teacher_precision=str(attrs["teacher_precision"]), logits_dtype=str(values.dtype), targets=kind, topk=k,
        num_views=views, view_policy=policy, content_sha256=attrs["content_sha256"] or None,
        num_labelled=None if attrs["num_labelled"] is None else int(attrs["num_labelled"]),
        normalization_mean=tuple(float(x) for x in np.atleast_1d(attrs["normalization_mean"])),
        normalization_std=tuple(float(x) for x in np.atleast_1d(attrs["normalization_std"])), attrs=attrs,
    )


