"""NaN teacher logits: a task refuses them before they reach a partition, with exit 7 naming
the shard, view epoch and first key (real worker, real checkpoint whose head bias is NaN)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.errors import NumericError
from pipeline.models import create_model, save_checkpoint
from pipeline.precompute.spec import model_spec
from tests.pipeline.precompute.conftest import TEACHER
from tests.pipeline.precompute.helpers import VIT, run


def test_nan_teacher_logits_fail_naming_shard_and_key(stage, tasks, cluster, tmp_path):
    model = create_model(VIT, TEACHER, seed=11)
    with torch.no_grad():
        model.head.bias[3] = float("nan")
    weights = tmp_path / "nan-teacher.pth"
    save_checkpoint(model, weights)
    cfg = stage(teacher_weights=weights)
    t = replace(tasks(cfg)[0], teacher=model_spec(cfg, "teacher", weights))
    with pytest.raises(NumericError, match=rf"teacher's logits are not finite .* of shard {t.shard}, view epoch "
                                           rf"{t.view_epoch} \(first: key train_\d+\), teacher weights {weights}") as e:
        run([t], cluster, cfg, "nan-teacher")
    assert e.value.exit_code == 7
    assert not Path(t.path).exists()
