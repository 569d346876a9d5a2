"""The top of a run's report: the two questions a user asks, answered at a glance. Is the student
better than without the teacher (its final val top-1, beside a baseline run's when one is given)?
What did the labels cost net (teacher + the student's saliency forwards + spot-checks + the teacher
re-run on rows reused under tolerance, against full-teacher KD on the same rows)?"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.report.baseline import Baseline
from pipeline.report.fmt import fmt_number

NOT_RECORDED = "not recorded"


def _final_top1(data: Mapping[str, Any]) -> float | None:
    ep = [e for e in data["epochs"] if "val_top1" in e]
    return ep[-1]["val_top1"] if ep else None


def accuracy_line(data: Mapping[str, Any], baseline: Baseline | None) -> str:
    """The student's final val top-1, and the baseline student's beside it when given."""
    top1 = _final_top1(data)
    line = f"**Student:** final val top-1 {fmt_number(top1)}"
    if baseline is None:
        return line + " (no baseline given: `run --baseline RUN_DIR_OR_STAGE_FILE` shows a comparison run beside it)."
    diff = "" if top1 is None or baseline.top1 is None else f", {100 * (top1 - baseline.top1):+.2f} points"
    return line + f"; baseline {baseline.label}: {fmt_number(baseline.top1)}{diff}."


def _share(part: int | None, full: int) -> str:
    return NOT_RECORDED if part is None else f"{part / full:.2f}x"


def cost_line(segments: list[Mapping[str, Any]]) -> str:
    """The labels' net cost against full-teacher KD on the same rows, with its parts.

    ``net_macs``, ``saliency_macs``, ``spot_check_macs`` or ``reuse_check_macs`` missing from any
    labelled segment (a lock written before they were recorded) makes that part "not recorded"."""
    full = sum(int(s["full_teacher_macs"]) for s in segments)
    if not full:
        return "**Labels' cost:** no teacher labels in this run (cross-entropy only)."
    teacher = sum(int(s["teacher_macs"]) - int(s.get("spot_check_macs") or 0) for s in segments)

    def total(key: str) -> int | None:
        vals = [s.get(key) for s in segments if s["full_teacher_macs"]]
        return None if any(v is None for v in vals) else sum(int(v or 0) for v in vals)

    net, saliency, reuse = total("net_macs"), total("saliency_macs"), total("reuse_check_macs")
    spot = sum(int(s.get("spot_check_macs") or 0) for s in segments)
    parts = (f"teacher {teacher / full:.2f}x + saliency {_share(saliency, full)} + spot-checks {spot / full:.2f}x"
             f" + reuse checks {_share(reuse, full)}")
    if net is None:
        return (f"**Labels' cost:** net {NOT_RECORDED} (this run's lock predates the saliency or reuse-check count); teacher MACs "
                f"incl. spot-checks {sum(int(s['teacher_macs']) for s in segments) / full:.2f}x of the full teacher's "
                f"({parts}).")
    verdict = (" That is **more than not masking** (full-teacher KD would have cost less)." if net > full
               else " That is a net saving against full-teacher KD." if net < full else "")
    return f"**Labels' cost:** {net / full:.2f}x of the full teacher's MACs net ({parts}).{verdict}"


def headline_lines(data: Mapping[str, Any], baseline: Baseline | None) -> list[str]:
    """The report's opening lines (after its title), from :func:`pipeline.report.run_report.collect`'s data."""
    return [accuracy_line(data, baseline), "", cost_line(data["segments"]), ""]
