"""kdcache speed benchmarks: ``python -m benchmarks.run`` (see README, Speed)."""
from __future__ import annotations

from typing import Any


def train_batches(data: Any, batch_size: int, *, targets: Any = None, views: Any = None, block_rows: int | None = None,
                  shuffle: bool = True, seed: int = 0, **loader: Any) -> Any:
    """What train-student trains from: ``data`` (an ImageData) with row-aligned ``targets`` and a ViewPlan,
    read through the one loader (kdcache.data.loader.make_loader; ``loader``: LoaderConfig fields).
    ``block_rows``: the block order train-student uses over a cache (its chunk rows); None: one permutation."""
    from kdcache.data.cached_dataset import CachedDataset
    from kdcache.data.loader import LoaderConfig, make_loader

    return make_loader(CachedDataset.from_targets(data, targets, views, block_rows),
                       LoaderConfig(batch_size, shuffle=shuffle, seed=seed, **loader))
