"""The fingerprint rules of pipeline/fingerprints.py: stores and run locks written before a change stay fresh.

``fingerprints_pinned.json`` holds every stage's inputs (and the partition and training-segment
fingerprints) for config variants, as the code before the stage graph computed them (one variant
per conditional-entry rule). They must not change: a changed input makes every store and lock
written for such a config stale. A new config field enters through ``unless_default``, so the
variants that do not set it keep these values. Digests that depend on the machine's libraries
(the render and resize digests) are pinned to constants here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import maskedkd.digests as digests
import pipeline.fingerprints as fp
import pipeline.labels.contract as contract
from maskedkd import ladder_keeps
from maskedkd.views import ViewSpec
from pipeline.config import TeacherTrainConfig, load_config, set_fields
from pipeline.labels.contract import LabelRef, RenderSpec, render_spec, shard_refs
from pipeline.precompute.probe import plan_probe
from pipeline.precompute.spec import ModelSpec, PartitionTask, task_fingerprints
from pipeline.train.loop import segment_fingerprint
from tests.pipeline.run.test_runner import stage_doc

PINNED = json.loads((Path(__file__).parent / "fingerprints_pinned.json").read_text())

# one variant per rule (and the plain config); see the module docstring of pipeline/fingerprints.py
VARIANTS = {
    "base": {},
    "teacher_weights": {"teacher.train": None, "teacher.weights": "{root}/w.pth"},
    "patch_drop": {"teacher.train.patch_drop_rate": 0.5},
    "order_seed": {"train.seed": 3, "teacher.train.seed": 5},
    "resize_torch": {"data.resize": "torch"},
    "tolerance": {"masking.tolerance": 2},
    "auto": {"masking.keep": "auto", "masking.budget": {"agreement": 0.9}, "masking.probe_samples": 32},
    "online": {"online": True},
    "kd_off": {"train.kd": "off"},
    "lag1": {"schedule.lag": 1},
}


class Manifest:
    """Three shards of 256 rows per split, with made-up digests."""

    def shards(self, split):
        return [SimpleNamespace(samples=256, sha256=f"{split}{i}" * 8) for i in range(3)]

    def shard_paths(self, split):
        return [f"/data/{split}-{i:06d}.tar" for i in range(3)]


class Task:
    """A planned partition task: only what the precompute inputs read."""

    def __init__(self, teacher, student, keep, i):
        self.teacher, self.student, self.keep = teacher, student, keep
        self.fingerprints = {"teacher": "t", "mask": f"m{i}", "view": f"v{i}"}


@pytest.fixture
def root(tmp_path, monkeypatch):
    resize = lambda resize, interp: f"resize-digest:{resize}:{interp}"  # noqa: E731
    for module, name, fn in ((digests, "resize_digest", resize), (contract, "resize_digest", resize),
                             (digests, "render_digest", lambda spec: "render-digest"),
                             (fp, "render_digest", lambda spec: "render-digest")):
        monkeypatch.setattr(module, name, fn)
    (tmp_path / "w.pth").write_bytes(b"teacher weights")
    (tmp_path / "c0.pth").write_bytes(b"checkpoint c0")
    return tmp_path


def config(root: Path, changes: dict):
    changes = {k: v.format(root=root) if isinstance(v, str) else v for k, v in changes.items()}
    doc = set_fields(copy.deepcopy(stage_doc(root, Path("/data"))), changes)
    path = root / "stage.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path, check_files=False)


def models(cfg, short: bool = False) -> tuple[ModelSpec, ModelSpec]:
    t, s = cfg.teacher, cfg.student
    return (ModelSpec("t" if short else t.model, {} if short else dict(t.kwargs), "/w/t.pth", "teacher-fp",
                      render_spec(cfg.data, t)),
            ModelSpec("s" if short else s.model, {} if short else dict(s.kwargs), "/w/c0.pth", "student-fp",
                      render_spec(cfg.data, s)))


def stage_inputs(cfg, root: Path) -> dict:
    teacher, student = models(cfg)
    labels = None
    if not cfg.online and cfg.train.kd != "off":
        labels = {("train-000000", e): LabelRef(f"/s/p{e}.parquet", f"sha{e}", None) for e in (0, 1)}
    tasks = [Task(teacher, student, 8, i) for i in range(2)]
    probe = plan_probe(cfg, 0, manifest=Manifest(), teacher=teacher, student=student,
                       keeps=ladder_keeps(cfg.masking.ladder, cfg.num_patches), policies=(cfg.masking.policy,))
    return {
        "teacher": fp.teacher_inputs(cfg, Manifest()),
        "init": fp.init_inputs(cfg),
        "precompute-0": fp.precompute_inputs(cfg, 0, tasks),
        "precompute-0-empty": fp.precompute_inputs(cfg, 0, []),
        "train-0": fp.train_inputs(cfg, Manifest(), 0, root / "c0.pth", labels, teacher),
        "train-1": fp.train_inputs(cfg, Manifest(), 1, root / "c0.pth", labels, teacher),
        "probe-0": fp.probe_inputs(probe),
        "probe-0-fingerprint": probe.fingerprint,
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_stage_keeps_the_inputs_locks_were_written_with(root, variant):
    got = json.loads(json.dumps(stage_inputs(config(root, VARIANTS[variant]), root)))
    assert got == PINNED["stage_inputs"][variant]


@pytest.mark.parametrize("variant", ["base", "resize_torch", "tolerance"])
def test_partitions_and_training_segments_keep_their_fingerprints(root, variant):
    cfg = config(root, VARIANTS[variant])
    teacher, student = models(cfg, short=True)
    t = PartitionTask(shard="train-000000", shard_path="/d/train-000000.tar", shard_sha256="ab" * 32, limit=None,
                      view_epoch=0, view_spec={}, view_spec_fingerprint="vs", view_seed=0, teacher=teacher,
                      student=student, policy="student", keep=8, tolerance=cfg.masking.tolerance, spot_check=0,
                      topk=10, temperatures=(1.0,), num_classes=10, store="/s", device="cpu")
    parts = {"plain": task_fingerprints(t), "cuda_decode": task_fingerprints(replace(t, decode="cuda")),
             "tf32": task_fingerprints(replace(t, device="cuda")),
             "bf16": task_fingerprints(replace(t, device="cuda", precision="bf16"))}
    seg = segment_fingerprint(init="i", shards=shard_refs(Manifest(), "train"), spec=cfg.views.view_spec(), seed=0,
                              epochs=range(0, 2), cfg=cfg.train, total_epochs=4, render=student.render,
                              labels={("train-000000", 0): LabelRef("/s/x/p.parquet", "sha")}, view_pool=None,
                              online=None)
    assert {"partition": parts, "segment": seg} == PINNED["store_fingerprints"][variant]


def test_unless_default_adds_an_input_only_when_it_is_not_the_default():
    assert fp.unless_default("resize", "pil", "pil") == {}
    assert fp.unless_default("resize", "torch", "pil") == {"resize": "torch"}
    assert fp.without_defaults({"lr": 1, "patch_drop_rate": 0.0}, fp.TEACHER_RECIPE_ADDED) == {"lr": 1}
    assert fp.without_defaults({"lr": 1, "patch_drop_rate": 0.5}, fp.TEACHER_RECIPE_ADDED) == {
        "lr": 1, "patch_drop_rate": 0.5}
    assert fp.without_defaults({"lr": 1, "full_view_weight": 0.0, "consistency_weight": 1.0},
                               fp.TEACHER_RECIPE_ADDED) == {"lr": 1, "consistency_weight": 1.0}
    assert fp.order_seed_entry(0, 0) == {} and fp.order_seed_entry(3, 0) == {"order_seed": 3}


def test_a_fine_tune_loads_as_a_frozen_teacher_and_trains_as_a_teacher_from_scratch(root):
    """``teacher-finetune`` (weights *and* a train block): the ``teacher`` stage's inputs are a frozen
    teacher's; the fine-tune's are its start's fingerprint plus what a teacher trained from scratch
    with that recipe reads. The pinned configs (scratch, frozen) have no fine-tune."""
    tune = config(root, {"teacher.weights": "{root}/w.pth", "teacher.train.patch_drop_rate": 0.5})
    frozen, scratch = config(root, VARIANTS["teacher_weights"]), config(root, VARIANTS["patch_drop"])
    assert tune.teacher.fine_tuned and not frozen.teacher.fine_tuned and not scratch.teacher.fine_tuned
    assert fp.teacher_inputs(tune, Manifest()) == fp.teacher_inputs(frozen, Manifest())
    start = models(tune)[0]
    assert fp.teacher_finetune_inputs(tune, Manifest(), start) == {
        "start": "teacher-fp", **PINNED["stage_inputs"]["patch_drop"]["teacher"]}
    retuned = config(root, {"teacher.weights": "{root}/w.pth", "teacher.train.patch_drop_rate": 0.25})
    assert fp.teacher_finetune_inputs(retuned, Manifest(), start)["recipe"] != fp.teacher_finetune_inputs(
        tune, Manifest(), start)["recipe"]


def test_a_downscaled_saliency_view_changes_only_the_masks_it_picks(root):
    """``masking.saliency_scale`` (issue 24 item 4): at 1 nothing changes (the pinned variants above);
    below 1 the mask fingerprint, the probe and the precompute inputs name it, the reuse fingerprints
    (teacher, shard, view, label) stay, and a policy without a student ignores it."""
    base, half = config(root, {}), config(root, {"masking.saliency_scale": 0.5})
    teacher, student = models(base, short=True)
    t = PartitionTask(shard="train-000000", shard_path="/d/train-000000.tar", shard_sha256="ab" * 32, limit=None,
                      view_epoch=0, view_spec={}, view_spec_fingerprint="vs", view_seed=0, teacher=teacher,
                      student=student, policy="student", keep=8, tolerance=0, spot_check=0,
                      topk=10, temperatures=(1.0,), num_classes=10, store="/s", device="cpu")
    plain, scaled = task_fingerprints(t), task_fingerprints(replace(t, saliency_scale=0.5))
    assert plain == PINNED["store_fingerprints"]["base"]["partition"]["plain"]
    assert {k for k in plain if plain[k] != scaled[k]} == {"mask"}
    assert task_fingerprints(replace(t, saliency_scale=1.0)) == plain
    probes = [plan_probe(cfg, 0, manifest=Manifest(), teacher=teacher, student=student, keeps=[8, None],
                         policies=(policy,)) for cfg in (base, half) for policy in ("student", "random")]
    assert probes[0].fingerprint != probes[2].fingerprint  # student: the scale is named
    assert probes[1].fingerprint == probes[3].fingerprint and probes[3].saliency_scale == 1.0  # random: no student
    tasks = [Task(teacher, student, 8, i) for i in range(2)]
    assert fp.precompute_inputs(half, 0, tasks) == {**fp.precompute_inputs(base, 0, tasks), "saliency_scale": 0.5}
    assert "saliency_scale" not in fp.precompute_inputs(half, 0, [Task(teacher, None, None, 0)])


@pytest.mark.parametrize("field", ["full_view_weight", "consistency_weight"])
def test_a_full_view_option_enters_the_finetune_inputs_only_when_set(root, field):
    """Off (0), the fine-tune's recipe hashes as before the option existed (the pinned
    ``patch_drop`` recipe); set, it is another recipe."""
    tune = config(root, {"teacher.weights": "{root}/w.pth", "teacher.train.patch_drop_rate": 0.5})
    off = config(root, {"teacher.weights": "{root}/w.pth", "teacher.train.patch_drop_rate": 0.5,
                        f"teacher.train.{field}": 0.0})
    on = config(root, {"teacher.weights": "{root}/w.pth", "teacher.train.patch_drop_rate": 0.5,
                       f"teacher.train.{field}": 1.0})
    start = models(tune)[0]
    assert fp.teacher_finetune_inputs(off, Manifest(), start) == fp.teacher_finetune_inputs(tune, Manifest(), start)
    assert fp.teacher_finetune_inputs(on, Manifest(), start)["recipe"] != fp.teacher_finetune_inputs(
        tune, Manifest(), start)["recipe"]


@pytest.mark.parametrize("field", ["full_view_weight", "consistency_weight"])
def test_a_teacher_training_segment_keeps_its_resume_fingerprint_unless_a_full_view_option_is_set(field):
    """The value pinned was computed before the options existed: a fine-tune's resume records stay usable."""
    recipe = dict(epochs=2, lr=2e-4, min_lr=1e-6, warmup_epochs=0, batch_size=128, smoothing=0.1, patch_drop_rate=0.5)

    def seg(**extra):
        return segment_fingerprint(init="i", shards=[], spec=ViewSpec(scale=(0.8, 1.0), hflip=0.5), seed=1,
                                   epochs=range(0, 2), cfg=TeacherTrainConfig(**recipe, **extra), total_epochs=2,
                                   render=RenderSpec(28, (0.286,), (0.353,)), labels=None, view_pool=None, online=None)

    assert seg() == seg(**{field: 0.0}) == "dabfca7a0549da7b0762cbbf4824e163a329523bbbf507dd6a80e9f901775b51"
    assert seg(**{field: 1.0}) != seg()


@pytest.mark.parametrize("field, value", [("model_ema", True), ("model_ema_decay", 0.999), ("model_ema_warmup", True),
                                          ("grad_accum_steps", 2), ("compile", True), ("channels_last", True)])
def test_deits_extras_enter_the_recipe_and_the_segment_only_when_set(root, field, value):
    """Each at its default hashes as before the field existed (the pinned ``base``); set, the train
    stage, a trained teacher and a training segment are something else."""
    base = config(root, {})
    at_default = config(root, {f"train.{field}": fp.TRAIN_RECIPE_ADDED[field],
                               f"teacher.train.{field}": fp.TRAIN_RECIPE_ADDED[field]})
    changed = config(root, {f"train.{field}": value, f"teacher.train.{field}": value})
    teacher, student = models(base, short=True)

    def seg(cfg):
        return segment_fingerprint(init="i", shards=shard_refs(Manifest(), "train"), spec=cfg.views.view_spec(), seed=0,
                                   epochs=range(0, 2), cfg=cfg.train, total_epochs=4, render=student.render,
                                   labels=None, view_pool=None, online=None)

    def recipes(cfg):
        return (fp.train_inputs(cfg, Manifest(), 0, root / "c0.pth", None, None)["recipe"],
                fp.trained_teacher_inputs(cfg, Manifest())["recipe"], seg(cfg))

    assert recipes(at_default) == recipes(base)
    assert all(a != b for a, b in zip(recipes(changed), recipes(base)))


def test_the_order_and_mix_mode_enter_fingerprints_only_where_they_change_results():
    """``train.lanes`` / ``train.interleave`` only when not 1; ``views.mix_mode`` only where the views
    mix and it is not ``window`` (mixing views meant ``window`` before the field existed)."""
    assert fp.without_defaults({"lr": 1, "lanes": 1, "interleave": 1}, fp.ORDER_ADDED) == {"lr": 1}
    assert fp.without_defaults({"lr": 1, "lanes": 8, "interleave": 1}, fp.ORDER_ADDED) == {"lr": 1, "lanes": 8}
    plain = {"seed": 0, "mixup": 0.0, "cutmix": 0.0, "mix_mode": "pair"}
    assert fp.views_record(plain) == {"seed": 0, "mixup": 0.0, "cutmix": 0.0}
    window = {"seed": 0, "mixup": 0.8, "cutmix": 1.0, "mix_mode": "window"}
    assert fp.views_record(window) == {"seed": 0, "mixup": 0.8, "cutmix": 1.0}
    assert fp.views_record({**window, "mix_mode": "pair"}) == {**window, "mix_mode": "pair"}
