"""Distil from several teachers at once: combine their cached logits into one target per row.

``mean-probs`` (Hinton et al. 2015 §3: the arithmetic mean of the members'
predictions) is computed as pseudo-logits

    t' = T · log(mean_e softmax(z_e / T))

so that softmax(t' / T) equals mean_e softmax(z_e / T) exactly (the mean of
probabilities sums to 1, so its log is already log-normalised). kd_loss is then
used unchanged, and the pseudo-logits are computed once per run for the run's T.
``mean-logits`` averages the raw logits (a geometric mean of the members'
probabilities, renormalised).

Only full-logit caches combine exactly: top-k caches keep different classes per member,
so their mean is not known over the classes one of them dropped; they are refused.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from kdcache.cache import LogitCache
from kdcache.config import ENSEMBLE_METHODS
from kdcache.errors import CacheError, ConfigError


def check_members(caches: Sequence[LogitCache]) -> None:
    """Refuse caches that cannot be combined row by row: top-k, other classes or views, other samples or order."""
    first = caches[0]
    topk = [c for c in caches if c.kind == "topk"]
    if topk and len(topk) < len(caches):
        full = next(c for c in caches if c.kind != "topk")
        raise CacheError(f"cannot mix full cache {full.path} with top-{topk[0].meta.topk} cache {topk[0].path} in an "
                         "ensemble: the top-k teacher's other logits are unknown, so no class's mean is exact; dump "
                         "every teacher with all its logits (no --top-k)")
    if topk:
        a, b = topk[0], topk[1]
        raise CacheError(f"cannot combine top-k caches {a.path} and {b.path} in an ensemble: each row keeps different "
                         "classes per teacher, so the mean over a class one of them dropped is unknown; dump every "
                         "teacher with all its logits (no --top-k)")
    for other in caches[1:]:
        a, b = first.path, other.path
        if list(other.class_names) != list(first.class_names):
            raise CacheError(f"ensemble caches {a} and {b} have different classes; every teacher must predict the "
                             "same classes in the same order")
        if len(other) != len(first):
            raise CacheError(f"ensemble caches differ in size: {a} has {len(first)} rows, {b} has "
                             f"{len(other)}; dump every teacher over the same split and --limit")
        for name in ("indices", "sample_ids"):
            mine, theirs = getattr(first, name), getattr(other, name)
            if not np.array_equal(mine, theirs):
                row = int(np.flatnonzero(mine != theirs)[0])
                raise CacheError(f"ensemble caches {a} and {b} differ at row {row} (/{name}: {mine[row]} vs "
                                 f"{theirs[row]}); they must cover the same samples in the same order, so dump "
                                 "every teacher over the same data, split and --limit")
        if first.meta.has_views or other.meta.has_views:
            same = (first.meta.view_policy == other.meta.view_policy and first.meta.has_views == other.meta.has_views
                    and np.array_equal(first.read_view_params(), other.read_view_params()))
            if not same:
                raise CacheError(f"ensemble caches {a} and {b} hold different augmentation views; every teacher must "
                                 "label the same views (dump them with the same --views, --augment and --view-seed)")


def combine_logits(teacher_logits: Sequence[torch.Tensor], method: str, temperature: float) -> torch.Tensor:
    """One float32 target from E members' logits (N, [V,] C) (see the module docstring)."""
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(f"unknown ensemble method {method!r}; choose one of: {', '.join(ENSEMBLE_METHODS)}")
    stacked = torch.stack([torch.as_tensor(t).float() for t in teacher_logits])  # (E, N, [V,] C)
    if method == "mean-logits":
        return stacked.mean(0)
    log_p = torch.log_softmax(stacked.double() / temperature, dim=-1)  # float64 for the identity
    log_mean_p = torch.logsumexp(log_p, dim=0) - math.log(stacked.shape[0])  # log mean_e p_e
    return (temperature * log_mean_p).float()
