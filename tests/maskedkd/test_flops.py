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


def test_the_saliency_pass_stops_at_the_last_blocks_q_dot_k():
    """The student's saliency forward skips the last block's attention output, its MLP, the final
    norm and the head: on the results student (dim 48, depth 3, 50 tokens) that is over a quarter."""
    import torch

    from maskedkd import saliency_macs, teacher_macs

    with torch.device("meta"):
        student = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                    embed_dim=48, depth=3, num_heads=3).eval()
    full, sal = teacher_macs(student, None), saliency_macs(student)
    d, t = 48, 50
    skipped = t * (d * d + 8 * d * d) + t * t * d + d * 10  # proj + MLP, attention @ V, head
    assert full - sal >= skipped
    assert sal / full < 0.75


def test_a_downscaled_saliency_pass_counts_its_fewer_tokens():
    import torch

    from maskedkd import saliency_macs

    with torch.device("meta"):
        deit_s = timm.create_model("deit_small_patch16_224").eval()
    full, half = saliency_macs(deit_s), saliency_macs(deit_s, 0.5)
    assert half < full / 3.5  # 50 tokens instead of 197
    assert saliency_macs(deit_s, 1.0) == full
