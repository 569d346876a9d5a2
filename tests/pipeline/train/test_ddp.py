"""Two torchrun processes (gloo, CPU) train the same weights as one process."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import create_model, read_state_dict
from tests.pipeline.train.helpers import VIT

from .conftest import RENDER, SEED, SPEC, STUDENT, recipe
from .jobs import run, write_job

# SGD: Adam divides by sqrt(v), which turns float noise in gradients that are zero in exact
# arithmetic (the attention's key bias) into full-size updates of random sign; SGD compares the
# gradients themselves.
CFG = recipe(batch_size=32, kd="kl", optimizer="sgd", lr=0.05, weight_decay=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("order", [{}, {"lanes": 2, "interleave": 2}], ids=["shard-after-shard", "lanes"])
def test_two_processes_train_like_one(tmp_path, train_shards, labels, order):
    """Also in lanes: each rank then reads only its lane's shards, and the steps are the same."""
    cfg = CFG.model_copy(update=order)
    common = dict(shards=train_shards, labels=labels, spec=SPEC, seed=SEED, cfg=cfg, total_epochs=1, render=RENDER, model=STUDENT,
                  model_seed=0, epochs=(0, 1), view_pool=2)
    one = run(write_job(tmp_path / "one.json", run_dir=tmp_path / "one", **common))
    two = run(write_job(tmp_path / "two.json", run_dir=tmp_path / "two", **common), torchrun=2, timeout=180)
    assert one["global_step"] == two["global_step"] == 384 // 32
    a, b = read_state_dict(one["checkpoint"]), read_state_dict(two["checkpoint"])
    assert a.keys() == b.keys()
    init = create_model(VIT, STUDENT, seed=0).state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-2, "training moved the weights"
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert abs(one["epochs"][0]["loss"] - two["epochs"][0]["loss"]) < 1e-4


@pytest.mark.slow
def test_two_processes_accumulate_and_keep_the_ema_like_one(tmp_path, train_shards, labels):
    """grad_accum_steps 2 (DDP's no_sync inside a group) and the EMA of the unwrapped student: two
    processes end with one process's weights and EMA."""
    cfg = recipe(batch_size=16, grad_accum_steps=2, kd="kl", optimizer="sgd", lr=0.05, weight_decay=0.0,
                 model_ema=True, model_ema_decay=0.9)
    common = dict(shards=train_shards, labels=labels, spec=SPEC, seed=SEED, cfg=cfg, total_epochs=1, render=RENDER,
                  model=STUDENT, model_seed=0, epochs=(0, 1), view_pool=2)
    one = run(write_job(tmp_path / "one.json", run_dir=tmp_path / "one", **common))
    two = run(write_job(tmp_path / "two.json", run_dir=tmp_path / "two", **common), torchrun=2, timeout=180)
    assert one["global_step"] == two["global_step"] == 384 // 32
    for name in ("student-e0001.pth", "ema-e0001.pt"):
        a, b = read_state_dict(tmp_path / "one" / name), read_state_dict(tmp_path / "two" / name)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    assert abs(one["epochs"][0]["loss"] - two["epochs"][0]["loss"]) < 1e-4
