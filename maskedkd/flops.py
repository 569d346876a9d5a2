"""Teacher and saliency FLOPs, measured by torch's FlopCounterMode rather than a formula."""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from maskedkd._vit import check_maskable
from maskedkd.keep import resolve_keep
from maskedkd.masked_forward import masked_forward
from maskedkd.policies import is_forward_policy
from maskedkd.saliency import cls_attention, saliency_size
from maskedkd.teacher_forward import teacher_forward

__all__ = ["saliency_macs", "teacher_flops", "teacher_macs"]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts the CUDA SDPA kernels but not the CPU one; attention is ~10% of a ViT's FLOPs.
_CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


def _count(fn, model: nn.Module, batch: int, size: tuple[int, int] | None = None) -> int:
    """FLOPs of ``fn(model, images)`` on ``batch`` zero images at ``size`` (default: the model's input size)."""
    vit = check_maskable(model)
    param = next(vit.parameters())
    h, w = vit.patch_embed.img_size if size is None else size
    images = torch.zeros(batch, vit.patch_embed.proj.in_channels, h, w, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.no_grad(), counter:
        fn(model, images)
    return int(counter.get_total_flops())


@torch.no_grad()
def teacher_flops(teacher: nn.Module, keep: int | None, batch: int = 1, policy: str = "student") -> int:
    """FLOPs (2 per multiply-add) of one :func:`maskedkd.teacher_forward` over ``batch`` images.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real forward at the
    teacher's input size: for keep-set policies :func:`maskedkd.masked_forward` keeping the
    first ``keep`` patches (which ones does not change the count), for forward policies their
    own forward at ``keep``. ``keep=None`` (or all patches) counts the full teacher.
    :func:`teacher_macs` gives MACs per image.
    """
    vit = check_maskable(teacher)
    keep = resolve_keep(keep, vit.patch_embed.num_patches)
    if is_forward_policy(policy):
        return _count(lambda m, x: teacher_forward(m, x, policy, keep), teacher, batch)
    device = next(vit.parameters()).device
    keep_idx = None if keep is None else torch.arange(keep, device=device).expand(batch, keep)
    return _count(lambda m, x: masked_forward(m, x, keep_idx), teacher, batch)


# per model object (weights do not change the count; the model's lifetime bounds the entry's)
_MACS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int | None], int]] = weakref.WeakKeyDictionary()


def teacher_macs(teacher: nn.Module, keep: int | None, policy: str = "student") -> int:
    """Multiply-adds of one teacher forward per image at ``keep`` under ``policy`` (``teacher_flops // 2``).

    Counted once per model object, forward and keep (a counted forward costs about one real
    one). ``keep=None`` or N is the full teacher whatever the policy; every keep-set policy
    shares :func:`maskedkd.masked_forward`'s count.
    """
    vit = check_maskable(teacher)
    keep = resolve_keep(keep, vit.patch_embed.num_patches)
    forward = policy if keep is not None and is_forward_policy(policy) else "masked"
    per_model = _MACS.setdefault(vit, {})
    if (forward, keep) not in per_model:
        per_model[forward, keep] = teacher_flops(teacher, keep, policy=policy) // 2
    return per_model[forward, keep]


_SALIENCY_MACS: weakref.WeakKeyDictionary[nn.Module, dict[float, int]] = weakref.WeakKeyDictionary()


def saliency_macs(student: nn.Module, scale: float = 1.0) -> int:
    """Multiply-adds of one :func:`maskedkd.cls_attention` per image: what an offline label pays for
    the student's saliency (online it comes with the training forward). Counted once per model and scale.

    Args:
        student: the student (a timm ViT).
        scale: the saliency pass on a view downscaled to :func:`maskedkd.saliency_size` (counted
            at that size; the resize itself, which torch's counter does not count, is a few
            operations per pixel).
    """
    vit = check_maskable(student)
    per_model = _SALIENCY_MACS.setdefault(vit, {})
    if scale not in per_model:
        size = saliency_size(vit, scale)
        per_model[scale] = _count(cls_attention, student, 1, size) // 2
    return per_model[scale]
