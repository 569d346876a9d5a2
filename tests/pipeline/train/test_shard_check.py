"""The trainer hashes each shard while it streams it: a shard whose bytes differ from the sha256
its manifest recorded fails the segment with exit 3 naming the shard, before any step uses it."""

from __future__ import annotations

import tarfile
from dataclasses import replace

import pytest

from pipeline._fingerprint import sha256_file
from pipeline.data.shards import ShardChangedError
from pipeline.train import train_segment
from tests.pipeline.data.helpers import write_raw_tar

from .conftest import RENDER, SEED, SPEC, recipe, student


def test_changed_shard_fails_the_segment_naming_it(tmp_path, train_shards):
    refs = [replace(r, sha256=sha256_file(r.path)) for r in train_shards]  # as a manifest records them
    with tarfile.open(refs[1].path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    names = sorted(n for n in members if n.endswith(".png"))
    members[names[0]], members[names[1]] = members[names[1]], members[names[0]]  # same keys, other images
    changed = write_raw_tar(tmp_path / refs[1].path.name, list(members.items()))
    refs[1] = replace(refs[1], path=changed)
    ckpt = tmp_path / "c1.pth"
    with pytest.raises(ShardChangedError, match=rf"shard {changed}: its bytes do not match the dataset manifest") as e:
        train_segment(student(), shards=refs, spec=SPEC, seed=SEED, render=RENDER, cfg=recipe(kd="off"),
                      total_epochs=1, epochs=range(0, 1), run_dir=tmp_path / "run", checkpoint_path=ckpt)
    assert e.value.exit_code == 3
    assert not ckpt.exists()
