"""The full view of a token-dropping fine-tune (teacher.train.full_view_weight / consistency_weight):
what each step's loss adds, and where its gradients go."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskedkd import kd_loss
from pipeline.config import TeacherTrainConfig
from pipeline.config.validation import FieldProblems
from pipeline.models import create_model
from pipeline.train import train_segment
from pipeline.train.full_view import full_view_loss, patch_drop_off
from pipeline.train.labeled_views import LabeledViews
from pipeline.train.stream import derive_seed
from tests.pipeline.train.helpers import VIT

from .conftest import RENDER, SEED, SPEC, TEACHER

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py

DROPPING = dict(TEACHER, patch_drop_rate=0.5)
# a learning rate too small to move the weights: every step's loss is the start model's
STILL = dict(epochs=1, lr=1e-12, min_lr=0.0, warmup_epochs=0, batch_size=64, weight_decay=0.0, patch_drop_rate=0.5)


def test_the_full_view_runs_without_token_dropping_and_puts_the_rate_back():
    model = create_model(VIT, DROPPING, seed=1).train()
    x = torch.randn(3, 1, 28, 28)
    with patch_drop_off(model):
        full = model(x)
    assert model.patch_drop.prob == 0.5 and model.training
    assert torch.equal(full, model.eval()(x))  # all 16 tokens, as at evaluation


def test_cross_entropy_trains_the_full_view_and_the_consistency_target_gets_no_gradient():
    torch.manual_seed(0)
    dropped, full = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4])
    loss = full_view_loss(dropped, full, y, 0.5, 2.0)
    want = 0.5 * F.cross_entropy(full, y) + 2.0 * kd_loss(dropped, full)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert dropped.grad is not None and dropped.grad.abs().sum() > 0  # pulled toward the full view
    assert full.grad is not None
    ce_only = torch.autograd.grad(0.5 * F.cross_entropy(full, y), full)[0]
    torch.testing.assert_close(full.grad, ce_only)  # the KL's target is a constant
    d2, f2 = dropped.detach().requires_grad_(), full.detach().requires_grad_()
    full_view_loss(d2, f2, y, 0.0, 1.0).backward()
    assert f2.grad is None or f2.grad.abs().sum() == 0


def _expected_epoch_loss(shards, cfg: TeacherTrainConfig) -> float:
    """The epoch's mean loss recomputed outside the trainer: each step's dropped view drawn from the
    trainer's per-step seed, plus the full view's terms, of the (unmoving) start model."""
    model = create_model(VIT, DROPPING, seed=1).train()
    views = LabeledViews(shards, spec=SPEC, seed=SEED, render=RENDER, epoch=0, batch_size=cfg.batch_size,
                         order_seed=cfg.seed, num_classes=10, rank=0, world=1)
    losses = []
    with torch.no_grad():
        for position, batch in enumerate(views.batches()):
            torch.manual_seed(derive_seed("step", cfg.seed, 0, position, 0))
            dropped = model(batch.images)
            with patch_drop_off(model):
                full = model(batch.images)
            loss = F.cross_entropy(dropped, batch.targets) + cfg.full_view_weight * F.cross_entropy(full, batch.targets)
            losses.append(float(loss + cfg.consistency_weight * kd_loss(dropped, full)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("weights", [(0.0, 0.0), (1.0, 0.0), (0.5, 2.0)], ids=["dropped-only", "full-ce", "both"])
def test_each_step_adds_the_full_view_terms_to_the_dropped_views_loss(tmp_path, train_shards, weights):
    cfg = TeacherTrainConfig(**STILL, full_view_weight=weights[0], consistency_weight=weights[1])
    out = train_segment(create_model(VIT, DROPPING, seed=1), shards=train_shards, spec=SPEC, seed=SEED,
                        epochs=range(0, 1), cfg=cfg, total_epochs=1, render=RENDER, run_dir=tmp_path)
    want = _expected_epoch_loss(train_shards, cfg)
    assert out["epochs"][0]["loss"] == pytest.approx(want, rel=1e-5)
    if weights != (0.0, 0.0):
        assert out["epochs"][0]["loss"] > _expected_epoch_loss(train_shards, TeacherTrainConfig(**STILL)) + 0.1


def test_the_full_view_changes_what_a_step_learns(tmp_path, train_shards):
    moving = {**STILL, "lr": 1e-3}
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, epochs=range(0, 1), total_epochs=1, render=RENDER)
    plain = train_segment(create_model(VIT, DROPPING, seed=1), cfg=TeacherTrainConfig(**moving), run_dir=tmp_path / "a",
                          **common)
    again = train_segment(create_model(VIT, DROPPING, seed=1), cfg=TeacherTrainConfig(**moving, full_view_weight=0.0),
                          run_dir=tmp_path / "b", **common)
    full = train_segment(create_model(VIT, DROPPING, seed=1), cfg=TeacherTrainConfig(**moving, full_view_weight=1.0),
                         run_dir=tmp_path / "c", **common)
    assert plain["sha256"] == again["sha256"]  # the default trains as before the option existed
    assert full["sha256"] != plain["sha256"]


@pytest.mark.parametrize("field", ["full_view_weight", "consistency_weight"])
def test_the_full_view_options_need_token_dropping(field):
    with pytest.raises((FieldProblems, ValueError), match=f"{field}.*needs patch_drop_rate"):
        TeacherTrainConfig(**{**STILL, "patch_drop_rate": 0.0, field: 1.0})
