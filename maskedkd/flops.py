"""Teacher FLOPs, measured by torch's FlopCounterMode rather than a formula."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from maskedkd._vit import check_maskable
from maskedkd.masked_forward import masked_forward

__all__ = ["teacher_flops"]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts the CUDA SDPA kernels but not the CPU one; attention is ~10% of a ViT's FLOPs.
_CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


@torch.no_grad()
def teacher_flops(teacher: nn.Module, keep: int | None, batch: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one :func:`maskedkd.masked_forward` over ``batch`` images.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real forward at the
    teacher's input size, keeping the first ``keep`` patches (which ones does not change the
    count). ``keep=None`` counts the full teacher. Divide by ``2 * batch`` for MACs per image.
    """
    vit = check_maskable(teacher)
    param = next(vit.parameters())
    h, w = vit.patch_embed.img_size
    images = torch.zeros(batch, vit.patch_embed.proj.in_channels, h, w, device=param.device, dtype=param.dtype)
    n = vit.patch_embed.num_patches
    keep_idx = None
    if keep is not None:
        if not 1 <= keep <= n:
            raise ValueError(f"keep must be between 1 and {n} (patches), got {keep}")
        keep_idx = torch.arange(keep, device=param.device).expand(batch, keep)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with counter:
        masked_forward(teacher, images, keep_idx)
    return int(counter.get_total_flops())
