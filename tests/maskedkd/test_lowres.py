"""The lowres policy: the whole view at the keep's patch count (maskedkd/lowres.py)."""

from __future__ import annotations

import pytest
import timm
import torch

from maskedkd.lowres import lowres_forward, lowres_grid, lowres_size
from maskedkd.saliency import downscale

from .conftest import SMALL, VARIANTS, make_model


@pytest.mark.parametrize(("grid", "keep", "expected"), [
    ((14, 14), 98, (10, 10)),  # 100 is nearer 98 than 81: the rule is nearest, not at most
    ((14, 14), 49, (7, 7)),
    ((14, 14), 196, (14, 14)),
    ((14, 14), 1, (1, 1)),
    ((14, 14), 90, (9, 9)),  # 81 is 9 away, 100 is 10
    ((7, 7), 25, (5, 5)),
    ((7, 7), 30, (5, 5)),  # 25 (5 away) before 36 (6 away)
    ((4, 4), 6, (2, 2)),  # 4 and 9 are 2 and 3 away
    ((14, 7), 50, (10, 5)),  # the aspect kept: rows x round(rows / 2)
])
def test_the_grid_nearest_the_keep(grid, keep, expected):
    assert lowres_grid(grid, keep) == expected


def test_a_tie_takes_the_smaller_grid():
    assert lowres_grid((7, 7), 20) == (4, 4)  # 16 and 25 are 4 and 5 away
    assert lowres_grid((10, 10), 42) == (6, 6)  # 36 and 49 are 6 and 7 away
    assert lowres_grid((10, 10), 12) == (3, 3)  # 9 and 16: 3 and 4


def test_keep_out_of_range():
    with pytest.raises(ValueError, match="between 1 and 49"):
        lowres_grid((7, 7), 50)
    with pytest.raises(ValueError, match="between 1 and 49"):
        lowres_grid((7, 7), 0)


def test_deit_at_half_the_patches_sees_160_px():
    model = timm.create_model("deit_small_patch16_224", num_classes=10)
    assert lowres_size(model, 98) == (160, 160)
    assert lowres_size(model, 196) == (224, 224)


@pytest.mark.parametrize("variant", ["vit", "deit3_no_embed_class", "registers", "qk_norm"])
def test_lowres_is_timms_own_dynamic_size_forward_on_the_downscaled_view(variant, images):
    """The oracle: the same weights in a timm model built with ``dynamic_img_size=True`` (timm
    resamples the position embedding itself), fed the view downscaled as lowres downscales it."""
    model = make_model(variant)
    name, kw = VARIANTS[variant]
    dyn = timm.create_model(name, pretrained=False, dynamic_img_size=True, **{**SMALL, **kw}).eval()
    dyn.load_state_dict(model.state_dict())
    with torch.no_grad():
        for keep, size in ((4, (16, 16)), (9, (24, 24))):
            assert lowres_size(model, keep) == size
            ours = lowres_forward(model, images, keep)
            theirs = dyn(downscale(images, size))
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(ours, model(images), atol=1e-3)


def test_autocast_keeps_the_head_in_float32(images):
    model = make_model("vit")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = lowres_forward(model, images, 4)
    assert out.dtype == torch.float32
