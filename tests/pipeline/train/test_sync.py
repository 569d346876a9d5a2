"""The trainer's step loop never waits for the device, checked on the CPU with ``meta`` as the device.

On ``meta`` any host read of a device tensor fails, so a segment that trains through proves the
step loop reads nothing back; the syncing Tensor methods are counted for device tensors too. The
reads it means to do (the tally at checkpoints and at the epoch's end) go through ``to_host``.
"""

from __future__ import annotations

import pytest

from pipeline.errors import NumericError
from pipeline.train import OnlineTeacher, loop, train_segment
from tests.pipeline.syncs import count_syncs

from .conftest import RENDER, SEED, SPEC, recipe, student, teacher


@pytest.fixture
def counted(monkeypatch):
    seen = count_syncs(monkeypatch, loop)
    # the checkpoint at the segment's end reads the weights back (after the loop): not what is tested
    monkeypatch.setattr(loop, "save_checkpoint", lambda model, path: "0" * 64)
    monkeypatch.setattr(loop, "state_dict_fingerprint", lambda sd: "0" * 64)
    monkeypatch.setattr(loop.ResumeStore, "save_boundary", lambda *a, **kw: None)
    monkeypatch.setattr(loop.ResumeStore, "save", lambda *a, **kw: None)
    return seen


@pytest.mark.parametrize("kind", ["labels", "online"])
def test_no_step_reads_the_device(tmp_path, train_shards, labels, counted, kind):
    cfg = recipe(batch_size=64, kd="kl", tau=2.0, checkpoint_every=1000)
    source = {"labels": labels} if kind == "labels" else {
        "online": OnlineTeacher(model=teacher(), render=RENDER, policy="student", keep=8)}
    # meta's values read back as zeros, which the epoch's end takes for a non-finite loss at step 0:
    # the step loop has run through by then
    with pytest.raises(NumericError, match=r"\(step 0\)"):
        train_segment(student(), shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, cfg=cfg, total_epochs=1,
                      epochs=range(0, 1), run_dir=tmp_path / "run", device="meta", **source)
    steps = -(-sum(s.rows for s in train_shards) // 64)
    assert steps > 1 and counted["syncs"] == []
    # stored labels: the epoch's tally only (first_bad, read); online: one saliency transfer per step more
    # (the steps' own reads of the device would have failed on meta)
    assert counted["to_host"] == 2 + (steps if kind == "online" else 0)
