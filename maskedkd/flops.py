"""Teacher and saliency FLOPs, measured by torch's FlopCounterMode rather than a formula."""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from maskedkd._vit import check_maskable
from maskedkd.flop_count import count_flops, forward_macs, masked_flops, masked_macs
from maskedkd.keep import resolve_keep
from maskedkd.policies import is_forward_policy
from maskedkd.saliency import cls_attention, saliency_size
from maskedkd.teacher_forward import teacher_forward

__all__ = ["forward_macs", "saliency_macs", "teacher_flops", "teacher_macs"]


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
    if keep is not None and is_forward_policy(policy):
        def forward(m: nn.Module, x: torch.Tensor) -> object:
            return teacher_forward(m, x, policy, keep)

        # a policy's first call may prepare per-model state that is not its forward's cost (tome
        # searches its schedule by counting forwards of its own): counted on the second call
        count_flops(forward, teacher, 1)
        return count_flops(forward, teacher, batch)
    return masked_flops(teacher, keep, batch)


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
    if keep is None or not is_forward_policy(policy):
        return masked_macs(teacher, keep)
    per_model = _MACS.setdefault(vit, {})
    if (policy, keep) not in per_model:
        per_model[policy, keep] = teacher_flops(teacher, keep, policy=policy) // 2
    return per_model[policy, keep]


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
        per_model[scale] = count_flops(cls_attention, student, 1, size) // 2
    return per_model[scale]
