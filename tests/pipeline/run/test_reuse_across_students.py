"""Label reuse across student runs (issue 28, item 4), end to end on a real LocalCluster: a second
student (another ``student.init_seed``) on the same store is served every label of a policy that
reads no saliency, and retrains no teacher; the student's own saliency labels are recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline._lock import LOCK_NAME, load_lock
from tests.pipeline.run.tiny import cli_run, tiny_stage


def _teachers(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "teachers").glob("*.pth")}


def _labels_info(root: Path) -> dict:
    return load_lock(root / "run" / LOCK_NAME)["stages"]["precompute-0"]["info"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["random", "student"])
def test_a_second_student_is_served_the_labels_that_do_not_depend_on_it(fmnist_small, tmp_path, policy):
    store = tmp_path / "store"
    first = tiny_stage(tmp_path / "first", fmnist_small, masking__policy=policy, labels__store=str(store))
    proc = cli_run("run", str(first))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    teachers = _teachers(store)
    assert len(teachers) == 1 and _labels_info(tmp_path / "first")["teacher_forwards"] == 256

    second = tiny_stage(tmp_path / "second", fmnist_small, masking__policy=policy, labels__store=str(store),
                        student__init_seed=1)
    proc = cli_run("run", str(second))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _teachers(store) == teachers  # the teacher is not trained again: its content-addressed file is reused
    info = _labels_info(tmp_path / "second")
    assert info["rows"] == 256
    if policy == "random":
        assert info["teacher_forwards"] == info["rows_computed"] == 0 and info["cached"] == info["partitions"]
    else:  # another student's saliency picks other keep sets: they are computed
        assert info["teacher_forwards"] > 0 and info["cached"] == 0 and info["student_forwards"] == 256
