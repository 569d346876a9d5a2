"""``mkd-pipeline run --nproc 2``: a train stage in two torchrun processes (gloo, CPU) inside
``run`` trains the weights one process trains, and is recorded like one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline._lock import LOCK_NAME
from pipeline.errors import ConfigError
from pipeline.models import read_state_dict
from pipeline.run.distributed import check_nproc
from tests.pipeline.run.tiny import cli_run, tiny_stage


def forget_train_0(run) -> None:
    """Make train-0 stale and gone: its lock entry, its checkpoint and its resume records."""
    lock = json.loads((run / LOCK_NAME).read_text())
    del lock["stages"]["train-0"]
    (run / LOCK_NAME).write_text(json.dumps(lock))
    (run / "checkpoints" / "c1.pth").unlink()
    shutil.rmtree(run / "train")


@pytest.mark.slow
def test_two_processes_inside_run_train_like_one(fmnist_small, tmp_path):
    stages = tiny_stage(tmp_path, fmnist_small)
    run = tmp_path / "run"
    one = cli_run("run", str(stages))
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    single = read_state_dict(run / "checkpoints" / "c1.pth")
    info = json.loads((run / LOCK_NAME).read_text())["stages"]["train-0"]["info"]
    steps, val = info["global_step"], info["epochs"][-1]

    forget_train_0(run)
    bad = cli_run("run", str(stages), "--nproc", "3")
    assert bad.returncode == 2 and "train.batch_size 16 must be divisible by compute.nproc 3" in bad.stderr

    two = cli_run("run", str(stages), "--nproc", "2")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "[train-0] epochs 0..0 from c0.pth (2 processes, torchrun)" in two.stdout
    assert "precompute-0] cached" in two.stdout, "only the train stage ran again"
    lock = json.loads((run / LOCK_NAME).read_text())
    assert lock["stages"]["train-0"]["info"]["global_step"] == steps == 256 // 16
    # evaluation split across the two ranks (every other sample each), totals reduced: same as one process
    val2 = lock["stages"]["train-0"]["info"]["epochs"][-1]
    assert val2["val_samples"] == val["val_samples"] == 128
    assert abs(val2["val_top1"] - val["val_top1"]) <= 1 / 128 and val2["val_loss"] == pytest.approx(val["val_loss"], rel=1e-3)
    double = read_state_dict(run / "checkpoints" / "c1.pth")
    init = read_state_dict(run / "checkpoints" / "c0.pth")
    assert max(float((single[k] - init[k]).abs().max()) for k in single) > 1e-2, "training moved the weights"
    for k in single:
        torch.testing.assert_close(double[k], single[k], rtol=1e-4, atol=1e-5)
    assert cli_run("status", str(stages)).returncode == 0, "the stage is recorded as fresh"
    assert not (run / "train-job").exists() or not any((run / "train-job").iterdir())


def test_more_processes_than_visible_gpus_is_refused_before_torchrun(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_nproc(2, 64, "cuda")
    with pytest.raises(ConfigError, match=r"compute.nproc 4: only 2 CUDA device\(s\) visible \(CUDA_VISIBLE_DEVICES=4,5\)"):
        check_nproc(4, 64, "cuda")
    check_nproc(4, 64, "cpu")  # CPU ranks share the cores
