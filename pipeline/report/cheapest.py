"""The results page's answer, per teacher: the cheapest way to labels that train as well as the full
teacher's. Of the teacher's rows run, the one cheapest by net MACs (the labels' teacher MACs plus the
student's saliency forwards and the reuse checks, against full-teacher KD's on the same training
samples) whose mean top-1 is within twice full-teacher KD's seed std of full-teacher KD's mean; or
that none is, and which came closest. The bar is full-teacher KD's std: a row of fewer seeds is
measured against it all the same, and flagged."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from pipeline.report.collect import RunOutcome
from pipeline.report.fmt import mean_std, percent
from pipeline.report.spec import Cheapest

__all__ = ["RowCost", "answer_lines", "cheapest_lines", "row_cost"]


@dataclass(frozen=True)
class RowCost:
    """One row's finished seeds: mean top-1, how many seeds, and its labels' MACs against full-teacher
    KD's (``net`` False: a seed's lock predates the net count, so teacher-only)."""

    row: str
    top1: float
    seeds: int
    ratio: float
    net: bool


def row_cost(row: str, runs: list[RunOutcome]) -> RowCost | None:
    """What the answer needs of one row (None: no finished seed, or no teacher labels to cost)."""
    done = [r for r in runs if r.finished and r.top1 is not None and r.full_macs]
    if not done:
        return None
    nets = [r.net_label_macs for r in done]
    net = all(v is not None for v in nets)
    ratio = statistics.fmean((n if net and n is not None else r.label_macs) / r.full_macs for r, n in zip(done, nets))
    return RowCost(row, statistics.fmean(r.top1 for r in done if r.top1 is not None), len(done), ratio, net)


def _cost(c: RowCost) -> str:
    return f"{c.ratio:.2f}x full-teacher KD's " + ("net MACs" if c.net else "teacher MACs (net not recorded)")


def _seeds_flag(c: RowCost, full_seeds: int) -> str:
    """Say when a row stands on fewer seeds than the full-teacher KD it is measured against."""
    if c.seeds >= full_seeds:
        return ""
    own = "1 seed: its own std unknown" if c.seeds == 1 else f"{c.seeds} seeds against full-teacher KD's {full_seeds}"
    return f" (**{own}**; the rule uses full-teacher KD's std)"


def cheapest_lines(rows: dict[str, list[RunOutcome]], c: Cheapest) -> list[str]:
    """The answer for one teacher, in plain words: a line, and the rows not run yet when there are any."""
    head = f"- **{c.teacher}**: "
    full = [r.top1 for r in rows.get(c.full, []) if r.finished and r.top1 is not None]
    if len(full) < 2:
        why = "has no run or record" if not full else "has 1 seed, so no seed std to measure against"
        return [head + f"not decidable yet: full-teacher KD ({c.full}) {why}."]
    full_mean, full_std = mean_std(full)
    assert full_std is not None  # two seeds or more
    bar = 2 * 100 * full_std
    mine = sorted(row for row in rows if c.has(row))
    costs = [x for x in (row_cost(row, rows[row]) for row in mine) if x is not None]
    not_run = [row for row in mine if not any(r.finished for r in rows[row])]
    ref = (f"**{c.full}** ({percent(full_mean)}, n={len(full)}; the bar: within {bar:.2f} points, "
           f"twice its seed std)")
    within = sorted((x for x in costs if 100 * (x.top1 - full_mean) >= -bar), key=lambda x: (x.ratio, -x.top1))
    if within:
        best = within[0]
        line = (head + f"**{best.row}** is the cheapest within twice full-KD's seed std of {ref}: "
                f"{percent(best.top1)} ({100 * (best.top1 - full_mean):+.2f} points) at {_cost(best)}"
                + _seeds_flag(best, len(full)) + ".")
        if best.ratio >= 1:
            line += " It costs no less than full-teacher KD: no cheaper row qualifies."
        others = [f"{x.row} ({x.ratio:.2f}x{_seeds_flag(x, len(full))})" for x in within[1:]]
        line += f" Also within: {'; '.join(others)}." if others else ""
    elif costs:
        near = max(costs, key=lambda x: x.top1)
        line = (head + f"**none** of its {len(costs)} row(s) run is within twice full-KD's seed std of {ref}; "
                f"closest: **{near.row}**, {percent(near.top1)} ({100 * (near.top1 - full_mean):+.2f} points) at "
                f"{_cost(near)}{_seeds_flag(near, len(full))}. Full-teacher KD stays the cheapest way to its accuracy.")
    else:
        line = head + f"no row of this teacher run yet (measured against {ref})."
    return [line] + ([f"  - not run yet (may change the answer): {'; '.join(not_run)}."] if not_run and (within or costs) else [])


def answer_lines(rows: dict[str, list[RunOutcome]], cheapest: tuple[Cheapest, ...]) -> list[str]:
    """The page's opening section: one answer per teacher of the spec (none: no section)."""
    if not cheapest:
        return []
    lines = ["## The answer: per teacher, the cheapest labels that train as well as full-teacher KD's", "",
             "The row cheapest by net MACs (the labels' teacher MACs plus the student's saliency forwards and reuse "
             "checks, against full-teacher KD's on the same training samples) whose mean student top-1 is within "
             "twice full-teacher KD's seed std of full-teacher KD's mean (computed from the rows run below):", ""]
    for c in cheapest:
        lines += cheapest_lines(rows, c)
    return lines + [""]
