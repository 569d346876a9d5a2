"""``keep: auto`` counts the saliency pass (issue 24 item 4): the spot-check's rungs carry the
student's saliency MACs, and a keep whose teacher + saliency cost is above the full teacher's is
never chosen; labelling then runs the full teacher without a student (no saliency pass)."""

from __future__ import annotations

import yaml

from maskedkd import Budget, Rung, choose_keep, saliency_macs
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.models import create_model, save_checkpoint
from pipeline.precompute.plan import plan_segment
from pipeline.precompute.probe import plan_probe, run_probe
from pipeline.precompute.spec import model_spec
from tests.pipeline.precompute.conftest import BASE, STUDENT, stage_doc
from tests.pipeline.precompute.helpers import VIT


def _probe(tmp_path, dataset, ckpts, student_ckpt, student_kwargs):
    doc = stage_doc(name="p", data_root=dataset, store=tmp_path / "store", teacher_weights=ckpts["teacher"],
                    run_dir=tmp_path / "run")
    doc["student"]["kwargs"] = student_kwargs
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    manifest = load_manifest(cfg.data.root)
    teacher, student = model_spec(cfg, "teacher", ckpts["teacher"]), model_spec(cfg, "student", student_ckpt)
    task = plan_probe(cfg, 0, manifest=manifest, teacher=teacher, student=student, keeps=[12, 25, None],
                      policies=("student", "random"), samples=16, device="cpu")
    return cfg, manifest, teacher, student, run_probe({"task": task})["curves"]


def test_the_spot_check_counts_the_saliency_pass(tmp_path, dataset, ckpts):
    cfg, *_, curves = _probe(tmp_path, dataset, ckpts, ckpts["c0"], dict(STUDENT))
    sal = saliency_macs(create_model(VIT, cfg.student.kwargs, weights=ckpts["c0"]))
    assert [r["saliency_macs"] for r in curves["student"]] == [sal, sal, 0]
    assert [r["saliency_macs"] for r in curves["random"]] == [0, 0, 0]


def test_a_student_dearer_than_the_savings_gets_the_full_teacher(tmp_path, dataset, ckpts):
    big = dict(BASE, embed_dim=128, depth=4, num_heads=2)  # its saliency forward costs more than the teacher
    weights = tmp_path / "big.pth"
    save_checkpoint(create_model(VIT, big, seed=0), weights)
    cfg, manifest, teacher, student, curves = _probe(tmp_path, dataset, ckpts, weights, big)
    rungs = [Rung(**r) for r in curves["student"]]
    full = rungs[-1].macs
    assert all(r.net_macs > full for r in rungs[:-1])
    assert choose_keep(rungs, Budget(agreement=0.0)) is None  # every keep meets the budget, none pays
    assert choose_keep([Rung(**r) for r in curves["random"]], Budget(agreement=0.0)) == 12  # no saliency to pay
    tasks = plan_segment(cfg, 0, manifest=manifest, teacher=teacher, student=student, device="cpu",
                         num_classes=10, keep=None)
    assert tasks and all(t.student is None and t.keep is None for t in tasks)  # no saliency pass

