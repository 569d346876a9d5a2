"""Masking policies: which patches the teacher keeps. One registry, one decorator (docs/design.md §1)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["POLICIES", "register_policy", "select_keep", "needs_saliency"]

Generator = torch.Generator | Sequence[torch.Generator] | None
PolicyFn = Callable[[torch.Tensor, int, Generator], torch.Tensor]

POLICIES: dict[str, PolicyFn] = {}
_NEEDS_SALIENCY: dict[str, bool] = {}


def register_policy(name: str, *, needs_saliency: bool = True) -> Callable[[PolicyFn], PolicyFn]:
    """Register ``fn(scores[B, N], keep, generator) -> LongTensor[B, keep]`` under ``name``.

    ``needs_saliency=False`` tells callers they may pass dummy scores (only the shape is used)
    and skip the student forward.
    """

    def deco(fn: PolicyFn) -> PolicyFn:
        if name in POLICIES:
            raise ValueError(f"masking policy {name!r} is already registered")
        POLICIES[name] = fn
        _NEEDS_SALIENCY[name] = needs_saliency
        return fn

    return deco


def needs_saliency(policy: str) -> bool:
    """Whether ``policy`` reads the student's saliency scores."""
    _lookup(policy)
    return _NEEDS_SALIENCY[policy]


def _lookup(policy: str) -> PolicyFn:
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown masking policy {policy!r}; known: {', '.join(sorted(POLICIES))}") from None


def select_keep(
    scores: torch.Tensor,
    keep: int,
    policy: str = "student",
    generator: Generator = None,
) -> torch.Tensor:
    """Indices of the patches the teacher sees, sorted ascending.

    Args:
        scores: Tensor[B, N] saliency per patch (:func:`maskedkd.cls_attention`).
        keep: number of patches to keep, 1 <= keep <= N (ignored by ``none``, which keeps all).
        policy: a name in :data:`POLICIES`: ``student`` (MaskedKD: highest saliency),
            ``student_inverse`` (lowest, an ablation), ``random`` (uniform), ``none`` (all).
        generator: for ``random``: one ``torch.Generator`` for the batch, or one per row so each
            sample's draw does not depend on the batch it lands in.

    Returns:
        LongTensor[B, keep] (``[B, N]`` for ``none``).
    """
    fn = _lookup(policy)
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    n = scores.shape[1]
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be between 1 and {n} (patches), got {keep}")
    idx = fn(scores, keep, generator)
    return idx.sort(dim=1).values


@register_policy("student")
def _student(scores: torch.Tensor, keep: int, generator: Generator) -> torch.Tensor:
    return scores.topk(keep, dim=1, largest=True, sorted=False).indices


@register_policy("student_inverse")
def _student_inverse(scores: torch.Tensor, keep: int, generator: Generator) -> torch.Tensor:
    return scores.topk(keep, dim=1, largest=False, sorted=False).indices


@register_policy("random", needs_saliency=False)
def _random(scores: torch.Tensor, keep: int, generator: Generator) -> torch.Tensor:
    b, n = scores.shape
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.rand(b, n, generator=generator)
    else:
        if len(generator) != b:
            raise ValueError(f"got {len(generator)} generators for a batch of {b}")
        noise = torch.stack([torch.rand(n, generator=g) for g in generator])
    return noise.topk(keep, dim=1).indices.to(scores.device)


@register_policy("none", needs_saliency=False)
def _none(scores: torch.Tensor, keep: int, generator: Generator) -> torch.Tensor:
    b, n = scores.shape
    return torch.arange(n, device=scores.device).expand(b, n).clone()
