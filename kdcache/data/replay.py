"""The one view replayer: a split's rows shown as augmentation views, for the dump, the student and verify alike.

``view_images(images, positions, params, policy)`` is the only place a view's parameters become
pixels, so the teacher's dump (``ViewRows``: all V views of each row), the student's replay
(``CachedDataset._batch``: this epoch's view of each row, or fresh ones) and ``verify``'s
re-run of a sample of views build the same image from the same numbers:

- crop-flip v3 (``policy.FROM_FILE``): each file is decoded once where it is read (in the
  DataLoader workers) and every requested view is cut from the full-resolution image and resized
  once to S×S (kdcache.data.images.FileImages.views, ``CropFlipFile.cut``): uint8, standardised on
  the device like any uint8 batch;
- every other policy (shift-flip, crop-flip v1/v2): today's batched path on the uint8 images as
  read (the S×S centre crop of a file, or a tensor in memory), ``policy.apply`` on them as float in
  [0, 1].
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kdcache.data.augment import ViewPolicy
from kdcache.data.images import cut_views
from kdcache.data.samples import Batch, ImageData, to_unit
from kdcache.data.view_schedule import sample_views


def view_images(images: Any, positions: Sequence[int] | torch.Tensor, params: torch.Tensor | np.ndarray,
                policy: ViewPolicy) -> torch.Tensor:
    """The views ``params`` of the images at ``positions`` (B,) of ``images`` (a uint8 tensor or a lazy source).

    ``params`` (B, P): one view per row -> (B, C, S, S); (B, V, P): V views per row -> (B, V, C, S, S).
    uint8 for views cut from files (crop-flip v3), float in [0, 1] for the others (on uint8 images as read,
    or on float images already in [0, 1]: a Dataset's ToTensor() items, kdcache.data.views.StoredViews).
    """
    pos = torch.as_tensor(positions, dtype=torch.int64)
    p = torch.as_tensor(np.asarray(params, dtype=np.float32)) if isinstance(params, np.ndarray) else params
    single = p.ndim == 2
    if policy.FROM_FILE:
        views = cut_views(images, pos.numpy(), (p[:, None] if single else p).numpy(), policy)  # (B, V, C, S, S)
        return views[:, 0] if single else views
    x = images[pos]
    x = x if x.is_floating_point() else to_unit(x)  # (B, C, H, W) float in [0, 1] (a Dataset's items: already)
    if single:
        return policy.apply(x, p)
    return torch.stack([policy.apply(x, p[:, v]) for v in range(p.shape[1])], dim=1)  # (B, V, C, H, W)


class ViewRows:
    """A split's rows as all ``num_views`` of their views, as a map-style Dataset for the one loader (the dump's).

    ``__getitems__(positions)`` returns a Batch of (B, V, C, S, S) views (view_images) and labels;
    ``params(positions)`` the (B, V, P) parameters of those views, a pure function of (seed, view,
    dataset index) (kdcache.data.view_schedule.sample_views), so the main process that writes them
    and the worker that cut them agree without passing them around.
    """

    def __init__(self, data: ImageData, policy: ViewPolicy, num_views: int, seed: int,
                 include_original: bool = False):
        self.data, self.policy, self.num_views = data, policy, int(num_views)
        self.seed, self.include_original = int(seed), bool(include_original)

    @property
    def images(self) -> Any:
        return self.data.images  # the loader gives files worker processes

    @property
    def info(self) -> Any:
        return self.data.info

    def __len__(self) -> int:
        return len(self.data)

    def params(self, positions: Sequence[int] | torch.Tensor) -> np.ndarray:
        """(B, V, P) float32: the views of the rows at ``positions``."""
        pos = torch.as_tensor(positions, dtype=torch.int64)
        return sample_views(self.policy, self.data.indices[pos].numpy(), self.num_views, self.seed,
                            self.data.info.image_size, self.include_original)

    def __getitems__(self, positions: Sequence[int] | torch.Tensor) -> Batch:
        pos, labels = torch.as_tensor(positions, dtype=torch.int64), self.data.labels
        params = self.params(pos)
        if self.data.deferred is None:
            return Batch(view_images(self.data.images, pos, params, self.policy), labels[pos])
        # identity deferred (a folder's dump): each file read once for its views and its digest (the row's id)
        if self.policy.FROM_FILE:
            views, digests = self.data.images.read_views(pos.numpy(), np.asarray(params, np.float32), self.policy)
        else:
            images, digests = self.data.images.read(pos)
            views = view_images(images, torch.arange(len(pos)), params, self.policy)
        return Batch(views, labels[pos], digests=digests)
