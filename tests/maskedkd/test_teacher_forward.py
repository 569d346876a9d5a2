"""The registry of teacher-side policies and its one entry point (maskedkd/teacher_forward.py).

Every test over ``FORWARD_POLICIES`` runs for each forward policy registered (``lowres``, and any
added later), so a new one is held to the same contract: all patches is the plain teacher bit for
bit, and its MACs at keep K are about a masked teacher's at K.
"""

from __future__ import annotations

import pytest
import timm
import torch

from maskedkd import (
    FORWARD_POLICIES,
    POLICIES,
    fidelity_curve,
    is_forward_policy,
    keep_indices,
    masked_forward,
    needs_saliency,
    policy_names,
    register_forward_policy,
    teacher_forward,
    teacher_macs,
)
from maskedkd.policies import get_policy

from .conftest import make_model

FORWARD = sorted(FORWARD_POLICIES)


def test_lowres_is_registered_as_a_forward_policy_that_reads_no_saliency():
    assert "lowres" in FORWARD_POLICIES and "lowres" not in POLICIES
    assert is_forward_policy("lowres") and not is_forward_policy("student")
    assert not needs_saliency("lowres")
    assert policy_names() == sorted([*POLICIES, *FORWARD_POLICIES])
    with pytest.raises(ValueError, match="teacher_forward"):
        get_policy("lowres")  # no keep set to select
    with pytest.raises(ValueError, match="unknown masking policy 'lowress'.*lowres"):
        is_forward_policy("lowress")


@pytest.mark.parametrize("name", ["lowres", "student", "auto"])
def test_a_name_is_registered_once(name):
    with pytest.raises(ValueError, match="already registered|not a policy"):
        register_forward_policy(name)(lambda teacher, images, keep: teacher(images))


@pytest.mark.parametrize("policy", FORWARD)
def test_all_patches_is_the_plain_teacher_bit_for_bit(policy, variant_model, images):
    _, model = variant_model
    n = model.patch_embed.num_patches
    with torch.no_grad():
        plain = model(images)
        assert torch.equal(teacher_forward(model, images, policy, None), plain)
        assert torch.equal(teacher_forward(model, images, policy, n), plain)
        assert torch.equal(FORWARD_POLICIES[policy](model, images, n), plain)


@pytest.mark.parametrize("policy", FORWARD)
def test_a_forward_policy_below_all_patches_changes_the_logits_and_takes_no_keep_set(policy, images):
    model = make_model("vit")
    with torch.no_grad():
        out = teacher_forward(model, images, policy, 4)
    assert out.shape == (3, 10) and not torch.allclose(out, model(images))
    assert keep_indices(policy, 4, grid=(4, 4), seeds=[0, 1, 2]) is None  # no keep set to choose
    with pytest.raises(ValueError, match="takes no keep_idx"):
        teacher_forward(model, images, policy, 4, torch.arange(4).expand(3, 4))
    with pytest.raises(ValueError, match="keep must be between 1 and 16"):
        teacher_forward(model, images, policy, 17)


def test_keep_set_policies_run_the_masked_teacher(images):
    model = make_model("deit3_no_embed_class")
    idx = torch.tensor([[0, 3, 5, 9]] * 3)
    with torch.no_grad():
        assert torch.equal(teacher_forward(model, images, "random", 4, idx), masked_forward(model, images, idx))
        assert torch.equal(teacher_forward(model, images, "student", None), model(images))


@pytest.mark.parametrize("policy", FORWARD)
def test_macs_at_keep_are_about_the_masked_teachers(policy):
    """Counted on each forward (FlopCounterMode). ViT-Ti at 224 px, 14 x 14 patches: within 5% from
    half the patches up. At a quarter lowres runs 7 x 7 = 49 tokens as the masked teacher does but
    is cheaper by about the patch embedding of the 147 dropped patches, which masked_forward pays
    before dropping them: within 10% there."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10).eval()
    assert teacher_macs(model, None, policy) == teacher_macs(model, None) == teacher_macs(model, 196, policy)
    for keep, within in ((98, 0.05), (147, 0.05), (49, 0.10)):
        masked, forward = teacher_macs(model, keep), teacher_macs(model, keep, policy)
        assert abs(forward / masked - 1) <= within, (keep, forward / masked)
    assert teacher_macs(model, 49, policy) < teacher_macs(model, 98, policy) < teacher_macs(model, None)


@pytest.mark.parametrize("policy", FORWARD)
def test_the_fidelity_curve_runs_the_forward_and_pays_no_saliency(policy):
    teacher, student = make_model("vit", seed=0), make_model("deit", seed=1)
    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    curve = fidelity_curve(teacher, images, labels, [4, 9, None], policy, seeds=list(range(12)),
                           student=student, student_images=images, batch_size=5)
    assert [r.keep for r in curve] == [4, 9, None]
    assert [r.macs for r in curve] == [teacher_macs(teacher, 4, policy), teacher_macs(teacher, 9, policy),
                                       teacher_macs(teacher, None)]
    assert all(r.saliency_macs == 0 for r in curve)
    with torch.no_grad():
        pred = teacher_forward(teacher, images, policy, 4).argmax(1)
        full = teacher(images).argmax(1)
    assert curve[0].agreement == pytest.approx(float((pred == full).float().mean()))
