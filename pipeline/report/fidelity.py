"""Fidelity curves as a table and a plot: what each keep costs the teacher (``mkd-pipeline probe``
and the run report's spot-check section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline._atomic import write_atomic

Curve = Sequence[Mapping[str, Any]]  # maskedkd.Rung.to_dict() rows


def kept(rung: Mapping[str, Any], num_patches: int) -> int:
    """Patches a curve row keeps (its ``keep``; ``None`` means all ``num_patches``)."""
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
            k = kept(r, num_patches)
            mark = " ←" if chosen is not None and label in chosen and _chosen(chosen[label], num_patches) == k else ""
            lines.append(f"| {label} | {k}{mark} | {k / num_patches:.1%} | {r['top1']:.4f} | {r['agreement']:.4f} | "
                         f"{r['kl']:.4f} | {r['macs'] / 1e9:.4f} | {(r['macs'] + r.get('saliency_macs', 0)) / 1e9:.4f} |")
    return lines


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
        xs = [kept(r, num_patches) / num_patches for r in curve]
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
