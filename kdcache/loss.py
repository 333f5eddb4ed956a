"""The distillation loss (Hinton, Vinyals & Dean 2015)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature T must be a finite number > 0, got {temperature}")
    return float(temperature)


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1] (0 = labels only, 1 = soft targets only), got {alpha}")
    return float(alpha)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    Computed in log space on float32 so large T or large logits stay finite. The T²
    factor keeps the soft gradients' magnitude independent of T (Hinton et al. §2).
    """
    T = temperature
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)  # (B, C)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)  # (B, C)
    # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q); batchmean divides by B only.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (T * T)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """(1 - alpha) · CE(s, y) + alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch.

    Args:
        student_logits: (B, C) raw student outputs; gradients flow through these.
        teacher_logits: (B, C) raw teacher outputs (from a cache or a live teacher);
            treated as constants. May be None when ``alpha == 0``.
        labels: (B,) int64 class indices.
        temperature: T > 0 used to soften both distributions.
        alpha: weight of the soft term in [0, 1]; 0 is plain cross-entropy.
    """
    check_temperature(temperature)
    check_alpha(alpha)
    hard = F.cross_entropy(student_logits.float(), labels) if alpha < 1.0 else None
    if alpha == 0.0:
        return hard
    if teacher_logits is None:
        raise ConfigError("alpha > 0 needs teacher logits")
    soft = soft_loss(student_logits, teacher_logits.detach(), temperature)
    if hard is None:
        return soft
    return (1.0 - alpha) * hard + alpha * soft
