"""timm's evaluation crop (``Resize(size / crop_pct)`` + ``CenterCrop(size)``) as one view crop.

timm's eval transform resizes the whole image to whole pixels, then cuts the centre box at whole
pixels of that resize (offsets rounded as torchvision's ``center_crop`` rounds them). Pillow's
resize of the same source box straight to the output samples the same points with the same
filter width, so one resize gives timm's pixels (to a level, from float rounding) without the
intermediate image. A crop of ``crop_pct`` of the image's side, centred without that rounding,
lies up to half a resized pixel away, which on a textured photograph moves most pixels by several
levels: the geometry must be timm's to the pixel.
"""

from __future__ import annotations

import math


def _resized_size(width: int, height: int, size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """The (width, height) timm resizes the image to before its centre crop ('center' crop mode)."""
    scale_h, scale_w = (math.floor(s / crop_pct) for s in size)
    if scale_h == scale_w:  # torchvision Resize(int): the shorter side to it, the longer truncated
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(scale_h * long / short)
        return (scale_h, new_long) if width <= height else (new_long, scale_h)
    ratio = min(height / scale_h, width / scale_w)  # timm's ResizeKeepRatio(longest=0)
    return round(width / ratio), round(height / ratio)


def centre_crop_box(width: int, height: int, size: tuple[int, int], crop_pct: float) -> tuple[float, float, float, float]:
    """timm's evaluation crop of a ``width x height`` image for output ``size`` (height, width).

    Returns:
        ``(x0, y0, x1, y1)`` normalised to the source image: the box timm's ``CenterCrop`` cuts
        from its ``Resize``, in source coordinates.
    """
    new_w, new_h = _resized_size(width, height, size, crop_pct)
    out_h, out_w = size
    # torchvision's center_crop: int(round(...)), Python's round (half to even)
    left, top = int(round((new_w - out_w) / 2.0)), int(round((new_h - out_h) / 2.0))
    return (left / new_w, top / new_h, (left + out_w) / new_w, (top + out_h) / new_h)


def centre_crop(width: int, height: int, size: tuple[int, int], crop_pct: float) -> tuple[float, float, float, float]:
    """:func:`centre_crop_box` as a view's crop draw ``(area, log_ratio, x, y)`` (:attr:`maskedkd.views.View.crop`).

    Args:
        width, height: the source image's size in pixels.
        size: the output (height, width).
        crop_pct: timm's ``crop_pct`` (the centre crop's share of the resized image's side).
    """
    x0, y0, x1, y1 = centre_crop_box(width, height, size, crop_pct)
    w, h = x1 - x0, y1 - y0  # at most 1: timm's resize is never smaller than its crop
    area, log_ratio = w * h, math.log(w * width / (h * height))
    return (area, log_ratio, x0 / (1.0 - w) if w < 1.0 else 0.5, y0 / (1.0 - h) if h < 1.0 else 0.5)


__all__ = ["centre_crop", "centre_crop_box"]
