"""A team's own images, as they are: a torchvision ``ImageFolder`` tree, or a folder of unlabelled images.

Layout (``--dataset imagefolder --data-dir ROOT``)::

    ROOT/train/<class name>/<any/sub/path>.jpg|png|...
    ROOT/test/<class name>/...

Unlabelled images (``--dataset unlabelled --data-dir ROOT``, a transfer set): every image
under ROOT, at any depth, with no class folders; one split, ``train``, in sorted order of the
relative paths; every label is UNLABELLED (-1).

Images may have any size and mode (RGB, greyscale, palette, CMYK, RGBA, 16-bit; JPEG, PNG and
whatever else PIL reads). Loading a split reads no pixels: it lists the files and hashes their
bytes (in DataLoader workers); the pixels are decoded batch by batch when a job reads them
(kdcache.data.images.FileImages, at ``--image-size``), so memory does not grow with the folder.
A dump reads every row once anyway, so it loads the split with its identity deferred
(``defer_identity``, the rule is kdcache.jobs.dump.defers_identity): no hashing pass, each file is
hashed by the worker that decodes it, from the same bytes, and the ids and fingerprint are made
from those digests (FolderListing). Jobs that check a folder against a cache before they read it
(train-student, verify, evaluate) keep the pass: it runs once at start-up, not per epoch, and it is
what names a file changed since the dump before any training step.

Classes are the sorted union of the class folders of both splits, so a label means the same
class in train and test. Samples are ordered as ImageFolder orders them (class, then sorted
relative path): the same files give the same order on every machine, wherever the folder lies.
A sample's id hashes its relative path, the file's bytes and its label; the split's fingerprint
hashes all of them in order: a copy of the folder elsewhere aligns with a cache made from the
original, a file added, removed or changed does not (kdcache.data.align names which).
Inputs are standardised with ImageNet's mean/std, the convention of the torchvision and timm
models such folders usually meet (``IMAGENET_MEAN``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcache.data.images import FileImages, InputTransform, as_transform, file_digest
from kdcache.data.loader import scan
from kdcache.data.samples import ImageData
from kdcache.errors import DataError
from kdcache.heap import limit_heap_growth
from kdcache.identity import UNLABELLED, USER_DATASET, DatasetInfo, fingerprint_for, sample_ids_for

IMAGEFOLDER = "imagefolder"  # --dataset names (kdcache.data.datasets lists them with the built-in datasets)
UNLABELLED_FOLDER = "unlabelled"  # every image under --data-dir, no labels
LAYOUT_HINT = "lay the data out as ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
UNLABELLED_HINT = "put the images anywhere under ROOT (no class folders needed)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SKIPPED_SHOWN = 3  # unreadable files named when some are skipped (info lists them all)
log = logging.getLogger(__name__)  # the CLI shows its warnings as `warning:` lines (kdcache.cli.group)
DEFAULT_IMAGE_SIZE = 64  # trains on a CPU in minutes; torchvision's ImageNet models want --image-size 224


def class_names_in(root: Path) -> tuple[str, ...]:
    """Sorted union of the class folders under ROOT/train and ROOT/test."""
    names: set[str] = set()
    for split in ("train", "test"):
        d = root / split
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return tuple(sorted(names))


def image_files_under(root: Path) -> list[Path]:
    """Every image file under ``root`` (any depth, hidden names skipped), sorted by relative path."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMG_EXTENSIONS:
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _labelled_files(split_dir: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """(paths, labels) of ROOT/split in ImageFolder order; an empty class folder is refused."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        d = split_dir / name
        if not d.is_dir():
            continue  # a class the other split has: fine
        found = image_files_under(d)
        if not found:
            raise DataError(f"imagefolder: class folder {d} holds no images; add images or remove the folder")
        paths += found
        labels += [label] * len(found)
    return paths, labels


class _Digests(Dataset):
    """File digests, computed in DataLoader workers (reading a folder is I/O- and hash-bound)."""

    def __init__(self, paths: Sequence[Path], check_decode: bool):
        self.paths, self.check_decode = list(paths), check_decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, rows: list[int]) -> list[bytes | str]:
        out: list[bytes | str] = []
        for i in rows:
            try:
                out.append(file_digest(self.paths[i], self.check_decode))
            except DataError as e:
                out.append(str(e))  # an unreadable file: its error, as a value (skipped or reported by the caller)
        return out


def hash_files(paths: Sequence[Path], *, workers: int | None = None, skip_unreadable: bool = False
               ) -> tuple[np.ndarray, list[int]]:
    """(digests (N, 16) uint8 of the readable files, positions of the unreadable ones).

    Without ``skip_unreadable`` the first unreadable file is a DataError naming it; with it,
    every file is also decoded once, so a truncated image is found here, not mid-training.
    """
    digests, bad = [], []
    for batch in scan(_Digests(paths, skip_unreadable), 256, workers, source=paths):
        for d in batch:
            if isinstance(d, str):
                if not skip_unreadable:
                    raise DataError(d)
                bad.append(len(digests) + len(bad))
            else:
                digests.append(np.frombuffer(d, dtype=np.uint8))
    return (np.stack(digests) if digests else np.zeros((0, 16), np.uint8)), bad


@dataclass(frozen=True)
class _Read:
    """How a folder is read (kdcache.data.datasets.ReadOptions' fields for folders)."""

    workers: int | None
    skip_unreadable: bool
    defer_identity: bool


@dataclass(frozen=True, eq=False)
class FolderListing:
    """A folder split's files as listed (the whole split, before any ``--limit``): what its identity hashes.

    The identity of a split loaded with ``defer_identity`` (no hashing pass): the job that reads its rows gets
    each file's digest with its pixels (kdcache.data.images.FileImages.read, in the decoding workers) and asks
    here for the rows' ids and, at the end, the split's fingerprint: the same values the pass gives.
    """

    base: Path
    relpaths: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    workers: int | None = None

    def sample_ids(self, indices: np.ndarray, digests: np.ndarray) -> np.ndarray:
        """The ids (B,) uint64 of dataset rows ``indices`` (B,) from their files' digests (B, 16) uint8."""
        idx = np.asarray(indices, dtype=np.int64)
        return sample_ids_for(digests, self.labels[idx], [self.relpaths[i] for i in idx])

    def fingerprint(self, indices: np.ndarray, digests: np.ndarray) -> str:
        """The split's fingerprint from the digests (n, 16) of the rows ``indices`` (n,) a job read; the files it
        did not read (rows past a ``--limit``) are hashed here."""
        found = np.zeros((len(self.relpaths), 16), np.uint8)
        seen = np.zeros(len(self.relpaths), bool)
        found[np.asarray(indices, dtype=np.int64)] = digests
        seen[np.asarray(indices, dtype=np.int64)] = True
        rest = np.flatnonzero(~seen)
        if len(rest):
            found[rest] = hash_files([self.base / self.relpaths[i] for i in rest], workers=self.workers)[0]
        return fingerprint_for(found, self.labels, self.relpaths)


def _folder_data(name: str, split: str, base: Path, paths: list[Path], labels: list[int],
                 classes: tuple[str, ...], image_size: int | InputTransform | None, read: "_Read") -> ImageData:
    """The split as ImageData: its files hashed first (ids and fingerprint known), or with ``read.defer_identity``
    not hashed here but where they are read (ImageData.deferred), which only a job that reads every row can use."""
    limit_heap_growth()  # KDCACHE_HEAP=limit: the main process too, which decodes nothing with W > 0 workers
    workers = read.workers
    relpaths = [p.relative_to(base).as_posix() for p in paths]
    deferred = read.defer_identity and not read.skip_unreadable  # unreadable files must be found before rows count
    if deferred:
        digests, bad = None, []
    else:
        digests, bad = hash_files(paths, workers=workers, skip_unreadable=read.skip_unreadable)
    skipped = tuple(relpaths[i] for i in bad)
    if bad:
        log.warning(skipped_message(f"{name}/{split}", base, skipped))
        keep = np.setdiff1d(np.arange(len(paths)), bad)
        relpaths, labels = [relpaths[i] for i in keep], [labels[i] for i in keep]
    if not relpaths:
        raise DataError(f"{name}: none of the {len(paths)} files under {base} could be read as an image")
    lab = np.asarray(labels, dtype=np.int64)
    transform = as_transform(image_size, DEFAULT_IMAGE_SIZE)
    info = DatasetInfo(
        name=name, split=split, num_samples=len(lab), class_names=classes, in_channels=transform.channels,
        image_size=(transform.size, transform.size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        fingerprint=None if deferred else fingerprint_for(digests, lab, relpaths), transform=transform.record(),
        skipped=skipped,
    )
    return ImageData(images=FileImages(base, relpaths, transform), labels=torch.from_numpy(lab),
                     indices=torch.arange(len(lab), dtype=torch.int64),
                     sample_ids=None if deferred else sample_ids_for(digests, lab, relpaths), info=info,
                     keys=tuple(relpaths),
                     deferred=FolderListing(base, tuple(relpaths), lab, workers) if deferred else None)


def skipped_message(what: str, base: Path, skipped: Sequence[str]) -> str:
    """'imagefolder/train: left out 2 unreadable files under ROOT/train (--skip-unreadable): a.jpg, b.png'."""
    more = len(skipped) - SKIPPED_SHOWN
    shown = ", ".join(skipped[:SKIPPED_SHOWN]) + (f" and {more} more" if more > 0 else "")
    files = "file" if len(skipped) == 1 else "files"
    return f"{what}: left out {len(skipped)} unreadable {files} under {base} (--skip-unreadable): {shown}"


def load_imagefolder(root: str, split: str, ignore_labels: bool = False, *, image_size: int | InputTransform | None = None,
                     workers: int | None = None, skip_unreadable: bool = False, defer_identity: bool = False
                     ) -> ImageData:
    """ROOT/split as an ImageData whose pixels are decoded on demand (see the module docstring); ``defer_identity``:
    no hashing pass, the files are hashed where they are read (ImageData.deferred; not with ``skip_unreadable``).

    ``ignore_labels``: every label UNLABELLED, ids and fingerprint hashed with it, and no class names (a
    cache of the images takes the teacher's classes, which may be another label set entirely).
    """
    base, split_dir = Path(root), Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"imagefolder: {split_dir} not found; {LAYOUT_HINT}")
    classes = class_names_in(base)
    if not classes:
        raise DataError(f"imagefolder: no class folders under {split_dir}; {LAYOUT_HINT}")
    paths, labels = _labelled_files(split_dir, classes)
    if not paths:
        raise DataError(f"imagefolder: no images under {split_dir}; {LAYOUT_HINT}")
    if ignore_labels:
        labels, classes = [UNLABELLED] * len(labels), ()
    read = _Read(workers, skip_unreadable, defer_identity)
    return _folder_data(IMAGEFOLDER, split, split_dir, paths, labels, classes, image_size, read)


def load_unlabelled(root: str, split: str = "train", *, image_size: int | InputTransform | None = None,
                    workers: int | None = None, skip_unreadable: bool = False, defer_identity: bool = False
                    ) -> ImageData:
    """Every image under ROOT as the ``train`` split of an unlabelled dataset (see the module docstring and
    load_imagefolder)."""
    base = Path(root)
    if split != "train":
        raise DataError(f"unlabelled images have one split, train (every image under {base}); there is no "
                        f"{split!r} split: evaluate on your labelled data")
    if not base.is_dir():
        raise DataError(f"unlabelled: {base} not found; {UNLABELLED_HINT}")
    paths = image_files_under(base)
    if not paths:
        raise DataError(f"unlabelled: no images under {base}; {UNLABELLED_HINT}")
    return _folder_data(UNLABELLED_FOLDER, "train", base, paths, [UNLABELLED] * len(paths), (), image_size,
                        _Read(workers, skip_unreadable, defer_identity))


def folder_files(dataset: Any) -> tuple[list[Path], list[str]] | None:
    """(paths, relative paths) of an ImageFolder-like dataset (``.samples`` (path, class) and ``.root``), else None.

    Such a dataset's rows are files: kdcache identifies them by relative path and bytes, as its own folders.
    """
    samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
    if not isinstance(samples, list) or root is None or len(samples) != len(dataset):
        return None
    try:
        paths = [Path(p) for p, _ in samples]
        return paths, [p.relative_to(root).as_posix() for p in paths]
    except (TypeError, ValueError):
        return None


def folder_dataset_name(name: str) -> str:
    """The ``--dataset`` name of data a cache records as ``name``. ``dump_logits(dataset=ImageFolder(...))`` records
    ``imagefolder`` (kdcache.data.user_data.dataset_name); caches it made before that say
    ``dataset:torchvision.datasets.folder.ImageFolder``, whose ids and fingerprint are the folder rule's too: that is
    ``imagefolder`` as well, so CLI jobs read it without ``--dataset``. Any other name is returned as it is."""
    return IMAGEFOLDER if name.startswith(USER_DATASET) and name.rsplit(".", 1)[-1] == "ImageFolder" else name
