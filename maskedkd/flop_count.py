"""The FLOP counter every MACs figure uses (torch's FlopCounterMode on a real forward), and the
masked teacher's count: the target the forward policies (:mod:`maskedkd.tome`) are matched to.
Below :mod:`maskedkd.flops`, which counts any policy's forward, so policies can use it."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from maskedkd._vit import check_maskable
from maskedkd.keep import resolve_keep
from maskedkd.masked_forward import masked_forward

__all__ = ["count_flops", "forward_macs", "masked_flops", "masked_macs"]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts the CUDA SDPA kernels but not the CPU one; attention is ~10% of a ViT's FLOPs.
_CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


def count_flops(fn, model: nn.Module, batch: int, size: tuple[int, int] | None = None) -> int:
    """FLOPs of ``fn(model, images)`` on ``batch`` zero images at ``size`` (default: the model's input size)."""
    vit = check_maskable(model)
    param = next(vit.parameters())
    h, w = vit.patch_embed.img_size if size is None else size
    images = torch.zeros(batch, vit.patch_embed.proj.in_channels, h, w, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.no_grad(), counter:
        fn(model, images)
    return int(counter.get_total_flops())


def forward_macs(fn: Callable[[nn.Module, torch.Tensor], object], model: nn.Module) -> int:
    """Multiply-adds of ``fn(model, images)`` on one image at the model's input size, counted as
    :func:`teacher_macs` counts the masked teacher (for another forward of the same model, e.g.
    :func:`maskedkd.tome_forward`). Not cached: each call runs ``fn`` once."""
    return count_flops(fn, model, 1) // 2



@torch.no_grad()
def masked_flops(teacher: nn.Module, keep: int | None, batch: int = 1) -> int:
    """FLOPs of :func:`maskedkd.masked_forward` keeping the first ``keep`` patches of ``batch``
    images (which patches does not change the count; ``keep=None`` is the full teacher)."""
    vit = check_maskable(teacher)
    keep = resolve_keep(keep, vit.patch_embed.num_patches)
    device = next(vit.parameters()).device
    keep_idx = None if keep is None else torch.arange(keep, device=device).expand(batch, keep)
    return count_flops(lambda m, x: masked_forward(m, x, keep_idx), teacher, batch)


# per model object (weights do not change the count; the model's lifetime bounds the entry's)
_MASKED: weakref.WeakKeyDictionary[nn.Module, dict[int | None, int]] = weakref.WeakKeyDictionary()


def masked_macs(teacher: nn.Module, keep: int | None) -> int:
    """Multiply-adds per image of :func:`maskedkd.masked_forward` at ``keep``, counted once per model and keep."""
    vit = check_maskable(teacher)
    keep = resolve_keep(keep, vit.patch_embed.num_patches)
    per_model = _MASKED.setdefault(vit, {})
    if keep not in per_model:
        per_model[keep] = masked_flops(teacher, keep) // 2
    return per_model[keep]
