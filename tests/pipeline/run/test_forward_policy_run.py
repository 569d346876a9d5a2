"""``masking.policy: lowres`` end to end (issue 28): ``mkd-pipeline run`` labels with the teacher
on the whole view at the keep's patch count on a real Dask cluster, pays no saliency pass, stores
no keep set, trains the student from those labels, and a rerun computes nothing."""

from __future__ import annotations

import pytest

from pipeline._lock import LOCK_NAME, load_lock
from pipeline.labels import open_partition
from tests.pipeline.run.tiny import cli_run, tiny_stage


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_lowres_run_labels_without_the_student_and_trains(fmnist_small, tmp_path):
    # 4 x 4 patches of 7 px; keep 8: the 3 x 3 grid (9 patches, nearer 8 than 2 x 2's 4): the teacher sees 21 px
    stages = tiny_stage(tmp_path, fmnist_small, masking__policy="lowres", masking__keep=8, compute__workers=2)
    first = cli_run("run", str(stages))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lock = load_lock(tmp_path / "run" / LOCK_NAME)  # with its per-segment records inline
    info = lock["stages"]["precompute-0"]["info"]
    assert info["rows"] == 256 and info["keep"] == 8 and info["rows_computed"] == 256
    assert info["student_forwards"] == 0 and info["saliency_macs"] == 0  # no student read
    assert info["net_macs"] == info["teacher_macs"] < info["full_teacher_macs"]
    assert lock["stages"]["precompute-0"]["inputs"]["policy"] == "lowres"
    for part in lock["stages"]["precompute-0"]["partitions"]:
        with open_partition(part["path"]) as p:
            assert p.metadata["specs"]["mask"]["policy"] == "lowres"
            assert not p.read_all(columns=("keep",)).keep.any()  # no keep set
    val = lock["stages"]["train-0"]["info"]["epochs"][-1]["val_top1"]
    assert 0.0 < val <= 1.0
    again = cli_run("run", str(stages))
    assert again.returncode == 0 and "everything was cached" in again.stdout


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_policy_auto_labels_with_the_candidate_the_spot_check_chose(fmnist_small, tmp_path):
    stages = tiny_stage(tmp_path, fmnist_small, masking__keep="auto", masking__policy="auto",
                        masking__policies=["random", "lowres"], masking__budget={"agreement": 0.0},
                        masking__ladder=[0.5, 1.0], masking__probe_samples=32, compute__workers=2)
    done = cli_run("run", str(stages))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lock = load_lock(tmp_path / "run" / LOCK_NAME)
    assert set(lock["stages"]["probe-0"]["info"]["curves"]) == {"random", "lowres"}
    info = lock["stages"]["precompute-0"]["info"]
    auto = info["auto"]
    chosen = auto["policy"]
    assert chosen in ("random", "lowres") and info["keep"] == 8  # agreement >= 0: the smallest rung, 8 of 16
    assert auto["reason"].startswith(f"{chosen} keep 8 ") and "the others: " in auto["reason"]
    assert set(auto["curves"]) == {"random", "lowres"} and auto["curve"] == auto["curves"][chosen]
    assert lock["stages"]["precompute-0"]["inputs"]["policy"] == f"auto: {chosen}"
    assert info["student_forwards"] == 0  # neither candidate reads the student
    for part in lock["stages"]["precompute-0"]["partitions"]:
        with open_partition(part["path"]) as p:
            assert p.metadata["specs"]["mask"] == {"policy": chosen, "keep": 8, "tolerance": 0}
    assert f"({chosen}), no student" in done.stdout
