"""timm as the oracle of evaluation pixels (issue 26 item 4): the trainer's evaluation render of a
model with a ``pretrained_cfg`` equals ``timm.data.create_transform(**resolve_data_config(model=m),
is_training=False)`` to within one level (1/255), on JPEGs and a PNG made here.

The images go through what :func:`pipeline.train.evaluate.evaluate` does to a shard's row
(:func:`pipeline.data.shards.decode_image`, then :func:`pipeline.train.evaluate.eval_pixels`);
timm's side gets the decoded image converted to RGB, as its ``ImageDataset`` loads it.
"""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config

from maskedkd.rendering import render_batch
from pipeline.config import DataConfig, StudentConfig
from pipeline.data.shards import decode_image
from pipeline.labels.contract import RenderSpec, render_spec
from pipeline.train.evaluate import eval_pixels
from tests.maskedkd.helpers import photo

# (width, height, mode, format): landscape, portrait, smaller than the crop, grey, CMYK, a PNG with alpha
IMAGES = [(500, 375, "RGB", "JPEG"), (375, 500, "RGB", "JPEG"), (64, 48, "RGB", "JPEG"), (500, 375, "L", "JPEG"),
          (333, 250, "CMYK", "JPEG"), (300, 301, "RGBA", "PNG")]
# model name, its own crop_pct field (None: its pretrained_cfg's), the crop_pct timm resolves
MODELS = [("deit_small_patch16_224", None, 0.9), ("deit_small_patch16_224", 0.875, 0.875),
          ("deit3_small_patch16_224.fb_in22k_ft_in1k", None, 1.0)]
DATA = DataConfig.model_validate({"root": "d", "num_classes": 1000}, context={"check_files": False})


def _ours(spec: RenderSpec, data: bytes) -> torch.Tensor:
    return eval_pixels(spec, [decode_image(data)], ["k"])[0]


def _levels(spec: RenderSpec, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised renders in pixel levels (0..255)."""
    return ((a - b) * torch.tensor(spec.std).view(-1, 1, 1) * 255).abs()


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: f"{m[0]}-crop{m[2]}")
def model_pair(request):
    name, crop_pct, resolved = request.param
    section = StudentConfig.model_validate({"model": name, "pretrained": True, "crop_pct": crop_pct},
                                           context={"check_files": False})
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    config = resolve_data_config(model=model)
    if crop_pct is not None:
        config["crop_pct"] = crop_pct
    assert config["crop_pct"] == resolved and config["interpolation"] == "bicubic"
    return render_spec(DATA, section), create_transform(**config, is_training=False)


@pytest.mark.parametrize("resize", ["pil", "torch"])
@pytest.mark.parametrize("w,h,mode,fmt", IMAGES, ids=lambda v: str(v))
def test_evaluation_pixels_equal_timms_eval_transform(model_pair, w, h, mode, fmt, resize):
    """With ``data.resize: torch`` too (stages/imagenet.yaml): evaluation resizes with Pillow as timm does."""
    spec, timm_eval = model_pair
    spec = dataclasses.replace(spec, resize=resize)
    data = photo(w, h, mode, fmt)
    ours = _ours(spec, data)
    theirs = timm_eval(decode_image(data).convert("RGB"))
    assert ours.shape == theirs.shape == (3, 224, 224)
    diff = _levels(spec, ours, theirs)
    assert diff.max() <= 1.001, f"{diff.max():.2f} levels apart; {(diff > 1.001).float().mean():.2%} of values past 1"
    assert (diff > 0.5).float().mean() < 0.01  # one level apart only where float rounding lands on a tie


def test_the_photos_see_a_half_pixel_shift():
    """What makes the test above bite: a crop of crop_pct of the side, centred without timm's
    rounding to whole resized pixels (the evaluation crop before issue 26), is many levels off."""
    spec = RenderSpec(224, (0.5,) * 3, (0.5,) * 3, "bicubic", crop_pct=0.9)
    data = photo(500, 375)
    near = dataclasses.replace(spec.eval_view("k", 500, 375), crop=(0.9**2 * 375 / 500, 0.0, 0.5, 0.5))
    img = decode_image(data)
    shifted = render_batch([img], [near], 224, mean=spec.mean, std=spec.std)[0]
    assert _levels(spec, shifted, _ours(spec, data)).max() > 10
