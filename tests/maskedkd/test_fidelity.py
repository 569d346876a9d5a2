"""The fidelity curve of a masked teacher and the keep a budget chooses (maskedkd/fidelity.py)."""

from __future__ import annotations

import pytest
import timm
import torch

from maskedkd import (
    Budget,
    Rung,
    choose_keep,
    fidelity_curve,
    keep_indices,
    ladder_keeps,
    masked_forward,
    saliency_macs,
    teacher_macs,
)

from .conftest import SMALL, make_model


def _views(n: int = 24):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g), list(range(100, 100 + n))


def test_ladder_keeps_rounds_dedups_and_spells_all_as_none():
    assert ladder_keeps((0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0), 196) == [49, 74, 98, 122, 147, 172, None]
    assert ladder_keeps((0.5, 0.5, 0.01, 1.0), 16) == [1, 8, None]


@pytest.mark.parametrize("policy", ["student", "random", "student_inverse"])
def test_curve_against_the_unmasked_teacher(policy):
    teacher, student = make_model("vit", seed=0), make_model("deit", seed=1)
    images, labels, seeds = _views()
    n = teacher.patch_embed.num_patches
    curve = fidelity_curve(teacher, images, labels, [4, 8, n], policy, seeds=seeds, student=student,
                           student_images=images, batch_size=10)
    assert [r.keep for r in curve] == [4, 8, None]
    full = curve[-1]
    with torch.no_grad():
        pred = teacher(images).argmax(1)
    assert full.agreement == 1.0 and full.kl == 0.0
    assert full.top1 == pytest.approx(float((pred == labels).float().mean()))
    assert full.macs == teacher_macs(teacher, None) > curve[1].macs > curve[0].macs
    for r in curve[:-1]:
        assert 0.0 <= r.agreement <= 1.0 and r.kl >= 0.0
    # a masked rung really masks: at 4 of 16 patches the random-weight teacher disagrees somewhere
    assert curve[0].kl > 0.0
    # deterministic: same views, seeds and student, same numbers (batching does not matter)
    again = fidelity_curve(teacher, images, labels, [4], policy, seeds=seeds, student=student,
                           student_images=images, batch_size=7)
    assert again[0] == curve[0]


def test_rung_kl_and_agreement_match_a_direct_computation():
    teacher = make_model("vit", seed=0)
    images, labels, seeds = _views(12)
    (rung,) = fidelity_curve(teacher, images, labels, [6], "random", seeds=seeds)
    kidx = keep_indices("random", 6, grid=teacher.patch_embed.grid_size, seeds=seeds)
    with torch.no_grad():
        full, masked = teacher(images), masked_forward(teacher, images, kidx)
    p, q = full.log_softmax(1), masked.log_softmax(1)
    assert rung.kl == pytest.approx(float((p.exp() * (p - q)).sum(1).mean()), rel=1e-5)
    assert rung.agreement == pytest.approx(float((full.argmax(1) == masked.argmax(1)).float().mean()))


def _rung(keep, agreement, kl):
    return Rung(keep=keep, top1=0.5, agreement=agreement, kl=kl, macs=1)


def test_choose_keep_takes_the_smallest_keep_within_budget():
    curve = [_rung(4, 0.70, 0.9), _rung(8, 0.96, 0.05), _rung(12, 0.97, 0.02), _rung(None, 1.0, 0.0)]
    assert choose_keep(curve, Budget(agreement=0.95)) == 8
    assert choose_keep(curve, Budget(agreement=0.6)) == 4
    assert choose_keep(curve, Budget(kl=0.03)) == 12
    assert choose_keep(curve, Budget(agreement=0.99)) is None  # none meets it: all patches
    assert choose_keep(curve, Budget(kl=0.0)) is None


@pytest.mark.parametrize("kw", [{}, {"agreement": 0.9, "kl": 0.1}, {"agreement": 1.5}, {"kl": -1.0}])
def test_budget_is_one_bound(kw):
    with pytest.raises(ValueError):
        Budget(**kw)


def test_teacher_trained_with_patch_dropping_is_served_unchanged():
    """timm's patch_drop_rate drops tokens while training only: in eval the teacher is a plain
    maskable ViT, and keeping all patches is bit-identical to its own forward."""
    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_drop_rate=0.5, **SMALL)
    teacher.train()
    x = torch.randn(2, 3, 32, 32)
    n = teacher.patch_embed.num_patches
    teacher(x).sum().backward()  # trains with dropped tokens
    teacher.eval()
    with torch.no_grad():
        assert torch.equal(masked_forward(teacher, x, torch.arange(n).expand(2, n)), teacher(x))
        masked = masked_forward(teacher, x, torch.arange(0, n, 2).expand(2, n // 2))
    assert masked.shape == (2, 10) and torch.isfinite(masked).all()


def test_choose_keep_never_pays_more_than_the_full_teacher_net():
    """Teacher MACs + the saliency pass above the full teacher's: label with the full teacher."""
    def rung(keep, macs, sal):
        return Rung(keep=keep, top1=0.5, agreement=0.99, kl=0.0, macs=macs, saliency_macs=sal)

    full = rung(None, 100, 0)
    assert choose_keep([rung(8, 50, 40), rung(12, 75, 40), full], Budget(agreement=0.95)) == 8  # 90 <= 100
    assert choose_keep([rung(8, 50, 60), rung(12, 75, 60), full], Budget(agreement=0.95)) is None  # 110, 135
    assert choose_keep([rung(8, 50, 50), full], Budget(agreement=0.95)) == 8  # equal to the full teacher: allowed
    assert rung(8, 50, 60).net_macs == 110
    # a lock written before saliency_macs existed: its rungs load with 0, so its choice stays
    old = {"keep": 8, "top1": 0.5, "agreement": 0.99, "kl": 0.0, "macs": 50}
    assert choose_keep([Rung(**old), full], Budget(agreement=0.95)) == 8


def test_curve_counts_the_saliency_pass_of_saliency_policies_only():
    teacher, student = make_model("vit", seed=0), make_model("deit", seed=1)
    images, labels, seeds = _views(8)
    n = teacher.patch_embed.num_patches
    sal = saliency_macs(student)
    assert 0 < sal < teacher_macs(student, None)  # the student's forward up to its last attention
    for policy, want in (("student", sal), ("student_inverse", sal), ("random", 0)):
        curve = fidelity_curve(teacher, images, labels, [4, n], policy, seeds=seeds, student=student,
                               student_images=images)
        assert [r.saliency_macs for r in curve] == [want, 0]
        assert curve[0].net_macs == curve[0].macs + want


def test_the_probe_reads_saliency_under_the_autocast_precompute_uses(monkeypatch):
    # precompute chooses keep sets under the task's autocast; the probe must measure those masks
    from maskedkd import fidelity

    teacher, student = make_model("vit", seed=0), make_model("deit", seed=1)
    images, labels, seeds = _views(8)
    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return keep_indices(*args, **kwargs)

    monkeypatch.setattr(fidelity, "keep_indices", spy)
    fidelity_curve(teacher, images, labels, [4], "student", seeds=seeds, student=student, student_images=images,
                   batch_size=8, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert seen == [True]


def test_keep_choice_says_why_the_full_teacher_was_taken():
    from maskedkd import keep_choice

    def rung(keep, macs, sal, agreement=0.99):
        return Rung(keep=keep, top1=0.5, agreement=agreement, kl=0.0, macs=macs, saliency_macs=sal)

    full = rung(None, 100, 0)
    keep, why = keep_choice([rung(8, 50, 60), rung(12, 75, 60), full], Budget(agreement=0.95))
    assert keep is None and "keep 8 is within the budget (agreement >= 0.95) but costs 1.10x" in why
    assert "saliency 0.60x" in why and "no saliency pass" in why
    keep, why = keep_choice([rung(8, 50, 20, agreement=0.5), rung(12, 75, 20), full], Budget(agreement=0.95))
    assert keep == 12 and why == "the smallest keep within the budget (agreement >= 0.95), net 0.95x the full teacher's MACs"
    keep, why = keep_choice([rung(8, 50, 20, agreement=0.5), full], Budget(agreement=0.95))
    assert keep is None and why == "no keep within the budget (agreement >= 0.95)"


def test_policy_choice_takes_the_cheapest_net_macs_within_the_budget_and_says_why():
    from maskedkd import policy_choice

    def rung(keep, macs, sal=0, agreement=0.99):
        return Rung(keep=keep, top1=0.5, agreement=agreement, kl=0.0, macs=macs, saliency_macs=sal)

    full = rung(None, 100)
    curves = {
        "student": [rung(25, 50, 20), rung(37, 75, 20), full],  # keep 25 within: net 0.70x with its saliency pass
        "random": [rung(25, 50, agreement=0.8), rung(37, 75), full],  # keep 25 short: keep 37, 0.75x
        "lowres": [rung(25, 48), rung(37, 74), full],  # keep 25 within, no saliency pass: 0.48x
    }
    policy, keep, why = policy_choice(curves, Budget(agreement=0.95))
    assert (policy, keep) == ("lowres", 25)
    assert why == ("lowres keep 25 0.48x the full teacher's net MACs, the cheapest of the policies within the budget "
                   "(the smallest keep within the budget (agreement >= 0.95), net 0.48x the full teacher's MACs); "
                   "the others: student keep 25 0.70x; random keep 37 0.75x")
    # the saliency pass decides: the same teacher MACs, but the student policy pays its student forward
    same = {"student": [rung(25, 48, 20), full], "random": [rung(25, 48), full]}
    assert policy_choice(same, Budget(agreement=0.95))[:2] == ("random", 25)
    # a tie goes to the first candidate
    assert policy_choice({"random": [rung(25, 48), full], "lowres": [rung(25, 48), full]},
                         Budget(agreement=0.95))[:2] == ("random", 25)
    # none within the budget: the full teacher, said so
    policy, keep, why = policy_choice({"random": [rung(25, 48, agreement=0.5), full],
                                       "lowres": [rung(25, 48, agreement=0.5), full]}, Budget(agreement=0.95))
    assert (policy, keep) == ("random", None)
    assert why.startswith("no policy is within the budget (agreement >= 0.95) below the full teacher's cost: random "
                          "with all patches (no keep within the budget")
    with pytest.raises(ValueError, match="at least one policy"):
        policy_choice({}, Budget(agreement=0.95))
