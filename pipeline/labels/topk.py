"""Teacher logits -> what the store keeps: top-K records or full logits (docs/design.md §5)."""

from __future__ import annotations

from typing import Iterable

import torch

from maskedkd.losses import TopK


def topk_from_logits(logits: torch.Tensor, k: int | str) -> TopK | torch.Tensor:
    """The store's target for a batch of teacher logits.

    Args:
        logits: Tensor[B, C], the teacher's logits at temperature 1 (any float dtype; the
            record is computed in float32).
        k: number of classes to keep, or ``"all"``.

    Returns:
        ``TopK(idx[B, K] int64, logit[B, K] float32, lse[B] float32, tau=1.0)`` with classes by
        descending logit and ``lse`` the logsumexp over *all* C classes, so the K+1-bucket
        distribution of :func:`maskedkd.losses.kd_loss` is exact; with ``k="all"`` the float32
        logits themselves.
    """
    logits = logits.detach().float()
    if k == "all":
        return logits
    if not isinstance(k, int) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be 'all' or an int in 1..{logits.shape[1]}, got {k!r}")
    value, idx = logits.topk(k, dim=1, largest=True, sorted=True)
    return TopK(idx=idx, logit=value, lse=torch.logsumexp(logits, dim=1))


def logsumexp_at(logits: torch.Tensor, taus: Iterable[float]) -> dict[float, torch.Tensor]:
    """``{tau: logsumexp(logits / tau)}`` (float32 [B]) for the extra ``lse_tau<T>`` columns."""
    logits = logits.detach().float()
    return {float(t): torch.logsumexp(logits / float(t), dim=1) for t in taus}
