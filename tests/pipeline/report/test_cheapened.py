"""The paper's figure (pipeline/report/cheapened.py): the teacher on its cheapened views against the student."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.cheapened import cheapened_figure, cheapened_points, teacher_view_top1
from pipeline.report.collect import RunOutcome
from pipeline.report.results import render_results
from pipeline.report.spec import KDMatters, ResultsSpec


def _run(row: str, seed: int, top1: float, policy: str, keep: int | None, masked: list[float],
         weights: str = "t/plain.safetensors", kd: str = "kl") -> RunOutcome:
    r = RunOutcome(config=Path(f"exp/{row.replace(' ', '-')}-s{seed}.yaml"), name=f"{row}-{seed}", row=row, seed=seed,
                   online=not masked and kd != "off", kd=kd, policy=policy, keep=keep, every=[0], tolerance=0,
                   pool="epochs", lr=1e-3, epochs=2, train_samples=100, num_patches=16, finished=True, top1=top1,
                   teacher_top1=0.88, sizes="tiny")
    r.masked_top1 = list(enumerate(masked))
    r.teacher_file = {"weights": weights}
    return r


RUNS = [_run("CE only", 0, 0.70, "none", 16, [], kd="off"),
        _run("plain teacher: online full-teacher KD", 0, 0.80, "none", 16, []),
        _run("plain teacher: offline ToMe at 50% MACs", 0, 0.78, "tome", 8, [0.70, 0.74]),
        _run("plain teacher: offline ToMe at 50% MACs", 1, 0.76, "tome", 8, [0.70, 0.70]),
        _run("ft1 teacher: offline ToMe at 50% MACs", 0, 0.79, "tome", 8, [0.8, 0.8], weights="t/ft1.safetensors"),
        _run("plain teacher: online MaskedKD 50%", 0, 0.77, "student", 8, [])]  # no record of its views
ORDER = [r.row for r in RUNS if r.seed == 0]
SPEC = ResultsSpec(rows=tuple(ORDER), kd_matters=KDMatters("CE only", 3, (("plain", "plain teacher:"),)))


def _rows() -> dict[str, list[RunOutcome]]:
    rows: dict[str, list[RunOutcome]] = {}
    for r in RUNS:
        rows.setdefault(r.row, []).append(r)
    return rows


def _table_rows(text: str) -> list[str]:
    main = text.split("## Main table", 1)[1].split("## ", 1)[0]
    return [line.split(" | ")[0][2:] for line in main.splitlines() if line.startswith("| ") and not line.startswith("| row |")]


def test_each_row_is_one_point_at_its_seeds_mean_and_a_full_teacher_without_views_at_its_test_top1():
    points, left_out = cheapened_points(_rows(), ORDER)
    by = {p.row: p for p in points}
    full = by["plain teacher: online full-teacher KD"]
    assert (full.x, full.unmasked, full.y, full.seeds) == (0.88, True, 0.80, 1)  # the teacher's unmasked top-1
    tome = by["plain teacher: offline ToMe at 50% MACs"]
    assert abs(tome.x - 0.71) < 1e-9 and abs(tome.y - 0.77) < 1e-9 and tome.seeds == 2 and not tome.unmasked
    assert tome.x_std is not None and abs(tome.x_std - 0.0141421) < 1e-6  # per seed: mean over milestones (0.72, 0.70)
    assert by["ft1 teacher: offline ToMe at 50% MACs"].teacher == "teacher ft1.safetensors"
    assert "CE only" not in by and left_out == ["plain teacher: online MaskedKD 50%"]  # a masked row without its views
    assert teacher_view_top1(RUNS[-1]) is None


def test_the_legend_names_the_rows_as_the_table_does(tmp_path):
    page = render_results(RUNS, tmp_path / "RESULTS.md", SPEC)
    table = _table_rows(page)
    points, _ = cheapened_points(_rows(), ORDER)
    labels = cheapened_figure(tmp_path / "fig.png", points, {"CE only": 0.70})
    assert labels == [row for row in table if row != "plain teacher: online MaskedKD 50%"]  # the baseline line first
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG") and (tmp_path / "results_cheapened.png").is_file()
    section = page.split("## The teacher on its cheapened views")[1].split("\n## ")[0]
    assert "| plain teacher: offline ToMe at 50% MACs | teacher plain.safetensors | `tome` | 71.00 ± 1.41 | 77.00 ± 1.41 | 2 |" in section
    assert "| plain teacher: online full-teacher KD | teacher plain.safetensors | `none` | 88.00 (unmasked) | 80.00 | 1 |" in section
    assert section.rstrip().endswith("Left out (no record of the teacher's top-1 on its views): plain teacher: online MaskedKD 50%.")
    assert cheapened_figure(tmp_path / "none.png", []) == [] and not (tmp_path / "none.png").exists()
