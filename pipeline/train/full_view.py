"""The full view of a token-dropping fine-tune (``teacher.train.full_view_weight`` /
``consistency_weight``): each step also runs the batch with every patch token, so the teacher keeps
its unmasked accuracy (cross-entropy on the full view) and its dropped view learns to agree with it
(KL from the full view's prediction, no gradient through that target)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from maskedkd import distill_loss, kd_loss


@contextlib.contextmanager
def patch_drop_off(model: nn.Module) -> Iterator[None]:
    """``model`` (a timm ViT) without token dropping inside the block, in training mode still."""
    drop = getattr(model, "patch_drop", None)
    prob = getattr(drop, "prob", 0.0)
    if not prob:
        yield
        return
    drop.prob = 0.0  # type: ignore[union-attr]  # timm's PatchDropout reads it on every forward
    try:
        yield
    finally:
        drop.prob = prob  # type: ignore[union-attr]


def full_view_weights(cfg) -> tuple[float, float]:
    """``(full_view_weight, consistency_weight)`` of a recipe; ``(0, 0)`` for one without them (the student's)."""
    return float(getattr(cfg, "full_view_weight", 0.0)), float(getattr(cfg, "consistency_weight", 0.0))


def full_view_logits(model: nn.Module, module: nn.Module, images: torch.Tensor, full_weight: float) -> torch.Tensor:
    """The full view's logits from ``model`` (perhaps DDP-wrapped ``module``): with gradients when
    its cross-entropy trains (``full_weight > 0``), else only as the consistency target."""
    with patch_drop_off(module), contextlib.nullcontext() if full_weight else torch.no_grad():
        return model(images)


def full_view_loss(dropped: torch.Tensor, full: torch.Tensor, targets: torch.Tensor, full_weight: float,
                   consistency_weight: float) -> torch.Tensor:
    """``full_weight * CE(full, targets) + consistency_weight * KL(softmax(full) || softmax(dropped))``,
    ``full`` a constant in the KL term; added to the dropped view's loss."""
    loss = dropped.new_zeros((), dtype=torch.float32)
    if full_weight:
        loss = loss + full_weight * distill_loss(full.float(), targets, None)
    if consistency_weight:
        loss = loss + consistency_weight * kd_loss(dropped.float(), full.float())
    return loss
