"""Student saliency: the last block's CLS-to-patch attention (docs/design.md §1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskedkd._vit import check_maskable, embed_tokens_any_size, fp32_region

__all__ = ["cls_attention", "downscale", "saliency_size"]


def cls_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The student's last-block attention of the CLS query over the patch keys.

    ``softmax(q_cls . k_j / sqrt(d))`` is taken over **all** keys (prefix tokens included), then
    the prefix columns (CLS, distillation, register tokens) are dropped and the heads averaged.
    This follows the MaskedKD reference implementation; the paper's formula normalises over the
    patch keys only, which rescales each row but does not change its ranking.

    The last block's q/k are computed explicitly (honouring ``q_norm``/``k_norm``), so timm's
    fused attention may stay on for the rest of the model; the forward stops there (the last
    block's attention output, its MLP, the final norm and the head are never run).

    Under autocast (bf16/fp16) the earlier blocks run in the autocast dtype, but the last block's
    ``norm1``/``qkv`` and the ``q . k`` product run in float32: in bf16 (8 significant bits) two
    patches whose scores nearly tie would swap places and flip the keep set, which a tiny cost
    (one linear layer and a [B, heads, 1, T] product) avoids. Without autocast nothing changes.

    Args:
        model: a timm ViT (see :func:`maskedkd.masked_forward` for the supported variants).
        images: Tensor[B, C, H, W] at the model's input size, or at another multiple of its patch
            size (a downscaled view: the position embedding is resampled, :func:`saliency_size`).

    Returns:
        Tensor[B, N] over the N patch tokens of the images' grid (row-major), each row summing to at most 1.
    """
    vit = check_maskable(model)
    x = embed_tokens_any_size(vit, images)
    x = vit.norm_pre(vit.patch_drop(x))
    for blk in vit.blocks[:-1]:
        x = blk(x)
    last: Any = vit.blocks[-1]  # a timm Block (nn.Sequential's items are typed as Module)
    attn = last.attn
    fp32, x = fp32_region(x)
    with fp32:
        y = last.norm1(x)
        B, T, _ = y.shape
        qkv = attn.qkv(y).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # [B, heads, 1, T]
    probs = logits.float().softmax(dim=-1)
    return probs[:, :, 0, vit.num_prefix_tokens:].mean(dim=1)


def saliency_size(model: nn.Module, scale: float = 1.0) -> tuple[int, int]:
    """The image size (H, W) the student's saliency runs at for a view downscaled by ``scale``.

    Each side keeps ``max(1, round(scale * grid))`` patches (Python's ``round``), so the size is a
    multiple of the patch size: 224 px DeiT (14 x 14 patches) at 0.5 is 112 px (7 x 7); a 28 px
    model with 4 px patches (7 x 7) at 0.5 is 16 px (4 x 4). ``scale=1`` is the model's own size.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"saliency scale must be in (0, 1], got {scale}")
    pe = check_maskable(model).patch_embed
    if scale == 1:
        return int(pe.img_size[0]), int(pe.img_size[1])
    rows, cols = (max(1, round(scale * g)) * p for g, p in zip(pe.grid_size, pe.patch_size))
    return rows, cols


def downscale(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``images`` resized to ``size`` (bilinear with antialiasing; unchanged at their own size)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
