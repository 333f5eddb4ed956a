"""Which parameters each view gets, and which view each row shows when: pure functions of seeds.

Every dump, rank, DataLoader worker and epoch has to agree on them without talking to each
other, so none depends on how rows are batched or split:

- ``sample_views``: the stored views' parameters, a function of (seed, view, dataset index);
- ``view_schedule``: which stored view a row trains on in an epoch, a function of (seed, epoch, row);
- ``ViewPlan``: what a batch source applies each epoch (replayed stored views, or fresh ones).

The policies themselves (what the parameters mean, how they are applied) are kdcache.data.augment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdcache.data.augment import ViewPolicy

VIEW_BLOCK = 1024  # dataset indices per generator in sample_views: parameters never depend on how rows are batched
# First entropy word of each random stream, so the dump's views, the training schedule and
# fresh training augmentations never share a stream whatever the seeds.
_DUMP_STREAM, _SCHEDULE_STREAM, _FRESH_STREAM = 0x6B647631, 0x6B647632, 0x6B647633


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) % 2**64 for k in key])


def sample_views(policy: ViewPolicy, keys: Sequence[int] | np.ndarray, num_views: int, seed: int,
                 image_size: Sequence[int], include_original: bool = False) -> np.ndarray:
    """(n, V, P) float32 parameters of the V views of the samples at dataset indices ``keys``.

    A pure function of (seed, view v, dataset index i): view v of index i is row i % VIEW_BLOCK
    of ``policy.sample(default_rng([0x6B647631, seed, v, i // VIEW_BLOCK]), VIEW_BLOCK, image_size)``.
    So the batch size, the split of rows between ranks and V itself never change a view;
    ``include_original`` makes view 0 the identity (views 1.. are unchanged).
    """
    keys = np.asarray(keys, dtype=np.int64)
    out = np.empty((len(keys), num_views, len(policy.PARAM_NAMES)), dtype=np.float32)
    blocks = keys // VIEW_BLOCK
    for v in range(num_views):
        if v == 0 and include_original:
            out[:, 0] = policy.identity(len(keys), image_size)
            continue
        for b in np.unique(blocks):
            mine = blocks == b
            block = policy.sample(_rng(_DUMP_STREAM, seed, v, b), VIEW_BLOCK, image_size)
            out[mine, v] = block[keys[mine] - b * VIEW_BLOCK]
    return out


def view_schedule(epoch: int, num_rows: int, num_views: int, seed: int) -> np.ndarray:
    """(num_rows,) int64: the stored view each row trains on in ``epoch``: each view once per ``num_views`` epochs.

    Epochs are grouped in cycles of V; in each cycle every row visits its V views in its own
    random order (seeded by (seed, cycle)). A pure function of (seed, epoch, row): any rank,
    worker or batch size sees the same assignment.

    Why not a uniform draw per epoch: the teacher paid for every stored view, and drawing
    with replacement wastes them (in 16 epochs over 16 views an image meets only ~10.3
    distinct views on average, some twice or more) and adds variance; sampling without
    replacement uses each view equally, and in E < V epochs gives E distinct views.
    """
    if num_views == 1:
        return np.zeros(num_rows, dtype=np.int64)
    rng = _rng(_SCHEDULE_STREAM, seed, epoch // num_views)
    out = np.empty(num_rows, dtype=np.int64)
    step = 1 << 16  # bounded memory for big datasets; the stream is consumed in row order either way
    for s in range(0, num_rows, step):
        n = min(step, num_rows - s)
        out[s:s + n] = np.argsort(rng.random((n, num_views)), axis=1)[:, epoch % num_views]
    return out


@dataclass
class ViewPlan:
    """How a batch source augments its images each epoch: replay stored views, or draw fresh parameters.

    ``stored`` (N, V, P), row-aligned with the training data: each epoch row i shows view
    ``view_schedule(epoch, N, V, seed)[i]`` and the batch carries that view's targets.
    Without ``stored`` every epoch draws fresh parameters for every row (a pure function of
    (seed, epoch)): ordinary random augmentation, for teachers and label-only students.
    """

    policy: ViewPolicy
    image_size: tuple[int, int]
    seed: int = 0
    stored: torch.Tensor | None = None  # (N, V, P) float32

    @property
    def replay(self) -> bool:
        return self.stored is not None

    def for_epoch(self, epoch: int, num_rows: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(view id of each row (N,) or None, parameters of each row (N, P)) for ``epoch``."""
        if self.stored is not None:
            views = torch.from_numpy(view_schedule(epoch, num_rows, self.stored.shape[1], self.seed))
            return views, self.stored[torch.arange(num_rows), views]
        params = self.policy.sample(_rng(_FRESH_STREAM, self.seed, epoch), num_rows, self.image_size)
        return None, torch.from_numpy(params)
