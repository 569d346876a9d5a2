"""What MaskedKD needs to know about a timm ViT: which models we can mask, and their prefix tokens."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn
from timm.layers import Attention, resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

SUPPORTED = (
    "timm VisionTransformer (vit_*, deit_*, deit3_*: class token with global_pool='token', "
    "no_embed_class, register tokens) and VisionTransformerDistilled (deit_*_distilled_*)"
)


def unwrap(model: nn.Module) -> Any:
    """The module under ``torch.compile`` / DDP wrappers (Any: a timm model, its parts reached by name)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def check_maskable(model: nn.Module) -> VisionTransformer:
    """Return the ViT inside ``model`` or raise ``TypeError`` saying what is supported.

    Masking drops tokens between the position embedding and the blocks, so the blocks must be
    plain timm blocks (no RoPE, no relative position bias) and the output must come from the
    class token (``avg``/``map`` pooling would silently change meaning with fewer tokens).
    """
    vit = unwrap(model)
    name = type(vit).__name__
    if type(vit) not in (VisionTransformer, VisionTransformerDistilled):
        raise TypeError(f"cannot mask {name}: MaskedKD supports {SUPPORTED}")
    if vit.cls_token is None or vit.global_pool != "token" or getattr(vit, "attn_pool", None) is not None:
        raise TypeError(
            f"cannot mask {name} with class_token={vit.cls_token is not None}, "
            f"global_pool={vit.global_pool!r}: MaskedKD supports {SUPPORTED}"
        )
    for i, blk in enumerate(vit.blocks):
        if not isinstance(getattr(blk, "attn", None), Attention):
            raise TypeError(
                f"cannot mask {name}: block {i} uses {type(getattr(blk, 'attn', blk)).__name__}, "
                f"not timm's Attention; MaskedKD supports {SUPPORTED}"
            )
    return vit


def num_patches(model: nn.Module) -> int:
    """Patch tokens of a ViT at its configured image size."""
    return int(unwrap(model).patch_embed.num_patches)


def embed_tokens(vit: VisionTransformer, images):
    """Patch embedding + position embedding on all positions: ``[B, prefix + N, D]``."""
    return vit._pos_embed(vit.patch_embed(images))


def embed_tokens_any_size(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """:func:`embed_tokens` for images of any size that is a multiple of the patch size.

    At the model's own size this is :func:`embed_tokens` (the same operations, bit for bit);
    elsewhere the position embedding is resampled to the images' patch grid as timm's
    ``dynamic_img_size`` does (``resample_abs_pos_embed``: bicubic, prefix positions unchanged).
    """
    pe = vit.patch_embed
    h, w = images.shape[-2:]
    if (h, w) == tuple(pe.img_size):
        return embed_tokens(vit, images)
    ph, pw = pe.patch_size
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {ph}x{pw}")
    x = pe.norm(pe.proj(images).flatten(2).transpose(1, 2))  # PatchEmbed without its size check
    # in the order the models' own _pos_embed puts them: class, distillation, register tokens
    tokens = (vit.cls_token, getattr(vit, "dist_token", None), getattr(vit, "reg_token", None))
    prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
    if vit.pos_embed is None:
        return torch.cat(prefix + [x], dim=1)
    pos = resample_abs_pos_embed(vit.pos_embed, new_size=(h // ph, w // pw), old_size=pe.grid_size,
                                 num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens)
    if vit.no_embed_class:  # DeiT-III: patches only carry a position embedding
        return vit.pos_drop(torch.cat(prefix + [x + pos], dim=1))
    return vit.pos_drop(torch.cat(prefix + [x], dim=1) + pos)


def forward_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Embedded tokens ``[B, prefix + n, D]`` -> blocks -> norm -> head: the logits.

    Under autocast the final norm and the head (``forward_head``) run in float32
    (:func:`fp32_region`), so the logits are float32; the blocks stay in the autocast dtype.
    """
    x = vit.norm_pre(vit.patch_drop(x))
    x = vit.blocks(x)
    fp32, x = fp32_region(x)
    with fp32:
        return vit.forward_head(vit.norm(x))


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``; False where autocast knows no such device
    (``meta``, which tests use as a second device)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def fp32_region(x: torch.Tensor) -> tuple[contextlib.AbstractContextManager, torch.Tensor]:
    """``(context, x)`` for a step that must run in float32 even under autocast.

    Under an active autocast on ``x``'s device the context switches autocast off and ``x`` comes
    back as float32; otherwise the context does nothing and ``x`` is returned as is, so a
    float32 run without autocast executes exactly the same operations as before (bit for bit).
    """
    device_type = x.device.type
    if not autocast_enabled(device_type):
        return contextlib.nullcontext(), x
    return torch.autocast(device_type=device_type, enabled=False), x.float()
