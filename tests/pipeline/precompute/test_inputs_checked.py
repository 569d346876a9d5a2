"""Inputs checked where they are used (issue 16): a worker refuses weights whose fingerprint is
not the one the client planned with, and a task refuses a shard whose bytes are not the ones its
manifest records; either way nothing is written to the store. Real cluster, real shards, real
timm checkpoints."""

from __future__ import annotations

import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.data.shards import ShardChangedError
from pipeline.errors import DataError
from pipeline.precompute.spec import model_spec
from tests.pipeline.data.helpers import write_raw_tar
from tests.pipeline.precompute.conftest import TEACHER, save_vit
from tests.pipeline.precompute.helpers import run


def test_weights_replaced_after_planning_are_refused(stage, tasks, cluster, tmp_path):
    # a teacher no other test uses, so no worker has its fingerprint cached
    weights = save_vit(TEACHER, tmp_path / "teacher.pth", seed=7)
    cfg = stage(teacher_weights=weights)
    t = replace(tasks(cfg)[0], teacher=model_spec(cfg, "teacher", weights))
    save_vit(TEACHER, weights, seed=8)  # replaced after the client fingerprinted it (a retrained teacher)
    with pytest.raises(DataError, match=rf"{weights}: these .* weights have fingerprint .*, but the run planned") as e:
        run([t], cluster, cfg, "weights-replaced")
    assert e.value.exit_code == 3
    assert not Path(t.path).exists()


def test_shard_changed_after_planning_fails_naming_it(stage, tasks, cluster, tmp_path):
    cfg = stage()
    t = tasks(cfg)[0]
    with tarfile.open(t.shard_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    # the same index-based keys, two images swapped: what a re-import of other data looks like
    data = dict(members)
    a, b = "train_000000.png", "train_000001.png"
    data[a], data[b] = data[b], data[a]
    changed = write_raw_tar(tmp_path / "train-000000.tar", list(data.items()))
    bad = replace(t, shard_path=str(changed))  # the manifest's sha256 is still the original's
    with pytest.raises(ShardChangedError, match=rf"shard {changed}: its bytes do not match the dataset manifest") as e:
        run([bad], cluster, cfg, "shard-changed")
    assert e.value.exit_code == 3
    assert not Path(bad.path).exists()
