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
is exact at T = 1 (f(1) = L) and as T → ∞ (f(b) → log n + μ·b, value and slope), and close at
every T when the tail logits are roughly normal (f is then log n plus their cumulant
generating function, μ·b + σ²·b²/2). For 0 < b ≤ 1 it always lies between the bounds the true value obeys
(Jensen below, the chord of a convex function above), whatever the tail's shape.
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
        """log Σ_tail exp(z_j / T), (...): exact at T = 1, approximated elsewhere (module docstring).

        Written as L + (b - 1)·(μ + c·(b + 1)), the same quadratic, so that b = 1 returns the
        stored L bit for bit. For T < 1 (b > 1) it is also capped at log n + b·z_k, a bound every
        tail logit obeys (none exceeds z_k, the smallest kept logit).
        """
        t = self.float()
        n = self.num_classes - self.k
        if n == 0:
            return torch.full_like(t.tail_mean, -math.inf)
        b = 1.0 / temperature
        log_n = math.log(n)
        lse = t.tail_logsumexp
        slope = torch.minimum(t.tail_mean, lse - log_n)  # L >= log n + μ (Jensen); only rounding breaks it
        curvature = lse - log_n - slope  # >= 0
        out = lse + (b - 1.0) * (slope + curvature * (b + 1.0))
        if b > 1.0:
            out = torch.minimum(out, log_n + b * t.logits[..., -1])
        return out

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

    def invalid_rows(self) -> dict[str, np.ndarray]:
        """Rows that break the encoding's invariants, by reason: {reason: (rows,) bool}, views folded into rows.

        What a reader relies on: class ids in 0..C-1 and distinct within a row, values in
        descending order, and a tail that fits them: finite (-inf only when k = C), its mean
        at most z_k, and log n + μ <= L <= log n + z_k (Jensen; no tail logit exceeds z_k, the
        smallest kept one). Comparisons allow the storage dtype's rounding of the values.
        """
        t = as_numpy(self)
        z = t.logits.astype(np.float64).reshape(len(t), -1, self.k)  # (rows, V, k)
        cls_ = t.classes.astype(np.int64).reshape(z.shape)
        lse = t.tail_logsumexp.astype(np.float64).reshape(z.shape[:2])
        mean = t.tail_mean.astype(np.float64).reshape(z.shape[:2])
        srt = np.sort(cls_, axis=-1)
        out = {"class id outside 0..C-1": ((cls_ < 0) | (cls_ >= self.num_classes)).any(-1),
               "a class kept twice": (srt[..., 1:] == srt[..., :-1]).any(-1),
               "values not in descending order": (z[..., 1:] > z[..., :-1]).any(-1)}
        n = self.num_classes - self.k
        if n == 0:
            out["tail statistics of a row without a tail"] = ~np.isneginf(lse) | (mean != 0)
        else:
            z_k = z[..., -1]
            slack = 2.0 ** -10 * np.maximum(1.0, np.abs(z_k)) + 1e-5 * np.maximum(1.0, np.abs(lse))
            with np.errstate(invalid="ignore"):
                out["tail statistics not finite"] = ~(np.isfinite(lse) & np.isfinite(mean))
                out["tail inconsistent with the kept values"] = (
                    (mean > z_k + slack) | (lse > math.log(n) + z_k + slack) | (lse < math.log(n) + mean - slack))
        return {reason: mask.any(-1) for reason, mask in out.items()}

    @classmethod
    def encode(cls, logits: torch.Tensor | np.ndarray, k: int) -> "TopK":
        """The top-k encoding of full logits (..., C): numpy in, numpy out; torch in, torch (CPU) out.

        A pure function of each row, bit for bit: the same row gives the same bytes alone or in
        any batch, on any number of threads or ranks (a sharded dump must reproduce a one-process
        one). So it is computed in numpy (single-threaded, per-row reductions), ties are broken
        by class index (the lower id is kept first), and the tail's statistics are summed in
        float64 over the row alone. Values are the float32 logits; the cache rounds them to
        its storage dtype afterwards.
        """
        z = (logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits))
        z = z.astype(np.float32, copy=False)
        c = z.shape[-1]
        if not 1 <= k <= c:
            raise ValueError(f"k must be in 1..{c}, got {k}")
        lead = z.shape[:-1]
        flat = z.reshape(-1, c)  # (R, C)
        kth = np.partition(flat, c - k, axis=-1)[:, c - k:c - k + 1]  # (R, 1) the k-th largest value
        above, tied = flat > kth, flat == kth
        # every value above the k-th, then the lowest-id ties at it: exactly k per row
        keep = above | (tied & (np.cumsum(tied, axis=-1) <= k - above.sum(-1, keepdims=True)))
        classes = np.nonzero(keep)[1].reshape(-1, k)  # (R, k) in class order
        values = np.take_along_axis(flat, classes, axis=-1)
        order = np.argsort(-values, axis=-1, kind="stable")  # descending; equal values keep class order
        classes, values = np.take_along_axis(classes, order, -1), np.take_along_axis(values, order, -1)
        if k == c:
            tail_lse = np.full(len(flat), -np.inf, dtype=np.float32)
            tail_mean = np.zeros(len(flat), dtype=np.float32)
        else:
            tail = np.where(keep, -np.inf, flat.astype(np.float64))  # (R, C) top classes masked out
            top = tail.max(-1, keepdims=True)
            tail_lse = (top[:, 0] + np.log(np.exp(tail - top).sum(-1))).astype(np.float32)
            tail_mean = (np.where(keep, 0.0, flat).sum(-1, dtype=np.float64) / (c - k)).astype(np.float32)
        out = cls(values.reshape(*lead, k), classes.reshape(*lead, k), tail_lse.reshape(lead),
                  tail_mean.reshape(lead), int(c))
        return as_tensors(out) if isinstance(logits, torch.Tensor) else out


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
