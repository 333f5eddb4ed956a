"""Soft targets as the cache serves them: full raw logits, or the top-k of each row plus its tail.

``Targets`` is either a dense array of raw logits (..., C), or a ``TopK``: the k largest raw
logits of each row, their class ids, and two numbers about the other C - k classes (the
tail): the log-sum-exp of their logits and their mean logit. Both kinds are indexed,
moved and concatenated the same way, as numpy arrays (what the cache reads) or torch
tensors (what training uses), so batch sources never look inside.

Rebuilding the teacher's distribution at temperature T from a top-k row (docs/cache-format.md):

    top classes:  z_i / T                                   exact
    tail bucket:  log Σ_tail exp(z_j / T) ≈ f(1/T),  f(b) = log n + μ·b + (L - log n - μ)·b²

with n = C - k tail classes, μ their mean logit, L their log-sum-exp (``tail_logsumexp``). f
is exact at T = 1 (f(1) = L) and as T → ∞ (f(b) → log n + μ·b), and exact at every T when the
tail logits are normally distributed (f is then their cumulant generating function).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence, Union

import numpy as np
import torch


@dataclass(frozen=True)
class TopK:
    """The k largest raw logits of each row (descending), their classes, and the tail's statistics.

    Leading dimensions (rows, and views where a cache has them) are shared by all fields:
    ``logits``/``classes`` are (..., k), ``tail_logsumexp``/``tail_mean`` are (...).
    With k = C there is no tail: ``tail_logsumexp`` is -inf and ``tail_mean`` 0.
    """

    logits: Any  # (..., k) float
    classes: Any  # (..., k) integer class ids
    tail_logsumexp: Any  # (...) float32: log Σ exp(z_j) over the C - k other classes
    tail_mean: Any  # (...) float32: mean of the C - k other logits
    num_classes: int

    @property
    def k(self) -> int:
        return int(self.logits.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Leading shape (rows[, views])."""
        return tuple(self.tail_mean.shape)

    def __len__(self) -> int:
        return int(self.tail_mean.shape[0])

    def __getitem__(self, idx: Any) -> "TopK":
        return replace(self, logits=self.logits[idx], classes=self.classes[idx],
                       tail_logsumexp=self.tail_logsumexp[idx], tail_mean=self.tail_mean[idx])

    def to(self, device: torch.device | str) -> "TopK":
        return replace(self, logits=self.logits.to(device), classes=self.classes.to(device),
                       tail_logsumexp=self.tail_logsumexp.to(device), tail_mean=self.tail_mean.to(device))

    def float(self) -> "TopK":
        """Values as float32 and class ids as int64 (torch), ready for the loss."""
        t = as_tensors(self)
        return replace(t, logits=t.logits.float(), classes=t.classes.long(),
                       tail_logsumexp=t.tail_logsumexp.float(), tail_mean=t.tail_mean.float())

    @property
    def has_tail(self) -> bool:
        return self.k < self.num_classes

    def tail_log_mass(self, temperature: float) -> torch.Tensor:
        """log Σ_tail exp(z_j / T), (...): exact at T = 1, approximated elsewhere (module docstring)."""
        t = self.float()
        n = self.num_classes - self.k
        if n == 0:
            return torch.full_like(t.tail_mean, -math.inf)
        b = 1.0 / temperature
        log_n = math.log(n)
        curvature = (t.tail_logsumexp - log_n - t.tail_mean).clamp_min(0.0)  # >= 0 by Jensen; clamp rounding
        return log_n + t.tail_mean * b + curvature * (b * b)

    def support_logits(self, temperature: float) -> torch.Tensor:
        """The teacher's logits at T over [the k top classes, one tail bucket] (..., k + 1), or (..., k) when k = C.

        softmax of these is the teacher's distribution over that support at temperature T.
        """
        t = self.float()
        top = t.logits / temperature
        if not self.has_tail:
            return top
        return torch.cat([top, self.tail_log_mass(temperature).unsqueeze(-1)], dim=-1)

    def dense_probs(self, temperature: float) -> torch.Tensor:
        """softmax(z/T) rebuilt over all C classes (..., C): exact top-k, tail mass spread evenly."""
        t = self.float()
        log_p = torch.log_softmax(self.support_logits(temperature).double(), dim=-1)  # (..., k[+1])
        n = self.num_classes - self.k
        out = torch.zeros(*t.logits.shape[:-1], self.num_classes, dtype=torch.float64)
        if n:
            out += (log_p[..., -1:].exp() / n)
        return out.scatter(-1, t.classes, log_p[..., :self.k].exp())

    @classmethod
    def encode(cls, logits: torch.Tensor | np.ndarray, k: int) -> "TopK":
        """The top-k encoding of full logits (..., C) (torch, computed in float32)."""
        z = torch.as_tensor(logits).float()
        c = z.shape[-1]
        if not 1 <= k <= c:
            raise ValueError(f"k must be in 1..{c}, got {k}")
        values, classes = torch.topk(z, k, dim=-1, largest=True, sorted=True)  # (..., k)
        if k == c:
            tail_lse = torch.full(z.shape[:-1], -math.inf)
            tail_mean = torch.zeros(z.shape[:-1])
        else:
            tail = z.scatter(-1, classes, -math.inf)  # the top classes masked out
            tail_lse = torch.logsumexp(tail, dim=-1)
            tail_mean = (z.sum(-1, dtype=torch.float64) - values.sum(-1, dtype=torch.float64)).float() / (c - k)
        return cls(values, classes, tail_lse, tail_mean, int(c))


Targets = Union[torch.Tensor, np.ndarray, TopK]


def as_tensors(t: Targets) -> Targets:
    """numpy-backed targets -> torch (no copy); torch targets unchanged."""
    if isinstance(t, TopK):
        return replace(t, logits=_tensor(t.logits), classes=_tensor(t.classes),
                       tail_logsumexp=_tensor(t.tail_logsumexp), tail_mean=_tensor(t.tail_mean))
    return _tensor(t)


def as_numpy(t: Targets) -> Targets:
    """torch-backed (CPU) targets -> numpy (no copy); numpy targets unchanged."""
    if isinstance(t, TopK):
        return replace(t, logits=_array(t.logits), classes=_array(t.classes),
                       tail_logsumexp=_array(t.tail_logsumexp), tail_mean=_array(t.tail_mean))
    return _array(t)


def _array(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_float(t: Targets) -> Targets:
    """Torch targets ready for the loss (float32 values)."""
    return t.float() if isinstance(t, TopK) else _tensor(t).float()


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    x = np.asarray(x)
    if x.dtype == np.uint16:  # torch has no uint16 arithmetic; class ids fit int32
        x = x.astype(np.int32)
    return torch.from_numpy(x)


def concat(parts: Sequence[Targets]) -> Targets:
    """Concatenate along rows (numpy or torch, either kind)."""
    first = parts[0]
    if isinstance(first, TopK):
        return replace(first, **{f: _cat([getattr(p, f) for p in parts])
                                 for f in ("logits", "classes", "tail_logsumexp", "tail_mean")})
    return _cat(parts)


def _cat(xs: Sequence[Any]) -> Any:
    # numpy, not torch.cat, for numpy parts: torch's float16 cat is ~1000x slower on CPU (measured, torch 2.x)
    if isinstance(xs[0], np.ndarray):
        return np.concatenate(xs)
    return torch.cat(list(xs))


def num_rows(t: Targets) -> int:
    return len(t)
