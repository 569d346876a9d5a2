"""Resizing a view's crop to the model's input: Pillow, or torch's uint8 antialiased kernels.

``pil`` (the default) is the reference: Pillow resamples straight from the fractional crop box,
as the views' render has always done. ``torch`` crops the integer pixel box (rounded edges, as
torchvision's ``resized_crop`` takes it), zero-pads what lies past the image edge, and resizes
with ``torch.nn.functional.interpolate(..., antialias=True)`` on uint8, whose kernels follow
Pillow's filters in fixed point: about 4x less CPU than Pillow's resize at 224 px from 500x375.
Its pixels are not Pillow's: near Pillow's crop-then-resize (one level apart in well under 1% of
the pixels of most crops), further from the box resize ``pil`` does, which reads past the
crop's edges. So the choice is part of every fingerprint of what a model was shown
(:func:`maskedkd.digests.resize_digest`).

torch's uint8 path gives the same bytes on its generic and its AVX2/AVX-512 kernels (checked on
torch 2.14.1), but only the vectorised ones are fast: on a CPU without AVX2 it is slower than
Pillow. Each resize runs on torch's intra-op threads: called from several render threads of a
process whose torch has more than one, they oversubscribe the cores (the pipeline's GPU workers
run torch with one intra-op thread for this reason).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZERS = ("pil", "torch")
TORCH_INTERPOLATIONS = ("bilinear", "bicubic")  # the modes torch antialiases


def _spend_torchs_read_only_warning() -> None:
    # torch warns once per process when it wraps a read-only array, which every PIL image's array
    # is; nothing here writes to one. Spent at import, in one thread: filtering it per call would
    # change the process-wide warning filters from the render threads.
    read_only = np.zeros(1, dtype=np.uint8)
    read_only.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(read_only)


_spend_torchs_read_only_warning()


def check_resize(resize: str, interpolation: str) -> None:
    """Raise ValueError unless ``resize`` can render with ``interpolation``."""
    if resize not in RESIZERS:
        raise ValueError(f"resize {resize!r}: use one of {', '.join(RESIZERS)}")
    if resize == "torch" and interpolation not in TORCH_INTERPOLATIONS:
        raise ValueError(f"resize 'torch' antialiases {' and '.join(TORCH_INTERPOLATIONS)} only, not "
                         f"{interpolation!r}: use resize 'pil' for it")


def pixel_array(image: Image.Image | np.ndarray, mode: str) -> np.ndarray:
    """``image`` as a uint8 array ``[H, W]`` (mode L) or ``[H, W, 3]`` (RGB), without a copy if it is one."""
    if isinstance(image, np.ndarray):
        if image.ndim == (2 if mode == "L" else 3) and (mode == "L" or image.shape[2] == 3):
            return image
        image = Image.fromarray(image)  # another colour layout: convert as a PIL image would be
    return np.asarray(image if image.mode == mode else image.convert(mode))


def integer_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """A fractional pixel box ``(x0, y0, x1, y1)`` rounded to whole pixels, at least one wide and high."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def torch_resized_crop(pixels: np.ndarray, box: tuple[float, float, float, float], hw: tuple[int, int],
                       interpolation: str, flip: bool = False) -> torch.Tensor:
    """The ``box`` (source pixels, may pass the edge) of ``pixels`` resized to ``hw``: uint8 ``[C, H, W]``.

    Args:
        pixels: uint8 ``[H, W]`` or ``[H, W, C]`` (:func:`pixel_array`).
        box: ``(x0, y0, x1, y1)`` in source pixels; rounded by :func:`integer_box`, and zero
            outside the image (``RandomCrop(padding=...)``).
        hw: output (height, width).
        interpolation: ``bilinear`` or ``bicubic`` (antialiased when shrinking, as Pillow).
        flip: mirror the result left to right.
    """
    src = torch.from_numpy(pixels)  # read-only for a PIL image's array; nothing here writes to it
    src = src.unsqueeze(-1) if src.ndim == 2 else src
    height, width = src.shape[:2]
    x0, y0, x1, y1 = integer_box(box)
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        crop = src[y0:y1, x0:x1]
    else:
        crop = torch.zeros(y1 - y0, x1 - x0, src.shape[2], dtype=torch.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = src[sy0:sy1, sx0:sx1]
    # [1, C, h, w] in channels-last strides: the layout torch's vectorised uint8 kernels take
    out = F.interpolate(crop.permute(2, 0, 1).unsqueeze(0), size=tuple(hw), mode=interpolation, antialias=True)[0]
    return out.flip(-1) if flip else out


__all__ = ["RESIZERS", "TORCH_INTERPOLATIONS", "check_resize", "integer_box", "pixel_array", "torch_resized_crop"]
