"""train.compile and train.channels_last: they wire through, train, and checkpoints stay plain timm state_dicts.

torch.compile's own inductor backend takes about a minute per tiny model on this CPU, so the step
test compiles with dynamo's ``eager`` backend (the same wrapping, tracing and guards, no code
generation); a failing compile is checked to surface as an error naming ``train.compile``.
"""

from __future__ import annotations

import pytest
import timm
import torch

from pipeline.errors import ComputeError
from pipeline.models import read_state_dict
from pipeline.train import train_segment
from pipeline.train.speedups import batch_format, training_forward
from tests.pipeline.train.helpers import VIT

from .conftest import FLIP_SPEC, RENDER, SEED, STUDENT, recipe, student

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


def _train(tmp_path, shards, cfg, name: str):
    s = student()
    out = train_segment(s, shards=shards, spec=FLIP_SPEC, seed=SEED, epochs=range(0, 1), cfg=cfg, total_epochs=1,
                        render=RENDER, run_dir=tmp_path / name)
    return s, out


def test_compile_trains_through_torch_compile_and_saves_the_plain_module(tmp_path, train_shards, monkeypatch):
    real, compiled = torch.compile, []

    def eager_compile(model, mode=None):
        compiled.append((model, mode))
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    s, out = _train(tmp_path, train_shards, recipe(batch_size=64, kd="off", compile=True, compile_mode="max-autotune"), "compiled")
    assert [(m, mode) for m, mode in compiled] == [(s, "max-autotune")]
    assert out["global_step"] == 384 // 64
    keys = read_state_dict(out["checkpoint"]).keys()
    assert keys == s.state_dict().keys() and not any("_orig_mod" in k for k in keys)
    timm.create_model(VIT, checkpoint_path=out["checkpoint"], **STUDENT)  # loads strictly


def test_a_failing_compile_is_an_error_naming_the_switch(tmp_path, train_shards, monkeypatch):
    def broken(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: broken)
    with pytest.raises(ComputeError, match=r"train\.compile: torch\.compile failed.*no working C\+\+ compiler"):
        _train(tmp_path, train_shards, recipe(batch_size=64, kd="off", compile=True), "broken")
    assert training_forward(student(), recipe()).__class__.__name__ == "VisionTransformer"  # off: the model itself


def test_channels_last_trains_the_same_model_in_another_memory_format(tmp_path, train_shards):
    s, out = _train(tmp_path, train_shards, recipe(batch_size=64, kd="off", channels_last=True), "cl")
    assert s.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    plain, ref = _train(tmp_path, train_shards, recipe(batch_size=64, kd="off"), "plain")
    for k, v in read_state_dict(ref["checkpoint"]).items():
        torch.testing.assert_close(read_state_dict(out["checkpoint"])[k], v, rtol=1e-4, atol=1e-5, msg=k)
    x = torch.zeros(2, 1, 28, 28)
    assert batch_format(x, recipe(channels_last=True)).is_contiguous(memory_format=torch.channels_last)
    assert batch_format(x, recipe()) is x


@pytest.mark.slow
def test_compile_with_inductor_trains_like_eager(tmp_path, train_shards):
    """inductor itself, where this machine can compile (about a minute on 2 CPU cores)."""
    s, out = _train(tmp_path, train_shards, recipe(batch_size=128, kd="off", compile=True), "inductor")
    plain, ref = _train(tmp_path, train_shards, recipe(batch_size=128, kd="off"), "eager")
    assert out["global_step"] == 3
    for k, v in read_state_dict(ref["checkpoint"]).items():
        torch.testing.assert_close(read_state_dict(out["checkpoint"])[k], v, rtol=1e-3, atol=1e-4, msg=k)
