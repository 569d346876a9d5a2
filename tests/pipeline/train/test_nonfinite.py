"""A diverging loss stops the segment with exit 7 naming the epoch, batch and step (no traceback
through the CLI), instead of training on NaN."""

from __future__ import annotations

import pytest

from pipeline.errors import NumericError
from pipeline.train import train_segment

from .conftest import RENDER, SEED, SPEC, recipe, student


def test_nan_loss_names_the_step(tmp_path, train_shards):
    ckpt = tmp_path / "c1.pth"
    with pytest.raises(NumericError, match=r"the training loss is (nan|inf) at epoch 0, batch \d+ \(step \d+\)") as e:
        train_segment(student(), shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, cfg=recipe(kd="off", lr=1e30),
                      total_epochs=1, epochs=range(0, 1), run_dir=tmp_path / "run", checkpoint_path=ckpt)
    assert e.value.exit_code == 7
    assert not ckpt.exists()
