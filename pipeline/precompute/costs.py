"""What a label costs in multiply-adds beyond the teacher's forward: the student's saliency pass
and the full teacher it is weighed against, counted by maskedkd's FLOP counter on ``meta``-device
models built from the config (no memory, no weights; the count does not depend on them)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from maskedkd import saliency_macs, teacher_macs
from pipeline.models import create_model

_CACHE: dict[tuple[str, str, float], int] = {}


def _counted(kind: str, section, scale: float = 1.0) -> int:
    key = (kind, repr((section.model, sorted(dict(section.kwargs or {}).items()))), scale)
    if key not in _CACHE:
        with torch.device("meta"):
            model = create_model(section.model, section.kwargs).eval()
        _CACHE[key] = saliency_macs(model, scale) if kind == "saliency" else teacher_macs(model, None)
    return _CACHE[key]


def saliency_macs_per_view(cfg) -> int:
    """MACs of one student saliency forward (:func:`maskedkd.saliency_macs`) of the config's student,
    at ``masking.saliency_scale``."""
    return _counted("saliency", cfg.student, cfg.masking.saliency_scale)


def full_teacher_macs_per_view(cfg) -> int:
    """MACs of one unmasked forward of the config's teacher (what full-teacher KD pays per label)."""
    return _counted("teacher", cfg.teacher)


def net_cost_fields(cfg, summary: Mapping[str, Any], spot_check_macs: int | None) -> dict[str, int]:
    """A precompute stage's cost fields beside its ``teacher_macs`` (which already includes the
    auto-keep spot-checks): ``saliency_macs`` (student forwards x one saliency forward),
    ``spot_check_macs`` (only when the spot-check ran), ``net_macs`` (teacher + saliency + the
    summary's ``reuse_check_macs``: the teacher re-run on rows reused under ``masking.tolerance``)
    and ``full_teacher_macs`` (rows x the unmasked teacher)."""
    saliency = int(summary["student_forwards"]) * saliency_macs_per_view(cfg) if summary["student_forwards"] else 0
    spot = {} if spot_check_macs is None else {"spot_check_macs": int(spot_check_macs)}
    net = int(summary["teacher_macs"]) + saliency + int(summary.get("reuse_check_macs") or 0)
    return {"saliency_macs": saliency, **spot, "net_macs": net,
            "full_teacher_macs": int(summary["rows"]) * full_teacher_macs_per_view(cfg)}


def recorded_reuse_check_macs(info: Mapping[str, Any]) -> int | None:
    """A precompute stage's recorded ``reuse_check_macs``; for a lock written before it was recorded,
    0 when no row was spot-checked under tolerance (nothing was spent), else None (not recorded)."""
    if "reuse_check_macs" in info:
        return int(info["reuse_check_macs"])
    return None if info.get("spot_check_rows") else 0
