"""``mkd-pipeline probe``'s advice (pipeline/report/fidelity.py): a teacher whose agreement at half
the patches falls short of the budget is told to fine-tune with token dropping."""

from __future__ import annotations

from maskedkd import Budget
from pipeline.report.advice import PROBE_BUDGET, finetune_advice


def curve(agreement_at_half: float) -> list[dict]:
    return [{"keep": None, "top1": 0.9, "agreement": 1.0, "kl": 0.0, "macs": 100},
            {"keep": 12, "top1": 0.5, "agreement": 0.5, "kl": 1.0, "macs": 30},
            {"keep": 24, "top1": 0.7, "agreement": agreement_at_half, "kl": 0.3, "macs": 50},
            {"keep": 36, "top1": 0.85, "agreement": 0.95, "kl": 0.1, "macs": 75}]


def test_a_teacher_short_of_the_budget_at_half_the_patches_is_told_to_fine_tune():
    lines = finetune_advice(curve(0.722), 49, None, label="policy random", fine_tuned=False)
    assert "keep 24/49" in lines[0] and "agreement 0.722" in lines[0] and str(PROBE_BUDGET) in lines[0]
    text = "\n".join(lines)
    assert "teacher.train block with patch_drop_rate: 0.5" in text and "patch_drop_rate: 0.5}" in text


def test_a_robust_teacher_gets_no_advice_and_a_fine_tuned_one_is_told_to_train_longer():
    assert finetune_advice(curve(0.92), 49, None, label="policy random", fine_tuned=False) == []
    assert finetune_advice(curve(0.92), 49, Budget(agreement=0.95), label="x", fine_tuned=False) != []
    lines = finetune_advice(curve(0.8), 49, Budget(kl=0.1), label="x", fine_tuned=True, patch_drop_rate=0.5)
    assert "KL 0.3000" in lines[0] and "more epochs" in lines[1]
    assert finetune_advice(curve(0.8)[:1], 49, None, label="x", fine_tuned=False) == []  # no masked rung
