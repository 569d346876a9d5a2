"""timm's evaluation centre crop as one view crop: the geometry, and pixels equal to timm's eval
transform at square and non-square outputs (timm's ``ResizeKeepRatio`` branch)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from timm.data import create_transform

from maskedkd.centre_crop import centre_crop, centre_crop_box
from maskedkd.rendering import render
from maskedkd.views import View
from tests.maskedkd.helpers import photo


def test_box_is_torchvisions_resize_then_center_crop():
    # 500x375 at 224, crop_pct 0.875: Resize(256) -> 341x256 (truncated), CenterCrop(224) at (58, 16)
    # (round(58.5) is 58: Python rounds half to even, as torchvision's center_crop does)
    assert centre_crop_box(500, 375, (224, 224), 0.875) == (58 / 341, 16 / 256, 282 / 341, 240 / 256)
    # crop_pct 1.0 on a portrait image: the width whole, the height centred
    assert centre_crop_box(375, 500, (224, 224), 1.0) == (0.0, 37 / 298, 1.0, 261 / 298)


@pytest.mark.parametrize("w,h", [(500, 375), (375, 500), (64, 48), (33, 100)])
def test_crop_draw_resolves_to_the_box(w, h):
    crop = centre_crop(w, h, (224, 224), 0.9)
    assert View("k", 0, 0, crop=crop).crop_box(w, h) == pytest.approx(centre_crop_box(w, h, (224, 224), 0.9), abs=1e-12)


@pytest.mark.parametrize("size", [(32, 32), (32, 48), (48, 32)], ids=str)
@pytest.mark.parametrize("w,h", [(120, 90), (90, 120), (40, 30)], ids=str)
def test_render_equals_timms_eval_transform(size, w, h):
    mean = std = (0.5, 0.5, 0.5)
    timm_eval = create_transform(input_size=(3, *size), crop_pct=0.8, interpolation="bilinear", mean=mean, std=std,
                                 is_training=False)
    img = Image.open(io.BytesIO(photo(w, h))).convert("RGB")
    view = View("k", 0, 0, crop=centre_crop(w, h, size, 0.8))
    ours = render(img, view, size, mean=mean, std=std, interpolation="bilinear")
    levels = ((ours - timm_eval(img)) * 0.5 * 255).abs()
    assert levels.max() <= 1.001
