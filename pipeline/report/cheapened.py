"""The paper's figure: the teacher's top-1 on its cheapened views against the student's top-1 after
distilling from them, one point per row (mean over seeds, seed std as error bars), a marker per
policy and a colour per teacher, the legend naming each row as the tables do.

The teacher's side is what the precompute stages recorded: its top-1 on the training views it
labelled (masked, merged or downsampled as the row's policy does), averaged over milestones. A
full-teacher row without that record (an online one) stands at the teacher's unmasked test top-1;
a cheapened row without it is left out and named."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.report.collect import RunOutcome  # noqa: E402
from pipeline.report.figures import save_with_legend  # noqa: E402
from pipeline.report.fmt import mean_std  # noqa: E402
from pipeline.report.names import teacher_name  # noqa: E402

__all__ = ["CheapenedPoint", "cheapened_figure", "cheapened_points", "teacher_view_top1"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class CheapenedPoint:
    """One row of the figure: teacher top-1 on its views (x) and student top-1 (y), mean and seed std."""

    row: str
    teacher: str  # as the Teachers table names it: the colour
    policy: str  # the marker
    x: float
    x_std: float | None
    y: float
    y_std: float | None
    seeds: int
    unmasked: bool  # x is the teacher's unmasked test top-1 (no labelled views recorded)


def _full_teacher(r: RunOutcome) -> bool:
    return r.policy == "none" or r.keep is None or (r.num_patches > 0 and r.keep == r.num_patches)


def teacher_view_top1(r: RunOutcome) -> tuple[float, bool] | None:
    """A finished KD run's x: its teacher's top-1 on the views it labelled, mean over milestones; a
    full-teacher run without that record: the teacher's unmasked test top-1 (True); else None."""
    if r.masked_top1:
        return statistics.fmean(v for _, v in r.masked_top1), False
    if _full_teacher(r) and r.teacher_top1 is not None:
        return r.teacher_top1, True
    return None


def cheapened_points(rows: dict[str, list[RunOutcome]], order: list[str]) -> tuple[list[CheapenedPoint], list[str]]:
    """The figure's points, rows in ``order`` (the table's), and the KD rows left out for want of
    the teacher's top-1 on its views."""
    points, left_out = [], []
    for row in order:
        done = [r for r in rows.get(row, []) if r.finished and r.top1 is not None and r.kd != "off"]
        xs = [(r, teacher_view_top1(r)) for r in done]
        got = [(r, x) for r, x in xs if x is not None]
        if not got:
            left_out += [row] if done else []
            continue
        (x, x_std), (y, y_std) = mean_std([x[0] for _, x in got]), mean_std([r.top1 for r, _ in got if r.top1 is not None])
        first = got[0][0]
        points.append(CheapenedPoint(row, teacher_name(first), first.policy, x, x_std, y, y_std, len(got),
                                     all(x[1] for _, x in got)))
    return points, left_out


def cheapened_figure(path: Path, points: list[CheapenedPoint], baselines: dict[str, float] | None = None) -> list[str]:
    """Draw the points (and each ``baselines`` row, name -> student top-1, as a horizontal line);
    returns the legend's labels (empty: nothing to plot, no file written)."""
    if not points:
        return []
    markers = dict(zip(dict.fromkeys(p.policy for p in points), itertools.cycle(_MARKERS)))
    tab10 = plt.get_cmap("tab10")
    colours = {t: tab10(i % 10) for i, t in enumerate(dict.fromkeys(p.teacher for p in points))}
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    for p in points:
        ax.errorbar(100 * p.x, 100 * p.y, xerr=None if p.x_std is None else 100 * p.x_std,
                    yerr=None if p.y_std is None else 100 * p.y_std, fmt=markers[p.policy], color=colours[p.teacher],
                    mfc="none" if p.unmasked else colours[p.teacher], ms=8, capsize=3, label=p.row)
    for (name, top1), ls in zip((baselines or {}).items(), itertools.cycle((":", "-."))):
        ax.axhline(100 * top1, color="k", ls=ls, lw=1, label=name)
    ax.set_xlabel("teacher top-1 % on the views it labelled (mean over milestones; hollow: unmasked test images)")
    ax.set_ylabel("student test top-1 % after distilling")
    ax.set_title("The teacher on its cheapened views against the student it trains")
    ax.grid(alpha=0.3)
    return save_with_legend(fig, ax, path)
