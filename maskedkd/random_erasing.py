"""Random erasing as a view holds it (timm ``RandomErasing``, one box per view): the box draw and its fill.

The box is drawn with the view (:func:`draw_erase_box`, normalised output coordinates, so it
applies at any render size); the fill is drawn when the view is rendered (:func:`erase_fill`,
seeded by the view's seed), as timm draws it.
"""

from __future__ import annotations

import math
import random

import torch

from maskedkd.view_columns import NO_BOX, float32_exact

# timm's remode names, in the order of a view's ``erase_fill`` code: 0 per-pixel normal noise,
# 1 per-channel normal colour, 2 zero
REMODES = ("pixel", "rand", "const")
_ERASE_AREA = (0.02, 1 / 3)  # timm RandomErasing defaults
_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


def draw_erase_box(rng: random.Random) -> tuple[float, float, float, float]:
    """An erasing box ``(x0, y0, x1, y1)`` in normalised output coordinates, float32-exact.

    timm's draw (area 2-33% of the image, aspect 0.3-3.3, up to 10 tries); :data:`NO_BOX` when
    no try fits.
    """
    for _ in range(10):
        area = rng.uniform(*_ERASE_AREA)
        aspect = math.exp(rng.uniform(*_ERASE_LOG_ASPECT))
        h, w = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w < 1.0 and h < 1.0:
            top, left = rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w)
            return (float32_exact(left), float32_exact(top), float32_exact(left + w), float32_exact(top + h))
    return NO_BOX


def erase_fill(fill: int, seed: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """What an erased box ``[C, h, w]`` is filled with (in normalised units), on the CPU.

    Args:
        fill: the view's ``erase_fill`` code (index into :data:`REMODES`).
        seed: the view's seed; the noise is drawn from a torch generator seeded with it.
        shape: the box's ``(channels, height, width)`` in output pixels.

    Returns:
        ``[C, h, w]`` noise (``pixel``), or ``[C, 1, 1]`` to broadcast (``rand``, ``const``).
    """
    if fill == 2:
        return torch.zeros(shape[0], 1, 1)
    gen = torch.Generator().manual_seed(seed)
    if fill == 1:
        return torch.empty(shape[0], 1, 1).normal_(generator=gen)
    return torch.empty(shape).normal_(generator=gen)
