"""Who resizes a view's crop (maskedkd/resize.py): torch's uint8 antialiased kernels against Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskedkd.digests import resize_digest
from maskedkd.rendering import PixelSpec, render_batch, render_pixels
from maskedkd.resize import check_resize, integer_box, pixel_array, torch_resized_crop
from maskedkd.views import ViewSpec, shard_views

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    """Smooth colour fields plus a few hard edges, like a downsized photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([128 + 100 * np.sin(x / 9 + c) * np.cos(y / 7 - c) for c in range(3)], axis=-1)
    rgb[20:50, 30:70] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_torch_resize_is_close_to_pillows_crop_and_resize(interpolation):
    image = _photo()
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    for box, hw in (((10, 5, 110, 85), (32, 40)), ((31, 22, 61, 44), (48, 48)), ((0, 0, 120, 90), (24, 24))):
        want = np.asarray(image.crop(box).resize(hw[::-1], resample)).astype(int)
        got = torch_resized_crop(pixel_array(image, "RGB"), box, hw, interpolation).permute(1, 2, 0).numpy()
        diff = np.abs(got.astype(int) - want)
        # the same filters in fixed point: one level apart in a few pixels at most
        assert got.shape == want.shape and diff.max() <= 4 and diff.mean() < 0.1, (box, diff.max(), diff.mean())


def test_torch_resize_rounds_the_box_flips_and_zero_pads_past_the_edge():
    image = Image.new("L", (20, 20), 255)
    pixels = pixel_array(image, "L")
    assert integer_box((0.4, 0.6, 9.5, 0.7)) == (0, 1, 10, 2)  # at least one pixel wide and high
    # half the box left of the image, at its own size: zeros, then the image
    out = torch_resized_crop(pixels, (-10, 0, 10, 20), (20, 20), "bicubic")
    assert out.shape == (1, 20, 20) and out.dtype == torch.uint8
    assert (out[0, :, :10] == 0).all() and (out[0, :, 10:] == 255).all()
    flipped = torch_resized_crop(pixels, (-10, 0, 10, 20), (20, 20), "bicubic", flip=True)
    assert torch.equal(flipped, out.flip(-1))
    rgb = pixel_array(_photo(), "RGB")
    assert torch.equal(torch_resized_crop(rgb, (3.4, 2.6, 57.2, 42.9), (16, 24), "bilinear"),
                       torch_resized_crop(rgb, (3, 3, 57, 43), (16, 24), "bilinear"))


def test_check_resize_names_what_it_cannot_do():
    check_resize("torch", "bicubic")
    check_resize("pil", "lanczos")
    with pytest.raises(ValueError, match="antialiases bilinear and bicubic only, not 'lanczos'"):
        check_resize("torch", "lanczos")
    with pytest.raises(ValueError, match="resize 'opencv'"):
        PixelSpec.create(28, (0.5,), (0.5,), "bicubic", "opencv")


@pytest.mark.parametrize("auto_augment", [None, "rand-m9-mstd0.5-inc1"])
def test_torch_render_takes_images_or_arrays_and_differs_from_pillows(auto_augment):
    images = [_photo(seed=i) for i in range(6)]
    views = shard_views(ViewSpec(scale=(0.3, 1.0), auto_augment=auto_augment, shift=4), 0, 0, [f"k{i}" for i in range(6)])
    torch_spec = PixelSpec.create(32, MEAN, STD, "bicubic", "torch")
    pil_spec = PixelSpec.create(32, MEAN, STD, "bicubic")
    assert torch_spec != pil_spec and torch_spec.resize == "torch"
    for image, view in zip(images, views):
        a, b, p = (torch.empty(3, 32, 32, dtype=torch.uint8) for _ in range(3))
        render_pixels(image, view, torch_spec, a)
        render_pixels(pixel_array(image, "RGB"), view, torch_spec, b)
        render_pixels(image, view, pil_spec, p)
        assert torch.equal(a, b)
        assert not torch.equal(a, p)
        if auto_augment is None:  # the same view, near (RandAugment's geometry ops magnify the difference)
            assert (a.float() - p.float()).abs().mean() < 4
    batch = render_batch(images, views, 32, mean=MEAN, std=STD, resize="torch")
    one = torch.empty(3, 32, 32, dtype=torch.uint8)
    render_pixels(images[2], views[2], torch_spec, one)
    assert torch.equal(batch[2], render_batch([images[2]], [views[2]], 32, mean=MEAN, std=STD, resize="torch")[0])


def test_resize_digest_names_torchs_kernels_and_is_empty_for_pillow():
    assert resize_digest("pil", "bicubic") == ""
    bicubic, bilinear = resize_digest("torch", "bicubic"), resize_digest("torch", "bilinear")
    assert len(bicubic) == 64 and bicubic != bilinear
    with pytest.raises(ValueError, match="lanczos"):
        resize_digest("torch", "lanczos")
