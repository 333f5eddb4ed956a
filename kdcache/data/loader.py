"""The one way kdcache's jobs read pixels: a map-style Dataset of image rows through a torch DataLoader.

A batch source decides which rows make each batch (a seeded permutation, a rank's slice, the
block order of a streamed cache) and hands those index batches to ``image_batches`` as the
DataLoader's ``batch_sampler``. The dataset fetches a whole batch in one ``__getitems__`` call,
so an in-memory uint8 tensor is sliced once per batch (as fast as slicing it directly) while
image files are decoded in worker processes. Batches stay uint8 until they reach the device,
where they are normalised (kdcache.data.samples.normalize), as timm's prefetcher does: a quarter of
the bytes through pinned memory and no per-image float work in the workers.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from kdcache.data.images import is_lazy
from kdcache.errors import ConfigError, DataError

MAX_DEFAULT_WORKERS = 8  # more rarely helps a single GPU's input pipeline, and each worker costs memory


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm or container limit), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int | None, images: Any) -> int:
    """DataLoader workers: as asked; by default one per available CPU (up to 8) for image files, 0 in memory.

    Decoding files is the slow part of a step on a CPU, so it gets every core; a tensor in
    memory is sliced faster in the main process than a worker could hand it over.
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"--workers {workers}: give 0 (read in the main process) or more worker processes")
        return workers
    return min(available_cpus(), MAX_DEFAULT_WORKERS) if is_lazy(images) else 0


class _Failed:
    """A batch that could not be read, carried back from a worker as a value (one clean line, no traceback)."""

    def __init__(self, message: str):
        self.message = message


class ImageRows(Dataset):
    """Rows of an image source as a map-style Dataset that serves a whole batch per ``__getitems__``."""

    def __init__(self, images: Any):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[[int(i)]][0]

    def __getitems__(self, rows: Any) -> Any:
        try:
            return self.images[torch.as_tensor(rows, dtype=torch.int64)]
        except DataError as e:
            return _Failed(str(e))


def _as_batch(batch: Any) -> Any:
    return batch  # __getitems__ already returns the batch


def image_batches(images: Any, batches: Iterable[torch.Tensor], *, workers: int | None = None,
                  device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """``images[b]`` (uint8 (B, C, H, W), on ``device``) for each index batch ``b`` of ``batches``, in order.

    ``batches`` is consumed lazily, a few batches ahead of what has been yielded (the
    workers' prefetch), so a caller may pair each yielded batch with data it produced
    alongside the indices (kdcache.data.streaming). A file that cannot be decoded ends the
    iteration with the DataError that names it.
    """
    device = torch.device(device)
    n = resolve_workers(workers, images)
    loader = DataLoader(ImageRows(images), batch_sampler=batches, num_workers=n, collate_fn=_as_batch,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if n else None)
    for batch in loader:
        if isinstance(batch, _Failed):
            raise DataError(batch.message)
        yield batch.to(device, non_blocking=True)
