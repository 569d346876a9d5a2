"""Gradient accumulation (train.grad_accum_steps): grouping, the same weights as one big batch, exact resume."""

from __future__ import annotations

import pytest
import torch

from maskedkd import distill_loss
from pipeline.train import train_segment
from pipeline.train.accumulate import Accumulation
from pipeline.train.labeled_views import LabeledViews
from pipeline.train.loop import build_optimizer

from .conftest import FLIP_SPEC, RENDER, SEED, SPEC, recipe, student

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


def test_an_epoch_groups_into_optimizer_steps_as_timm_does():
    """5 batches by 2: steps after batches 1, 3 and 4 (the last group is shorter, nothing dropped)."""
    acc = Accumulation(steps=2, batches=5)
    assert acc.updates == 3
    assert [acc.first(p) for p in range(5)] == [True, False, True, False, True]
    assert [acc.last(p) for p in range(5)] == [False, True, False, True, True]
    assert [acc.group_size(p) for p in range(5)] == [2, 2, 2, 2, 1]
    one = Accumulation(steps=1, batches=3)
    assert one.updates == 3 and all(one.first(p) and one.last(p) and one.group_size(p) == 1 for p in range(3))


def test_two_batches_of_8_accumulated_train_like_one_batch_of_16(tmp_path, train_shards):
    """The trainer with batch 8 x 2 accumulation ends with the weights of a plain loop taking the same
    rows 16 at a time: one optimizer step per 16 rows, the LR schedule per step (a ViT without dropout)."""
    fields = dict(kd="off", lr=1e-3, weight_decay=0.05, min_lr=1e-5)
    cfg = recipe(batch_size=8, grad_accum_steps=2, **fields)
    s = student()
    out = train_segment(s, shards=train_shards, spec=FLIP_SPEC, seed=SEED, epochs=range(0, 1), cfg=cfg,
                        total_epochs=1, render=RENDER, run_dir=tmp_path / "accum")
    assert out["global_step"] == out["steps_per_epoch"] == 384 // 16 and out["batches_per_epoch"] == 384 // 8
    assert out["batches_trained"] == 48

    ref = student()
    optimizer, scheduler = build_optimizer(ref, recipe(batch_size=16, **fields), 24, 1)
    batches = list(LabeledViews(train_shards, spec=FLIP_SPEC, seed=SEED, render=RENDER, epoch=0, batch_size=8,
                                order_seed=cfg.seed, num_classes=10).batches())
    for step in range(24):
        a, b = batches[2 * step], batches[2 * step + 1]
        scheduler.step_update(num_updates=step)
        logits = ref(torch.cat([a.images, b.images]))
        loss = distill_loss(logits, torch.cat([a.targets, b.targets]), None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    trained, expected = s.state_dict(), ref.state_dict()
    assert trained.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(trained[k], expected[k], rtol=1e-4, atol=1e-5, msg=k)
    # and not what training 8 at a time gives: the test can tell the two apart
    plain = student()
    train_segment(plain, shards=train_shards, spec=FLIP_SPEC, seed=SEED, epochs=range(0, 1),
                  cfg=recipe(batch_size=8, **fields), total_epochs=1, render=RENDER, run_dir=tmp_path / "plain")
    assert not torch.allclose(plain.state_dict()["head.weight"], expected["head.weight"], atol=1e-4)


class _Killed(Exception):
    pass


def test_a_run_killed_between_accumulated_batches_resumes_to_the_same_bytes(tmp_path, train_shards, labels,
                                                                            monkeypatch):
    """Killed inside a group (after records at optimizer steps), the rerun resumes at the last record
    and ends with the uninterrupted run's checkpoint and EMA, bit for bit."""
    cfg = recipe(batch_size=32, grad_accum_steps=2, kd="kl", tau=2.0, checkpoint_every=2, model_ema=True,
                 model_ema_decay=0.9)
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, epochs=range(0, 2), cfg=cfg, total_epochs=2,
                  render=RENDER, labels=labels, view_pool=2)
    clean = train_segment(student(), run_dir=tmp_path / "clean", **common)
    assert clean["global_step"] == 2 * 6 and clean["resumed"] is None

    import pipeline.train.loop as loop

    real, calls = loop.distill_loss, []

    def dies_at_the_18th_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 18:  # epoch 1, batch 5: inside the group of batches 4 and 5
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "distill_loss", dies_at_the_18th_batch)
    with pytest.raises(_Killed):
        train_segment(student(), run_dir=tmp_path / "killed", **common)
    monkeypatch.setattr(loop, "distill_loss", real)
    resumed = train_segment(student(), run_dir=tmp_path / "killed", **common)
    assert resumed["resumed"] == {"epoch": 1, "position": 4}  # the record at step 8 (every 2), after batch 3
    assert resumed["batches_trained"] == 8
    assert open(resumed["checkpoint"], "rb").read() == open(clean["checkpoint"], "rb").read()
    assert (tmp_path / "killed" / "ema-e0002.pt").read_bytes() == (tmp_path / "clean" / "ema-e0002.pt").read_bytes()
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in clean["epochs"]]
