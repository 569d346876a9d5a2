"""`mkd-pipeline bench reuse`: the counts it reads from a run lock and its table (the runs
themselves are end to end in tests/pipeline/run/test_reuse_across_students.py)."""

from __future__ import annotations

import pytest

from pipeline._lock import RunLock
from pipeline.bench.reuse import VARIANTS, label_counts, reuse_table, served_share
from pipeline.cli import main


def _info(rows: int, computed: int, partitions: int, cached: int, student: int) -> dict:
    return {"rows": rows, "rows_computed": computed, "partitions": partitions, "cached": cached,
            "teacher_forwards": computed, "student_forwards": student}


def test_served_rows_are_the_rows_no_teacher_computed_over_every_precompute_stage(tmp_path):
    lock = RunLock(tmp_path / "run.lock.json")
    lock.record("teacher", {"recipe": "r"}, info={"fingerprint": "f"})
    lock.record("precompute-0", {"tasks": "a"}, info=_info(1024, 0, 4, 4, 0))  # milestone 0: all cached
    lock.record("train-0", {"start": "s"}, info={"epochs": []})
    lock.record("precompute-1", {"tasks": "b"}, info=_info(1024, 755, 4, 0, 1024))  # 269 rows reused
    counts = label_counts(RunLock(tmp_path / "run.lock.json"))
    assert counts == {"rows": 2048, "rows_computed": 755, "rows_served": 1293, "partitions": 8, "cached": 4,
                      "teacher_forwards": 755, "student_forwards": 1024}
    assert served_share(counts) == pytest.approx(1293 / 2048)
    assert served_share({"rows": 0, "rows_served": 0}) == 1.0  # no labels needed (e.g. kd off): nothing to serve


def test_the_table_names_each_run_by_what_it_changed():
    rows = [{"policy": "random", "needs_saliency": False, "variant": v, "changes": c, "rows": 8, "rows_computed": 0,
             "rows_served": 8, "served_share": 1.0, "partitions": 2, "cached": 2, "teacher_forwards": 0,
             "student_forwards": 0, "teacher_trained": False, "val_top1": None, "seconds": 1.0}
            for v, c in VARIANTS.items()]
    table = reuse_table({"machine": "m", "samples": 8, "shard_size": 4, "epochs": 2, "every": 1, "keep": 25,
                         "workers": 1, "rows": rows})
    assert "| random | no | first | 8 | 8 | 100% | 0 | 0 | 2/2 | no | - | 1.0 |" in table
    assert "| student.init_seed=1 |" in table and "| train.lr=0.004 |" in table


def test_an_unknown_policy_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "reuse", "--policy", "nope"])
    assert exit_.value.code == 2 and "unknown policy nope" in capsys.readouterr().err
