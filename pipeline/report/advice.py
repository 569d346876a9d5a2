"""What ``mkd-pipeline probe`` advises when a teacher is not robust to masks: the fine-tune."""

from __future__ import annotations

from maskedkd import Budget, Rung
from pipeline.report.fidelity import Curve, kept

# What `probe` holds a teacher to at half the patches when the config states no masking.budget
# (that is for keep: auto): RESULTS.md's plain teacher agrees 0.72 there, its token-dropping one 0.92.
PROBE_BUDGET = Budget(agreement=0.9)

FINETUNE_EXAMPLE = """  teacher:
    model: ...              # as now (pretrained: true, or weights: FILE)
    kwargs: {num_classes: 10}
    train: {epochs: 2, lr: 1.0e-4, min_lr: 1.0e-6, warmup_epochs: 0, batch_size: 128, patch_drop_rate: 0.5}"""


def finetune_advice(curve: Curve, num_patches: int, budget: Budget | None, *, label: str,
                    fine_tuned: bool, patch_drop_rate: float = 0.0) -> list[str]:
    """What ``probe`` says when the teacher is not mask-robust: its rung nearest half the patches
    falls short of ``budget`` (``None``: :data:`PROBE_BUDGET`); names the fine-tune (a
    ``teacher.train`` block with ``patch_drop_rate``), or more of it when the teacher has one.
    ``[]`` when the rung is within the budget or the curve has no masked rung."""
    budget = budget or PROBE_BUDGET
    masked = [r for r in curve if r["keep"] is not None]
    if not masked:
        return []
    half = min(masked, key=lambda r: abs(kept(r, num_patches) - num_patches / 2))
    rung = Rung(**{k: half[k] for k in ("keep", "top1", "agreement", "kl", "macs")})
    if budget.met(rung):
        return []
    what = f"agreement {rung.agreement:.3f}" if budget.agreement is not None else f"KL {rung.kl:.4f}"
    head = (f"At keep {rung.keep}/{num_patches} ({label}) the masked teacher's {what} falls short of the budget "
            f"({budget}): this teacher is not robust to masks.")
    if fine_tuned and patch_drop_rate:
        return [head, f"Its fine-tune (teacher.train, patch_drop_rate {patch_drop_rate}) does not reach the budget yet: "
                      "more epochs (teacher.train.epochs) may close the gap."]
    return [head, "Fine-tune it with token dropping first: add a teacher.train block with patch_drop_rate: 0.5 (a few "
                  "epochs at a low learning rate; `mkd-pipeline run` then runs stage teacher-finetune before the "
                  "labels), e.g.", FINETUNE_EXAMPLE]
