"""Rendering views: crop, flip and RandAugment to uint8 pixels, then normalise, erase and mix.

:func:`render` and :func:`render_batch` give the float32 tensors a model takes, the same bytes
in every process. They split into :func:`render_pixels` (per view, Pillow or torch's uint8
resize, RandAugment; what a render pool runs) and :func:`finish_views` (a batch on any device:
elementwise IEEE ops only). No file I/O: images come in as decoded PIL images or uint8 arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from maskedkd.mixing import mix_into
from maskedkd.rand_augment import apply_rand_augment
from maskedkd.random_erasing import erase_fill
from maskedkd.resize import check_resize, pixel_array, torch_resized_crop
from maskedkd.view_columns import NO_BOX
from maskedkd.views import View, pixel_box

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class _Normalise:
    """``(x / 255 - mean) / std`` as one multiply and one add per pixel, channel-first."""

    mean: tuple[float, ...]
    scale: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def create(cls, mean: Sequence[float], std: Sequence[float]) -> "_Normalise":
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean/std must both have 1 (L) or 3 (RGB) values, got {len(mean)} and {len(std)}")
        std64 = np.asarray(std, dtype=np.float64)
        scale = torch.from_numpy((1.0 / (255.0 * std64)).astype(np.float32)).view(-1, 1, 1)
        offset = torch.from_numpy((-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)).view(-1, 1, 1)
        return cls(tuple(float(m) for m in mean), scale, offset)

    @property
    def mode(self) -> str:
        return "L" if len(self.mean) == 1 else "RGB"

    @property
    def fill(self) -> int | tuple[int, ...]:
        """RandAugment's fill colour: the mean, as timm's ``img_mean`` hparam."""
        fill = tuple(int(round(255 * m)) for m in self.mean)
        return fill[0] if len(fill) == 1 else fill


_RESAMPLE_NAMES = ", ".join(INTERPOLATIONS)


def _resample(interpolation: str) -> int:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"interpolation {interpolation!r}: use one of {_RESAMPLE_NAMES}") from None


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _render_pixels(image: Image.Image | np.ndarray, view: View, hw: tuple[int, int], mode: str, fill: Any,
                   interpolation: str, resize: str, out: torch.Tensor) -> None:
    """Crop, flip, RandAugment (timm's per-sample train transform up to ``ToTensor``) into uint8 ``out`` [C, H, W]."""
    resample = _resample(interpolation)
    h, w = hw
    if resize == "torch":
        pixels = pixel_array(image, mode)
        height, width = pixels.shape[:2]
        x0, y0, x1, y1 = view.crop_box(width, height)
        small = torch_resized_crop(pixels, (x0 * width, y0 * height, x1 * width, y1 * height), hw, interpolation,
                                   flip=view.flip)
        if not any(op >= 0 for op in view.ra_op):
            out.copy_(small)
            return
        img = Image.fromarray(small.permute(1, 2, 0).squeeze(-1).contiguous().numpy())
    else:
        img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        img = img if img.mode == mode else img.convert(mode)
        width, height = img.size
        x0, y0, x1, y1 = view.crop_box(width, height)
        px = (x0 * width, y0 * height, x1 * width, y1 * height)
        if px[0] >= 0 and px[1] >= 0 and px[2] <= width and px[3] <= height:
            img = img.resize((w, h), resample, box=px)
        else:  # shifted past the edge: zero-pad first, as RandomCrop(padding=...) does
            left, top = math.floor(px[0]), math.floor(px[1])
            padded = img.crop((left, top, math.ceil(px[2]), math.ceil(px[3])))
            img = padded.resize((w, h), resample, box=(px[0] - left, px[1] - top, px[2] - left, px[3] - top))
        if view.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for op, mag in zip(view.ra_op, view.ra_mag):
        if op >= 0:
            img = apply_rand_augment(img, op, mag, fill, resample, hw)
    out.copy_(torch.from_numpy(np.array(img, dtype=np.uint8)).view(h, w, -1).permute(2, 0, 1))


@dataclass(frozen=True)
class PixelSpec:
    """What a view's uint8 pixels depend on: output size, colour mode, resampling, RandAugment's fill.

    Two render specs with equal pixel specs (e.g. student and teacher at one size with other
    normalisations) share their uint8 renders: only :func:`finish_views` differs.
    """

    size: tuple[int, int]
    mode: str
    interpolation: str
    fill: int | tuple[int, ...]
    resize: str = "pil"

    @classmethod
    def create(cls, size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float],
               interpolation: str = "bicubic", resize: str = "pil") -> "PixelSpec":
        """The pixel spec of a render at ``size`` with ``mean``/``std``, ``interpolation`` and
        ``resize`` (:mod:`maskedkd.resize`)."""
        norm = _Normalise.create(mean, std)
        _resample(interpolation)  # fails early on a bad name
        check_resize(resize, interpolation)
        return cls(_hw(size), norm.mode, interpolation, norm.fill, resize)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def render_pixels(image: Image.Image | np.ndarray, view: View, spec: PixelSpec, out: torch.Tensor) -> None:
    """Render ``view`` of ``image`` to uint8 ``out`` [C, H, W]: all of :func:`render` but the float
    steps (normalise, erase, mix), which :func:`finish_views` applies to a batch on any device.

    ``image`` is a decoded PIL image or, as :func:`maskedkd.resize.pixel_array` makes it once for
    many views, its uint8 ``[H, W(, C)]`` array in the spec's colour mode.
    """
    _render_pixels(image, view, spec.size, spec.mode, spec.fill, spec.interpolation, spec.resize, out)


def view_erase_fill(view: View, channels: int, hw: tuple[int, int]) -> torch.Tensor | None:
    """What random erasing writes into ``view``'s box at output size ``hw``: float32 [C, h, w] drawn
    on the CPU from the view's seed (None: nothing erased). :func:`finish_views` writes it."""
    if view.erase == NO_BOX:
        return None
    ex0, ey0, ex1, ey1 = pixel_box(view.erase, *hw)
    if ex1 <= ex0 or ey1 <= ey0:
        return None
    return erase_fill(view.erase_fill, view.seed, (channels, ey1 - ey0, ex1 - ex0))


def finish_views(pixels: torch.Tensor, views: Sequence[View], *, mean: Sequence[float], std: Sequence[float],
                 rows: int | None = None, fills: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Normalise, erase and mix uint8 renders into what :func:`render_batch` returns, on ``pixels``' device.

    Args:
        pixels: uint8 [R, C, H, W], :func:`render_pixels` of ``views`` (any device).
        views: the R views; the first ``rows`` are the batch, the rest may be mixing partners.
        rows: how many leading views to return (default all); each mixes with its partner,
            which must be among ``views``.
        fills: :func:`view_erase_fill` of each erased view by position, drawn ahead (e.g. already on
            the device); default: drawn here.

    Returns:
        float32 [rows, C, H, W]: bit-identical on CPU to :func:`render_batch` of the same views
        (elementwise IEEE ops only, in the same order).
    """
    norm = _Normalise.create(mean, std)
    device = pixels.device
    base = pixels.float()
    # two separate IEEE ops (no fused multiply-add), so every machine gives the same bytes
    # non_blocking: a blocking host-to-device copy would drain the device's queue first (CPU: no copy)
    base.mul_(norm.scale.to(device, non_blocking=True)).add_(norm.offset.to(device, non_blocking=True))
    h, w = base.shape[-2:]
    for i, view in enumerate(views):
        fill = view_erase_fill(view, base.shape[1], (h, w)) if fills is None else fills.get(i)
        if fill is not None:
            ex0, ey0, ex1, ey1 = pixel_box(view.erase, h, w)
            base[i, :, ey0:ey1, ex0:ex1] = fill.to(device)
    n = len(views) if rows is None else rows
    if not any(v.partner for v in views[:n]):
        return base if n == len(views) else base[:n]
    index = {v.key: i for i, v in enumerate(views[:n])}
    for i in range(n, len(views)):  # partners outside the batch: batch rows win on a repeated key
        index.setdefault(views[i].key, i)
    out = base[:n].clone()
    for i, view in enumerate(views[:n]):
        if view.partner:
            if view.partner not in index:
                raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}, which is not among the views")
            mix_into(out[i], base[index[view.partner]], view)
    return out


def render(
    image: Image.Image,
    view: View,
    size: int | tuple[int, int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    partner: Image.Image | None = None,
    partner_view: View | None = None,
    resize: str = "pil",
) -> torch.Tensor:
    """Render one view of ``image``: deterministic, the same bytes in every process.

    Args:
        image: the decoded source image (converted to L or RGB to match ``mean``).
        view: the view from :func:`sample_view`.
        size: output size, an int or ``(height, width)``.
        mean: per-channel mean; its length sets the channel count (1 = L, 3 = RGB).
        std: per-channel std.
        interpolation: ``nearest``, ``bilinear``, ``bicubic`` or ``lanczos`` (resize and RandAugment).
        partner: the mixing partner's image, required when ``view.partner`` is set.
        partner_view: the partner's own view of the same epoch; the partner is rendered with it
            (minus its own mixing, as timm mixes augmented images), then mixed in.
        resize: who resizes the crop, ``pil`` or ``torch`` (:mod:`maskedkd.resize`).

    Returns:
        float32 tensor ``[C, H, W]``.
    """
    if not view.partner:
        return _render_views([image], [view], size, mean, std, interpolation, resize, rows=1)[0]
    if partner is None or partner_view is None or partner_view.key != view.partner:
        raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}: pass its image and view as partner=, partner_view=")
    return _render_views([image, partner], [view, partner_view], size, mean, std, interpolation, resize, rows=1)[0]


def render_batch(
    images: Sequence[Image.Image],
    views: Sequence[View],
    size: int | tuple[int, int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    partners: Mapping[str, tuple[Image.Image, View]] | Callable[[str], tuple[Image.Image, View]] | None = None,
    resize: str = "pil",
) -> torch.Tensor:
    """Render many views into one ``[N, C, H, W]`` tensor, each exactly as :func:`render` would.

    A partner inside the batch (the usual case: a pair of ``pair`` / ``elem`` mixing, or a block of
    ``spec.mix_window`` samples) is rendered once and reused; others come from ``partners``,
    a mapping or callable ``key -> (image, view)``.
    """
    spec = PixelSpec.create(size, mean, std, interpolation, resize)
    pixels, every = render_batch_pixels(images, views, spec, partners=partners)
    return finish_views(pixels, every, mean=mean, std=std, rows=len(views))


def render_batch_pixels(
    images: Sequence[Image.Image],
    views: Sequence[View],
    spec: PixelSpec,
    *,
    partners: Mapping[str, tuple[Image.Image, View]] | Callable[[str], tuple[Image.Image, View]] | None = None,
) -> tuple[torch.Tensor, list[View]]:
    """:func:`render_batch` up to its uint8 renders: ``(pixels [R, C, H, W] uint8, their R views)``,
    the batch's views first, then the partners from outside it.

    ``finish_views(pixels, views, mean=, std=, rows=len(batch views))`` on any device then gives
    :func:`render_batch`'s tensor (what a loader worker sends is a quarter of the float32 bytes).
    """
    if len(images) != len(views):
        raise ValueError(f"render_batch: {len(images)} images but {len(views)} views")
    images, views = list(images), list(views)
    inside = {v.key for v in views}
    for view in list(views):
        if view.partner and view.partner not in inside:
            if partners is None:
                raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}, which is not in the batch: pass partners=")
            p_image, p_view = partners(view.partner) if callable(partners) else partners[view.partner]
            images.append(p_image)
            views.append(p_view)
            inside.add(view.partner)
    return _render_uint8(images, views, spec), views


def _render_views(images: Sequence[Image.Image], views: Sequence[View], size: int | tuple[int, int],
                  mean: Sequence[float], std: Sequence[float], interpolation: str, resize: str,
                  rows: int) -> torch.Tensor:
    """:func:`render_pixels` of every view, then :func:`finish_views` of the first ``rows``."""
    pixels = _render_uint8(images, views, PixelSpec.create(size, mean, std, interpolation, resize))
    return finish_views(pixels, views, mean=mean, std=std, rows=rows)


def _render_uint8(images: Sequence[Image.Image], views: Sequence[View], spec: PixelSpec) -> torch.Tensor:
    """uint8 ``[len(views), C, H, W]``: :func:`render_pixels` of every view."""
    pixels = torch.empty(len(views), spec.channels, *spec.size, dtype=torch.uint8)
    for i, (image, view) in enumerate(zip(images, views)):
        render_pixels(image, view, spec, pixels[i])
    return pixels
