"""A team's own images: a torchvision ``ImageFolder`` tree, held in memory like the built-in datasets.

Layout (``--dataset imagefolder --data-dir ROOT``)::

    ROOT/train/<class name>/<any/sub/path>.png|jpg|...
    ROOT/test/<class name>/...

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

from .samples import DatasetInfo, ImageData, fingerprint_for, sample_ids_for
from .errors import DataError

IMAGEFOLDER = "imagefolder"
LAYOUT_HINT = "lay the data out as ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"


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
    from PIL import Image
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
    pixels, labels, relpaths = [], [], []
    for path, label in folder.samples:
        try:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"imagefolder: cannot read image {path} ({e}); remove or fix it") from None
        pixels.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # (C, H, W)
        labels.append(label)
        relpaths.append(Path(path).relative_to(split_dir).as_posix())
    if any(p.shape[0] == 3 for p in pixels):  # any colour image: all become RGB
        pixels = [np.repeat(p, 3, axis=0) if p.shape[0] == 1 else p for p in pixels]
    size = pixels[0].shape[1:]
    for p, rel in zip(pixels, relpaths):
        if p.shape[1:] != size:
            raise DataError(f"imagefolder: {split_dir / rel} is {p.shape[2]}x{p.shape[1]}, the first image is "
                            f"{size[1]}x{size[0]}; resize all images to one size first")
    return np.stack(pixels), np.asarray(labels, dtype=np.int64), tuple(relpaths), classes


def _pixel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.astype(np.float64) / 255.0  # (N, C, H, W)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    std = np.where(std > 1e-6, std, 0.5)  # constant images: fall back to 0.5
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def load_imagefolder(root: str, split: str) -> ImageData:
    """Load ROOT/split into memory (see the module docstring for layout, ids and statistics)."""
    images, labels, relpaths, classes = _read_split(root, split)
    stats_split = "train" if (Path(root) / "train").is_dir() else split
    stats_images = images if stats_split == split else _read_split(root, stats_split)[0]
    if stats_images.shape[1:] != images.shape[1:]:
        raise DataError(f"imagefolder: {split} images are {images.shape[1:]} (C, H, W) but train images are "
                        f"{stats_images.shape[1:]}; use one size and colour mode in both splits")
    mean, std = _pixel_stats(stats_images)
    info = DatasetInfo(
        name=IMAGEFOLDER, split=split, num_samples=len(labels), class_names=classes,
        in_channels=images.shape[1], image_size=(images.shape[2], images.shape[3]), mean=mean, std=std,
        fingerprint=fingerprint_for(images, labels, relpaths),
    )
    return ImageData(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                     indices=torch.arange(len(labels), dtype=torch.int64),
                     sample_ids=sample_ids_for(images, labels, relpaths), info=info)
