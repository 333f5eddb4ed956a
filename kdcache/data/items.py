"""What an item of a user's map-style dataset is to kdcache: its image and its label, whatever its structure.

One rule for every place that reads a user's items (``dump_logits(dataset=...)``, ``CachedDataset``):

- a tuple or list ``(image, label, ...)``: torchvision's style (``(image,)`` has no label);
- a dict (any Mapping), Hugging Face's style ``{"image": ..., "label": ...}``: the image under the first
  of ``IMAGE_KEYS`` it has, the label under the first of ``LABEL_KEYS`` (none: no label), or under
  the keys the user names (``ItemKeys``; ``WrapOptions``/``DumpConfig`` ``image_key``/``label_key``);
- a bare image (a tensor, a PIL image or a numpy array): no label;
- anything else, or a dict with no image key, is refused in one line naming what was found.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from kdcache.errors import ConfigError

IMAGE_KEYS = ("image", "img", "pixel_values", "pixels", "jpg", "jpeg", "png", "webp", "input", "x")
LABEL_KEYS = ("label", "labels", "cls", "target", "targets", "class", "y")
TEACHER_KEY = "teacher_logits"  # the key CachedDataset adds to a dict item for the teacher's targets


@dataclass(frozen=True)
class ItemKeys:
    """The keys of a dict item's image and label; None: the first of IMAGE_KEYS / LABEL_KEYS the item has."""

    image: str | None = None
    label: str | None = None


def _is_image(obj: Any) -> bool:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return True
    from PIL import Image

    return isinstance(obj, Image.Image)


HINT = "name it with image_key= (WrapOptions for CachedDataset, DumpConfig for dump_logits)"


def dict_keys(item: Mapping, i: int, keys: ItemKeys | None = None) -> tuple[Any, Any | None]:
    """(image key, label key or None) of dict item ``i``; a ConfigError naming the item's keys when it has no image."""
    keys = keys or ItemKeys()
    found = [str(k) for k in item.keys()]
    if keys.image is not None:
        if keys.image not in item:
            raise ConfigError(f"dataset item {i} has no key {keys.image!r} (image_key); its keys are {found[:8]}")
        image_key = keys.image
    else:
        image_key = next((k for k in IMAGE_KEYS if k in item), None)
        if image_key is None:
            raise ConfigError(f"dataset item {i} is a dict with keys {found[:8]}, none of them an image key "
                              f"({', '.join(IMAGE_KEYS)}); {HINT}")
    if keys.label is not None:
        if keys.label not in item:
            raise ConfigError(f"dataset item {i} has no key {keys.label!r} (label_key); its keys are {found[:8]}")
        return image_key, keys.label
    return image_key, next((k for k in LABEL_KEYS if k in item and k != image_key), None)


def item_parts(item: Any, i: int, keys: ItemKeys | None = None) -> tuple[Any, Any | None]:
    """(image, label or None) of dataset item ``i`` (see the module docstring); anything else is one ConfigError."""
    if isinstance(item, Mapping):
        image_key, label_key = dict_keys(item, i, keys)
        return item[image_key], None if label_key is None else item[label_key]
    if keys is not None and (keys.image is not None or keys.label is not None):
        raise ConfigError(f"image_key/label_key name keys of dict items, but dataset item {i} is a "
                          f"{type(item).__name__}; leave them out")
    if isinstance(item, (tuple, list)):
        if not item:
            raise ConfigError(f"dataset item {i} is an empty {type(item).__name__}; give (image, label) items")
        return item[0], (item[1] if len(item) > 1 else None)
    if _is_image(item):
        return item, None
    raise ConfigError(f"dataset item {i} is a {type(item).__name__}; give (image, label) tuples, dicts with an image "
                      f"and a label key ({IMAGE_KEYS[0]}/{LABEL_KEYS[0]}, ...) or bare images")


def rebuild_item(item: Any, i: int, keys: ItemKeys | None, image: Any, label: Any, targets: Any) -> Any:
    """What CachedDataset serves for item ``i``: a dict stays a dict (``image`` and ``label`` under its own keys,
    "label" where it had none, the teacher's ``targets`` under TEACHER_KEY); any other item is
    ``(image, label, targets)``."""
    if not isinstance(item, Mapping):
        return image, label, targets
    image_key, label_key = dict_keys(item, i, keys)
    out = dict(item)
    out[image_key], out[label_key or "label"], out[TEACHER_KEY] = image, label, targets
    return out


def check_served_dict(item: Any, i: int) -> None:
    """A dict item must not already hold TEACHER_KEY (CachedDataset would overwrite it)."""
    if isinstance(item, Mapping) and TEACHER_KEY in item:
        raise ConfigError(f"dataset item {i} already has a key {TEACHER_KEY!r}, where CachedDataset puts the teacher's "
                          "targets; rename it in your dataset")
