"""The teacher run on the kept patches only (docs/design.md §1)."""

from __future__ import annotations

import torch
import torch.nn as nn

from maskedkd._vit import autocast_enabled, check_maskable, embed_tokens, forward_tokens

__all__ = ["masked_forward"]


def masked_forward(teacher: nn.Module, images: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher logits computed from the kept patch tokens only.

    patch_embed -> position embedding on *all* positions -> gather the kept patch tokens ->
    prefix tokens (CLS, distillation, registers) back in front -> blocks -> norm -> head.
    Dropped tokens cost no FLOPs. ``keep_idx=None`` runs ``teacher(images)`` itself; passing all
    indices gives the same result bit for bit.

    Under autocast the final norm and the head (``forward_head``: pooling, ``fc_norm``, the
    classifier) run in float32, so the logits are float32 and not coarser
    than the float16 the label store keeps; the blocks stay in the autocast dtype. Without
    autocast nothing changes.

    Supported: timm ``VisionTransformer`` (plain ViT/DeiT, DeiT-III ``no_embed_class=True``,
    register tokens; class token with ``global_pool='token'``) and ``VisionTransformerDistilled``
    (mean of both heads in eval mode). Anything else raises ``TypeError``.

    Args:
        teacher: the teacher model (normally in eval mode).
        images: Tensor[B, C, H, W] at the teacher's input size.
        keep_idx: LongTensor[B, K] patch indices to keep (from :func:`maskedkd.select_keep`).

    Returns:
        Tensor[B, num_classes].
    """
    vit = check_maskable(teacher)
    if keep_idx is None and not autocast_enabled(images.device.type):
        return teacher(images)
    x = embed_tokens(vit, images)
    if keep_idx is not None:
        p = vit.num_prefix_tokens
        b, t, d = x.shape
        if keep_idx.dim() != 2 or keep_idx.shape[0] != b:
            raise ValueError(f"keep_idx must be [B={b}, K], got shape {tuple(keep_idx.shape)}")
        if keep_idx.numel():
            _check_range(keep_idx, t - p)
        patches = x[:, p:].gather(1, keep_idx.to(x.device).long().unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :p], patches], dim=1)
    return forward_tokens(vit, x)  # under autocast: the final norm and the head in float32


def _check_range(keep_idx: torch.Tensor, n: int) -> None:
    """Refuse indices outside ``0..n-1``: at once on the CPU; on a device without waiting for it
    (a device-side assert: reading the bounds back would stall the host on every batch)."""
    if keep_idx.device.type == "cpu":
        if int(keep_idx.min()) < 0 or int(keep_idx.max()) >= n:
            raise ValueError(f"keep_idx out of range for {n} patches")
        return
    torch._assert_async((keep_idx.min() >= 0) & (keep_idx.max() < n), f"keep_idx out of range for {n} patches")
