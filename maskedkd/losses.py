"""Distillation losses: KL at temperature tau (full or exact top-K + tail bucket) and hard KD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskedkd.targets import SoftTarget, as_target

__all__ = ["kd_loss", "distill_loss"]


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i (log p_i - log q_i) over the last dim, with 0 * log 0 = 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    target: SoftTarget | torch.Tensor,
    tau: float = 1.0,
    kind: str = "kl",
) -> torch.Tensor:
    """Knowledge-distillation loss of a batch, averaged over the batch (``batchmean``).

    Args:
        student_logits: Tensor[B, C].
        target: a :class:`maskedkd.SoftTarget` (top-K or dense), or the teacher's full logits Tensor[B, C].
        tau: temperature; the KL is multiplied by ``tau**2`` (Hinton et al.).
        kind: ``"kl"`` for KL(teacher || student) at ``tau``; ``"hard"`` for cross-entropy against
            the teacher's argmax (DeiT hard distillation; ``tau`` unused).

    With a top-K target the KL is taken over K+1 buckets (the K classes and one tail bucket with
    the remaining mass, for teacher and student alike). This is exact for that coarse-grained
    distribution, never larger than the full KL, and equal to it when K = C.
    Gradients reach ``student_logits`` only.
    """
    target = as_target(target).detach()
    if kind == "hard":
        return F.cross_entropy(student_logits, target.top_class().long())
    if kind != "kl":
        raise ValueError(f"kd_loss kind must be 'kl' or 'hard', got {kind!r}")

    log_p, log_p_tail = target.log_probs(tau)
    log_q, log_q_tail = target.buckets(F.log_softmax(student_logits.float() / tau, dim=1))
    kl = _kl_terms(log_p, log_q)
    if log_q_tail is not None and log_p_tail is not None:  # both or neither: a top-K target with a tail
        kl = kl + _kl_terms(log_p_tail.unsqueeze(1), log_q_tail.unsqueeze(1))
    return kl.mean() * tau * tau


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    target: SoftTarget | torch.Tensor | None,
    lam: float = 1.0,
    tau: float = 1.0,
    kind: str = "kl",
    ce_weight: float = 1.0,
) -> torch.Tensor:
    """``ce_weight * CE(student, labels) + lam * kd_loss(student, target)`` (docs/design.md §1).

    Args:
        labels: LongTensor[B] class indices, or Tensor[B, C] soft targets (mixup/cutmix, smoothing).
        target: a :class:`maskedkd.SoftTarget` or teacher logits; ``None`` gives cross-entropy alone.
        ce_weight, lam: the DeiT form ``(1 - alpha) * CE + alpha * KD`` is
            ``ce_weight=1 - alpha, lam=alpha``; the MaskedKD paper uses ``1, 1``.
    """
    if labels.dtype.is_floating_point:
        ce = torch.sum(-labels * F.log_softmax(student_logits.float(), dim=1), dim=1).mean()
    else:
        ce = F.cross_entropy(student_logits.float(), labels.long())
    loss = ce_weight * ce
    if target is not None and lam != 0:
        loss = loss + lam * kd_loss(student_logits, target, tau=tau, kind=kind)
    return loss
