"""What the config needs to know about a timm model, read from a ``meta``-device instance."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import timm
import torch
import torch.nn as nn

from maskedkd import check_maskable


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
    """What a model's pretrained weights expect, from its timm ``pretrained_cfg`` (None: not stated)."""

    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> "PretrainedInfo":
        """From a ``pretrained_cfg`` dict."""
        def floats(v: Any) -> tuple[float, ...] | None:
            return None if v is None else tuple(float(x) for x in v)

        nc = cfg.get("num_classes")
        return cls(num_classes=None if nc is None else int(nc), mean=floats(cfg.get("mean")), std=floats(cfg.get("std")),
                   interpolation=cfg.get("interpolation") or None,
                   crop_pct=None if cfg.get("crop_pct") is None else float(cfg["crop_pct"]))


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the config needs to know about a timm model, read from a ``meta``-device instance.

    Attributes:
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: input (height, width) for ViTs, None when unknown.
        grid_size: patch grid (rows, cols) for ViTs, None otherwise.
        num_patches: patch tokens (rows * cols) for ViTs, None otherwise.
        maskable_error: why MaskedKD cannot mask / read saliency from it; None when it can.
        pretrained: its timm ``pretrained_cfg``'s head and preprocessing (``num_classes``,
            ``mean``, ``std``, ``interpolation``, ``crop_pct``), what its pretrained weights expect.
    """

    num_classes: int
    in_chans: int | None
    img_size: tuple[int, int] | None
    grid_size: tuple[int, int] | None
    num_patches: int | None
    maskable_error: str | None
    pretrained: PretrainedInfo = dataclasses.field(default_factory=lambda: PretrainedInfo())


_MODEL_INFO_CACHE: dict[str, ModelInfo] = {}


def model_info(name: str, kwargs: dict[str, Any]) -> ModelInfo:
    """Inspect ``timm.create_model(name, pretrained=False, **kwargs)`` without allocating it.

    Raises:
        Exception: whatever timm raises for bad kwargs (the caller turns it into a field error).
    """
    key = json.dumps([name, kwargs], sort_keys=True, default=repr)
    if key in _MODEL_INFO_CACHE:
        return _MODEL_INFO_CACHE[key]
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    pe: Any = getattr(model, "patch_embed", None)
    grid = tuple(int(v) for v in pe.grid_size) if getattr(pe, "grid_size", None) is not None else None
    img = tuple(int(v) for v in pe.img_size) if getattr(pe, "img_size", None) is not None else None
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    try:
        check_maskable(model)
        maskable_error = None
    except TypeError as e:
        maskable_error = str(e)
    info = ModelInfo(
        num_classes=int(getattr(model, "num_classes", 0) or 0),
        in_chans=int(first_conv.in_channels) if first_conv is not None else None,
        img_size=img,  # type: ignore[arg-type]
        grid_size=grid,  # type: ignore[arg-type]
        num_patches=grid[0] * grid[1] if grid else None,
        maskable_error=maskable_error,
        pretrained=PretrainedInfo.of(dict(getattr(model, "pretrained_cfg", None) or {})),
    )
    _MODEL_INFO_CACHE[key] = info
    return info

