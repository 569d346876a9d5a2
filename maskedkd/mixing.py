"""Mixup / cutmix applied (timm ``Mixup``, per element): a mixed view's pixels and its target.

The mix itself (partner, lam, cutmix box) is drawn with the view (:func:`maskedkd.views.sample_view`);
here it is applied to the rendered pixels (:func:`mix_into`, used by :func:`maskedkd.rendering.finish_views`)
and to the ground-truth label (:func:`mix_target`).
"""

from __future__ import annotations

import torch

from maskedkd.view_columns import NO_BOX
from maskedkd.views import View, pixel_box


def mix_into(out: torch.Tensor, partner: torch.Tensor, view: View) -> None:
    """Mix the rendered ``partner`` [C, H, W] into ``out`` in place, as ``view`` says.

    Mixup blends ``lam * out + (1 - lam) * partner``; cutmix pastes the partner into
    ``view.mix_box``.
    """
    if view.mix_box == NO_BOX:  # mixup
        out.mul_(view.lam).add_(partner * (1.0 - view.lam))
        return
    h, w = out.shape[-2:]
    x0, y0, x1, y1 = pixel_box(view.mix_box, h, w)
    out[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]


def mix_target(label: int, partner_label: int | None, view: View, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """The soft ground-truth target of a (possibly mixed) view, as timm's ``mixup_target``.

    Returns:
        float32 tensor ``[num_classes]``: ``lam * smooth(label) + (1 - lam) * smooth(partner_label)``.
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    target = torch.full((num_classes,), off, dtype=torch.float32)
    target[label] = on
    if not view.partner:
        return target
    if partner_label is None:
        raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}: pass partner_label")
    other = torch.full((num_classes,), off, dtype=torch.float32)
    other[partner_label] = on
    return target * view.lam + other * (1.0 - view.lam)
