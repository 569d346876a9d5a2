"""Fidelity curves as a table and a plot: what each keep costs the teacher (``mkd-pipeline probe``
and the run report's spot-check section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from maskedkd import Budget, Rung
from pipeline._atomic import write_atomic

Curve = Sequence[Mapping[str, Any]]  # maskedkd.Rung.to_dict() rows


def _keep(rung: Mapping[str, Any], num_patches: int) -> int:
    return num_patches if rung["keep"] is None else int(rung["keep"])


def curve_table(curves: Mapping[str, Curve], num_patches: int, chosen: Mapping[str, int | None] | None = None) -> list[str]:
    """Markdown rows: one line per (curve, keep) with top-1, agreement, KL and GMACs per view, the
    teacher's and net (with the student's saliency pass, which ``keep: auto`` never lets exceed
    the full teacher's; rows recorded before it was counted show the teacher's).

    Args:
        curves: label (a policy, or a milestone) -> its rungs.
        chosen: label -> the keep a budget chose from that curve, marked in the table.
    """
    lines = ["| curve | keep | kept | teacher top-1 | agreement with unmasked | KL(unmasked ‖ masked) | GMACs/view "
             "| net GMACs/view |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, curve in curves.items():
        for r in curve:
            k = _keep(r, num_patches)
            mark = " ←" if chosen is not None and label in chosen and _chosen(chosen[label], num_patches) == k else ""
            lines.append(f"| {label} | {k}{mark} | {k / num_patches:.1%} | {r['top1']:.4f} | {r['agreement']:.4f} | "
                         f"{r['kl']:.4f} | {r['macs'] / 1e9:.4f} | {(r['macs'] + r.get('saliency_macs', 0)) / 1e9:.4f} |")
    return lines


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
    half = min(masked, key=lambda r: abs(_keep(r, num_patches) - num_patches / 2))
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


def _chosen(keep: int | None, num_patches: int) -> int:
    return num_patches if keep is None else keep


def plot_curves(path: str | Path, curves: Mapping[str, Curve], num_patches: int, title: str) -> None:
    """Agreement with the unmasked teacher and KL against the share of patches kept, one line per curve."""
    # lazy: `mkd-pipeline --help` imports this module (through run/cli.py); pyplot would add about 1 s
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for label, curve in curves.items():
        xs = [_keep(r, num_patches) / num_patches for r in curve]
        left.plot(xs, [r["agreement"] for r in curve], marker="o", label=label)
        right.plot(xs, [r["kl"] for r in curve], marker="o", label=label)
    left.set_ylabel("top-1 agreement with unmasked")
    right.set_ylabel("KL(unmasked ‖ masked), nats")
    for ax in (left, right):
        ax.set_xlabel("share of patches kept")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(Path(path), lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
