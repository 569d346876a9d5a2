"""Distillation losses: KL at temperature tau (full or exact top-K + tail bucket) and hard KD."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["TopK", "kd_loss", "distill_loss", "topk_log_probs"]


class TopK(NamedTuple):
    """A teacher's output compressed to its top-K classes plus the full logsumexp.

    Attributes:
        idx: LongTensor[B, K], class indices, by descending logit.
        logit: Tensor[B, K], the teacher's logits of those classes (at temperature 1).
        lse: Tensor[B], ``logsumexp`` over *all* classes of ``logits / tau``.
        tau: the temperature ``lse`` was computed at.

    With ``lse`` the K+1-bucket distribution (K classes + one tail bucket holding the rest of the
    probability mass) is exact: ``p_k = exp(logit_k / tau - lse)``, ``p_tail = 1 - sum_k p_k``.
    """

    idx: torch.Tensor
    logit: torch.Tensor
    lse: torch.Tensor
    tau: float = 1.0


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_log_probs(target: TopK, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher log-probabilities of the K classes and of the tail bucket at ``tau``.

    Returns:
        ``(log_p[B, K], log_p_tail[B])``; ``log_p_tail`` is ``-inf`` where the K classes hold all mass.
    """
    if abs(float(target.tau) - float(tau)) > 1e-6:
        raise ValueError(
            f"TopK target holds the logsumexp at tau={target.tau}, loss asked for tau={tau}; "
            "store labels with that temperature (labels.temperatures) or use full logits"
        )
    log_p = target.logit.float() / tau - target.lse.float().unsqueeze(1)
    log_p = log_p.clamp(max=0.0)  # float16 storage can push a top class a hair above lse
    head = torch.logsumexp(log_p, dim=1)
    return log_p, _log1mexp(head)


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i (log p_i - log q_i) over the last dim, with 0 * log 0 = 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    target: torch.Tensor | TopK,
    tau: float = 1.0,
    kind: str = "kl",
) -> torch.Tensor:
    """Knowledge-distillation loss of a batch, averaged over the batch (``batchmean``).

    Args:
        student_logits: Tensor[B, C].
        target: the teacher's full logits Tensor[B, C], or a :class:`TopK` record.
        tau: temperature; the KL is multiplied by ``tau**2`` (Hinton et al.).
        kind: ``"kl"`` for KL(teacher || student) at ``tau``; ``"hard"`` for cross-entropy against
            the teacher's argmax (DeiT hard distillation; ``tau`` unused).

    With a :class:`TopK` target the KL is taken over K+1 buckets (the K classes and one tail
    bucket with the remaining mass, for teacher and student alike). This is exact for that
    coarse-grained distribution, never larger than the full KL, and equal to it when K = C.
    Gradients reach ``student_logits`` only.
    """
    if kind == "hard":
        if isinstance(target, TopK):
            hard = target.idx.gather(1, target.logit.argmax(dim=1, keepdim=True)).squeeze(1)
        else:
            hard = target.argmax(dim=1)
        return F.cross_entropy(student_logits, hard.detach().long())
    if kind != "kl":
        raise ValueError(f"kd_loss kind must be 'kl' or 'hard', got {kind!r}")

    log_q_all = F.log_softmax(student_logits.float() / tau, dim=1)
    if isinstance(target, TopK):
        log_p, log_p_tail = topk_log_probs(TopK(*(t.detach() if torch.is_tensor(t) else t for t in target)), tau)
        idx = target.idx.long()
        log_q = log_q_all.gather(1, idx)
        kl = _kl_terms(log_p, log_q)
        if idx.shape[1] < log_q_all.shape[1]:
            # the student's tail summed over the classes outside the top-K: exact, and finite
            # where 1 - sum(q_k) would round to zero
            log_q_tail = log_q_all.scatter(1, idx, float("-inf")).logsumexp(dim=1)
            kl = kl + _kl_terms(log_p_tail.unsqueeze(1), log_q_tail.unsqueeze(1))
    else:
        log_p = F.log_softmax(target.detach().float() / tau, dim=1)
        kl = _kl_terms(log_p, log_q_all)
    return kl.mean() * tau * tau


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor | TopK | None,
    lam: float = 1.0,
    tau: float = 1.0,
    kind: str = "kl",
    ce_weight: float = 1.0,
) -> torch.Tensor:
    """``ce_weight * CE(student, labels) + lam * kd_loss(student, target)`` (docs/design.md §1).

    Args:
        labels: LongTensor[B] class indices, or Tensor[B, C] soft targets (mixup/cutmix, smoothing).
        target: teacher logits or :class:`TopK`; ``None`` gives cross-entropy alone.
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
