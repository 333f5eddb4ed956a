"""Augmentation policies as data: sample explicit parameters, then apply them as a pure, batched function.

A policy is a name, a version, its settings and the names of its P parameters, plus

- ``sample(rng, n, image_size) -> (n, P) float32``: explicit numbers (offsets, boxes, flips), never seeds;
- ``apply(images, params) -> images``: pure and vectorised over a batch of float (B, C, H, W)
  images in [0, 1] (before standardisation), one row of ``params`` per image.

This is torchvision's split (``RandomResizedCrop.get_params`` returns a box;
``transforms.v2.functional.resized_crop``/``hflip`` apply it) made batched, and it is what
makes stored views exact: a cache stores each view's parameters (``/view_params``), so a
student, ``verify`` or another tool replays the very image the teacher saw, on any machine
and any library version (seeds are not enough: TinyViT issue #109). Parameters are a pure
function of (seed, view number, dataset index) (kdcache.data.view_schedule.sample_views): the batch size, the
number of ranks and K do not change them, so a K-view cache's views are the first K views of
a bigger cache made with the same seed.

Policies (``POLICIES``; ``parse_policy("shift-flip:pad=4")`` changes a setting):

- ``shift-flip`` (v1, for small grayscale images): translate by (dy, dx) in [-pad, pad]
  with zero fill (torchvision ``RandomCrop(size, padding=pad)``), then flip horizontally.
- ``crop-flip`` (v2, for ImageFolder-sized images): a random-resized-crop box (torchvision's
  ``get_params`` distribution: scale, log-uniform ratio, 10 attempts, centre-crop fallback),
  stored as fractions of the image (top/H, left/W, height/H, width/W, as FKD stores crops),
  resized bilinearly back to the input size (``resized_crop(..., antialias=False)``), then
  flipped horizontally. Its views replay at any resolution (a student at another
  ``--image-size``); caches of v1 (absolute pixel boxes) still replay at the teacher's size.
- ``crop-flip`` v3 (``CropFlipFile``, what ``--augment crop-flip`` makes on image folders): the
  same box, as fractions of the ORIGINAL file, cut from the full-resolution decoded image and
  resized once to the input size where the file is decoded (``cut``), as torchvision's
  ``RandomResizedCrop`` and FKD do; v2 cuts the box from the S×S centre crop instead (an
  18-pixel patch of an already-downscaled crop at scale 0.08 and S = 64). In-memory images keep v2.

A policy with ``RELATIVE`` parameters replays at any image size; the others only at the
size the views were drawn for (``check_replay_size``).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdcache.errors import CacheError, ConfigError


@dataclass(frozen=True)
class ViewPolicy(ABC):
    """Base class: settings are the dataclass fields; subclasses set NAME, VERSION, PARAM_NAMES."""

    NAME: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    PARAM_NAMES: ClassVar[tuple[str, ...]] = ()
    RELATIVE: ClassVar[bool] = False  # parameters are fractions of the image: a view replays at any image size
    FROM_FILE: ClassVar[bool] = False  # views are cut from the decoded file (CropFlipFile), not applied in memory

    @property
    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> dict[str, Any]:
        """name, version, settings, param_names: what a cache records (with include_original and seed)."""
        return {"name": self.NAME, "version": self.VERSION, "settings": self.settings,
                "param_names": list(self.PARAM_NAMES)}

    def __str__(self) -> str:
        return f"{self.NAME} v{self.VERSION} " + ", ".join(f"{k}={v:g}" for k, v in self.settings.items())

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int, image_size: Sequence[int]) -> np.ndarray:
        """(n, P) float32 random parameters."""

    @abstractmethod
    def identity(self, n: int, image_size: Sequence[int]) -> np.ndarray:
        """(n, P) float32 parameters whose view is the un-augmented image (exactly)."""

    @abstractmethod
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Views (B, C, H, W) of float ``images`` (B, C, H, W) with one row of ``params`` (B, P) each."""

    @abstractmethod
    def problem(self, params: np.ndarray, image_size: Sequence[int]) -> str | None:
        """Why ``params`` (..., P) cannot be views of ``image_size`` images (first bad one), or None."""


def _flat(params: np.ndarray, width: int) -> np.ndarray | None:
    p = np.asarray(params, dtype=np.float64)
    return p.reshape(-1, width) if p.shape and p.shape[-1] == width else None


def _first_bad(bad: np.ndarray, params: np.ndarray, what: str) -> str | None:
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return f"{int(bad.sum())} view(s) have {what} (first: parameters {params[i].tolist()})"


@dataclass(frozen=True)
class ShiftFlip(ViewPolicy):
    """Pad-and-crop translation by (dy, dx) in [-pad, pad] with zero fill, then a horizontal flip.

    View pixel (y, x) is input pixel (y + dy, x + dx), 0 outside the image; then the row
    is reversed when flip = 1. Equals torchvision ``crop(pad(img, pad), pad + dy, pad + dx, H, W)``
    followed by ``hflip``.
    """

    NAME: ClassVar[str] = "shift-flip"
    PARAM_NAMES: ClassVar[tuple[str, ...]] = ("dy", "dx", "flip")
    pad: int = 2
    flip: float = 0.5  # probability of a horizontal flip

    def __post_init__(self) -> None:
        if int(self.pad) != self.pad or self.pad < 0 or not 0 <= self.flip <= 1:
            raise ConfigError(f"shift-flip: pad must be a whole number >= 0 and flip a probability in [0, 1], "
                              f"got pad={self.pad}, flip={self.flip}")
        object.__setattr__(self, "pad", int(self.pad))
        object.__setattr__(self, "flip", float(self.flip))

    def sample(self, rng: np.random.Generator, n: int, image_size: Sequence[int]) -> np.ndarray:
        shift = rng.integers(-self.pad, self.pad + 1, size=(n, 2))  # (n, 2): dy, dx
        flip = rng.random(n) < self.flip
        return np.column_stack([shift, flip]).astype(np.float32)

    def identity(self, n: int, image_size: Sequence[int]) -> np.ndarray:
        return np.zeros((n, 3), dtype=np.float32)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = params.to(images.device).round().long()  # (B, 3)
        padded = F.pad(images, (self.pad,) * 4)  # (B, C, H + 2 pad, W + 2 pad), zero fill
        wp = w + 2 * self.pad
        rows = (self.pad + p[:, 0:1]) + torch.arange(h, device=images.device)  # (B, H)
        cols = (self.pad + p[:, 1:2]) + torch.arange(w, device=images.device)  # (B, W)
        cols = torch.where(p[:, 2:3] > 0, cols.flip(1), cols)
        flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
        return padded.reshape(b, c, -1).gather(2, flat).reshape(b, c, h, w)  # one gather: a copy, exact

    def problem(self, params: np.ndarray, image_size: Sequence[int]) -> str | None:
        p = _flat(params, 3)
        if p is None:
            return f"shift-flip parameters need 3 columns (dy, dx, flip), got shape {np.shape(params)}"
        integral = (p == np.round(p)).all(1)
        bad = ~integral | (np.abs(p[:, :2]) > self.pad).any(1) | ~np.isin(p[:, 2], (0, 1))
        return _first_bad(bad, p, f"a shift outside [-{self.pad}, {self.pad}] or a flip that is not 0/1")


@dataclass(frozen=True)
class CropFlip(ViewPolicy):
    """A random-resized-crop box, stored relative to the image, resized bilinearly to the input size, then flipped.

    Parameters (v2): ``top``/H, ``left``/W, ``height``/H, ``width``/W as float32 fractions in
    [0, 1], and ``flip`` (0/1), so the same view replays on the same image at any resolution
    (FKD stores its crops the same way). Boxes follow torchvision
    ``RandomResizedCrop.get_params`` in pixels of the image size given to ``sample`` (area
    fraction uniform in [scale_min, scale_max], aspect ratio log-uniform in [ratio_min,
    ratio_max], up to 10 attempts, then a centre crop), then are divided by H and W.
    ``apply`` multiplies them back by the batch's own H and W and rounds to whole pixels
    (a box at least 1 pixel and inside the image), so at the size the views were drawn for
    it rebuilds exactly the pixel box drawn. The view of an H×W batch equals
    ``resized_crop(img, top, left, height, width, [H, W], antialias=False)`` (bilinear,
    align_corners=False) then ``hflip``, with that pixel box.
    """

    NAME: ClassVar[str] = "crop-flip"
    VERSION: ClassVar[int] = 2
    PARAM_NAMES: ClassVar[tuple[str, ...]] = ("top", "left", "height", "width", "flip")
    RELATIVE: ClassVar[bool] = True
    scale_min: float = 0.08
    scale_max: float = 1.0
    ratio_min: float = 3 / 4
    ratio_max: float = 4 / 3
    flip: float = 0.5
    ATTEMPTS: ClassVar[int] = 10

    def __post_init__(self) -> None:
        if not (0 < self.scale_min <= self.scale_max <= 1 and 0 < self.ratio_min <= self.ratio_max
                and 0 <= self.flip <= 1):
            raise ConfigError("crop-flip: need 0 < scale_min <= scale_max <= 1, 0 < ratio_min <= ratio_max and flip in "
                              f"[0, 1], got {self.settings}")
        for k, v in self.settings.items():
            object.__setattr__(self, k, float(v))

    def _pixel_boxes(self, rng: np.random.Generator, n: int, image_size: Sequence[int]) -> np.ndarray:
        """(n, 5) float64: top, left, height, width in whole pixels of ``image_size``, and flip."""
        height, width = int(image_size[0]), int(image_size[1])
        area = height * width
        target = area * rng.uniform(self.scale_min, self.scale_max, size=(n, self.ATTEMPTS))
        log_lo, log_hi = math.log(self.ratio_min), math.log(self.ratio_max)
        aspect = np.exp(rng.uniform(log_lo, log_hi, size=(n, self.ATTEMPTS)))
        w = np.round(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, like Python's round
        h = np.round(np.sqrt(target / aspect)).astype(np.int64)
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, attempts)
        first = ok.argmax(1)  # the first attempt that fits
        found = ok.any(1)
        rows = np.arange(n)
        h, w = h[rows, first], w[rows, first]
        # Centre-crop fallback (torchvision's, for rows where no attempt fit).
        in_ratio = width / height
        if in_ratio < self.ratio_min:
            fw, fh = width, int(round(width / self.ratio_min))
        elif in_ratio > self.ratio_max:
            fw, fh = int(round(height * self.ratio_max)), height
        else:
            fw, fh = width, height
        h, w = np.where(found, h, fh), np.where(found, w, fw)
        u = rng.random((n, 2))
        top = np.where(found, np.floor(u[:, 0] * (height - h + 1)), (height - h) // 2)
        left = np.where(found, np.floor(u[:, 1] * (width - w + 1)), (width - w) // 2)
        flip = rng.random(n) < self.flip
        return np.column_stack([top, left, h, w, flip]).astype(np.float64)

    def sample(self, rng: np.random.Generator, n: int, image_size: Sequence[int]) -> np.ndarray:
        box = self._pixel_boxes(rng, n, image_size)
        scale = np.array([image_size[0], image_size[1], image_size[0], image_size[1], 1], dtype=np.float64)
        return (box / scale).astype(np.float32)

    def identity(self, n: int, image_size: Sequence[int]) -> np.ndarray:
        return np.tile(np.array([0, 0, 1, 1, 0], dtype=np.float32), (n, 1))

    def pixel_boxes(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 5) int64 top, left, height, width, flip in pixels of an ``h``×``w`` image.

        Fractions times the image's size (in float64, so a float32 fraction of a box drawn
        at this size gives its pixels back exactly), rounded; then kept at least 1 pixel and
        inside the image (a no-op at the size the box was drawn for).
        """
        size = torch.tensor([h, w, h, w, 1], dtype=torch.float64, device=params.device)
        p = (params.double() * size).round().long()
        height = p[:, 2].clamp(1, h)
        width = p[:, 3].clamp(1, w)
        top = torch.minimum(p[:, 0].clamp_min(0), h - height)
        left = torch.minimum(p[:, 1].clamp_min(0), w - width)
        return torch.stack([top, left, height, width, p[:, 4]], 1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.pixel_boxes(params.to(images.device), h, w)  # (B, 5)
        flip = p[:, 4] > 0
        # Columns first, then rows: the same arithmetic as torch's bilinear kernel,
        # out = hλ0 (wλ0 x00 + wλ1 x01) + hλ1 (wλ0 x10 + wλ1 x11).
        c0, c1, cl = _source_index(p[:, 1], p[:, 3], w, flip)  # (B, W)
        r0, r1, rl = _source_index(p[:, 0], p[:, 2], h, None)  # (B, H)
        x0 = images.gather(3, c0[:, None, None, :].expand(b, c, h, w))
        x1 = images.gather(3, c1[:, None, None, :].expand(b, c, h, w))
        cols = (1 - cl)[:, None, None, :] * x0 + cl[:, None, None, :] * x1  # (B, C, H, W_out)
        y0 = cols.gather(2, r0[:, None, :, None].expand(b, c, h, w))
        y1 = cols.gather(2, r1[:, None, :, None].expand(b, c, h, w))
        return (1 - rl)[:, None, :, None] * y0 + rl[:, None, :, None] * y1

    def problem(self, params: np.ndarray, image_size: Sequence[int]) -> str | None:
        p = _flat(params, 5)
        if p is None:
            return f"crop-flip parameters need 5 columns (top, left, height, width, flip), got shape {np.shape(params)}"
        eps = 1e-6  # float32 fractions of a box that ends at the image's edge may sum to 1 + 1 ulp
        with np.errstate(invalid="ignore"):
            bad = (~np.isfinite(p).all(1) | (p[:, :4] < 0).any(1) | (p[:, :4] > 1).any(1)
                   | (p[:, 2] <= 0) | (p[:, 3] <= 0) | (p[:, 0] + p[:, 2] > 1 + eps) | (p[:, 1] + p[:, 3] > 1 + eps)
                   | ~np.isin(p[:, 4], (0, 1)))
        return _first_bad(bad, p, "a crop box that is not fractions inside the image (top, left, height, width in "
                                  "[0, 1], height and width > 0, top + height and left + width <= 1) or a flip that "
                                  "is not 0/1")


@dataclass(frozen=True)
class CropFlipV1(CropFlip):
    """crop-flip v1, kept to replay caches written before v2: absolute pixel boxes of the teacher's input.

    ``top``, ``left``, ``height``, ``width`` are whole pixels of the image the views were drawn
    for, so they replay only at that size (``RELATIVE`` is False). New caches store v2.
    """

    VERSION: ClassVar[int] = 1
    RELATIVE: ClassVar[bool] = False

    def sample(self, rng: np.random.Generator, n: int, image_size: Sequence[int]) -> np.ndarray:
        return self._pixel_boxes(rng, n, image_size).astype(np.float32)

    def identity(self, n: int, image_size: Sequence[int]) -> np.ndarray:
        return np.tile(np.array([0, 0, image_size[0], image_size[1], 0], dtype=np.float32), (n, 1))

    def pixel_boxes(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return params.round().long()

    def problem(self, params: np.ndarray, image_size: Sequence[int]) -> str | None:
        p = _flat(params, 5)
        if p is None:
            return f"crop-flip parameters need 5 columns (top, left, height, width, flip), got shape {np.shape(params)}"
        height, width = image_size
        integral = (p == np.round(p)).all(1)
        bad = (~integral | (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 2] < 1) | (p[:, 3] < 1)
               | (p[:, 0] + p[:, 2] > height) | (p[:, 1] + p[:, 3] > width) | ~np.isin(p[:, 4], (0, 1)))
        return _first_bad(bad, p, f"a crop box outside the {height}x{width} image or a flip that is not 0/1")


def _source_index(start: torch.Tensor, length: torch.Tensor, out_size: int, flip: torch.Tensor | None):
    """Bilinear source positions (align_corners=False) of ``out_size`` outputs over [start, start + length).

    Returns (i0, i1, lambda) of shape (B, out_size): out = (1 - lambda) x[i0] + lambda x[i1],
    computed as torch's upsample_bilinear2d does (float32 scale, source clamped at 0).
    """
    scale = length.float() / out_size  # (B,)
    dst = torch.arange(out_size, device=start.device, dtype=torch.float32)
    src = (scale[:, None] * (dst + 0.5) - 0.5).clamp_min(0.0)  # (B, out)
    i0 = src.long()  # src >= 0: truncation is floor
    lam = src - i0.float()
    i1 = i0 + (i0 < (length[:, None] - 1)).long()
    i0, i1 = i0 + start[:, None], i1 + start[:, None]
    if flip is not None:  # a horizontal flip of the output reverses the output columns
        f = flip[:, None]
        i0, i1, lam = torch.where(f, i0.flip(1), i0), torch.where(f, i1.flip(1), i1), torch.where(f, lam.flip(1), lam)
    return i0, i1, lam


@dataclass(frozen=True)
class CropFlipFile(CropFlip):
    """crop-flip v3: the box is a fraction of the ORIGINAL image file, cut at full resolution and resized once.

    What torchvision's ``RandomResizedCrop`` and FKD do, and what ``--augment crop-flip`` makes on
    image folders: the file is decoded (and converted to RGB as ``InputTransform`` does), the box
    ``round(top·H), round(left·W), round(height·H), round(width·W)`` in pixels of the H×W file
    (``pixel_boxes``) is cut and resized to the input size S×S once (bilinear, antialiased), then
    flipped: pixel for pixel ``hflip(resized_crop(pil_image, t, l, h, w, [S, S], antialias=True))``
    of torchvision on the PIL image. It happens where the file is decoded (``cut``, called by
    kdcache.data.replay.view_images in DataLoader workers), so images in memory cannot replay it
    (``apply`` refuses, one line): there is no file to cut from.

    Sampling: parameters must stay a pure function of (seed, view, dataset index), known before
    any file is opened (kdcache.data.view_schedule.sample_views), so they cannot depend on a
    file's pixel size. Boxes are drawn with ``RandomResizedCrop.get_params``' rule (area fraction
    uniform in [scale_min, scale_max], aspect ratio log-uniform in [ratio_min, ratio_max], 10
    attempts, centre fallback) on a UNIT×UNIT square (UNIT = 2**16 whole "pixels", so every
    fraction is exact in float32), then divided by UNIT. On a square file that is RRC's
    distribution; on an H×W file the area fraction is still RRC's but the box's aspect ratio in
    pixels is the drawn ratio times W/H (a 4:3 photo gets ratios in [1, 16/9] instead of
    [3/4, 4/3]), and the fallback (never reached with the default settings on a square) is the
    whole file. The stored fractions are the truth for replay, whatever drew them.
    ``identity`` (``--include-original``'s view 0) is (0, 0, 1, 1, 0): the whole file resized to
    S×S (aspect not kept), not the evaluation transform's centre crop.
    """

    VERSION: ClassVar[int] = 3
    FROM_FILE: ClassVar[bool] = True
    UNIT: ClassVar[int] = 2 ** 16

    def sample(self, rng: np.random.Generator, n: int, image_size: Sequence[int]) -> np.ndarray:
        box = self._pixel_boxes(rng, n, (self.UNIT, self.UNIT))  # image_size unused: a pure function of the rng
        return (box / np.array([self.UNIT] * 4 + [1], dtype=np.float64)).astype(np.float32)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"{self} views are cut from the original image file, not from images in memory; replay them "
                          "on kdcache's own split of the image folder (load_dataset('imagefolder', ...)), or dump views "
                          "of in-memory images with crop-flip v2")

    def cut(self, image: Any, params: np.ndarray, size: int, mode: str = "RGB") -> np.ndarray:
        """(V, C, size, size) uint8: the views ``params`` (V, P) of ``image``, a decoded RGB PIL image of the file.

        Each view: the pixel box (``pixel_boxes`` at the file's own H×W), ``crop`` then ``resize((size, size),
        BILINEAR)`` (PIL antialiases when shrinking: torchvision's ``resized_crop`` on a PIL image), then a
        horizontal flip; mode "L" converts after the resize, as InputTransform does.
        """
        from PIL import Image

        w, h = image.size
        boxes = self.pixel_boxes(torch.from_numpy(np.asarray(params, dtype=np.float32).reshape(-1, 5)), h, w).tolist()
        out = []
        for top, left, height, width, flip in boxes:
            view = image.crop((left, top, left + width, top + height)).resize((size, size), Image.Resampling.BILINEAR)
            if flip:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arr = np.asarray(view.convert("L"), dtype=np.uint8)[None] if mode == "L" else \
                np.asarray(view, dtype=np.uint8).transpose(2, 0, 1)
            out.append(arr)
        return np.stack(out)  # (V, C, S, S)


POLICIES: dict[str, type[ViewPolicy]] = {"shift-flip": ShiftFlip, "crop-flip": CropFlip}
# Other versions a cache may store, replayed as they were written: v1 (legacy), and v3, which --augment crop-flip
# makes on image files (for_images) where in-memory images get v2.
LEGACY: dict[tuple[str, int], type[ViewPolicy]] = {("crop-flip", 1): CropFlipV1, ("crop-flip", 3): CropFlipFile}


def for_images(policy: ViewPolicy, images: Any) -> ViewPolicy:
    """The policy ``--augment`` means on these images: crop-flip on image files (a lazy source) is v3, cut from the
    file (CropFlipFile); on images in memory it stays v2. Any other policy is returned as it is."""
    from kdcache.data.images import from_files

    if type(policy) is CropFlip and from_files(images):
        return CropFlipFile(**policy.settings)
    return policy


def policy_names() -> list[str]:
    return sorted(POLICIES)


def parse_policy(spec: str | ViewPolicy) -> ViewPolicy:
    """``"shift-flip"`` or ``"shift-flip:pad=4,flip=0.5"`` -> the policy (ConfigError listing the choices)."""
    if isinstance(spec, ViewPolicy):
        return spec
    name, _, rest = str(spec).partition(":")
    if name not in POLICIES:
        raise ConfigError(f"unknown augmentation policy {name!r}; choose one of: {', '.join(policy_names())} "
                          "(settings as NAME:key=value,...)")
    cls = POLICIES[name]
    names = {f.name for f in fields(cls)}
    settings: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in names:
            raise ConfigError(f"--augment {spec!r}: {key!r} is not a setting of {name}; its settings are "
                              f"{', '.join(f'{k}=' for k in sorted(names))} (numbers)")
        try:
            settings[key] = float(value)
        except ValueError:
            raise ConfigError(f"--augment {spec!r}: {key}={value!r} is not a number; give e.g. {key}=2") from None
    return cls(**settings)


def policy_from_record(record: Mapping[str, Any], where: str = "the cache") -> ViewPolicy:
    """The policy a cache's ``view_policy_json`` names (CacheError for an unknown name or a newer version)."""
    name, version = record.get("name"), record.get("version")
    cls = POLICIES.get(str(name))
    if cls is not None and version != cls.VERSION:
        cls = LEGACY.get((str(name), version)) if isinstance(version, int) else None
    if cls is None:
        known = ", ".join(sorted([f"{n} v{c.VERSION}" for n, c in POLICIES.items()]
                                 + [f"{n} v{v}" for n, v in LEGACY]))
        raise CacheError(f"{where} stores views of augmentation policy {name!r} version {version}, which this kdcache "
                         f"cannot replay (it knows {known}); upgrade kdcache")
    try:
        policy = cls(**record.get("settings", {}))
    except (TypeError, ConfigError) as e:
        raise CacheError(f"{where}: view policy settings {record.get('settings')} are invalid ({e})") from None
    if list(record.get("param_names", ())) != list(cls.PARAM_NAMES):
        raise CacheError(f"{where}: view parameters are named {record.get('param_names')}, but {name} v{version} "
                         f"has {list(cls.PARAM_NAMES)}; the cache is corrupt")
    return policy


def check_replay_size(policy: ViewPolicy, drawn: Sequence[int] | None, size: Sequence[int], where: Any) -> None:
    """ConfigError (one line) when views drawn for ``drawn``-sized images cannot replay on ``size`` images.

    A ``RELATIVE`` policy replays at any size; the others only at the size their views were
    drawn for (``drawn`` None: not recorded, nothing to compare).
    """
    if policy.RELATIVE or drawn is None or tuple(int(v) for v in drawn) == tuple(int(v) for v in size):
        return
    fix = ("use crop-flip (its boxes are fractions of the image) for images read at another --image-size"
           if isinstance(policy, ShiftFlip) else "re-dump the cache with this kdcache (crop-flip v2 stores boxes "
           "relative to the image), or use the teacher's --image-size")
    raise ConfigError(f"{where} stores {policy.NAME} v{policy.VERSION} views drawn for {drawn[0]}x{drawn[1]} images, "
                      f"which do not replay on {size[0]}x{size[1]} images (its parameters are pixels); {fix}")


def view_record(policy: ViewPolicy, *, include_original: bool, seed: int) -> dict[str, Any]:
    """What a cache stores in ``view_policy_json`` (plain JSON values)."""
    return {**policy.describe(), "include_original": bool(include_original), "seed": int(seed)}
