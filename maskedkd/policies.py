"""Masking policies: one registry of names, two kinds (docs/design.md §1).

*Keep-set* policies (:data:`POLICIES`, ``@register_policy``) choose which patches the teacher
keeps; :func:`maskedkd.select_keep` (in :mod:`maskedkd.keep`) applies them and
:func:`maskedkd.masked_forward` runs the teacher on the kept patches. *Forward* policies
(:data:`FORWARD_POLICIES`, :func:`register_forward_policy`) change the teacher's forward instead
(``lowres``: the whole view at a lower resolution); their keep count says the budget only ("as
many MACs as keeping K patches"). :func:`maskedkd.teacher_forward` runs either kind.
"""

from __future__ import annotations

from typing import Callable, NoReturn, Sequence

import torch

__all__ = ["FORWARD_POLICIES", "POLICIES", "ForwardFn", "get_policy", "is_forward_policy", "needs_saliency",
           "policy_names", "register_forward_policy", "register_policy"]

Generator = torch.Generator | Sequence[torch.Generator] | None
PolicyFn = Callable[[torch.Tensor, int, Generator], torch.Tensor]

#: ``fn(teacher, images[B, C, H, W], keep) -> logits[B, classes]`` with ``1 <= keep < N``, costing about
#: what :func:`maskedkd.masked_forward` costs at ``keep`` (``keep`` = all patches never reaches it).
ForwardFn = Callable[[torch.nn.Module, torch.Tensor, int], torch.Tensor]

POLICIES: dict[str, PolicyFn] = {}
FORWARD_POLICIES: dict[str, ForwardFn] = {}
_NEEDS_SALIENCY: dict[str, bool] = {}


def register_policy(name: str, *, needs_saliency: bool = True) -> Callable[[PolicyFn], PolicyFn]:
    """Register ``fn(scores[B, N], keep, generator) -> LongTensor[B, keep]`` under ``name``.

    ``needs_saliency=False`` tells callers they may pass dummy scores (only the shape is used)
    and skip the student forward.
    """

    def deco(fn: PolicyFn) -> PolicyFn:
        _check_new(name)
        POLICIES[name] = fn
        _NEEDS_SALIENCY[name] = needs_saliency
        return fn

    return deco


def register_forward_policy(name: str) -> Callable[[ForwardFn], ForwardFn]:
    """Register a forward policy ``fn(teacher, images, keep) -> logits`` (see :data:`ForwardFn`) under ``name``.

    A forward policy reads no saliency (its labels do not depend on the student) and has no
    keep set: callers run it through :func:`maskedkd.teacher_forward`, and
    :func:`maskedkd.teacher_macs` counts its real forward.
    """

    def deco(fn: ForwardFn) -> ForwardFn:
        _check_new(name)
        FORWARD_POLICIES[name] = fn
        _NEEDS_SALIENCY[name] = False
        return fn

    return deco


def _check_new(name: str) -> None:
    if name in POLICIES or name in FORWARD_POLICIES or name == "auto":
        raise ValueError(f"masking policy {name!r} is already registered" if name != "auto" else
                         "'auto' names the choice among policies, not a policy")


def policy_names() -> list[str]:
    """Every registered policy name, keep-set and forward, sorted."""
    return sorted([*POLICIES, *FORWARD_POLICIES])


def is_forward_policy(policy: str) -> bool:
    """Whether ``policy`` changes the teacher's forward rather than choosing a keep set."""
    if policy not in FORWARD_POLICIES:
        get_policy(policy)  # unknown names raise
        return False
    return True


def needs_saliency(policy: str) -> bool:
    """Whether ``policy`` reads the student's saliency scores."""
    if policy not in _NEEDS_SALIENCY:
        _unknown(policy)
    return _NEEDS_SALIENCY[policy]


def get_policy(policy: str) -> PolicyFn:
    """The keep-set function registered as ``policy``; ValueError naming the known ones if there is none
    (and saying so for a forward policy, which has no keep set)."""
    try:
        return POLICIES[policy]
    except KeyError:
        if policy in FORWARD_POLICIES:
            raise ValueError(f"masking policy {policy!r} changes the teacher's forward and has no keep set: "
                             f"run it with maskedkd.teacher_forward") from None
        _unknown(policy)


def _unknown(policy: str) -> NoReturn:
    raise ValueError(f"unknown masking policy {policy!r}; known: {', '.join(policy_names())}")


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
