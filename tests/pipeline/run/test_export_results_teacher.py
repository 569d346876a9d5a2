"""stages/results/export_teacher.py on a fine-tune (issue 24 item 5): a config with ``teacher.weights``
and a ``train`` block is exported from its ``teacher-finetune`` stage, with what it started from and
what the stage recorded it cost (MACs, wall seconds) in the metadata beside the weights."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.models import create_model, save_checkpoint
from pipeline.run.runner import Runner
from tests.pipeline.run.test_runner import BASE_KW, VIT, stage_doc, write_stage

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[3] / "stages" / "results" / "export_teacher.py"
TEACHER_KW = dict(BASE_KW, embed_dim=32, depth=1)


def _export_module():
    spec = importlib.util.spec_from_file_location("export_teacher", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_fine_tuned_teacher_is_exported_with_its_cost(fmnist_small, tmp_path, monkeypatch):
    start = tmp_path / "plain.pth"
    save_checkpoint(create_model(VIT, TEACHER_KW, seed=0), start)
    recipe = {"epochs": 1, "lr": 1.0e-4, "warmup_epochs": 0, "batch_size": 16, "seed": 0, "patch_drop_rate": 0.5}
    doc = dict(stage_doc(tmp_path, fmnist_small), name="results-v3-teacher-ft")
    path = write_stage(tmp_path, doc, "ft.yaml",
                       teacher={"model": VIT, "kwargs": TEACHER_KW, "weights": str(start), "train": recipe},
                       data__subset=32, schedule__epochs=1, schedule__every=1)
    runner = Runner(load_config(path), progress=False, echo=lambda _s: None)
    runner.run(until="teacher-finetune")
    info = runner.lock.info("teacher-finetune")

    export = _export_module()
    monkeypatch.setattr(export, "OUT", tmp_path / "teachers")
    out = export.export(str(path))
    assert out == tmp_path / "teachers" / "results-v3-teacher-ft.safetensors"
    tuned = torch.load(runner.lock.output("teacher-finetune", "weights")["path"], weights_only=True)
    got = load_file(str(out))
    assert set(got) == set(tuned) and all(torch.equal(got[k], tuned[k]) for k in tuned)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert doc["recipe"]["patch_drop_rate"] == 0.5 and doc["epochs"] == 1
    assert doc["test_top1"] == info["top1"] and doc["seconds"] == info["seconds"]
    assert doc["finetune"] == {"from": start.as_posix(), "start_top1": info["start_top1"], "epochs": 1,
                               "macs": info["macs"], "image_steps": info["image_steps"], "seconds": info["seconds"],
                               "nproc": 1}
    assert info["macs"] > 0 and info["start_top1"] is not None
