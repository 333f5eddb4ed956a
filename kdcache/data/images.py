"""Where a split's pixels come from: a uint8 tensor in memory, or image files decoded on demand.

kdcache's jobs index images the same way whatever holds them: ``images[rows]`` gives a
uint8 batch (B, C, H, W), ``images.shape`` is (N, C, H, W), ``subset(images, rows)`` and
``concat(parts)`` select and join without touching pixels. A built-in dataset (Fashion-MNIST)
is a uint8 tensor; a folder of photos is ``FileImages``: relative paths and an
``InputTransform``, decoded lazily (in DataLoader workers, kdcache.data.loader), never all at once.

The transform follows the torchvision references' evaluation convention: decode, convert to
RGB (greyscale, palette, CMYK, RGBA and 16-bit images alike, as torchvision's loader does),
resize the shorter side to ``round(size / 0.875)`` (bilinear, antialiased), centre-crop
``size`` x ``size``. It is recorded (``InputTransform.record``) in every checkpoint and cache,
so the teacher, its cache and the student see the same pixels.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kdcache.errors import ConfigError, DataError
from kdcache.heap import limit_heap_growth

CROP_FRACTION = 0.875  # torchvision references: resize to size / 0.875, centre-crop size (224 <- 256)
MAX_IMAGE_SIZE = 1024  # --image-size above this is refused: a typo, or a model that cannot train on a CPU
MAX_PIXELS = 200_000_000  # PIL's decompression-bomb limit, raised: large photos are fine, bombs are not


@dataclass(frozen=True)
class InputTransform:
    """How an image file becomes a (3, size, size) uint8 tensor (see the module docstring)."""

    size: int
    crop_fraction: float = CROP_FRACTION  # 1.0: an image of the input size is used unchanged
    interpolation: str = "bilinear"
    mode: str = "RGB"  # or "L": one channel, for a teacher trained on greyscale images (Fashion-MNIST)

    def __post_init__(self) -> None:
        check_image_size(self.size)
        if self.mode not in ("RGB", "L") or not 0.1 <= self.crop_fraction <= 1.0:
            raise ConfigError(f"input transform: mode must be RGB or L and crop fraction in [0.1, 1], got {self.mode!r} "
                              f"and {self.crop_fraction}")

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def resize(self) -> int:
        """The shorter side before the centre crop."""
        return max(self.size, int(round(self.size / self.crop_fraction)))

    def record(self) -> dict[str, Any]:
        """What checkpoints and caches store (JSON): enough to rebuild the same pixels."""
        return {"kind": "resize-center-crop", "size": self.size, "resize": self.resize,
                "interpolation": self.interpolation, "antialias": True, "mode": self.mode}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> "InputTransform | None":
        """The transform a checkpoint or cache recorded (None where it recorded none)."""
        if not record:
            return None
        fraction = 1.0 if int(record["resize"]) == int(record["size"]) else CROP_FRACTION
        if fraction != 1.0 and cls(int(record["size"])).resize != int(record["resize"]):
            fraction = float(record["size"]) / float(record["resize"])
        return cls(size=int(record["size"]), crop_fraction=fraction, mode=str(record.get("mode", "RGB")))

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image -> (C, size, size) uint8 (C = 3, or 1 for mode L)."""
        from PIL import Image

        image = _rgb(image)
        w, h = image.size  # torchvision's Resize(int): the shorter side becomes `resize`, the longer is truncated
        if w <= h:
            new = (self.resize, int(self.resize * h / w))
        else:
            new = (int(self.resize * w / h), self.resize)
        if new != (w, h):
            image = image.resize(new, Image.Resampling.BILINEAR)  # PIL antialiases when shrinking, as torchvision
        left = int(round((new[0] - self.size) / 2.0))  # torchvision's CenterCrop
        top = int(round((new[1] - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        if self.mode == "L":
            return np.asarray(image.convert("L"), dtype=np.uint8)[None]  # (1, S, S)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def as_transform(size: "int | InputTransform | None", default: int) -> InputTransform:
    """An --image-size (or a transform a teacher or cache recorded) as the InputTransform to read files with."""
    if isinstance(size, InputTransform):
        return size
    return InputTransform(check_image_size(size) if size is not None else default)


def check_image_size(size: Any) -> int:
    """Refuse an --image-size that is not a sensible side length in pixels."""
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size {size}: give the side of the square input in pixels, 8..{MAX_IMAGE_SIZE} "
                          "(e.g. 64 for a small CNN on a CPU, 224 for torchvision's ImageNet models)")
    return size


def _rgb(image: Any) -> Any:
    """Any PIL mode -> RGB (palette images with transparency via RGBA, as PIL asks)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits, not clip
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        from PIL import Image

        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def open_image(path: Any, transform: "Callable[[Any], Any] | None" = None, name: str | None = None) -> Any:
    """A decoded PIL image (or ``transform`` of it, decoded once, never copied), or DataError naming the file
    (``path`` may be a file object, e.g. a Hugging Face row's bytes; ``name`` then names it)."""
    if hasattr(path, "read"):
        return _decode(path.read(), name or "<image bytes>", transform)
    return read_image(path, transform)[0]


def read_image(path: Path, transform: "Callable[[Any], Any] | None" = None, digest: bool = False
               ) -> tuple[Any, bytes | None]:
    """(the decoded image or ``transform`` of it, the file's 16-byte BLAKE2b or None): the file is read once, and
    with ``digest`` hashed (as ``file_digest``) and decoded from the same bytes; DataError naming an unreadable file.

    Reading, hashing and decoding happen where this runs (the DataLoader workers), so a job that needs the
    files' digests (a dump's row ids, kdcache.data.folders) needs no pass of its own over the files."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _unreadable(path, e) from None
    return _decode(data, path, transform), (_blake2b(data) if digest else None)


def _blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _decode(data: bytes, path: Path, transform: "Callable[[Any], Any] | None") -> Any:
    """The image file ``path`` whose bytes are ``data``, decoded (see open_image)."""
    from PIL import Image

    limit_heap_growth()  # KDCACHE_HEAP=limit: once per process, freed decode buffers go back to the OS (kdcache.heap)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if transform is not None:
                    return transform(im)
                im.load()
                return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: BaseException) -> DataError:
    return DataError(f"cannot read image {path} ({type(e).__name__}: {e}); remove or fix it, or pass "
                     "--skip-unreadable to leave such files out")


def file_digest(path: Path, check_decode: bool = False) -> bytes:
    """16-byte BLAKE2b of a file's bytes; with ``check_decode``, DataError unless it decodes as an image."""
    if check_decode:
        return read_image(path, digest=True)[1]
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e})") from None
    return h.digest()


class FileImages:
    """Images decoded from files on demand: ``images[rows]`` -> (B, 3, S, S) uint8 (see the module docstring)."""

    def __init__(self, root: str | Path, relpaths: Sequence[str], transform: InputTransform):
        self.root, self.relpaths, self.transform = Path(root), tuple(relpaths), transform

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.relpaths), self.transform.channels, self.transform.size, self.transform.size)

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, rows: Any) -> torch.Tensor:
        if isinstance(rows, (int, np.integer)):  # one image (C, H, W), as a tensor's [i] gives
            return self[[int(rows)]][0]
        return self.read(rows, digest=False)[0]

    def decode(self, i: int) -> np.ndarray:
        """Row ``i`` as (3, S, S) uint8."""
        return open_image(self.root / self.relpaths[i], self.transform)

    def read(self, rows: Any, digest: bool = True) -> tuple[torch.Tensor, np.ndarray | None]:
        """((B, C, S, S) uint8, the files' digests (B, 16) uint8 or None): each file read once, hashed (with
        ``digest``) and decoded from the same bytes (read_image)."""
        pos = positions(rows, len(self))
        return self._read(pos, [self.transform] * len(pos), self.shape[1:], digest)

    def views(self, rows: Any, params: np.ndarray, policy: Any) -> torch.Tensor:
        """(B, V, C, S, S) uint8: each row's file decoded once, converted as the transform converts it, and its V views
        ``params`` (B, V, P) cut from it at full resolution by ``policy.cut`` (crop-flip v3)."""
        return self.read_views(rows, params, policy, digest=False)[0]

    def read_views(self, rows: Any, params: np.ndarray, policy: Any, digest: bool = True
                   ) -> tuple[torch.Tensor, np.ndarray | None]:
        """(``views``' (B, V, C, S, S) uint8, the files' digests (B, 16) uint8 or None): each file read once."""
        size, mode = self.transform.size, self.transform.mode
        cuts = [lambda im, p=p: policy.cut(_rgb(im), p, size, mode) for p in params]
        return self._read(positions(rows, len(self)), cuts, (params.shape[1],) + self.shape[1:], digest)

    def _read(self, pos: np.ndarray, converts: Sequence[Callable[[Any], np.ndarray]], shape: tuple[int, ...],
              digest: bool) -> tuple[torch.Tensor, np.ndarray | None]:
        """The files at ``pos``, each decoded by its ``converts`` (a PIL image -> uint8 array of ``shape``)."""
        read = [read_image(self.root / self.relpaths[int(i)], convert, digest) for i, convert in zip(pos, converts)]
        digests = np.frombuffer(b"".join(d for _, d in read), np.uint8).reshape(-1, 16).copy() if digest else None
        if not read:
            return torch.empty((0,) + tuple(shape), dtype=torch.uint8), digests
        return torch.from_numpy(np.stack([pixels for pixels, _ in read])), digests

    def subset(self, rows: Any) -> "FileImages":
        return FileImages(self.root, [self.relpaths[int(i)] for i in positions(rows, len(self))], self.transform)

    def __repr__(self) -> str:
        return f"FileImages({str(self.root)!r}, {len(self)} files, {self.transform.record()})"


class ConcatImages:
    """Several image sources one after the other (a labelled split and its transfer sets)."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.offsets[-1]),) + tuple(self.parts[0].shape[1:])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, rows: Any) -> torch.Tensor:
        pos = positions(rows, len(self))
        part = np.searchsorted(self.offsets, pos, side="right") - 1
        out = torch.empty((len(pos),) + self.shape[1:], dtype=torch.uint8)
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            out[torch.from_numpy(sel)] = self.parts[p][torch.from_numpy(pos[sel] - self.offsets[p])]
        return out

    def views(self, rows: Any, params: np.ndarray, policy: Any) -> torch.Tensor:
        """(B, V, C, S, S) uint8: views cut from each part's files (FileImages.views)."""
        pos = positions(rows, len(self))
        part = np.searchsorted(self.offsets, pos, side="right") - 1
        out = torch.empty((len(pos), params.shape[1]) + self.shape[1:], dtype=torch.uint8)
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            out[torch.from_numpy(sel)] = cut_views(self.parts[p], pos[sel] - self.offsets[p], params[sel], policy)
        return out

    def subset(self, rows: Any) -> Any:
        pos = positions(rows, len(self))
        part = np.searchsorted(self.offsets, pos, side="right") - 1
        if len(pos) and (part == part[0]).all():
            return subset(self.parts[part[0]], pos - self.offsets[part[0]])
        return _Gathered(self, pos)


class _Gathered:
    """Some rows of a source, in a given order, without copying pixels."""

    def __init__(self, base: Any, pos: np.ndarray):
        self.base, self.pos = base, pos

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.pos),) + tuple(self.base.shape[1:])

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, rows: Any) -> torch.Tensor:
        return self.base[torch.from_numpy(self.pos[positions(rows, len(self))])]

    def views(self, rows: Any, params: np.ndarray, policy: Any) -> torch.Tensor:
        return cut_views(self.base, self.pos[positions(rows, len(self))], params, policy)

    def subset(self, rows: Any) -> "_Gathered":
        return _Gathered(self.base, self.pos[positions(rows, len(self))])


def positions(rows: Any, n: int) -> np.ndarray:
    """Rows (a slice, an int, an index tensor or array, a list) as an int64 array of positions."""
    if isinstance(rows, slice):
        return np.arange(n)[rows]
    if isinstance(rows, torch.Tensor):
        rows = rows.cpu().numpy()
    pos = np.asarray(rows, dtype=np.int64).reshape(-1)
    return np.where(pos < 0, pos + n, pos)


def subset(images: Any, rows: Any) -> Any:
    """The images at ``rows``: a tensor is indexed, a lazy source stays lazy."""
    if isinstance(images, torch.Tensor):
        idx = rows if isinstance(rows, slice) else torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        return images[idx]
    return images.subset(rows)


def concat(parts: Sequence[Any]) -> Any:
    """The images of ``parts`` one after the other (tensors are concatenated, lazy sources joined)."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(list(parts))
    return ConcatImages(parts)


def from_files(images: Any) -> bool:
    """Whether every image of ``images`` is read from a file (so views can be cut from the original, FileImages.views)."""
    if isinstance(images, FileImages):
        return True
    if isinstance(images, ConcatImages):
        return all(from_files(p) for p in images.parts)
    return isinstance(images, _Gathered) and from_files(images.base)


def cut_views(images: Any, rows: Any, params: np.ndarray, policy: Any) -> torch.Tensor:
    """(B, V, C, S, S) uint8: views ``params`` (B, V, P) of ``rows`` cut from their files by ``policy.cut``;
    ConfigError (one line) for images that are not files (in memory, or a Dataset's transformed items)."""
    if not from_files(images):
        raise ConfigError(f"{policy} views are cut from the original image files, but these images are "
                          f"{type(images).__name__} (in memory or already transformed); replay them on kdcache's own "
                          "split of the image folder, or use views of in-memory images (crop-flip v2, shift-flip)")
    return images.views(rows, params, policy)


def is_lazy(images: Any) -> bool:
    """Whether reading ``images`` decodes files (and so deserves DataLoader workers)."""
    return not isinstance(images, torch.Tensor)
