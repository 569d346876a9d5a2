"""Masking policies: which patches the teacher keeps. One registry, one decorator (docs/design.md §1).

:func:`maskedkd.select_keep` (in :mod:`maskedkd.keep`) applies them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["POLICIES", "get_policy", "needs_saliency", "register_policy"]

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
    get_policy(policy)
    return _NEEDS_SALIENCY[policy]


def get_policy(policy: str) -> PolicyFn:
    """The function registered as ``policy``; ValueError naming the known ones if there is none."""
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown masking policy {policy!r}; known: {', '.join(sorted(POLICIES))}") from None


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
