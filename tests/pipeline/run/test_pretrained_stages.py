"""The teacher and init stages with pretrained models (issue 24 items 1-2): today's inputs stay for
configs without ``pretrained``; a pretrained teacher from a ``local-dir:`` folder is hashed by the
file timm loads, written as a plain checkpoint workers load strictly, and renders with its own
preprocessing; a pretrained student starts from its weights with a re-initialised head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from timm.models._hub import save_for_hf

import pipeline.fingerprints as fp
from maskedkd import teacher_macs
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline.config import load_config
from pipeline.models import create_model, model_fingerprint, save_checkpoint, state_dict_fingerprint
from pipeline.run.runner import Runner
from pipeline.run.stage import Stage
from pipeline.run.training import train_step_macs
from tests.pipeline.run.test_runner import BASE_KW, VIT, cli, stage_doc, write_stage

pytestmark = pytest.mark.usefixtures("one_thread")
TEACHER_KW = dict(BASE_KW, embed_dim=32, depth=1)
STUDENT_KW = dict(BASE_KW, embed_dim=16, depth=1)


def _run_stage(runner: Runner, name: str):
    """One stage of the run's graph, run or read back from the lock (neither needs another's output)."""
    stage: Stage = next(s for s in runner.stages if s.name == name)
    return runner.run_stage(stage, {})


def _teacher_inputs(runner: Runner) -> dict:
    return fp.teacher_inputs(runner.cfg, runner.manifest)


def _runner(path: Path) -> Runner:
    return Runner(load_config(path), progress=False, echo=lambda _s: None)


def _local_dir(folder: Path, kwargs: dict, seed: int, mean: list[float], std: list[float]):
    """A timm ``local-dir:`` folder (config.json + model.safetensors) whose pretrained_cfg states ``mean``/``std``."""
    model = create_model(VIT, kwargs, seed=seed)
    save_for_hf(model, str(folder), safe_serialization=True, model_args=kwargs)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["pretrained_cfg"].update(mean=mean, std=std, interpolation="bicubic")
    (folder / "config.json").write_text(json.dumps(cfg))
    return model


def test_configs_without_pretrained_keep_todays_inputs(fmnist_small, tmp_path):
    w = tmp_path / "teacher.pth"
    save_checkpoint(create_model(VIT, TEACHER_KW, seed=0), w)
    doc = stage_doc(tmp_path, fmnist_small)
    frozen = _runner(write_stage(tmp_path, doc, "frozen.yaml", teacher__train=None, teacher__weights=str(w),
                                 teacher__kwargs=TEACHER_KW))
    assert _teacher_inputs(frozen) == {"model": VIT, "kwargs": sha256_json(TEACHER_KW), "weights": sha256_file(w)}
    assert fp.init_inputs(frozen.cfg) == {"model": VIT, "kwargs": sha256_json(doc["student"]["kwargs"]), "init": "seed:0"}
    trained = _teacher_inputs(_runner(write_stage(tmp_path, doc, "trained.yaml")))
    assert not {"init", "pretrained", "preprocess"} & set(trained)
    spec = _run_stage(frozen, "teacher")
    assert spec.weights == str(w)  # a checkpoint of the model itself: workers load the file as it is
    assert spec.render.mean == (0.286,) and spec.render.interpolation == "bilinear"


def test_pretrained_teacher_and_student_from_local_dirs(fmnist_small, tmp_path):
    teacher = _local_dir(tmp_path / "teacher", TEACHER_KW, seed=1, mean=[0.4], std=[0.3])
    student = _local_dir(tmp_path / "student", {**STUDENT_KW, "num_classes": 5}, seed=2, mean=[0.2], std=[0.25])
    t_name, s_name = f"local-dir:{tmp_path / 'teacher'}", f"local-dir:{tmp_path / 'student'}"
    doc = stage_doc(tmp_path, fmnist_small)
    path = write_stage(tmp_path, doc, teacher={"model": t_name, "pretrained": True},
                       student={"model": s_name, "pretrained": True, "kwargs": {"num_classes": 10}}, data__val=None)
    runner = _runner(path)
    file = tmp_path / "teacher" / "model.safetensors"
    inputs = fp.teacher_inputs(runner.cfg, runner.manifest)
    assert inputs["weights"] == sha256_file(file) and inputs["pretrained"] is True

    spec = _run_stage(runner, "teacher")
    assert Path(spec.weights).parent == tmp_path / "store" / "teachers"
    plain = create_model(t_name, {}, weights=spec.weights)  # what workers do: a strict load, fingerprint checked
    assert model_fingerprint(plain, t_name) == spec.fingerprint == model_fingerprint(teacher, t_name)
    assert (spec.render.mean, spec.render.std, spec.render.interpolation) == ((0.4,), (0.3,), "bicubic")

    init = fp.init_inputs(runner.cfg)
    assert init["init"] == sha256_file(tmp_path / "student" / "model.safetensors") and init["pretrained"] is True
    c0 = torch.load(_run_stage(runner, "init"), weights_only=True)
    assert c0["head.weight"].shape == (10, 16)  # re-initialised for data.num_classes
    body = {k: v for k, v in c0.items() if not k.startswith("head.")}
    want = {k: v for k, v in student.state_dict().items() if not k.startswith("head.")}
    assert state_dict_fingerprint(body) == state_dict_fingerprint(want)

    # other weights in the folder: other inputs, so the teacher stage is stale
    save_for_hf(create_model(VIT, TEACHER_KW, seed=3), str(tmp_path / "teacher"), safe_serialization=True,
                model_args=TEACHER_KW)
    assert fp.teacher_inputs(runner.cfg, runner.manifest)["weights"] != inputs["weights"]


def _finetune_config(tmp_path: Path, fmnist_small, name: str = "stages.yaml", **train) -> Path:
    """A pretrained ``local-dir:`` teacher (5 classes) with a train block: a fine-tune to 10 classes."""
    recipe = {"epochs": 1, "lr": 1.0e-12, "min_lr": 0.0, "warmup_epochs": 0, "batch_size": 16, "seed": 0,
              "patch_drop_rate": 0.5, **train}
    teacher = {"model": f"local-dir:{tmp_path / 'teacher'}", "pretrained": True, "kwargs": {"num_classes": 10},
               "train": recipe}
    return write_stage(tmp_path, stage_doc(tmp_path, fmnist_small), name, teacher=teacher, data__subset=32,
                       data__val=None, schedule__epochs=1, schedule__every=1)


def _status(runner: Runner) -> dict[str, str]:
    return {s.name: s.freshness.reason for s in runner.status()}


def test_pretrained_teacher_with_a_train_block_is_fine_tuned_in_a_stage_of_its_own(fmnist_small, tmp_path):
    source = _local_dir(tmp_path / "teacher", {**TEACHER_KW, "num_classes": 5}, seed=1, mean=[0.4], std=[0.3])
    # a learning rate too small to move the weights: what comes out is where the fine-tune started
    runner = _runner(_finetune_config(tmp_path, fmnist_small))
    assert [s.name for s in runner.stages][:3] == ["teacher", "teacher-finetune", "init"]
    inputs = fp.teacher_inputs(runner.cfg, runner.manifest)  # the teacher stage only loads the start
    assert inputs == {"model": runner.cfg.teacher.model, "kwargs": sha256_json({"num_classes": 10}),
                      "weights": sha256_file(tmp_path / "teacher" / "model.safetensors"), "pretrained": True,
                      "head": {"num_classes": 10, "seed": 0}}
    assert _status(runner)["teacher-finetune"] == "depends on teacher, which is stale"

    runner.run()
    start = fp.teacher_inputs(runner.cfg, runner.manifest)
    assert set(_status(runner).values()) == {"up to date"}
    info = runner.lock.info("teacher-finetune")
    tuned = torch.load(runner.lock.output("teacher-finetune", "weights")["path"], weights_only=True)
    assert tuned["head.weight"].shape == (10, 32)  # a new head for data.num_classes
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.allclose(tuned[key], value, atol=1e-6), key
    # MACs: 3x the forward of the token-dropped model (keep int(16 * 0.5) = 8 of 16 patches) per image-step
    plain = create_model(VIT, {**TEACHER_KW, "num_classes": 10}, seed=0)
    assert info["image_steps"] == 2 * 16 and info["macs"] == 3 * teacher_macs(plain, 8) * 32
    assert len(info["epochs"]) == 1 and info["seconds"] > 0
    precompute = runner.lock.stages["precompute-0"]["inputs"]
    assert precompute["teacher"] == info["fingerprint"]  # the labels come from the fine-tuned teacher

    assert (tmp_path / "run" / "teacher_metrics.csv").is_file()  # the fine-tune's epochs
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Teacher fine-tune (`teacher-finetune`): 1 epochs" in report and f"{info['macs'] / 1e9:.2f} GMACs" in report
    rerun = _runner(_finetune_config(tmp_path, fmnist_small))
    rerun.run()
    assert set(rerun.result.stages.values()) == {"cached"}

    # another recipe: the start is the same, the fine-tune and everything reading the teacher are stale
    changed = _runner(_finetune_config(tmp_path, fmnist_small, "lr.yaml", lr=2.0e-12))
    assert fp.teacher_inputs(changed.cfg, changed.manifest) == start
    status = _status(changed)
    assert status["teacher"] == "up to date" and status["init"] == "up to date"
    assert status["teacher-finetune"].startswith("input 'recipe' changed")
    assert status["precompute-0"] == "depends on teacher-finetune, which is stale"
    assert status["train-0"] == "depends on precompute-0, which is stale"


@pytest.mark.slow
def test_the_finetune_under_two_torchrun_processes_trains_like_one(fmnist_small, tmp_path):
    _local_dir(tmp_path / "teacher", {**TEACHER_KW, "num_classes": 5}, seed=1, mean=[0.4], std=[0.3])
    path = _finetune_config(tmp_path, fmnist_small, lr=1.0e-3, patch_drop_rate=0.0)  # no random token drops
    one = _runner(path)
    one.run(until="teacher-finetune")
    single = torch.load(one.lock.output("teacher-finetune", "weights")["path"], weights_only=True)
    steps = one.lock.info("teacher-finetune")["image_steps"]
    shutil.rmtree(tmp_path / "store" / "teachers")
    shutil.rmtree(tmp_path / "run")
    two = Runner(load_config(path), progress=False, echo=lambda _s: None, nproc=2)
    two.run(until="teacher-finetune")
    info = two.lock.info("teacher-finetune")
    assert info["nproc"] == 2 and info["image_steps"] == steps
    double = torch.load(two.lock.output("teacher-finetune", "weights")["path"], weights_only=True)
    for k in single:
        torch.testing.assert_close(double[k], single[k], rtol=1e-4, atol=1e-5)


def test_probe_fine_tunes_first_and_says_when_masks_still_cost_too_much(fmnist_small, tmp_path, capsys):
    _local_dir(tmp_path / "teacher", {**TEACHER_KW, "num_classes": 5}, seed=1, mean=[0.4], std=[0.3])
    path = _finetune_config(tmp_path, fmnist_small)
    # a budget no mask meets (KL 0), so the advice is certain whatever the tiny teacher predicts
    code, out = cli("probe", str(path), "--samples", "16", "--set", "masking.keep=auto",
                    "--set", "masking.budget={kl: 0.0}", capsys=capsys)
    assert code == 0, out
    lock = json.loads((tmp_path / "run" / "run.lock.json").read_text())["stages"]
    assert {"teacher", "teacher-finetune"} <= set(lock)  # the probe measures the fine-tuned teacher
    assert "At keep 8/16 (policy student)" in out and "falls short of the budget (KL <= 0.0 nats)" in out
    assert "Its fine-tune (teacher.train, patch_drop_rate 0.5) does not reach the budget yet" in out


def test_a_finetune_stopped_midway_resumes_from_its_record_and_ends_where_one_run_does(fmnist_small, tmp_path,
                                                                                       monkeypatch):
    import pipeline.run.training as training

    _local_dir(tmp_path / "teacher", {**TEACHER_KW, "num_classes": 5}, seed=1, mean=[0.4], std=[0.3])
    path = _finetune_config(tmp_path, fmnist_small, lr=1.0e-3, epochs=2, checkpoint_every=1)
    whole = _runner(path)
    whole.run(until="teacher-finetune")
    want = whole.lock.info("teacher-finetune")
    assert want["resumed"] is None
    shutil.rmtree(tmp_path / "store" / "teachers")
    shutil.rmtree(tmp_path / "run")

    evaluate = training.evaluate_val

    def stop_after_the_first_epoch(cfg, manifest, model, model_cfg, device):
        monkeypatch.setattr(training, "evaluate_val", evaluate)
        raise RuntimeError("stopped")

    monkeypatch.setattr(training, "evaluate_val", stop_after_the_first_epoch)
    with pytest.raises(RuntimeError, match="stopped"):
        _runner(path).run(until="teacher-finetune")
    assert (tmp_path / "run" / "teacher-finetune").is_dir()  # its resume records
    again = _runner(path)
    again.run(until="teacher-finetune")
    got = again.lock.info("teacher-finetune")
    assert got["resumed"] is not None and got["resumed"]["epoch"] == 0
    assert got["fingerprint"] == want["fingerprint"] and got["image_steps"] == want["image_steps"] == 4 * 16


@pytest.mark.parametrize(("extra", "full_forwards"), [({"full_view_weight": 1.0}, 3), ({"consistency_weight": 1.0}, 1)])
def test_the_finetunes_macs_count_the_full_view_it_trains_or_only_runs(fmnist_small, tmp_path, extra, full_forwards):
    """The full view trained (its cross-entropy): forward + backward at all 16 patches beside the
    dropped view's; run only as the consistency target: one forward."""
    _local_dir(tmp_path / "teacher", {**TEACHER_KW, "num_classes": 5}, seed=1, mean=[0.4], std=[0.3])
    cfg = load_config(_finetune_config(tmp_path, fmnist_small, **extra))
    plain = create_model(VIT, {**TEACHER_KW, "num_classes": 10}, seed=0)
    assert train_step_macs(cfg, 32) == (3 * teacher_macs(plain, 8) + full_forwards * teacher_macs(plain, None)) * 32
