"""The EMA of the student (train.model_ema): timm's ModelEmaV3, evaluated beside the model, carried across segments."""

from __future__ import annotations

import pytest
import timm
import torch

from pipeline.models import create_model, read_state_dict
from pipeline.train import train_segment
from pipeline.train.ema import create_ema, ema_metrics
from tests.pipeline.train.helpers import VIT

from .conftest import RENDER, SEED, SPEC, STUDENT, recipe, student

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


def test_off_by_default_and_timms_update_when_on():
    assert create_ema(student(), recipe()) is None
    model = student()
    ema = create_ema(model, recipe(model_ema=True, model_ema_decay=0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=1)  # timm: the first update copies the model
    assert torch.equal(ema.module.head.weight, model.head.weight)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=2)  # then decay 0.5: halfway between the EMA and the model
    torch.testing.assert_close(ema.module.head.weight, before["head.weight"] + 1.5)
    assert ema_metrics({"val_top1": 0.5}) == {"ema_val_top1": 0.5}
    warm = create_ema(model, recipe(model_ema=True, model_ema_warmup=True))
    assert warm.decay == 0.99996 and warm.get_decay(11) == pytest.approx(1 - 11 ** (-2 / 3))  # timm's warm-up


def test_the_ema_is_evaluated_beside_the_model_and_the_checkpoint_stays_the_models(tmp_path, train_shards, labels):
    """Each evaluated epoch has ema_val_top1; the segment's checkpoint (c_{i+1}) is the trained weights,
    the EMA's are saved beside it as a plain timm state_dict; segments [0,1) + [1,2) keep the EMA of [0,2)."""
    seen = []

    def val(model, epoch):
        seen.append(model)
        return {"val_top1": float(epoch), "val_loss": 1.0}

    cfg = recipe(batch_size=64, kd="kl", tau=2.0, model_ema=True, model_ema_decay=0.9)
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, cfg=cfg, total_epochs=2, labels=labels,
                  view_pool=2, evaluate=val)
    s = student()
    whole = train_segment(s, epochs=range(0, 2), run_dir=tmp_path / "whole", **common)
    assert [sorted(e) for e in whole["epochs"]][0][:3] == ["ema_val_loss", "ema_val_top1", "epoch"]
    assert seen[0] is s and seen[1] is not s  # the model first, then its EMA, each epoch
    ema_file = tmp_path / "whole" / "ema-e0002.pt"
    ema = timm.create_model(VIT, **STUDENT)
    ema.load_state_dict(read_state_dict(ema_file))  # a plain timm checkpoint
    assert torch.equal(read_state_dict(whole["checkpoint"])["head.weight"], s.state_dict()["head.weight"])
    assert not torch.equal(ema.head.weight, s.head.weight)

    first = train_segment(student(), epochs=range(0, 1), run_dir=tmp_path / "seg", **common)
    second = train_segment(create_model(VIT, STUDENT, weights=first["checkpoint"]), epochs=range(1, 2),
                           run_dir=tmp_path / "seg", **common)
    assert open(whole["checkpoint"], "rb").read() == open(second["checkpoint"], "rb").read()
    assert (tmp_path / "seg" / "ema-e0002.pt").read_bytes() == ema_file.read_bytes()


def test_without_ema_nothing_changes(tmp_path, train_shards, labels):
    """model_ema off: no EMA files, no ema_ metrics, the same checkpoint as a recipe that never had the field."""
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, total_epochs=1, labels=labels,
                  view_pool=2, epochs=range(0, 1), evaluate=lambda m, e: {"val_top1": 0.0})
    out = train_segment(student(), cfg=recipe(kd="kl", tau=2.0), run_dir=tmp_path / "off", **common)
    assert not list((tmp_path / "off").glob("*ema*")) and not any(k.startswith("ema_") for k in out["epochs"][0])
    on = train_segment(student(), cfg=recipe(kd="kl", tau=2.0, model_ema=True), run_dir=tmp_path / "on", **common)
    assert open(on["checkpoint"], "rb").read() == open(out["checkpoint"], "rb").read()  # the EMA only watches
