"""An exponential moving average of the trained weights (``train.model_ema``), kept as timm's train.py keeps it.

timm's :class:`~timm.utils.ModelEmaV3` holds a copy of the unwrapped model (never the DDP or compiled
wrapper: every rank keeps its own, and since DDP keeps the weights identical across ranks, so are the
EMAs), updated after each optimizer step with the global update count (its decay warm-up counts
those). Each evaluation also measures the EMA, reported as ``ema_``-prefixed metrics beside the model's
(timm logs them with the suffix ``(EMA)``). The trained weights, not the EMA, are the segment's checkpoint
and so the next milestone's c_{i+1} that computes saliency: MaskedKD's masks come from the student being
trained. The EMA is saved with each resume record and at each segment's end, so resuming is exact.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn
from timm.utils import ModelEmaV3

PREFIX = "ema_"


def create_ema(model: nn.Module, cfg) -> ModelEmaV3 | None:
    """The EMA of ``model`` (unwrapped, already on its device) for recipe ``cfg``, or None when ``cfg.model_ema`` is off."""
    if not cfg.model_ema:
        return None
    return ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)


def ema_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's metrics of the EMA, named as the report reads them (``val_top1`` -> ``ema_val_top1``)."""
    return {f"{PREFIX}{k}": v for k, v in metrics.items()}
