"""The generic results page (pipeline/report/results.py) on hand-made run outcomes: no runs, no spec needed."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report.collect import RunOutcome
from pipeline.report.names import run_name, teacher_name
from pipeline.report.results import curriculum_figure, render_results
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
                       targets=(Target(("alpha",), "zeta", 0.6, "alpha, cheaply"), Target(("gone",), "zeta", 0.5, "no such row")))
    text = render_results(RUNS, tmp_path / "page.md", spec)
    assert text.startswith("# My experiment\n") and "`mkd-pipeline report --spec exp/spec.toml --results" in text
    assert "do not edit by hand. Run exp/run.sh first." in text
    assert _table_rows(text) == ["zeta", "alpha", "base"]
    assert "- **zeta** − **alpha**: +11.00 points (n=2 vs 1)" in text and "never run" not in text
    # alpha: 10 points below zeta, more than twice zeta's std (1.41), at 0.5x its MACs
    assert "- alpha, cheaply: **missed**." in text and "no such row" not in text


def _tuned(row: str, seed: int, top1: float, net: int | None, finetune_macs: int = 30 * 10**9) -> RunOutcome:
    """A finished run whose teacher was fine-tuned: labels 5 GMACs teacher-only, ``net`` with the saliency."""
    r = _run(row, seed, top1)
    r.saliency_macs = None if net is None else net - r.label_macs
    r.teacher_file = {"weights": "t/ft.safetensors", "config": "t/ft.yaml", "epochs": 1, "test_top1": 0.86,
                      "finetune": {"from": "t/plain.safetensors", "start_top1": 0.88, "macs": finetune_macs, "seconds": 240.0}}
    return r


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_the_main_table_shows_net_costs_beside_teacher_only(tmp_path):
    runs = [_tuned("tuned", 0, 0.7, 7 * 10**9), _tuned("old lock", 0, 0.7, None)]
    text = render_results(runs, tmp_path / "page.md")
    # teacher-only 5.0 GMACs (50%), net 7.0 (70%) of the 10 GMACs full-teacher KD would cost
    assert "| 5.0 | 50% | 7.0 | 70% |" in _line(text, "| tuned |")
    assert "| 5.0 | 50% | - | - |" in _line(text, "| old lock |")  # a lock without the saliency count: not recorded


def test_the_net_columns_count_the_reuse_checks(tmp_path):
    checked, old = _tuned("checked", 0, 0.7, 7 * 10**9), _tuned("old lock", 0, 0.7, 7 * 10**9)
    checked.reuse_check_macs = 10**9  # the teacher re-run on rows reused under tolerance
    old.reuse_check_macs = None  # a lock whose spot-checks ran before they were counted
    assert checked.net_label_macs == 8 * 10**9 and old.net_label_macs is None
    text = render_results([checked, old], tmp_path / "page.md")
    assert "| 5.0 | 50% | 8.0 | 80% |" in _line(text, "| checked |")
    assert "| 5.0 | 50% | - | - |" in _line(text, "| old lock |")


def test_fine_tuned_teachers_state_their_break_even(tmp_path):
    runs = [_tuned("tuned", 0, 0.7, 7 * 10**9), _tuned("tuned", 1, 0.71, 9 * 10**9),
            _tuned("dearer", 0, 0.7, 11 * 10**9), _tuned("unknown", 0, 0.7, None), _run("plain", 0, 0.7)]
    text = render_results(runs, tmp_path / "page.md")
    section = text.split("## Fine-tuned teachers: break-even (computed)", 1)[1].split("## Targets", 1)[0]
    # saving per run: 10 - mean(7, 9) = 2 GMACs; 30 GMACs of fine-tune pay for 15 runs
    assert "| tuned | `t/ft.safetensors` | 30.0 | 4.0 | 10.0 | 8.0 | 2.0 | 15.0 |" in section
    assert _line(section, "| dearer |").endswith("| never (the labels cost no less than full-teacher KD's) |")
    assert _line(section, "| unknown |").endswith("| not recorded |")
    assert "| plain |" not in section  # its teacher was not fine-tuned
    assert "`t/plain.safetensors` (88.00), 30.0" in _line(text, "| `t/ft.safetensors` |")  # the teachers' table
    assert "break-even" not in render_results(RUNS, tmp_path / "other.md")


def test_a_target_of_several_rows_is_met_when_any_row_meets_it(tmp_path):
    runs = [_run("full", 0, 0.70), _run("full", 1, 0.72), _run("ft1", 0, 0.60), _run("ft2", 0, 0.705),
            _run("ft2", 1, 0.715)]
    spec = ResultsSpec(targets=(Target(("ft1", "ft2"), "full", None, "a short fine-tune"),
                                Target(("ft1", "never"), "full", None, "only ft1"),
                                Target(("ft1",), "other full", None, "against a row not run")))
    text = render_results(runs, tmp_path / "page.md", spec)
    assert "- a short fine-tune: **met** by ft2." in text
    assert "  - **ft1**: **missed**." in text and "  - **ft2**: **met**." in text  # accuracy only: no max_ratio
    assert "- only ft1: **not met yet** (a row not measured or not decidable)." in text
    assert "  - **never**: **not measured** (no run or record: never)." in text
    assert "- against a row not run: **not measured** (no run or record: other full)." in text


def test_the_probe_section_opens_with_each_probes_agreement_at_half_the_patches(tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    rung = lambda keep, agreement: {"keep": keep, "top1": 0.8, "agreement": agreement, "kl": 0.1, "macs": 10**6}  # noqa: E731
    for stem, student in (("ft1-m0", 0.61), ("ft1-m4", 0.83)):
        doc = {"num_patches": 49, "source": f"c{stem[-1]}.pth", "samples": 1000, "unmasked_top1": 0.87,
               "curves": {"student": [rung(12, 0.3), rung(25, student), rung(None, 1.0)],
                          "random": [rung(12, 0.5), rung(24, 0.7), rung(25, 0.72)]}}
        (probes / f"{stem}.json").write_text(json.dumps(doc))
    text = render_results(RUNS, tmp_path / "page.md", probes=probes)
    assert "| probe | masks from | views | unmasked top-1 | keep | student | random |" in text
    assert "| ft1-m0 | c0.pth | 1000 | 0.8700 | 25 of 49 | 0.610 | 0.720 |" in text
    assert "| ft1-m4 | c4.pth | 1000 | 0.8700 | 25 of 49 | 0.830 | 0.720 |" in text
    assert "### ft1-m4 (masks from c4.pth, 1000 views" in text and (tmp_path / "results_probe_ft1-m4.png").is_file()
    assert "--probes " + probes.as_posix() in text.splitlines()[2]


def test_the_curriculum_legend_names_each_row_as_the_tables_do(tmp_path):
    # one policy, keep and seed from two teachers: the legend must still tell the curves apart
    runs = [_run(row, 0, 0.8) for row in ("plain teacher: offline MaskedKD 50%", "ft1 teacher: offline MaskedKD 50%")]
    for r, (weights, top1) in zip(runs, (("t/plain.safetensors", 0.887), ("t/ft1.safetensors", 0.871))):
        r.masked_top1, r.teacher_file, r.teacher_top1 = [(0, 0.6), (2, 0.7)], {"weights": weights}, top1
    labels = curriculum_figure(tmp_path / "curriculum.png", runs, {teacher_name(r): r.teacher_top1 for r in runs})
    assert labels[:2] == [run_name(r) for r in runs] and len(set(labels)) == len(labels) == 4
    # each teacher's unmasked line is named by its weights file, as the Teachers table names it
    assert labels[2:] == ["teacher ft1.safetensors, unmasked test images", "teacher plain.safetensors, unmasked test images"]
    assert (tmp_path / "curriculum.png").read_bytes().startswith(b"\x89PNG")
    page = render_results(runs, tmp_path / "RESULTS.md")
    assert all(f"| {run_name(r)} |" in page for r in runs)  # the per-epoch table names them alike


def test_runs_that_relabel_their_views_show_what_reuse_bought(tmp_path):
    fresh = _run("every view new", 0, 0.8)
    fresh.rows, fresh.teacher_forwards = 200, 200
    assert "## Re-labelling" not in render_results([fresh], tmp_path / "RESULTS.md")  # pool epochs, tolerance 0
    tol = _run("one view, tolerance 4", 0, 0.79)
    tol.pool, tol.tolerance, tol.every = "1", 4, [0, 1]
    tol.rows, tol.teacher_forwards, tol.avoided, tol.reused_tolerance, tol.spot_kl = 200, 130, 70, 60, [0.01, 0.03]
    page = render_results([fresh, tol], tmp_path / "RESULTS.md")
    section = page.split("## Re-labelling")[1].split("\n## ")[0]
    assert f"| {run_name(tol)} | 1 | 0, 1 | 4 | 200 | 130 | 10 | 60 | 0.0200 | 79.00 |" in section
    assert run_name(fresh) not in section
