"""A team's own images: a torchvision ``ImageFolder`` tree, or a folder of unlabelled images, held in memory.

Layout (``--dataset imagefolder --data-dir ROOT``)::

    ROOT/train/<class name>/<any/sub/path>.png|jpg|...
    ROOT/test/<class name>/...

Unlabelled images (``--dataset unlabelled --data-dir ROOT``, a transfer set): every image
under ROOT, at any depth, with no class folders; one split, ``train``, in sorted order of
the relative paths; every label is UNLABELLED (-1), and ids and fingerprint hash -1 in its
place (kdcache.samples). Size and channel rules are those of ``imagefolder``; mean/std are
these images' own statistics (a student normalises them with its labelled data's instead).

Classes are the sorted union of the class folders of both splits, so a label means
the same class in train and test. Samples are ordered as ImageFolder orders them
(class, then sorted relative path): the same files give the same order on every
machine. Each sample's id hashes its relative path, pixels and label; the split's
fingerprint hashes all of them in order. Image size, channels (1 if every image is
greyscale, else 3) and classes come from the data; mean/std are per-channel pixel
statistics of the train split (of this split when there is no train folder).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .samples import UNLABELLED, DatasetInfo, ImageData, fingerprint_for, sample_ids_for
from .errors import DataError

IMAGEFOLDER = "imagefolder"  # --dataset names (kdcache.data lists them with the built-in datasets)
UNLABELLED_FOLDER = "unlabelled"  # every image under --data-dir, no labels
LAYOUT_HINT = "lay the data out as ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
UNLABELLED_HINT = "put the images anywhere under ROOT (no class folders needed)"


def class_names_in(root: Path) -> tuple[str, ...]:
    """Sorted union of the class folders under ROOT/train and ROOT/test."""
    names: set[str] = set()
    for split in ("train", "test"):
        d = root / split
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return tuple(sorted(names))


@lru_cache(maxsize=4)
def _read_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """(images (N, C, H, W) uint8, labels (N,) int64, relative paths, class names) of ROOT/split."""
    from torchvision.datasets import ImageFolder

    base, split_dir = Path(root), Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"imagefolder: {split_dir} not found; {LAYOUT_HINT}")
    classes = class_names_in(base)
    to_idx = {c: i for i, c in enumerate(classes)}

    class _UnionFolder(ImageFolder):  # same class indices in every split
        def find_classes(self, directory):  # noqa: ANN001 (torchvision's signature)
            return list(classes), to_idx

    try:
        folder = _UnionFolder(str(split_dir), allow_empty=True)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"imagefolder: no images under {split_dir} ({e}); {LAYOUT_HINT}") from None
    if not folder.samples:
        raise DataError(f"imagefolder: no images under {split_dir}; {LAYOUT_HINT}")
    pixels, relpaths = _read_images([Path(path) for path, _ in folder.samples], split_dir)
    labels = [label for _, label in folder.samples]
    return pixels, np.asarray(labels, dtype=np.int64), relpaths, classes


def _read_images(paths: list[Path], base: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(images (N, C, H, W) uint8, paths relative to ``base``): one size, greyscale only if every image is."""
    from PIL import Image

    pixels, relpaths = [], []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"cannot read image {path} ({e}); remove or fix it") from None
        pixels.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # (C, H, W)
        relpaths.append(path.relative_to(base).as_posix())
    if any(p.shape[0] == 3 for p in pixels):  # any colour image: all become RGB
        pixels = [np.repeat(p, 3, axis=0) if p.shape[0] == 1 else p for p in pixels]
    size = pixels[0].shape[1:]
    for p, rel in zip(pixels, relpaths):
        if p.shape[1:] != size:
            raise DataError(f"{base / rel} is {p.shape[2]}x{p.shape[1]}, the first image is "
                            f"{size[1]}x{size[0]}; resize all images to one size first")
    return np.stack(pixels), tuple(relpaths)


def _pixel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.astype(np.float64) / 255.0  # (N, C, H, W)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    std = np.where(std > 1e-6, std, 0.5)  # constant images: fall back to 0.5
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def load_imagefolder(root: str, split: str, ignore_labels: bool = False) -> ImageData:
    """Load ROOT/split into memory (see the module docstring for layout, ids and statistics).

    ``ignore_labels``: every label UNLABELLED, ids and fingerprint hashed with it, and no class names (a
    cache of the images takes the teacher's classes, which may be another label set entirely).
    """
    images, labels, relpaths, classes = _read_split(root, split)
    if ignore_labels:
        labels = np.full(len(labels), UNLABELLED, dtype=np.int64)
    stats_split = "train" if (Path(root) / "train").is_dir() else split
    stats_images = images if stats_split == split else _read_split(root, stats_split)[0]
    if stats_images.shape[1:] != images.shape[1:]:
        raise DataError(f"imagefolder: {split} images are {images.shape[1:]} (C, H, W) but train images are "
                        f"{stats_images.shape[1:]}; use one size and colour mode in both splits")
    mean, std = _pixel_stats(stats_images)
    info = DatasetInfo(
        name=IMAGEFOLDER, split=split, num_samples=len(labels), class_names=() if ignore_labels else classes,
        in_channels=images.shape[1], image_size=(images.shape[2], images.shape[3]), mean=mean, std=std,
        fingerprint=fingerprint_for(images, labels, relpaths),
    )
    return ImageData(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                     indices=torch.arange(len(labels), dtype=torch.int64),
                     sample_ids=sample_ids_for(images, labels, relpaths), info=info)


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


def load_unlabelled(root: str, split: str = "train") -> ImageData:
    """Every image under ROOT as the ``train`` split of an unlabelled dataset (see the module docstring)."""
    base = Path(root)
    if split != "train":
        raise DataError(f"unlabelled images have one split, train (every image under {base}); there is no "
                        f"{split!r} split: evaluate on your labelled data")
    if not base.is_dir():
        raise DataError(f"unlabelled: {base} not found; {UNLABELLED_HINT}")
    paths = image_files_under(base)
    if not paths:
        raise DataError(f"unlabelled: no images under {base}; {UNLABELLED_HINT}")
    images, relpaths = _read_images(paths, base)
    labels = np.full(len(relpaths), UNLABELLED, dtype=np.int64)
    mean, std = _pixel_stats(images)
    info = DatasetInfo(
        name=UNLABELLED_FOLDER, split="train", num_samples=len(labels), class_names=(),
        in_channels=images.shape[1], image_size=(images.shape[2], images.shape[3]), mean=mean, std=std,
        fingerprint=fingerprint_for(images, labels, relpaths),
    )
    return ImageData(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                     indices=torch.arange(len(labels), dtype=torch.int64),
                     sample_ids=sample_ids_for(images, labels, relpaths), info=info)
