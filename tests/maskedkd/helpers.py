"""Shared view recipes and images for the tests of maskedkd's view modules."""

from __future__ import annotations

import numpy as np
from PIL import Image

from maskedkd.views import ViewSpec

FULL = ViewSpec(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, mix_window=8)
KEYS = [f"train_{i:06d}" for i in range(37)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
