"""Soft targets as the cache serves them: full raw logits, or the top-k of each row plus its tail.

``Targets`` is either a dense array of raw logits (..., C), or a ``TopK``: the k largest raw
logits of each row, their class ids, and three numbers about the other n = C - k classes
(the tail): the log-sum-exp of their logits at T = 1 and at T = 2, and their mean logit.
Both kinds are indexed, moved and concatenated the same way, as numpy arrays (what the
cache reads) or torch tensors (what training uses), so batch sources never look inside.

Rebuilding the teacher's distribution at temperature T = 1/b from a top-k row
(docs/cache-format.md, "Top-k caches"):

    top classes:  z_i / T                                          exact
    tail bucket:  f(b) = log Σ_tail exp(b·z_j)                     exact at T = 1, 2 and T → ∞
                  f(b) ≈ log n + μ·b + a·b² + c·b³,  with a, c such that f(1) = L, f(1/2) = L₂

f is convex in b, and the four stored facts pin it down at b = 0 (value log n, slope μ), b = ½
and b = 1; the cubic through them is clipped to the bounds convexity allows (chords above,
tangent and secant extensions below), and below T = 1 also to log n + b·z_k (no tail logit
exceeds z_k, the smallest kept one). Measured on a trained 1,000-class teacher, the cubic's
error in the tail's mass is 10-100x smaller than a quadratic through L and μ alone
(benchmarks/topk.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

TAIL_T2 = 2.0  # the second temperature at which the tail's log-sum-exp is stored exactly
ARRAY_FIELDS = ("logits", "classes", "tail_logsumexp", "tail_mean", "tail_logsumexp_t2")


@dataclass(frozen=True)
class TopK:
    """The k largest raw logits of each row (descending), their classes, and the tail's statistics.

    Leading dimensions (rows, and views where a cache has them) are shared by all fields:
    ``logits``/``classes`` are (..., k), the tail's statistics (...). With k = C there is no
    tail: the log-sum-exps are -inf and the mean 0. ``tail_logsumexp_t2`` is required (a
    TopK built without it fails loudly rather than rebuilding a worse tail); pass None
    explicitly only to rebuild the tail from L and μ alone (a quadratic, less exact: it is
    what benchmarks.topk compares against). Use ``map``/``stack``/``concat`` to reshape, index,
    stack or join TopKs, so that every array is carried along.
    """

    logits: Any  # (..., k) float
    classes: Any  # (..., k) integer class ids
    tail_logsumexp: Any  # (...) float32: L = log Σ exp(z_j) over the C - k other classes
    tail_mean: Any  # (...) float32: μ, the mean of the C - k other logits
    num_classes: int
    tail_logsumexp_t2: Any  # (...) float32: L₂ = log Σ exp(z_j / 2) over the other classes, or None (see above)

    @property
    def k(self) -> int:
        return int(self.logits.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Leading shape (rows[, views])."""
        return tuple(self.tail_mean.shape)

    def __len__(self) -> int:
        return int(self.tail_mean.shape[0])

    def map(self, fn: Callable[[Any], Any]) -> "TopK":
        """The same TopK with ``fn`` applied to each array (e.g. a reshape of the leading dims, an index)."""
        return replace(self, **{f: fn(getattr(self, f)) for f in ARRAY_FIELDS if getattr(self, f) is not None})

    def __getitem__(self, idx: Any) -> "TopK":
        return self.map(lambda a: a[idx])

    def to(self, device: torch.device | str) -> "TopK":
        return self.map(lambda a: a.to(device))

    def float(self) -> "TopK":
        """Values as float32 and class ids as int64 (torch), ready for the loss."""
        return as_tensors(self).map(lambda a: a.long() if a.dtype in _INT_DTYPES else a.float())

    @property
    def has_tail(self) -> bool:
        return self.k < self.num_classes

    def tail_log_mass(self, temperature: float) -> torch.Tensor:
        """log Σ_tail exp(z_j / T), (...): the stored value at T = 1 and 2, the clipped cubic elsewhere.

        See the module docstring; without ``tail_logsumexp_t2`` the quadratic through
        (0, log n, μ) and (1, L).
        """
        t = self.float()
        n = self.num_classes - self.k
        if n == 0:
            return torch.full_like(t.tail_mean, -math.inf)
        if temperature == 1.0:
            return t.tail_logsumexp
        if temperature == TAIL_T2 and t.tail_logsumexp_t2 is not None:
            return t.tail_logsumexp_t2
        b, log_n = 1.0 / temperature, math.log(n)
        L, mu = t.tail_logsumexp, t.tail_mean
        mu = torch.minimum(mu, L - log_n)  # Jensen: L >= log n + μ; only rounding breaks it
        tangent = log_n + mu * b  # a lower bound at every b (convexity)
        if t.tail_logsumexp_t2 is None:
            f = tangent + (L - log_n - mu) * (b * b)
            chord = (1.0 - b) * log_n + b * L
            lower, upper = tangent, chord if b <= 1.0 else log_n + b * t.logits[..., -1]
            return torch.minimum(torch.maximum(f, lower), upper)
        L2 = t.tail_logsumexp_t2
        r1, r2 = L - log_n - mu, L2 - log_n - mu / 2
        f = tangent + (8.0 * r2 - r1) * (b * b) + (2.0 * r1 - 8.0 * r2) * (b * b * b)
        near = log_n + 2.0 * b * (L2 - log_n)  # the line through (0, log n) and (1/2, L2)
        far = L2 + (2.0 * b - 1.0) * (L - L2)  # the line through (1/2, L2) and (1, L)
        if b <= 0.5:
            lower, upper = torch.maximum(tangent, far), near
        elif b <= 1.0:
            lower, upper = torch.maximum(tangent, near), far
        else:
            lower, upper = torch.maximum(tangent, far), log_n + b * t.logits[..., -1]
        return torch.minimum(torch.maximum(f, lower), upper)

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
        """softmax(z/T) rebuilt over all C classes (..., C) float64: exact top-k, tail mass spread evenly."""
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
        descending order, and a tail that fits them: finite (-inf only when k = C), its mean at
        most z_k, log n + μ <= L <= log n + z_k (Jensen; no tail logit exceeds z_k, the smallest
        kept one), and L₂ between log n + μ/2 and the chord (log n + L)/2 (convexity).
        Comparisons allow the storage dtype's rounding of the values.
        """
        t = as_numpy(self)
        z = t.logits.astype(np.float64).reshape(len(t), -1, self.k)  # (rows, V, k)
        cls_ = t.classes.astype(np.int64).reshape(z.shape)
        lse = t.tail_logsumexp.astype(np.float64).reshape(z.shape[:2])
        mean = t.tail_mean.astype(np.float64).reshape(z.shape[:2])
        has2 = t.tail_logsumexp_t2 is not None
        lse2 = t.tail_logsumexp_t2.astype(np.float64).reshape(z.shape[:2]) if has2 else np.full_like(lse, np.nan)
        srt = np.sort(cls_, axis=-1)
        out = {"class id outside 0..C-1": ((cls_ < 0) | (cls_ >= self.num_classes)).any(-1),
               "a class kept twice": (srt[..., 1:] == srt[..., :-1]).any(-1),
               "values not in descending order": (z[..., 1:] > z[..., :-1]).any(-1)}
        n = self.num_classes - self.k
        if n == 0:
            out["tail statistics of a row without a tail"] = ~(np.isneginf(lse) & (np.isneginf(lse2) | (not has2))) | (mean != 0)
        else:
            z_k, log_n = z[..., -1], math.log(n)
            slack = 2.0 ** -10 * np.maximum(1.0, np.abs(z_k)) + 1e-5 * np.maximum(1.0, np.abs(lse))
            with np.errstate(invalid="ignore"):
                out["tail statistics not finite"] = ~(np.isfinite(lse) & np.isfinite(mean) & (np.isfinite(lse2) | (not has2)))
                out["tail inconsistent with the kept values"] = (
                    (mean > z_k + slack) | (lse > log_n + z_k + slack) | (lse < log_n + mean - slack)
                    | (lse2 < log_n + mean / 2 - slack) | (lse2 > (log_n + lse) / 2 + slack))
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
            tail_lse = tail_lse2 = np.full(len(flat), -np.inf, dtype=np.float32)
            tail_mean = np.zeros(len(flat), dtype=np.float32)
        else:
            tail = np.where(keep, -np.inf, flat.astype(np.float64))  # (R, C) top classes masked out
            top = tail.max(-1, keepdims=True)
            tail_lse = (top[:, 0] + np.log(np.exp(tail - top).sum(-1))).astype(np.float32)
            tail_lse2 = (top[:, 0] / TAIL_T2 + np.log(np.exp((tail - top) / TAIL_T2).sum(-1))).astype(np.float32)
            tail_mean = (np.where(keep, 0.0, flat).sum(-1, dtype=np.float64) / (c - k)).astype(np.float32)
        out = cls(values.reshape(*lead, k), classes.reshape(*lead, k), tail_lse.reshape(lead),
                  tail_mean.reshape(lead), int(c), tail_lse2.reshape(lead))
        return as_tensors(out) if isinstance(logits, torch.Tensor) else out


Targets = Union[torch.Tensor, np.ndarray, TopK]


_INT_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def as_tensors(t: Targets) -> Targets:
    """numpy-backed targets -> torch (no copy); torch targets unchanged."""
    return t.map(_tensor) if isinstance(t, TopK) else _tensor(t)


def as_numpy(t: Targets) -> Targets:
    """torch-backed (CPU) targets -> numpy (no copy); numpy targets unchanged."""
    return t.map(_array) if isinstance(t, TopK) else _array(t)


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
                                 for f in ARRAY_FIELDS if getattr(first, f) is not None})
    return _cat(parts)


def stack(rows: Sequence[Targets]) -> Targets:
    """Stack single rows (a DataLoader batch of per-sample targets) along a new first axis, either kind."""
    first = rows[0]
    if isinstance(first, TopK):
        return replace(first, **{f: _stack([getattr(r, f) for r in rows])
                                 for f in ARRAY_FIELDS if getattr(first, f) is not None})
    return _stack(rows)


def _stack(xs: Sequence[Any]) -> Any:
    return np.stack(xs) if isinstance(xs[0], np.ndarray) else torch.stack([torch.as_tensor(x) for x in xs])


def _cat(xs: Sequence[Any]) -> Any:
    # numpy, not torch.cat, for numpy parts: torch's float16 cat is ~1000x slower on CPU (measured, torch 2.x)
    if isinstance(xs[0], np.ndarray):
        return np.concatenate(xs)
    return torch.cat(list(xs))

