"""The distillation loss (Hinton, Vinyals & Dean 2015), over full or top-k soft targets.

    loss = (1 - alpha) · CE(s, y) + alpha · T² · KL(softmax(t/T) ‖ softmax(s/T))

- Batch mean: the soft term is averaged over every row, the hard term over the rows
  that have a label (``labels`` holds UNLABELLED = -1 elsewhere), so alpha keeps its
  meaning whatever fraction of a batch is labelled; a batch without labelled rows has
  only the soft term.
- Top-k targets (kdcache.cache.targets.TopK), rebuilt at T in one of two ways (``topk_rebuild``):
  "spread" (the default): the teacher's distribution over all C classes, the k kept classes exact and the
  tail's mass at T spread evenly over the other C - k (as TinyViT and ml-dr rebuild theirs),
  then the full-C KL against the student; "bucket": KL over the k stored classes plus one
  bucket for the other C - k, teacher and student both normalised over that support (the
  student's tail total is matched, its shape left free). With k = C both are the full KL.
- Numerics: KL is computed from the logit difference d = (t - s)/T. Where a row's |d| is
  small (large T) the usual form cancels catastrophically in float32 (at T = 1e6 it is off
  by 70x), so those rows use KL = E_p[d] - log1p(E_q[expm1 d]), which has no cancellation;
  T²·KL then tends to the logit-matching limit, finite at any T.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdcache.cache.targets import Targets, TopK, to_float
from kdcache.config import DEFAULT_TOPK_REBUILD, check_alpha, check_temperature, check_topk_rebuild
from kdcache.errors import ConfigError
from kdcache.identity import UNLABELLED

SMALL_DIFF = 1.0  # rows whose max |d| is below this use the cancellation-free form

def kl_from_logits(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)) per row (B,), for logits already divided by T."""
    log_p = F.log_softmax(teacher, dim=1)  # (B, C)
    log_q = F.log_softmax(student, dim=1)
    p = log_p.exp()
    usual = (p * (log_p - log_q)).sum(1)  # (B,)
    d = teacher - student
    small = d.abs().amax(1) < SMALL_DIFF  # (B,)
    if not bool(small.any()):
        return usual
    d_small = d * small.unsqueeze(1)  # zero on other rows so expm1 stays finite there
    stable = (p * d_small).sum(1) - torch.log1p((log_q.exp() * torch.expm1(d_small)).sum(1))
    return torch.where(small, stable, usual)


def student_support_logits(student_logits: torch.Tensor, teacher: TopK, temperature: float) -> torch.Tensor:
    """The student's logits at T over the teacher's support [k top classes, tail bucket] (B, k[+1])."""
    s = student_logits.float() / temperature  # (B, C)
    top = s.gather(1, teacher.classes)  # (B, k)
    if not teacher.has_tail:
        return top
    tail = torch.logsumexp(s.scatter(1, teacher.classes, -math.inf), dim=1, keepdim=True)  # (B, 1)
    return torch.cat([top, tail], dim=1)


def spread_logits(teacher: TopK, temperature: float) -> torch.Tensor:
    """The teacher's logits at T over all C classes (B, C), the tail's mass spread evenly: softmax of them is
    the "spread" rebuild.

    Kept classes get z_i / T exactly; every other class log(Σ_tail exp(z_j / T)) - log(C - k)
    (TopK.tail_log_mass: exact at T = 1 and 2, the clipped cubic elsewhere), so the C - k of
    them hold exactly the tail's mass. Not normalised, in the same units as z / T, so with
    k = C this is z / T itself and the loss is the full one bit for bit, and at large T the
    logit difference stays small (the tail tends to μ / T, its mean logit) and kl_from_logits
    keeps its cancellation-free form: finite and accurate at any T.
    """
    t = teacher.float()
    top = t.logits / temperature  # (B, k)
    n = teacher.num_classes - teacher.k
    if n == 0:
        return torch.empty(*top.shape[:-1], teacher.num_classes, dtype=top.dtype).scatter(-1, t.classes, top)
    each = (t.tail_log_mass(temperature) - math.log(n)).unsqueeze(-1)  # (B, 1)
    return each.expand(*top.shape[:-1], teacher.num_classes).scatter(-1, t.classes, top)


def soft_loss(student_logits: torch.Tensor, teacher: Targets, temperature: float,
              rows: float | None = None, topk_rebuild: str = DEFAULT_TOPK_REBUILD) -> torch.Tensor:
    """T² · KL(teacher ‖ student) at temperature T, averaged over the batch (full or top-k targets).

    ``rows``: divide the sum over this batch by ``rows`` instead of its length (see kd_loss's ``counts``).
    ``topk_rebuild``: how top-k targets are rebuilt ("spread" or "bucket"; the module docstring).
    """
    T = temperature
    teacher = to_float(teacher)
    if isinstance(teacher, TopK) and check_topk_rebuild(topk_rebuild) == "spread":
        kl = kl_from_logits(spread_logits(teacher, T), student_logits.float() / T)
    elif isinstance(teacher, TopK):
        kl = kl_from_logits(teacher.support_logits(T), student_support_logits(student_logits, teacher, T))
    else:
        kl = kl_from_logits(teacher / T, student_logits.float() / T)
    return (kl.mean() if rows is None else kl.sum() / rows) * (T * T)


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor, labelled_rows: float | None = None
              ) -> torch.Tensor | None:
    """Cross-entropy averaged over the labelled rows; None when no row has a label.

    ``labelled_rows``: divide the sum over this batch's labelled rows by it instead of their
    number (see kd_loss's ``counts``); then a batch without labelled rows gives a zero term.
    """
    labelled = labels != UNLABELLED
    n = int(labelled.sum())
    if labelled_rows is not None:
        if labelled_rows <= 0:
            return None
        return F.cross_entropy(student_logits[labelled].float(), labels[labelled], reduction="sum") / labelled_rows
    if n == 0:
        return None
    if n == labels.shape[0]:
        return F.cross_entropy(student_logits.float(), labels)
    return F.cross_entropy(student_logits[labelled].float(), labels[labelled])


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: Targets | None,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
    *,
    counts: tuple[float, float] | None = None,
    topk_rebuild: str = DEFAULT_TOPK_REBUILD,
) -> torch.Tensor:
    """(1 - alpha) · CE(s, y) + alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch.

    Args:
        student_logits: (B, C) raw student outputs; gradients flow through these.
        teacher_logits: (B, C) raw teacher logits (from a cache or a live teacher), or a
            ``TopK`` of them; treated as constants. May be None when ``alpha == 0``.
        labels: (B,) int64 class indices; UNLABELLED (-1) rows get no cross-entropy.
        temperature: T > 0 used to soften both distributions.
        alpha: weight of the soft term in [0, 1]; 0 is plain cross-entropy.
        counts: (rows, labelled rows) to average over instead of this batch's own. Data-parallel
            training passes the whole global batch's counts divided by the number of ranks, so
            that DDP's mean of the ranks' gradients is exactly one process's gradient even when
            ranks hold different numbers of labelled rows.
        topk_rebuild: for ``TopK`` targets, "spread" (the teacher rebuilt over all C classes, the
            tail's mass spread evenly over its classes; full-C KL) or "bucket" (KL over the k kept
            classes + one tail bucket). Ignored for full logits.

    Example::

        loss = kd_loss(student(x), cached_logits, y, temperature=4.0, alpha=0.9)
    """
    check_temperature(temperature)
    check_alpha(alpha)
    check_topk_rebuild(topk_rebuild)
    rows, labelled_rows = counts if counts is not None else (None, None)
    hard = hard_loss(student_logits, labels, labelled_rows) if alpha < 1.0 else None
    if alpha == 0.0:
        if hard is None:
            raise ConfigError("alpha 0 trains on labels alone, but no row of this batch has a label")
        return hard
    if teacher_logits is None:
        raise ConfigError("alpha > 0 needs teacher logits")
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = teacher_logits.detach()
    soft = soft_loss(student_logits, teacher_logits, temperature, rows, topk_rebuild)
    if hard is None:
        return alpha * soft if alpha < 1.0 else soft
    return (1.0 - alpha) * hard + alpha * soft
