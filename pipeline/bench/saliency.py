"""``mkd-pipeline bench saliency``: what the offline saliency pass costs, counted, not timed.

Offline, every student-guided label pays one student saliency forward (docs/design.md §2). For
each (student, teacher) pair and saliency scale this counts, with maskedkd's FLOP counter on
``meta``-device models (no weights, no memory): the student's full forward, its saliency forward
(:func:`maskedkd.saliency_macs`: stopped at the last block's ``q . k``; at a scale below 1 on the
downscaled view, :func:`maskedkd.saliency_size`), the saliency's share of the full teacher, and
the net cost of a label at each keep (masked teacher + saliency) against full-teacher KD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from maskedkd import check_maskable, saliency_macs, saliency_size, teacher_macs
from pipeline.models import create_model


@dataclass(frozen=True)
class Pair:
    """A student and the teacher it distils from: timm names and ``create_model`` kwargs."""

    student: str
    teacher: str
    student_kwargs: dict[str, Any]
    teacher_kwargs: dict[str, Any]
    label: str


def default_keeps(num_patches: int) -> list[int]:
    """Half and a quarter of the teacher's patches, rounded up (98 and 49 of 196; 25 and 13 of 49)."""
    return [(num_patches + 1) // 2, (num_patches + 3) // 4]


def pair_costs(pair: Pair, keeps: Sequence[int] | None, scales: Sequence[float]) -> list[dict[str, Any]]:
    """One record per scale: the student's full and saliency MACs per view, the teacher's full
    MACs and, per keep, its masked MACs and the net ratio against the full teacher."""
    with torch.device("meta"):
        student = create_model(pair.student, pair.student_kwargs).eval()
        teacher = create_model(pair.teacher, pair.teacher_kwargs).eval()
    n = int(check_maskable(teacher).patch_embed.num_patches)
    full, forward = teacher_macs(teacher, None), teacher_macs(student, None)
    rows = []
    for scale in scales:
        sal = saliency_macs(student, scale)
        rows.append({
            "pair": pair.label, "student": pair.student, "teacher": pair.teacher, "scale": scale,
            "saliency_size": list(saliency_size(student, scale)), "student_forward_macs": forward,
            "saliency_macs": sal, "teacher_full_macs": full, "patches": n,
            "keeps": [{"keep": k, "teacher_macs": teacher_macs(teacher, k), "net_macs": teacher_macs(teacher, k) + sal,
                       "teacher_ratio": teacher_macs(teacher, k) / full,
                       "net_ratio": (teacher_macs(teacher, k) + sal) / full}
                      for k in (keeps or default_keeps(n))],
        })
    return rows


def run_bench(pairs: Sequence[Pair], keeps: Sequence[int] | None, scales: Sequence[float]) -> dict[str, Any]:
    """Every pair at every scale (see the module doc)."""
    return {"rows": [r for p in pairs for r in pair_costs(p, keeps, scales)]}


def saliency_table(result: dict[str, Any]) -> str:
    """Markdown of :func:`run_bench`'s record."""
    lines = ["| student -> teacher | saliency view | student forward GMACs | saliency GMACs/view (of the forward) "
             "| saliency / full teacher | net at keep (teacher-only) |", "|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        h, w = r["saliency_size"]
        nets = ", ".join(f"{k['keep']}/{r['patches']}: {k['net_ratio']:.3f}x ({k['teacher_ratio']:.3f}x)"
                         for k in r["keeps"])
        lines.append(f"| {r['pair']} | {r['scale']:g} ({h}x{w} px) | {r['student_forward_macs'] / 1e9:.4g} | "
                     f"{r['saliency_macs'] / 1e9:.4g} ({r['saliency_macs'] / r['student_forward_macs']:.1%}) | "
                     f"{r['saliency_macs'] / r['teacher_full_macs']:.3f} | {nets} |")
    return "\n".join(lines)
