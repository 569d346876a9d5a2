import pytest
import timm

from maskedkd import teacher_flops


def test_deit_small_flops_halve_at_keep_98():
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    full = teacher_flops(model, 196)
    half = teacher_flops(model, 98)
    assert teacher_flops(model, None) == full
    # the papers' figure for DeiT-S is 4.6 "GFLOPs" (= GMACs)
    assert full / 2e9 == pytest.approx(4.6, rel=0.02)
    assert 0.45 < half / full < 0.52
    assert teacher_flops(model, 98, batch=2) == 2 * half


def test_keep_out_of_range():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    with pytest.raises(ValueError, match="keep"):
        teacher_flops(model, 17)
