"""A Hugging Face ``datasets.Dataset`` as kdcache's ImageData, and its rows' ids: keyed by the image's encoded bytes.

Which column holds the image and which the label is read from the dataset's ``features``: the one
``Image`` feature, the one ``ClassLabel`` feature (its ``names`` become the class names; without one, an
integer column named label/labels/cls/... is the label), or named (``ItemKeys``: ``--image-column``/
``--label-column``, ``DumpConfig``/``WrapOptions`` ``image_key``/``label_key``).

A row's content id hashes the bytes the ``Image`` feature keeps (the encoded JPEG/PNG, read with
``Image(decode=False)``; BLAKE2b-16 as ``images.file_digest`` hashes a file) and its label, not the decoded
pixels and not its position or path: a re-saved, re-ordered or re-sharded copy of the same rows has the same
ids (``CachedDataset`` maps rows by id), and a changed row is named by index and, where the feature kept one,
its path. Pixels are decoded from those bytes through kdcache's ``InputTransform`` (``--image-size``), as a
folder's files are, so a dump of a dataset and of a folder of the same images see the same pixels.

``load_hf(path, split)`` reads ``--dataset hf:PATH``: a folder written by ``save_to_disk`` (a DatasetDict's
``train``/``test``, or a single Dataset as its one split, ``train``) or a folder of Parquet files (``train*``/
``test*`` files or folders, else every file is ``train``). Nothing is downloaded. ``datasets`` is imported only
here and only when such data is read: kdcache works without it.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kdcache.data.folders import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
from kdcache.data.images import InputTransform, as_transform, open_image, positions
from kdcache.data.items import LABEL_KEYS, ItemKeys
from kdcache.data.samples import ImageData
from kdcache.errors import ConfigError, DataError
from kdcache.identity import UNLABELLED, DatasetInfo, fingerprint_for, sample_ids_for

HF = "hf"  # the DatasetInfo name (a cache's source kind) of a Hugging Face dataset
HF_PREFIX = "hf:"  # --dataset hf:PATH
ROW_KEYING = "image bytes (BLAKE2b-16 of the encoded file the Image feature keeps) + label"
INSTALL_HINT = "pip install 'kdcache[data]' (or pip install datasets)"
BATCH_ROWS = 512  # rows read from Arrow at a time when hashing


def is_hf_dataset(obj: Any) -> bool:
    """A map-style Hugging Face ``datasets.Dataset`` (told without importing ``datasets``)."""
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "features") and hasattr(obj, "cast_column")


def has_transform(ds: Any) -> bool:
    """Whether ``ds`` has a format or transform of its own (``with_transform``, ``with_format("torch")``, ...)."""
    return getattr(ds, "format", {}).get("type") is not None


@dataclass(frozen=True)
class Columns:
    """Where a dataset's image and label are, and its class names (a ClassLabel's, else ())."""

    image: str
    label: str | None
    class_names: tuple[str, ...]


def _kind(feature: Any) -> str:
    return type(feature).__name__


def _is_int(feature: Any) -> bool:
    return _kind(feature) == "Value" and str(getattr(feature, "dtype", "")).startswith(("int", "uint"))


def find_columns(ds: Any, keys: ItemKeys | None = None) -> Columns:
    """The image and label columns of ``ds`` (see the module docstring); a ConfigError in one line when there is no
    image column, two candidates, or a label column that holds no class indices (with how to fix it)."""
    keys = keys or ItemKeys()
    features = dict(ds.features)
    if keys.image is not None:
        if keys.image not in features:
            raise ConfigError(f"Hugging Face dataset: no column {keys.image!r} (image column); its columns are "
                              f"{list(features)[:8]}")
        if _kind(features[keys.image]) != "Image":
            raise ConfigError(f"Hugging Face dataset: column {keys.image!r} is {_kind(features[keys.image])}, not an "
                              f"Image feature; cast it: ds = ds.cast_column({keys.image!r}, datasets.Image())")
        image = keys.image
    else:
        found = [c for c, f in features.items() if _kind(f) == "Image"]
        if not found:
            raise ConfigError(f"Hugging Face dataset: no Image column among {list(features)[:8]}; cast the column "
                              "of encoded images to datasets.Image() (or name it with --image-column / image_key=)")
        if len(found) > 1:
            raise ConfigError(f"Hugging Face dataset: {len(found)} Image columns ({', '.join(found)}); name the one "
                              "to use with --image-column (image_key=)")
        image = found[0]
    label = _label_column(features, keys.label, image)
    names = tuple(str(n) for n in features[label].names) if label and _kind(features[label]) == "ClassLabel" else ()
    return Columns(image, label, names)


def _label_column(features: dict[str, Any], named: str | None, image: str) -> str | None:
    if named is not None:
        if named not in features:
            raise ConfigError(f"Hugging Face dataset: no column {named!r} (label column); its columns are "
                              f"{list(features)[:8]}")
        column = named
    else:
        found = [c for c, f in features.items() if _kind(f) == "ClassLabel"]
        if len(found) > 1:
            raise ConfigError(f"Hugging Face dataset: {len(found)} ClassLabel columns ({', '.join(found)}); name the "
                              "one to use with --label-column (label_key=)")
        column = found[0] if found else next((k for k in LABEL_KEYS if k in features and k != image), None)
        if column is None:
            return None  # no label: unlabelled rows
    feature = features[column]
    if _kind(feature) != "ClassLabel" and not _is_int(feature):
        raise ConfigError(f"Hugging Face dataset: label column {column!r} is {feature!r}, not class indices; map it "
                          f"to a ClassLabel first: ds = ds.class_encode_column({column!r}) (then save it again)")
    return column


def source_record(cols: Columns) -> dict[str, Any]:
    """What a cache records of a Hugging Face source (``data_source``): enough to read it again (verify, info)."""
    return {"kind": HF, "image_column": cols.image, "label_column": cols.label, "rows_keyed_by": ROW_KEYING}


def source_keys(source: dict[str, Any] | None) -> ItemKeys | None:
    """The columns a cache's ``data_source`` names, to read the same columns of the data again."""
    if not source or source.get("kind") != HF:
        return None
    return ItemKeys(source.get("image_column"), source.get("label_column"))


def _raw(ds: Any, column: str) -> Any:
    """``ds``'s column of encoded images as {"bytes", "path"} dicts, any format or transform of the dataset left out."""
    from datasets import Image

    return ds.with_format(None).select_columns([column]).cast_column(column, Image(decode=False))


def _labels(ds: Any, column: str | None) -> np.ndarray:
    if column is None:
        return np.full(len(ds), UNLABELLED, dtype=np.int64)
    labels = np.asarray(ds.with_format(None).select_columns([column])[column])
    if labels.dtype.kind not in "iu" or (labels < UNLABELLED).any():  # ClassLabel: -1 is "no label"
        raise ConfigError(f"Hugging Face dataset: label column {column!r} holds {labels.dtype} values outside "
                          "-1..; give class indices")
    return labels.astype(np.int64)


def _encoded(entry: dict[str, Any], i: int) -> bytes:
    """Row ``i``'s encoded image: the bytes the feature keeps, else the file at its path."""
    data = entry.get("bytes") if entry else None
    if data is None:
        path = entry.get("path") if entry else None
        if not path:
            raise DataError(f"Hugging Face dataset: row {i} has no image (neither bytes nor a path)")
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"Hugging Face dataset: row {i}: cannot read its image file {path} ({e})") from None
    return data


def _row_name(i: int, entry: dict[str, Any]) -> str:
    path = entry.get("path") if entry else None
    return f"row {i} ({path})" if path else f"row {i}"


def hash_rows(raw: Any, column: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(BLAKE2b-16 digests (n, 16) uint8 of rows' encoded images, each row's name: index and path)."""
    digests, names = np.zeros((len(rows), 16), dtype=np.uint8), []
    for start in range(0, len(rows), BATCH_ROWS):
        part = [int(i) for i in rows[start:start + BATCH_ROWS]]
        for k, (i, entry) in enumerate(zip(part, raw[part][column])):
            digests[start + k] = np.frombuffer(hashlib.blake2b(_encoded(entry, i), digest_size=16).digest(), np.uint8)
            names.append(_row_name(i, entry))
    return digests, names


def row_identity(ds: Any, rows: np.ndarray, keys: ItemKeys | None = None, ignore_labels: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The one content-id rule for a Hugging Face dataset: (digests (n, 16) uint8, labels (n,) int64, row names) of
    ``rows``; ``identity.sample_ids_for(digests, labels)`` (no path: a copy elsewhere aligns) makes their ids."""
    cols = find_columns(ds, keys)
    rows = np.asarray(rows, dtype=np.int64)
    digests, names = hash_rows(_raw(ds, cols.image), cols.image, rows)
    labels = _labels(ds, None if ignore_labels else cols.label)[rows]
    return digests, labels, names


class HFImages:
    """Rows of a Hugging Face dataset decoded from their encoded bytes on demand: ``images[rows]`` -> (B, C, S, S)
    uint8, through kdcache's InputTransform (as kdcache.data.images.FileImages decodes files)."""

    def __init__(self, raw: Any, column: str, rows: np.ndarray, transform: InputTransform):
        self.raw, self.column, self.rows, self.transform = raw, column, np.asarray(rows, np.int64), transform

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.transform.channels, self.transform.size, self.transform.size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows: Any) -> torch.Tensor:
        if isinstance(rows, (int, np.integer)):
            return self[[int(rows)]][0]
        pos = [int(i) for i in self.rows[positions(rows, len(self))]]
        if not pos:
            return torch.empty((0,) + self.shape[1:], dtype=torch.uint8)
        entries = self.raw[pos][self.column]
        return torch.from_numpy(np.stack([open_image(io.BytesIO(_encoded(e, i)), self.transform,
                                                     name=f"Hugging Face dataset {_row_name(i, e)}")
                                          for i, e in zip(pos, entries)]))

    def subset(self, rows: Any) -> "HFImages":
        return HFImages(self.raw, self.column, self.rows[positions(rows, len(self))], self.transform)

    def __repr__(self) -> str:
        return f"HFImages({self.column!r}, {len(self)} rows, {self.transform.record()})"


def hf_data(ds: Any, split: str = "train", *, keys: ItemKeys | None = None,
            image_size: int | InputTransform | None = None, class_names: Sequence[str] | None = None,
            ignore_labels: bool = False) -> ImageData:
    """A ``datasets.Dataset`` as an ImageData: rows decoded from their encoded bytes at ``image_size`` (an int or a
    recorded InputTransform; None: 64), ids by ``row_identity``, class names from the ClassLabel (else
    ``class_names``). Recorded as dataset ``hf``: its ids do not depend on where the data lies."""
    n = len(ds)
    if n == 0:
        raise DataError(f"Hugging Face dataset: the {split} split has no rows")
    cols = find_columns(ds, keys)
    rows = np.arange(n, dtype=np.int64)
    digests, labels, names = row_identity(ds, rows, keys, ignore_labels)
    classes = () if ignore_labels else cols.class_names or tuple(str(c) for c in class_names or ())
    if not ignore_labels and not classes and (labels != UNLABELLED).any():
        raise ConfigError(f"Hugging Face dataset: label column {cols.label!r} has no class names (it is no "
                          f"ClassLabel); pass class_names=, or cast it: ds = ds.cast_column({cols.label!r}, "
                          "ClassLabel(names=[...]))")
    if classes and labels.max() >= len(classes):
        raise ConfigError(f"Hugging Face dataset: label {int(labels.max())} is out of range for {len(classes)} classes")
    transform = as_transform(image_size, DEFAULT_IMAGE_SIZE)
    info = DatasetInfo(name=HF, split=split, num_samples=n, class_names=classes, in_channels=transform.channels,
                       image_size=(transform.size, transform.size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       fingerprint=fingerprint_for(digests, labels), transform=transform.record(),
                       source=source_record(cols))
    return ImageData(images=HFImages(_raw(ds, cols.image), cols.image, rows, transform),
                     labels=torch.from_numpy(labels), indices=torch.arange(n, dtype=torch.int64),
                     sample_ids=sample_ids_for(digests, labels), info=info, keys=tuple(names))


def _parquet_files(base: Path, split: str) -> list[str]:
    files = sorted(p for p in base.rglob("*.parquet") if not any(s.startswith(".") for s in p.relative_to(base).parts))
    if not files:
        return []
    named = [p for p in files if any(part.startswith(split) for part in p.relative_to(base).parts)]
    any_split = [p for p in files if any(part.startswith(s) for s in ("train", "test") for part in
                                         p.relative_to(base).parts)]
    if named:
        return [str(p) for p in named]
    if any_split or split != "train":
        raise DataError(f"hf:{base}: no Parquet files of the {split} split (named {split}*, or under a {split}/ "
                        f"folder) among {len(files)}")
    return [str(p) for p in files]  # one split: every file is train


def open_hf(path: str | Path, split: str = "train") -> Any:
    """The ``split`` of the Hugging Face dataset at ``path`` (see the module docstring), as a ``datasets.Dataset``."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"--dataset hf:{path} reads Hugging Face datasets, which needs the datasets package; "
                          f"{INSTALL_HINT}") from None
    base = Path(path)
    if not base.exists():
        raise DataError(f"hf:{path} not found; give a folder written by save_to_disk, or a folder of Parquet files "
                        "(--dataset hf:PATH; for a cache made from one, --data-dir PATH also names it)")
    datasets.disable_progress_bars()
    if (base / "dataset_dict.json").is_file() or (base / "dataset_info.json").is_file() \
            or (base / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(base))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"hf:{path} cannot be read as a saved Hugging Face dataset ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"hf:{path} has splits {', '.join(loaded)}, no {split!r}; save a DatasetDict with "
                                f"a {split} split")
            return loaded[split]
        if split != "train":
            raise DataError(f"hf:{path} is a single Dataset, read as the train split; there is no {split!r} split "
                            "(save a DatasetDict with train and test)")
        return loaded
    files = _parquet_files(base, split) if base.is_dir() else [str(base)] if base.suffix == ".parquet" else []
    if not files:
        raise DataError(f"hf:{path} is no Hugging Face dataset: no save_to_disk files (dataset_info.json, "
                        "dataset_dict.json) and no Parquet files in it")
    try:
        return datasets.Dataset.from_parquet(files, split=split, keep_in_memory=False)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors have no common base: one line, not a traceback
        raise DataError(f"hf:{path}: cannot read its Parquet files ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]})") from None


def load_hf(path: str | Path, split: str = "train", *, keys: ItemKeys | None = None,
            image_size: int | InputTransform | None = None, ignore_labels: bool = False) -> ImageData:
    """``--dataset hf:PATH``: the split ``split`` of a dataset on disk as an ImageData (``hf_data``)."""
    return hf_data(open_hf(path, split), split, keys=keys, image_size=image_size, ignore_labels=ignore_labels)
