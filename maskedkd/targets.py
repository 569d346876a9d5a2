"""Soft targets: what the KD loss learns from, all classes or the top K plus an exact tail (docs/design.md §1, §5)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence, cast

import torch

__all__ = ["SoftTarget", "TopK", "as_target", "from_logits", "logsumexp_at"]


@dataclass(frozen=True, eq=False)
class SoftTarget:
    """A batch of teacher outputs: dense (all classes) or top-K with the full logsumexp.

    Attributes:
        logit: Tensor[B, K], the teacher's logits (at temperature 1) of the classes in ``idx``;
            dense: Tensor[B, C] of all classes in class order (any logits: log-probabilities too).
        idx: LongTensor[B, K], class indices by descending logit; ``None`` for dense.
        lse: Tensor[B], ``logsumexp`` over *all* classes of ``logits / tau``; ``None`` for dense.
        tau: the temperature ``lse`` was computed at (1.0 for dense, which fits any temperature).

    With ``lse`` the K+1-bucket distribution (K classes + one tail bucket holding the rest of the
    probability mass) is exact: ``p_k = exp(logit_k / tau - lse)``, ``p_tail = 1 - sum_k p_k``.
    """

    logit: torch.Tensor
    idx: torch.Tensor | None = None
    lse: torch.Tensor | None = None
    tau: float = 1.0

    def __post_init__(self) -> None:
        if (self.idx is None) != (self.lse is None):
            raise ValueError("a top-K SoftTarget needs both idx and lse; a dense one neither")

    @property
    def dense(self) -> bool:
        """Whether this holds all classes (no tail bucket, no logsumexp)."""
        return self.idx is None

    def __len__(self) -> int:
        return len(self.logit)

    def __getitem__(self, rows: Any) -> "SoftTarget":
        """Rows ``rows`` (an int tensor, a bool mask or a slice) of every field."""
        return replace(self, logit=self.logit[rows], idx=_cut(self.idx, rows), lse=_cut(self.lse, rows))

    @staticmethod
    def cat(targets: Sequence["SoftTarget"]) -> "SoftTarget":
        """The rows of ``targets`` one after the other (all dense, or all top-K at one temperature)."""
        first = targets[0]
        if any(t.dense != first.dense or t.tau != first.tau for t in targets):
            raise ValueError("cannot concatenate dense with top-K targets, or top-K targets at other temperatures")
        return replace(first, logit=torch.cat([t.logit for t in targets]), idx=_cat([t.idx for t in targets]),
                       lse=_cat([t.lse for t in targets]))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SoftTarget":
        """The same target on ``device`` (``non_blocking`` as for ``Tensor.to``)."""
        return replace(self, logit=self.logit.to(device, non_blocking=non_blocking),
                       idx=_to(self.idx, device, non_blocking), lse=_to(self.lse, device, non_blocking))

    def pin_memory(self) -> "SoftTarget":
        """The same target in page-locked host memory (for non-blocking copies to a GPU)."""
        return replace(self, logit=self.logit.pin_memory(), idx=None if self.idx is None else self.idx.pin_memory(),
                       lse=None if self.lse is None else self.lse.pin_memory())

    def detach(self) -> "SoftTarget":
        """The same target outside the autograd graph."""
        return replace(self, logit=self.logit.detach(), idx=_detach(self.idx), lse=_detach(self.lse))

    def log_probs(self, tau: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's log-probabilities at ``tau``, float32.

        Returns:
            Top-K: ``(log_p[B, K], log_p_tail[B])``, the exact K+1 buckets; ``log_p_tail`` is
            ``-inf`` where the K classes hold all mass. Dense: ``(log_softmax(logit / tau)[B, C], None)``.

        Raises:
            ValueError: a top-K target whose ``lse`` was computed at another temperature.
        """
        if self.dense:
            return torch.log_softmax(self.logit.float() / tau, dim=1), None
        if abs(float(self.tau) - float(tau)) > 1e-6:
            raise ValueError(
                f"TopK target holds the logsumexp at tau={self.tau}, loss asked for tau={tau}; "
                "store labels with that temperature (labels.temperatures) or use full logits"
            )
        assert self.lse is not None  # top-K targets carry their logsumexp
        log_p = self.logit.float() / tau - self.lse.float().unsqueeze(1)
        log_p = log_p.clamp(max=0.0)  # float16 storage can push a top class a hair above lse
        return log_p, _log1mexp(torch.logsumexp(log_p, dim=1))

    def buckets(self, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Another distribution over all C classes, ``log_q[B, C]``, summed into this target's buckets.

        Returns:
            ``(log_q[B, K], log_q_tail[B])`` for top-K, the tail summed over the classes outside
            the top K (exact, and finite where ``1 - sum(q_k)`` would round to zero);
            ``log_q_tail`` is ``None`` where there is no tail (dense, or K = C).
        """
        if self.idx is None:  # dense
            return log_q, None
        idx = self.idx.long()
        head = log_q.gather(1, idx)
        if idx.shape[1] >= log_q.shape[1]:
            return head, None
        return head, log_q.scatter(1, idx, float("-inf")).logsumexp(dim=1)

    def top_class(self) -> torch.Tensor:
        """LongTensor[B]: the teacher's most likely class per row."""
        top = self.logit.argmax(dim=1)
        return top if self.idx is None else self.idx.gather(1, top.unsqueeze(1)).squeeze(1)  # idx None: dense


def TopK(idx: torch.Tensor, logit: torch.Tensor, lse: torch.Tensor, tau: float = 1.0) -> SoftTarget:  # noqa: N802
    """A top-K :class:`SoftTarget`: class indices ``idx[B, K]``, their logits ``logit[B, K]`` and the
    logsumexp ``lse[B]`` over all classes at ``tau`` (the name predates :class:`SoftTarget`)."""
    return SoftTarget(logit=logit, idx=idx, lse=lse, tau=tau)


def as_target(target: SoftTarget | torch.Tensor | Any) -> SoftTarget:
    """``target`` itself, or raw logits ``[B, C]`` (a tensor or array) as a dense :class:`SoftTarget`."""
    return target if isinstance(target, SoftTarget) else SoftTarget(torch.as_tensor(target))


def from_logits(logits: torch.Tensor, k: int | str) -> SoftTarget:
    """The target to store for a batch of teacher logits.

    Args:
        logits: Tensor[B, C], the teacher's logits at temperature 1 (any float dtype; the
            target is computed in float32).
        k: number of classes to keep, or ``"all"``.

    Returns:
        Top-K (``idx`` int64, ``logit`` and ``lse`` float32, ``tau=1.0``) with classes by descending
        logit and ``lse`` the logsumexp over *all* C classes, so the K+1-bucket distribution of
        :func:`maskedkd.kd_loss` is exact; with ``k="all"`` the float32 logits, dense.
    """
    logits = logits.detach().float()
    if k == "all":
        return SoftTarget(logits)
    if not isinstance(k, int) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be 'all' or an int in 1..{logits.shape[1]}, got {k!r}")
    value, idx = logits.topk(k, dim=1, largest=True, sorted=True)
    return TopK(idx=idx, logit=value, lse=torch.logsumexp(logits, dim=1))


def logsumexp_at(logits: torch.Tensor, taus: Iterable[float]) -> dict[float, torch.Tensor]:
    """``{tau: logsumexp(logits / tau)}`` (float32 [B]): a top-K target's ``lse`` at other temperatures."""
    logits = logits.detach().float()
    return {float(t): torch.logsumexp(logits / float(t), dim=1) for t in taus}


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _cut(x: torch.Tensor | None, rows: Any) -> torch.Tensor | None:
    return None if x is None else x[rows]


def _cat(xs: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if xs[0] is None else torch.cat(cast(list[torch.Tensor], xs))  # all None or none


def _to(x: torch.Tensor | None, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor | None:
    return None if x is None else x.to(device, non_blocking=non_blocking)


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()
