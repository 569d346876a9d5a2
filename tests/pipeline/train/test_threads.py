"""The training process's torch thread count (issue 15, item 8): compute.train_threads, else
$OMP_NUM_THREADS left alone, else every core the process may use."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.run import training as training_mod
from pipeline.run.runner import Runner
from pipeline.train.threads import available_cores, train_thread_count

VIT = "vit_tiny_patch16_224"
KW = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "num_heads": 2, "depth": 1, "embed_dim": 32}


def test_precedence():
    assert train_thread_count(3, {"OMP_NUM_THREADS": "1"}) == 3
    assert train_thread_count(None, {"OMP_NUM_THREADS": "1"}) is None  # torch already follows it
    assert train_thread_count(None, {}) == available_cores() == len(os.sched_getaffinity(0))


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("env", "setting", "expected"), [
    (None, None, "cores"),  # nothing set: every core this process may use
    (None, 3, 3),  # compute.train_threads
    ("2", 3, 3),  # the config beats $OMP_NUM_THREADS
    ("2", None, "unchanged"),  # the user's $OMP_NUM_THREADS: torch is left as it is
])
def test_the_train_stage_sets_the_thread_count(fmnist_small, tmp_path, monkeypatch, torch_threads, env, setting,
                                               expected):
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    doc = {
        "name": "threads", "run_dir": str(tmp_path / "run"),
        "data": {"root": str(fmnist_small), "train": "train", "val": None, "num_classes": 10, "mean": [0.2860],
                 "std": [0.3530]},
        "teacher": {"model": VIT, "kwargs": KW, "train": {"epochs": 1, "warmup_epochs": 0}},
        "student": {"model": VIT, "kwargs": KW, "init_seed": 0},
        "schedule": {"epochs": 1},
        "train": {"warmup_epochs": 0},
        "masking": {"policy": "student", "keep": 8},
        "labels": {"store": str(tmp_path / "store")},
        "compute": {"train_threads": setting},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    seen = []

    def fake_train_segment(model, *, checkpoint_path, **_kw):
        seen.append(torch.get_num_threads())
        shutil.copyfile(c0, checkpoint_path)
        return {"epochs": [], "global_step": 0, "steps_per_epoch": 1, "batches_trained": 0, "resumed": None}

    monkeypatch.setattr(training_mod, "train_segment", fake_train_segment)
    runner = Runner(load_config(path), progress=False, echo=lambda _s: None)
    stages, outs = {s.name: s for s in runner.stages}, {}
    c0 = outs["init"] = runner.run_stage(stages["init"], outs)
    torch.set_num_threads(5)  # what this process used before the stage
    runner.run_stage(stages["train-0"], outs)
    want = {"cores": available_cores(), "unchanged": 5}.get(expected, expected)
    assert seen == [want]
    assert torch.get_num_threads() == 5  # restored after the stage
