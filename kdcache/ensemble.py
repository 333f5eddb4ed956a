"""Distil from several teachers at once: combine their cached logits into one target per row.

``mean-probs`` (Hinton et al. 2015 §3: the arithmetic mean of the members'
predictions) is computed as pseudo-logits

    t' = T · log(mean_e softmax(z_e / T))

so that softmax(t' / T) equals mean_e softmax(z_e / T) exactly (the mean of
probabilities sums to 1, so its log is already log-normalised). kd_loss is then
used unchanged, and the pseudo-logits are computed once per run for the run's T.
``mean-logits`` averages the raw logits (a geometric mean of the members'
probabilities, renormalised).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .cache import CacheArrays
from .errors import CacheError, ConfigError

ENSEMBLE_METHODS = ("mean-probs", "mean-logits")


def check_same_rows(caches: Sequence[CacheArrays]) -> None:
    """Refuse caches that do not hold the same samples in the same order (indices and content ids)."""
    first = caches[0]
    for other in caches[1:]:
        a, b = first.meta.path, other.meta.path
        if other.meta.num_samples != first.meta.num_samples:
            raise CacheError(f"ensemble caches differ in size: {a} has {first.meta.num_samples} rows, {b} has "
                             f"{other.meta.num_samples}; dump every teacher over the same split and --limit")
        for name in ("indices", "sample_ids"):
            mine, theirs = getattr(first, name), getattr(other, name)
            if not np.array_equal(mine, theirs):
                row = int(np.flatnonzero(mine != theirs)[0])
                raise CacheError(f"ensemble caches {a} and {b} differ at row {row} (/{name}: {mine[row]} vs "
                                 f"{theirs[row]}); they must cover the same samples in the same order, so dump "
                                 "every teacher over the same data, split and --limit")


def combine_logits(teacher_logits: Sequence[torch.Tensor], method: str, temperature: float) -> torch.Tensor:
    """One (N, C) float32 target from E members' (N, C) logits (see the module docstring)."""
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(f"unknown ensemble method {method!r}; choose one of: {', '.join(ENSEMBLE_METHODS)}")
    stacked = torch.stack([t.float() for t in teacher_logits])  # (E, N, C)
    if method == "mean-logits":
        return stacked.mean(0)
    log_p = torch.log_softmax(stacked.double() / temperature, dim=2)  # (E, N, C), float64 for the identity
    log_mean_p = torch.logsumexp(log_p, dim=0) - math.log(stacked.shape[0])  # (N, C) = log mean_e p_e
    return (temperature * log_mean_p).float()
