import pytest
import timm
import torch

from maskedkd import (
    cls_attention,
    keep_indices,
    resolve_keep,
    saliency_on_grid,
    select_keep,
    teacher_flops,
    teacher_macs,
)

from .conftest import make_model


def test_resolve_keep_has_one_spelling_of_all_patches():
    assert resolve_keep(25, 49) == 25
    assert resolve_keep(49, 49) is None
    assert resolve_keep(None, 49) is None
    assert resolve_keep(25, 49, "none") is None
    assert resolve_keep(300, 49, "none") is None  # policy none ignores keep
    for bad in (0, -1, 50):
        with pytest.raises(ValueError, match="keep must be between 1 and 49"):
            resolve_keep(bad, 49)


@torch.no_grad()
def test_saliency_on_the_same_grid_is_cls_attention(images):
    model = make_model("vit")  # 32 / 8: a 4x4 grid
    got = saliency_on_grid(model, images, (4, 4))
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, cls_attention(model, images).float())


@torch.no_grad()
def test_saliency_of_another_grid_is_resampled_onto_the_teachers(images):
    model = make_model("vit")
    got = saliency_on_grid(model, images, (8, 8))
    assert got.shape == (3, 64)
    # bilinear from 4x4 to 8x8: each teacher patch lies within one student patch or between two
    coarse = cls_attention(model, images).reshape(3, 4, 4)
    assert got.min() >= coarse.min() - 1e-7 and got.max() <= coarse.max() + 1e-7
    assert torch.equal(got.reshape(3, 8, 8)[:, 0, 0], coarse[:, 0, 0])  # corners are not blended


@torch.no_grad()
def test_student_policy_keeps_the_most_salient_patches(images):
    model = make_model("vit")
    got = keep_indices("student", 6, grid=(4, 4), seeds=[1, 2, 3], student=model, images=images)
    assert torch.equal(got, select_keep(cls_attention(model, images), 6, "student"))
    inverse = keep_indices("student_inverse", 6, grid=(4, 4), seeds=[1, 2, 3], student=model, images=images)
    assert torch.equal(inverse, select_keep(cls_attention(model, images), 6, "student_inverse"))
    with pytest.raises(ValueError, match="student and images"):
        keep_indices("student", 6, grid=(4, 4), seeds=[1, 2, 3])


def test_random_policy_is_seeded_per_row_by_the_view_seed():
    got = keep_indices("random", 20, grid=(7, 7), seeds=[11, 12, 13])
    want = torch.stack([torch.rand(49, generator=torch.Generator().manual_seed(s)).topk(20).indices.sort().values
                        for s in (11, 12, 13)])
    assert torch.equal(got, want)
    alone = keep_indices("random", 20, grid=(7, 7), seeds=[12])
    assert torch.equal(alone[0], got[1])  # a row's draw does not depend on its batch


def test_all_patches_is_none():
    assert keep_indices("none", 20, grid=(7, 7), seeds=[1]) is None
    assert keep_indices("random", 49, grid=(7, 7), seeds=[1]) is None
    assert keep_indices("student", None, grid=(7, 7), seeds=[1]) is None  # no student needed
    with pytest.raises(ValueError, match="keep must be between 1 and 49"):
        keep_indices("random", 50, grid=(7, 7), seeds=[1])


def test_teacher_macs_are_half_the_flops_and_counted_once(monkeypatch):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    assert teacher_macs(model, 8) == teacher_flops(model, 8) // 2
    assert teacher_macs(model, None) == teacher_macs(model, 16) == teacher_flops(model, None) // 2
    monkeypatch.setattr("maskedkd.flops.teacher_flops", lambda *a, **k: pytest.fail("counted twice"))
    assert teacher_macs(model, 8) == teacher_macs(model, 8)
    with pytest.raises(ValueError, match="keep must be between 1 and 16"):
        teacher_macs(model, 17)


@torch.no_grad()
def test_keep_sets_from_a_downscaled_view_lie_on_the_teachers_grid(images):
    student = make_model("vit")  # 32 px, 8 px patches: 4 x 4; at 0.5: 2 x 2
    a = keep_indices("student", 8, grid=(4, 4), seeds=[0, 1, 2], student=student, images=images, saliency_scale=0.5)
    assert a is not None and a.shape == (3, 8) and int(a.max()) < 16
    small = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=True)
    scores = torch.nn.functional.interpolate(cls_attention(student, small).reshape(3, 1, 2, 2), size=(4, 4),
                                             mode="bilinear", align_corners=False).reshape(3, 16)
    assert torch.equal(saliency_on_grid(student, images, (4, 4), scale=0.5), scores)
    assert torch.equal(a, select_keep(scores, 8))
    # the random policy reads no student: the scale changes nothing
    r = keep_indices("random", 8, grid=(4, 4), seeds=[0, 1, 2], saliency_scale=0.5)
    assert torch.equal(r, keep_indices("random", 8, grid=(4, 4), seeds=[0, 1, 2]))
