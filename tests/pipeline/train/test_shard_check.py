"""The trainer and the evaluation hash each shard while they stream it: a shard whose bytes differ
from the sha256 its manifest recorded fails the segment with exit 3 naming the shard, before any
step uses it, and fails the evaluation (no accuracy reported from it)."""

from __future__ import annotations

import tarfile
from dataclasses import replace

import pytest

from pipeline._fingerprint import sha256_file
from pipeline.data.shards import ShardChangedError
from pipeline.train import evaluate, train_segment
from tests.pipeline.data.helpers import write_raw_tar

from .conftest import RENDER, SEED, SPEC, recipe, student


def _with_changed_shard(tmp_path, shards, i: int = 1):
    """The refs as a manifest records them, shard ``i`` replaced by one with two images swapped."""
    refs = [replace(r, sha256=sha256_file(r.path)) for r in shards]
    with tarfile.open(refs[i].path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    names = sorted(n for n in members if n.endswith(".png"))
    members[names[0]], members[names[1]] = members[names[1]], members[names[0]]  # same keys, other images
    changed = write_raw_tar(tmp_path / refs[i].path.name, list(members.items()))
    refs[i] = replace(refs[i], path=changed)
    return refs, changed


def test_changed_shard_fails_the_segment_naming_it(tmp_path, train_shards):
    refs, changed = _with_changed_shard(tmp_path, train_shards)
    ckpt = tmp_path / "c1.pth"
    with pytest.raises(ShardChangedError, match=rf"shard {changed}: its bytes do not match the dataset manifest") as e:
        train_segment(student(), shards=refs, spec=SPEC, seed=SEED, render=RENDER, cfg=recipe(kd="off"),
                      total_epochs=1, epochs=range(0, 1), run_dir=tmp_path / "run", checkpoint_path=ckpt)
    assert e.value.exit_code == 3
    assert not ckpt.exists()


def test_changed_shard_fails_the_evaluation_naming_it(tmp_path, test_shards):
    refs, changed = _with_changed_shard(tmp_path, test_shards, i=0)
    model = student()
    # a val subset: only 8 rows are used, the rest of the shard is still read for the hash
    intact = [replace(r, rows=8, sha256=sha256_file(r.path)) for r in test_shards]
    assert evaluate(model, intact, RENDER)["samples"] == 8
    with pytest.raises(ShardChangedError, match=rf"shard {changed}: its bytes do not match the dataset manifest") as e:
        evaluate(model, [replace(r, rows=8) for r in refs], RENDER)
    assert e.value.exit_code == 3
