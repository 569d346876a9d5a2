"""The page's answer per teacher (pipeline/report/cheapest.py) on hand-made run outcomes."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.cheapest import cheapest_lines, row_cost
from pipeline.report.collect import RunOutcome
from pipeline.report.results import render_results
from pipeline.report.spec import Cheapest, ResultsSpec

FULL = "t: full-teacher KD"


def _run(row: str, seed: int, top1: float, net: float, kd: str = "kl") -> RunOutcome:
    """A finished run whose labels cost ``net`` x full-teacher KD's MACs net (half of it teacher-only)."""
    r = RunOutcome(config=Path(f"exp/{row.replace(' ', '-')}-s{seed}.yaml"), name=f"{row}-{seed}", row=row, seed=seed,
                   online=False, kd=kd, policy="student", keep=8, every=[0], tolerance=0, pool="epochs", lr=1e-3,
                   epochs=2, train_samples=100, num_patches=16, finished=True, top1=top1, sizes="tiny")
    if kd != "off":
        r.full_macs, r.label_macs = 10**10, int(net * 10**10 / 2)
        r.saliency_macs = int(net * 10**10) - r.label_macs
    return r


def _rows(*runs: RunOutcome) -> dict[str, list[RunOutcome]]:
    rows: dict[str, list[RunOutcome]] = {}
    for r in runs:
        rows.setdefault(r.row, []).append(r)
    return rows


# full-teacher KD: 81.00 ± 1.00 over 3 seeds, so the bar is 2 points below it (79.00)
BASE = [_run(FULL, s, v, 1.0) for s, v in enumerate((0.80, 0.81, 0.82))]
SPEC = Cheapest("the teacher", "t:", FULL)


def test_the_cheapest_row_within_the_bar_is_named():
    rows = _rows(*BASE, *(_run("t: masked 70", s, 0.80, 0.7) for s in range(3)),
                 *(_run("t: random 50", s, 0.795, 0.5) for s in range(3)),
                 *(_run("t: tiny 30", s, 0.70, 0.3) for s in range(3)))  # cheapest, but 11 points below
    line, = cheapest_lines(rows, SPEC)
    assert line.startswith("- **the teacher**: **t: random 50** is the cheapest within twice full-KD's seed std")
    assert "79.50 (-1.50 points) at 0.50x full-teacher KD's net MACs." in line
    assert "the bar: within 2.00 points" in line and "Also within: t: masked 70 (0.70x)." in line
    assert "tiny 30" not in line and "seed" not in line.split("net MACs")[1]  # 3 seeds each: nothing flagged


def test_none_within_the_bar_says_so_and_names_the_closest():
    rows = _rows(*BASE, _run("t: masked 50", 0, 0.75, 0.7), _run("t: random 50", 0, 0.78, 0.5),
                 _run("t: random 50", 1, 0.77, 0.5))
    line, = cheapest_lines(rows, SPEC)
    assert "**none** of its 2 row(s) run is within twice full-KD's seed std" in line
    assert "closest: **t: random 50**, 77.50 (-3.50 points) at 0.50x" in line
    assert "(**2 seeds against full-teacher KD's 3**; the rule uses full-teacher KD's std)" in line
    assert line.endswith("Full-teacher KD stays the cheapest way to its accuracy.")


def test_a_row_within_the_bar_on_fewer_seeds_is_flagged():
    rows = _rows(*BASE, _run("t: tome 50", 0, 0.805, 0.5), *(_run("t: masked 70", s, 0.81, 0.7) for s in range(3)))
    line, = cheapest_lines(rows, SPEC)
    assert "**t: tome 50** is the cheapest" in line
    assert "at 0.50x full-teacher KD's net MACs (**1 seed: its own std unknown**; the rule uses full-teacher KD's std)." in line


def test_rows_not_run_and_an_undecidable_bar_are_said():
    unrun = _run("t: lowres 50", 0, 0.0, 0.5)
    unrun.finished, unrun.top1 = False, None
    got = cheapest_lines(_rows(*BASE, _run("t: random 50", 0, 0.80, 0.5), unrun), SPEC)
    assert got[1] == "  - not run yet (may change the answer): t: lowres 50."
    one = cheapest_lines(_rows(BASE[0], _run("t: random 50", 0, 0.80, 0.5)), SPEC)
    assert one == [f"- **the teacher**: not decidable yet: full-teacher KD ({FULL}) has 1 seed, so no seed std to measure against."]
    assert "has no run or record" in cheapest_lines(_rows(_run("t: random 50", 0, 0.80, 0.5)), SPEC)[0]


def test_the_cost_is_net_and_falls_back_to_teacher_only_when_not_recorded():
    r = _run("t: masked 50", 0, 0.8, 0.7)
    assert row_cost(r.row, [r]).ratio == 0.7 and row_cost(r.row, [r]).net  # type: ignore[union-attr]
    r.saliency_macs = None  # a lock that predates the saliency count
    assert (row_cost(r.row, [r]).ratio, row_cost(r.row, [r]).net) == (0.35, False)  # type: ignore[union-attr]
    assert row_cost("CE only", [_run("CE only", 0, 0.79, 0, kd="off")]) is None  # no labels to cost


def test_a_listed_teacher_ignores_its_other_rows_and_the_page_opens_with_the_answer(tmp_path):
    listed = Cheapest("the teacher", ("t: random 50",), FULL)
    rows = _rows(*BASE, _run("t: random 50", 0, 0.80, 0.5), _run("t: online 50", 0, 0.81, 0.3))
    assert "online" not in "".join(cheapest_lines(rows, listed)) and listed.has("t: random 50") and not listed.has(FULL)
    page = render_results([r for rs in rows.values() for r in rs], tmp_path / "page.md",
                          ResultsSpec(title="T", cheapest=(listed,)))
    lines = page.splitlines()
    assert lines[0] == "# T" and lines[2].startswith("## The answer: per teacher")
    assert lines[6].startswith("- **the teacher**: **t: random 50** is the cheapest")
    assert page.index("## The answer") < page.index("Generated by")
    assert "## The answer" not in render_results(BASE, tmp_path / "other.md")  # no [[cheapest]]: no section
