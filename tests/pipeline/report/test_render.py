"""The generic results page (pipeline/report/results.py) on hand-made run outcomes: no runs, no spec needed."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.collect import RunOutcome
from pipeline.report.results import render_results
from pipeline.report.spec import ResultsSpec, Target


def _run(row: str, seed: int, top1: float | None, kd: str = "kl") -> RunOutcome:
    r = RunOutcome(config=Path(f"exp/{row.replace(' ', '-')}-s{seed}.yaml"), name=f"{row}-{seed}", row=row, seed=seed,
                   online=False, kd=kd, policy="student", keep=8, every=[0], tolerance=0, pool="epochs", lr=1e-3,
                   epochs=2, train_samples=100, num_patches=16)
    if top1 is not None:
        r.finished, r.top1, r.label_macs, r.full_macs, r.sizes = True, top1, 5 * 10**9, 10**10, "tiny"
    return r


RUNS = [_run("zeta", 0, 0.70), _run("zeta", 1, 0.72), _run("alpha", 0, 0.60), _run("alpha", 1, None),
        _run("base", 0, 0.50, kd="off")]


def _table_rows(text: str) -> list[str]:
    main = text.split("## Main table", 1)[1].split("## Targets", 1)[0]
    return [line.split(" | ")[0][2:] for line in main.splitlines() if line.startswith("| ") and not line.startswith("| row |")]


def test_without_a_spec_any_runs_give_a_page_in_alphabetical_order(tmp_path):
    text = render_results(RUNS, tmp_path / "page.md")
    assert text.startswith("# Results\n") and "--spec" not in text.splitlines()[2]
    assert "`mkd-pipeline report --results exp/*.yaml --out " in text
    assert _table_rows(text) == ["alpha", "base", "zeta"]
    assert "| alpha | 60.00 (1 seed) |" in text and "exp/alpha-s1.yaml` (not run)" in text
    assert "| zeta | 71.00 ± 1.41 (n=2: 70.00, 72.00) |" in text
    targets, comparisons = text.split("## Targets (computed)", 1)[1].split("## Comparisons (computed)", 1)
    assert "- nothing to compare yet." in targets and "- nothing to compare yet." in comparisons
    assert "KD matters" not in text


def test_a_spec_orders_the_rows_and_computes_its_pairs_and_targets(tmp_path):
    spec = ResultsSpec(path="exp/spec.toml", title="My experiment", how_to_run="Run exp/run.sh first.",
                       rows=("zeta", "alpha"), pairs=(("zeta", "alpha"), ("zeta", "never run")),
                       targets=(Target("alpha", "zeta", 0.6, "alpha, cheaply"), Target("gone", "zeta", 0.5, "no such row")))
    text = render_results(RUNS, tmp_path / "page.md", spec)
    assert text.startswith("# My experiment\n") and "`mkd-pipeline report --spec exp/spec.toml --results" in text
    assert "do not edit by hand. Run exp/run.sh first." in text
    assert _table_rows(text) == ["zeta", "alpha", "base"]
    assert "- **zeta** − **alpha**: +11.00 points (n=2 vs 1)" in text and "never run" not in text
    # alpha: 10 points below zeta, more than twice zeta's std (1.41), at 0.5x its MACs
    assert "- alpha, cheaply: **missed**." in text and "no such row" not in text
