"""The one loader: every job (dump, training, evaluation, verify) and your own loop read batches through it.

``make_loader(dataset, cfg)`` builds the one torch ``DataLoader`` kdcache uses for samples, as
timm's ``create_loader`` does: the sampler is chosen from the config (kdcache.data.sampler's
``EpochSampler``: seeded, ``set_epoch``, this rank's part of each global batch), workers follow the
machine, and batches reach the device before they are standardised there.

The dataset fetches a whole batch in one ``__getitems__`` call and returns a ``Batch``
(kdcache.data.samples): an in-memory uint8 tensor is sliced once per batch (as fast as slicing it
directly) while image files are decoded in worker processes. Batches stay uint8 until they reach
the device, where they are standardised (timm's prefetcher): a quarter of the bytes through pinned
memory and no per-image float work in the workers. Views cut from image files stay uint8 too
(kdcache.data.replay); views applied to in-memory images arrive as float in [0, 1] and are
standardised the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from kdcache.cache.targets import to_float
from kdcache.data.images import is_lazy
from kdcache.data.sampler import EpochSampler
from kdcache.data.samples import Batch, collate, normalize, standardize
from kdcache.errors import ConfigError, DataError
from kdcache.identity import UNLABELLED
from kdcache.workers import quiet_worker

MAX_DEFAULT_WORKERS = 8  # more rarely helps a single GPU's input pipeline, and each worker costs memory


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm or container limit), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def scan(dataset: Any, batch_size: int, workers: int | None, source: Any = None) -> Iterator[list]:
    """One pass, in order, over a Dataset whose ``__getitems__`` returns a list of per-item values (file or item
    digests: kdcache.data.folders.hash_files, kdcache.data.user_data.item_digests), decoded in ``workers``
    (resolve_workers over ``source``, default ``dataset``) that exit quietly on SIGTERM. Not a training path:
    the one loader is make_loader; this is the identity pass some jobs make before it."""
    n = resolve_workers(workers, dataset if source is None else source)
    yield from DataLoader(dataset, batch_size=batch_size, num_workers=n, collate_fn=_as_list,
                          worker_init_fn=quiet_worker if n else None)


def _as_list(batch: list) -> list:
    return batch


def resolve_workers(workers: int | None, source: Any) -> int:
    """DataLoader workers: as asked; by default one per available CPU (up to 8) for image files, 0 in memory.

    Decoding files is the slow part of a step on a CPU, so it gets every core; a tensor in
    memory is sliced faster in the main process than a worker could hand it over.
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"--workers {workers}: give 0 (read in the main process) or more worker processes")
        return workers
    images = getattr(source, "images", source)  # a dataset of image rows, or the images themselves
    return min(available_cpus(), MAX_DEFAULT_WORKERS) if is_lazy(images) else 0


@dataclass(frozen=True)
class LoaderConfig:
    """How ``make_loader`` reads a dataset: batch size, order, workers, where batches go."""

    batch_size: int = 128
    shuffle: bool = False  # True: a fresh seeded permutation each epoch (training)
    seed: int = 0
    workers: int | None = None  # None: one per CPU (up to 8) for image files, 0 in memory (resolve_workers)
    device: str | torch.device = "cpu"
    channels_last: bool = False  # bf16 steps run faster on channels-last images
    standardize: bool = True  # False: uint8 batches as read (a teacher that standardises its own input)
    rank: int = 0
    world_size: int = 1


class _Failed:
    """A batch that could not be read, carried back from a worker as a value (one clean line, no traceback)."""

    def __init__(self, message: str):
        self.message = message


class _Guarded:
    """The dataset as the DataLoader calls it: a DataError while reading becomes a value, not a worker traceback."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, positions: Any) -> Any:
        try:
            return self.dataset.__getitems__(torch.as_tensor(positions, dtype=torch.int64))
        except DataError as e:
            return _Failed(str(e))


def _as_batch(batch: Any) -> Any:
    return batch  # __getitems__ already returns the batch (or its items: collated on the main side)


def _collate(items: Any) -> tuple[Any, Any, Any]:
    images, labels, targets = collate(items)  # TopK rows stacked
    return images, torch.as_tensor(labels), targets


class Loader:
    """Batches of a dataset on the device, standardised, for one epoch at a time (``set_epoch``).

    ``len`` is the steps of an epoch (this rank's); iterating yields ``Batch`` objects whose images
    are float32 (B, C, H, W) standardised with the dataset's mean/std (uint8 as read, with
    ``standardize=False``), labels int64 and, from a CachedDataset, the teacher's targets, all on
    ``device``. A file that cannot be decoded ends the iteration with the DataError that names it.
    """

    def __init__(self, dataset: Any, cfg: LoaderConfig, batches: Iterable[Any] | None = None):
        self.dataset, self.cfg = dataset, cfg
        self.device = torch.device(cfg.device)
        self.batches = batches if batches is not None else EpochSampler(
            len(dataset), cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed, rank=cfg.rank,
            world_size=cfg.world_size, block_rows=getattr(dataset, "block_rows", None))
        self.workers = resolve_workers(cfg.workers, dataset)
        info = getattr(dataset, "info", None)
        self.mean, self.std = (info.mean, info.std) if info is not None else (None, None)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``: its order (the sampler) and its views (the dataset), pure functions of seed and epoch."""
        for part in (self.batches, self.dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def close(self) -> None:
        """Release the dataset's file handles (targets streamed from a cache), if it holds any."""
        close = getattr(self.dataset, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        n = self.workers
        loader = DataLoader(_Guarded(self.dataset), batch_sampler=self.batches, num_workers=n, collate_fn=_as_batch,
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if n else None,
                            worker_init_fn=quiet_worker if n else None)
        counts = self.global_counts()
        for batch in loader:
            if isinstance(batch, _Failed):
                raise DataError(batch.message)
            batch = self.to_device(batch)
            if counts is not None:
                batch.global_counts = next(counts)
            yield batch

    def global_counts(self) -> Iterator[tuple[int, int]] | None:
        """Under DDP, each step's (rows, labelled rows) of the whole global batch, known without asking the other
        ranks: every rank draws the same global batches (EpochSampler) and holds every row's label."""
        labels = getattr(self.dataset, "labels", None)
        if not isinstance(self.batches, EpochSampler) or self.cfg.world_size == 1 or labels is None:
            return None
        labels = torch.as_tensor(labels)
        return ((len(b), int((labels[b] != UNLABELLED).sum())) for b in self.batches.global_batches())

    def to_device(self, batch: Any) -> Batch:
        """``batch`` on the device, its images standardised there (uint8: scaled to [0, 1] first).

        A list of items (a CachedDataset over your own dataset) is collated first; its images are used
        as your transform made them (the loader knows no mean/std for them).
        """
        if not isinstance(batch, Batch):
            batch = Batch(*_collate(batch))
        x = batch.images.to(self.device, non_blocking=True)
        if self.cfg.standardize and self.mean is not None:
            x = normalize(x, self.mean, self.std) if x.dtype == torch.uint8 else standardize(x, self.mean, self.std)
            x = x.contiguous(memory_format=self.memory_format)
        t = batch.teacher_logits
        return Batch(x, batch.labels.to(self.device, non_blocking=True),
                     None if t is None else to_float(t).to(self.device), digests=batch.digests)


def make_loader(dataset: Any, cfg: LoaderConfig = LoaderConfig(), batches: Iterable[Any] | None = None) -> Loader:
    """The one loader (see the module docstring): ``dataset`` (an ImageData or a CachedDataset over one) read with
    ``cfg``; ``batches`` (any iterable of index batches, e.g. a dump's contiguous spans) replaces the EpochSampler.

    Example: ``for batch in make_loader(CachedDataset(data, "train.h5"), LoaderConfig(128, shuffle=True)): ...``
    """
    return Loader(dataset, cfg, batches)
