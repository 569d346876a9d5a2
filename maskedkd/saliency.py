"""Student saliency: the last block's CLS-to-patch attention (docs/design.md §1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from maskedkd._vit import check_maskable, embed_tokens, fp32_region

__all__ = ["cls_attention"]


def cls_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The student's last-block attention of the CLS query over the patch keys.

    ``softmax(q_cls . k_j / sqrt(d))`` is taken over **all** keys (prefix tokens included), then
    the prefix columns (CLS, distillation, register tokens) are dropped and the heads averaged.
    This follows the MaskedKD reference implementation; the paper's formula normalises over the
    patch keys only, which rescales each row but does not change its ranking.

    The last block's q/k are computed explicitly (honouring ``q_norm``/``k_norm``), so timm's
    fused attention may stay on for the rest of the model.

    Under autocast (bf16/fp16) the earlier blocks run in the autocast dtype, but the last block's
    ``norm1``/``qkv`` and the ``q . k`` product run in float32: in bf16 (8 significant bits) two
    patches whose scores nearly tie would swap places and flip the keep set, which a tiny cost
    (one linear layer and a [B, heads, 1, T] product) avoids. Without autocast nothing changes.

    Args:
        model: a timm ViT (see :func:`maskedkd.masked_forward` for the supported variants).
        images: Tensor[B, C, H, W] at the model's input size.

    Returns:
        Tensor[B, N] over the N patch tokens, each row summing to at most 1.
    """
    vit = check_maskable(model)
    x = embed_tokens(vit, images)
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
