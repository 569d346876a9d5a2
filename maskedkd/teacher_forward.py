"""The teacher under a masking policy: the one entry point for every caller (docs/design.md §1).

Keep-set policies run :func:`maskedkd.masked_forward` on the kept patches; forward policies
(:data:`maskedkd.policies.FORWARD_POLICIES`) run their own forward at the keep's budget. The
forward policies are registered here, in one place.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from maskedkd._vit import check_maskable
from maskedkd.keep import resolve_keep
from maskedkd.lowres import lowres_forward
from maskedkd.masked_forward import masked_forward
from maskedkd.policies import FORWARD_POLICIES, is_forward_policy, register_forward_policy
from maskedkd.tome import tome_forward

__all__ = ["teacher_forward"]

register_forward_policy("lowres")(lowres_forward)
register_forward_policy("tome")(tome_forward)


def teacher_forward(teacher: nn.Module, images: torch.Tensor, policy: str, keep: int | None,
                    keep_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher logits for ``images`` under ``policy`` at ``keep``.

    Args:
        teacher: a maskable timm ViT (:func:`maskedkd.check_maskable`), normally in eval mode.
        images: Tensor[B, C, H, W] at the teacher's input size.
        policy: a registered policy name (:func:`maskedkd.policies.policy_names`).
        keep: the patch budget (``None`` or N: the whole teacher, bit for bit ``masked_forward``).
        keep_idx: for keep-set policies, the kept patches (:func:`maskedkd.keep_indices`; ``None``:
            all of them); forward policies have none and refuse one.

    Returns:
        Tensor[B, num_classes].
    """
    if not is_forward_policy(policy):
        return masked_forward(teacher, images, keep_idx)
    if keep_idx is not None:
        raise ValueError(f"masking policy {policy!r} changes the teacher's forward and takes no keep_idx")
    keep = resolve_keep(keep, int(check_maskable(teacher).patch_embed.num_patches), policy)
    if keep is None:
        return masked_forward(teacher, images)
    return FORWARD_POLICIES[policy](teacher, images, keep)
