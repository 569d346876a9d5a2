"""Non-finite numbers through the CLI: a student loss that diverges (`--set train.lr=1e30`) exits 7
naming the stage, epoch and step, without a traceback; the run lock keeps its bytes, so the
stages before it stay fresh. (NaN teacher logits: tests/pipeline/precompute/test_nonfinite.py.)"""

from __future__ import annotations

import pytest

from tests.reliability.helpers import cli, temp_files

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_diverging_loss_exits_7_naming_stage_and_step(baseline, tally):
    b = baseline
    b.restore("a")
    lock = (b.work / "runs/tiny/run.lock.json").read_bytes()
    r = cli("run", "a.yaml", "--set", "train.lr=1.0e+30", cwd=b.work)
    out = r.stdout + r.stderr
    assert r.returncode == 7, out
    assert "[train-0] the training loss is" in out and "at epoch 0, batch" in out, out
    assert "Traceback" not in out, out
    assert (b.work / "runs/tiny/run.lock.json").read_bytes() == lock
    assert temp_files(b.work / "runs", b.work / "store") == []
    tally("numbers", "student loss diverges to NaN/inf (train.lr 1e30)",
          "exit 7 naming the stage, epoch, batch and step; no traceback; run lock unchanged")
