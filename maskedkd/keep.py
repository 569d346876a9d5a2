"""Which patches the teacher keeps: one keep count rule, one keep-set path (docs/design.md §1).

Offline precompute and the online teacher both choose keep sets here, so the same view, student
and policy give the same patches on either side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskedkd._vit import unwrap
from maskedkd.policies import Generator, get_policy, is_forward_policy, needs_saliency
from maskedkd.saliency import cls_attention, downscale, saliency_size

__all__ = ["keep_indices", "resolve_keep", "saliency_on_grid", "select_keep"]


def resolve_keep(keep: int | None, num_patches: int, policy: str = "student") -> int | None:
    """The one rule for a keep count: ``None`` is the one spelling of "all patches".

    Args:
        keep: patches to keep, or ``None`` for all of them.
        num_patches: the teacher's patch count N.
        policy: a masking policy; ``none`` keeps all patches whatever ``keep`` says.

    Returns:
        ``keep``, or ``None`` when all patches are kept (policy ``none``, ``keep=None`` or ``keep == N``).

    Raises:
        ValueError: ``keep`` is outside ``1..N``.
    """
    if policy == "none" or keep is None:
        return None
    if not 1 <= keep <= num_patches:
        raise ValueError(f"keep must be between 1 and {num_patches} (patches), got {keep}")
    return None if keep == num_patches else int(keep)


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
        policy: a name in :data:`maskedkd.POLICIES`: ``student`` (MaskedKD: highest saliency),
            ``student_inverse`` (lowest, an ablation), ``random`` (uniform), ``none`` (all).
        generator: for ``random``: one ``torch.Generator`` for the batch, or one per row so each
            sample's draw does not depend on the batch it lands in.

    Returns:
        LongTensor[B, keep] (``[B, N]`` for ``none``).
    """
    fn = get_policy(policy)
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    resolve_keep(keep, scores.shape[1])  # the range rule only: keep == N still lists every index here
    idx = fn(scores, keep, generator)
    return idx.sort(dim=1).values


def saliency_on_grid(student: nn.Module, images: torch.Tensor, grid: Sequence[int],
                     host: Callable[[torch.Tensor], torch.Tensor] | None = None, scale: float = 1.0) -> torch.Tensor:
    """The student's saliency (:func:`maskedkd.cls_attention`) on the teacher's patch grid.

    A student with another patch grid (or run on a downscaled view) is resampled onto the
    teacher's (bilinear between patch centres; both grids cover the same image). The scores come
    back in float32 on the CPU, so a keep set does not depend on the device or autocast dtype the
    student ran with (top-k ties break alike).

    Args:
        student: a timm ViT (see :func:`maskedkd.masked_forward`), normally in eval mode.
        images: Tensor[B, C, H, W] at the student's input size.
        grid: the teacher's patch grid ``(rows, cols)``.
        host: how the scores come to the CPU (default ``Tensor.cpu``; the caller's one transfer per batch).
        scale: below 1, the student reads a view downscaled to :func:`maskedkd.saliency_size`
            (fewer tokens, a cheaper saliency pass; the position embedding is resampled).

    Returns:
        float32 Tensor[B, rows * cols] on the CPU.
    """
    size = saliency_size(student, scale)
    scores = cls_attention(student, downscale(images, size)).float()
    scores = scores.cpu() if host is None else host(scores)
    patch = unwrap(student).patch_embed.patch_size
    src = (size[0] // patch[0], size[1] // patch[1])
    dst = tuple(int(g) for g in grid)
    if src == dst:
        return scores
    b = scores.shape[0]
    return F.interpolate(scores.reshape(b, 1, *src), size=dst, mode="bilinear", align_corners=False).reshape(b, -1)


def keep_indices(
    policy: str,
    keep: int | None,
    *,
    grid: Sequence[int],
    seeds: Sequence[int],
    student: nn.Module | None = None,
    images: torch.Tensor | None = None,
    host: Callable[[torch.Tensor], torch.Tensor] | None = None,
    saliency_scale: float = 1.0,
) -> torch.Tensor | None:
    """The keep sets of a batch of views over the teacher's patch grid: the one path to them.

    Args:
        policy: a name in :data:`maskedkd.POLICIES`.
        keep: patches to keep (``None`` or N: all of them; see :func:`resolve_keep`).
        grid: the teacher's patch grid ``(rows, cols)``.
        seeds: one per row, the view's seed: ``random`` draws row ``i`` from
            ``torch.Generator().manual_seed(seeds[i])``, so a row's draw depends on its view only.
        student: the student whose saliency ``student``-like policies read (ignored otherwise).
        images: the views rendered at the student's input size (with ``student``).
        host: how the saliency comes to the CPU (:func:`saliency_on_grid`).
        saliency_scale: the student's view scale for its saliency (:func:`saliency_on_grid`; 1: as rendered).

    Returns:
        LongTensor[B, keep] on the CPU, ascending per row, or ``None`` when all patches are kept
        or ``policy`` is a forward policy (it has no keep set: :func:`maskedkd.teacher_forward`
        runs it from the policy and keep alone).
    """
    n = int(grid[0]) * int(grid[1])
    keep = resolve_keep(keep, n, policy)
    if keep is None or is_forward_policy(policy):
        return None
    if needs_saliency(policy):
        if student is None or images is None:
            raise ValueError(f"masking policy {policy!r} reads the student's saliency: give student and images")
        scores, gens = saliency_on_grid(student, images, grid, host, saliency_scale), None
    else:
        # only the shape is read; seeded per sample and view, so a row's draw does not depend on its batch
        scores = torch.zeros(len(seeds), n)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if len(scores) != len(seeds):
        raise ValueError(f"got {len(seeds)} seeds for a batch of {len(scores)}")
    return select_keep(scores, keep, policy, gens)
