"""The training loop: learns with KD from stored labels, segments, mixing, online teacher, evaluation."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from pydantic import ValidationError

from maskedkd import teacher_flops
from pipeline.errors import ConfigError
from pipeline.models import create_model
from pipeline.train import OnlineTeacher, evaluate, train_segment
from pipeline.labels.order import EpochOrder
from pipeline.train.stream import load_shard, make_batch
from tests.pipeline.train.helpers import VIT, loaded_batches, write_teacher_labels

from .conftest import (
    FLIP_SPEC,
    MIX_SPEC,
    RENDER,
    SEED,
    SPEC,
    STUDENT,
    recipe,
    student,
    teacher,
)

FAST = dict(lr=3e-3, min_lr=1e-5, weight_decay=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


@pytest.mark.slow
def test_kd_from_stored_labels_learns_fashion_mnist(tmp_path, train_shards, test_shards):
    val = lambda model, epoch: {"val_top1": evaluate(model, test_shards, RENDER)["top1"]}  # noqa: E731
    t = teacher()
    out = train_segment(t, shards=train_shards, spec=FLIP_SPEC, seed=SEED, epochs=range(0, 6), render=RENDER,
                        cfg=recipe(batch_size=16, kd="off", **FAST), total_epochs=6, run_dir=tmp_path / "teacher",
                        evaluate=val)
    assert out["epochs"][-1]["val_top1"] > 0.35, out["epochs"]
    labels = write_teacher_labels(tmp_path / "store", t, train_shards, spec=FLIP_SPEC, seed=SEED, view_epochs=[0, 1], render=RENDER)
    s = student()
    out = train_segment(s, shards=train_shards, spec=FLIP_SPEC, seed=SEED, epochs=range(0, 6), render=RENDER, labels=labels,
                        view_pool=2, cfg=recipe(batch_size=16, kd="kl", **FAST), total_epochs=6, run_dir=tmp_path / "student",
                        evaluate=val)
    epochs = out["epochs"]
    assert epochs[-1]["loss"] < 0.9 * epochs[0]["loss"], epochs
    assert epochs[-1]["top1"] > 0.3 and epochs[-1]["val_top1"] > 0.3, epochs  # 10 classes: chance is 0.1
    assert out["global_step"] == 6 * (384 // 16) and out["teacher_forwards"] == 0
    # the checkpoint is a plain timm state_dict
    loaded = timm.create_model(VIT, checkpoint_path=out["checkpoint"], **STUDENT).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), s.eval()(x))
    assert evaluate(loaded, test_shards, RENDER)["top1"] == epochs[-1]["val_top1"]


def test_segments_train_like_one_run(tmp_path, train_shards, labels):
    """Segment [0,1) then [1,2) from its checkpoint (optimizer state carried) == [0,2) in one go."""
    cfg = recipe(batch_size=64, kd="kl", tau=2.0, checkpoint_every=4, **FAST)
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, cfg=cfg, total_epochs=2, labels=labels, view_pool=2)
    whole = train_segment(student(), epochs=range(0, 2), run_dir=tmp_path / "whole", **common)
    first = train_segment(student(), epochs=range(0, 1), run_dir=tmp_path / "seg", **common)
    resumed = create_model(VIT, STUDENT, weights=first["checkpoint"])
    second = train_segment(resumed, epochs=range(1, 2), run_dir=tmp_path / "seg", **common)
    assert open(whole["checkpoint"], "rb").read() == open(second["checkpoint"], "rb").read()
    assert [e["loss"] for e in whole["epochs"]] == [e["loss"] for e in first["epochs"] + second["epochs"]]
    # a finished segment asked again is not retrained
    again = train_segment(create_model(VIT, STUDENT, weights=first["checkpoint"]), epochs=range(1, 2),
                          run_dir=tmp_path / "seg", **common)
    assert again["sha256"] == second["sha256"] and again["resumed"] == {"epoch": 2, "position": 0}


def test_mixup_cutmix_views_with_stored_labels(tmp_path, train_shards):
    mixed = write_teacher_labels(tmp_path / "store", teacher(), train_shards, spec=MIX_SPEC, seed=SEED, view_epochs=[0],
                                 render=RENDER)
    shard = load_shard(train_shards[0], spec=MIX_SPEC, seed=SEED, view_epoch=0)
    batch = next(loaded_batches(EpochOrder([train_shards[0]], seed=SEED, epoch=0, batch_size=32), lambda ref: shard))
    b = make_batch(batch, RENDER, num_classes=10, soft=True, smoothing=0.1)
    assert b.targets.shape == (32, 10) and torch.allclose(b.targets.sum(1), torch.ones(32))
    assert any(shard.views[i].partner for _, rows in batch for i in rows)
    out = train_segment(student(), shards=train_shards, spec=MIX_SPEC, seed=SEED, epochs=range(0, 1), render=RENDER,
                        labels=mixed, view_pool=1, run_dir=tmp_path / "run",
                        cfg=recipe(batch_size=64, smoothing=0.1, **FAST), total_epochs=1)
    assert out["global_step"] == 6 and 0 < out["epochs"][0]["loss"] < 10


def test_online_masked_teacher_counts_forwards(tmp_path, train_shards):
    t = teacher()
    online = OnlineTeacher(t, RENDER, policy="student", keep=8)
    out = train_segment(student(), shards=train_shards, spec=SPEC, seed=SEED, epochs=range(0, 1), render=RENDER,
                        online=online, run_dir=tmp_path / "run", cfg=recipe(batch_size=64, **FAST), total_epochs=1)
    assert out["teacher_forwards"] == 6 * 64
    assert out["teacher_macs"] == 6 * 64 * (teacher_flops(t, 8) // 2)
    assert out["teacher_macs"] < 0.6 * 6 * 64 * teacher_flops(t, None) // 2
    rand = train_segment(student(), shards=train_shards, spec=SPEC, seed=SEED, epochs=range(0, 1), render=RENDER,
                         online=OnlineTeacher(t, RENDER, policy="random", keep=8), run_dir=tmp_path / "rand",
                         cfg=recipe(batch_size=128, **FAST), total_epochs=1)
    assert rand["teacher_forwards"] == 3 * 128


def test_bad_arguments_are_config_errors(tmp_path, train_shards, labels):
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, run_dir=tmp_path / "r", epochs=range(0, 1),
                  total_epochs=1)
    with pytest.raises(ConfigError, match="no label partitions"):
        train_segment(student(), cfg=recipe(), **common)
    with pytest.raises(ConfigError, match="larger than the 384 rows an epoch trains on"):
        train_segment(student(), cfg=recipe(batch_size=512, kd="off"), **common)
    with pytest.raises(ConfigError, match="views.repeats 4 needs at least 4 training shards, there are 3"):
        train_segment(student(), cfg=recipe(kd="off"), **{**common, "spec": dataclasses.replace(SPEC, repeats=4)})
    with pytest.raises(ConfigError, match="within 0..1"):
        train_segment(student(), cfg=recipe(kd="off"), **{**common, "epochs": range(0, 2)})
    with pytest.raises(ConfigError, match="the run's epochs must be >= 1"):
        train_segment(student(), cfg=recipe(kd="off"), **{**common, "epochs": range(0, 0), "total_epochs": 0})
    with pytest.raises(ConfigError, match="keep: must be between 1 and 16"):
        train_segment(student(), cfg=recipe(), online=OnlineTeacher(teacher(), RENDER, keep=17), **common)


@pytest.mark.parametrize("field,value,message", [
    ("kd", "soft", "'kl', 'hard' or 'off'"),
    ("batch_size", 0, "greater than or equal to 1"),
    ("checkpoint_every", 0, "greater than or equal to 1"),
    ("num_workers", -1, "greater than or equal to 0"),
    ("tau", 0.0, "greater than 0"),
    ("smoothing", 1.0, "less than 1"),
    ("smoothing", -0.1, "greater than or equal to 0"),
])
def test_the_recipe_refuses_what_the_trainer_cannot_use(field, value, message):
    """The trainer takes the validated ``train`` section: the schema refuses what it cannot run."""
    with pytest.raises(ValidationError, match=rf"{field}\n  Input should be {message}"):
        recipe(**{field: value})


def test_eval_every_evaluates_every_nth_epoch_and_at_the_segment_end(tmp_path, train_shards):
    calls = []

    def val(model, epoch):
        calls.append(epoch)
        return {"val_top1": float(epoch)}

    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, cfg=recipe(kd="off", eval_every=2, **FAST),
                  total_epochs=5, evaluate=val, run_dir=tmp_path / "run")
    first = train_segment(student(), epochs=range(0, 3), **common)
    assert calls == [1, 2]  # epoch 1 (every 2nd), epoch 2 (the segment's last)
    assert ["val_top1" in e for e in first["epochs"]] == [False, True, True]
    second = train_segment(create_model(VIT, STUDENT, weights=first["checkpoint"]), epochs=range(3, 5), **common)
    assert calls == [1, 2, 3, 4]  # epoch 3 (every 2nd), epoch 4 (the segment's and the run's last)
    assert [e["val_top1"] for e in second["epochs"]] == [3.0, 4.0]


def test_render_threads_do_not_change_the_result(tmp_path, train_shards, labels):
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER, labels=labels, view_pool=2, epochs=range(0, 1))
    a = train_segment(student(), cfg=recipe(batch_size=64, **FAST), total_epochs=1, run_dir=tmp_path / "a", **common)
    b = train_segment(student(), cfg=recipe(batch_size=64, num_workers=2, **FAST), total_epochs=1, run_dir=tmp_path / "b", **common)
    assert a["sha256"] == b["sha256"]


def test_kept_loader_workers_sending_uint8_in_lanes_do_not_change_the_result(tmp_path, train_shards):
    """Two epochs in lanes with pair mixing and erasing: two loader workers, kept across the epochs
    and sending uint8 renders finished in the training process, train the same bytes as none."""
    spec = dataclasses.replace(MIX_SPEC, reprob=0.5)
    common = dict(shards=train_shards, spec=spec, seed=SEED, render=RENDER, epochs=range(0, 2), total_epochs=2)
    cfg = dict(batch_size=32, kd="off", lanes=2, interleave=2, smoothing=0.1, **FAST)
    a = train_segment(student(), cfg=recipe(**cfg), run_dir=tmp_path / "a", **common)
    b = train_segment(student(), cfg=recipe(num_workers=2, **cfg), run_dir=tmp_path / "b", **common)
    assert a["global_step"] == b["global_step"] == 2 * 384 // 32
    assert a["sha256"] == b["sha256"]


def test_a_bar_per_epoch_on_a_terminal_and_the_summary_line_stays(tmp_path, train_shards, monkeypatch):
    import io
    import sys

    from pipeline._console import configure

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    configure()
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    lines: list[str] = []
    train_segment(student(), shards=train_shards, spec=SPEC, seed=SEED, epochs=range(0, 1), render=RENDER,
                  cfg=recipe(kd="off"), total_epochs=1, run_dir=tmp_path, log=lines.append, progress="train-0")
    drawn = tty.getvalue()  # the bar is redrawn at most every 0.1 s and cleared at the epoch's end
    assert "train-0 epoch 0:" in drawn and "/6 [" in drawn and "loss " in drawn  # 384 images / batch 64
    assert len(lines) == 1 and lines[0].startswith("epoch=0 loss=") and "samples=384" in lines[0]
