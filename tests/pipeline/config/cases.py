"""Shared stage-config test cases: a minimal valid stage document (``BASE``), the malformed
variants every entry point must refuse (``MALFORMED``), a working-directory fixture and the
helpers that write and check them. Used by ``test_config.py`` (``config check``) and by the
reliability suite (``run``, ``gc``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import set_fields

VIT = "vit_tiny_patch16_224"
TINY = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 24, "depth": 1, "num_heads": 2}

BASE: dict[str, Any] = {
    "name": "t",
    "data": {"root": "data", "num_classes": 10, "mean": [0.5], "std": [0.5], "subset": 100},
    "teacher": {"model": VIT, "kwargs": TINY, "train": {"epochs": 2, "warmup_epochs": 0}},
    "student": {"model": VIT, "kwargs": TINY},
    "schedule": {"epochs": 4, "milestones": [0, 2]},
    "masking": {"keep": 25},
    "train": {"warmup_epochs": 0},
}


def write_manifest(root: Path, train: int = 1000, test: int = 200) -> None:
    """A dataset folder ``root`` holding only the manifest fields the config loader reads."""
    root.mkdir(parents=True, exist_ok=True)
    doc = {"classes": [str(i) for i in range(10)],
           "splits": {"train": {"num_samples": train}, "test": {"num_samples": test}}}
    (root / "manifest.json").write_text(json.dumps(doc))


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a minimal dataset folder ``data/`` and a weights file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MKD_SCHEDULER", raising=False)
    write_manifest(tmp_path / "data")
    (tmp_path / "w.safetensors").write_bytes(b"")
    return tmp_path


def write_doc(ws: Path, doc: Any, name: str = "stage.yaml") -> Path:
    """Write ``doc`` (a dict, or raw YAML text) as ``ws/name``; returns the path."""
    path = ws / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative: what a refused command must leave unchanged."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``mkd-pipeline ARGS`` in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def set_key(path: str, value: Any) -> Callable[[dict], None]:
    """An edit of a stage document: set the dotted key ``path`` (creating sections) to ``value``."""
    def mutate(doc: dict) -> None:
        set_fields(doc, {path: value})
    return mutate


def set_keys(values: dict[str, Any]) -> Callable[[dict], None]:
    """An edit of a stage document: set several dotted keys."""
    def mutate(doc: dict) -> None:
        set_fields(doc, values)
    return mutate


def drop_key(path: str) -> Callable[[dict], None]:
    """An edit of a stage document: delete the dotted key ``path``."""
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


def both(*fns: Callable[[dict], None]) -> Callable[[dict], None]:
    """The edits ``fns`` applied in order."""
    def mutate(doc: dict) -> None:
        for fn in fns:
            fn(doc)
    return mutate


# (id, mutation of BASE or raw YAML text, substrings the error must contain: the field first)
MALFORMED: list[tuple[str, Any, list[str]]] = [
    ("unknown-top-key", set_key("epochs", 3), ["epochs: unknown key 'epochs'", "allowed: name, run_dir, data"]),
    ("unknown-nested-key", set_key("masking.kep", 3), ["masking.kep: unknown key", "did you mean 'keep'"]),
    ("unknown-deep-key", set_key("teacher.train.views.flip", 0.5), ["teacher.train.views.flip: unknown key"]),
    ("student-epochs-hint", set_key("train.epochs", 3), ["train.epochs: unknown key", "schedule.epochs"]),
    ("wrong-type", set_key("schedule.epochs", "ten"), ["schedule.epochs: must be a valid integer", "'ten'"]),
    ("wrong-type-list", set_key("data.mean", 0.5), ["data.mean: must be a valid list"]),
    ("missing-section", drop_key("schedule"), ["schedule: required, missing"]),
    ("missing-field", drop_key("data.num_classes"), ["data.num_classes: required"]),
    ("bad-name", set_key("name", "a/b"), ["name: must be a folder name"]),
    ("batch-mix-pool", set_keys({"views.mix_mode": "batch", "views.mixup": 0.8, "views.pool": 2}),
     ["views.mix_mode: batch draws a mix per global batch", "it needs pool: epochs (pool is 2)"]),
    ("repeats-zero", set_key("views.repeats", 0), ["views.repeats: must be greater than or equal to 1"]),
    ("keep-too-big", set_key("masking.keep", 300), ["masking.keep: must be between 1 and 49", "got 300"]),
    ("keep-zero", set_key("masking.keep", 0), ["masking.keep: must be greater than or equal to 1"]),
    ("keep-float", set_key("masking.keep", 2.5), ["masking.keep: must be a valid integer"]),
    ("ratio-above-1", both(drop_key("masking.keep"), set_key("masking.ratio", 1.5)), ["masking.ratio: must be less than or equal to 1"]),
    ("ratio-rounds-to-0", both(drop_key("masking.keep"), set_key("masking.ratio", 0.001)), ["masking.ratio: round(0.001 * 49) = 0"]),
    ("keep-and-ratio", set_key("masking.ratio", 0.5), ["masking.ratio: give one of keep, ratio or per_milestone"]),
    ("no-keep", drop_key("masking.keep"), ["masking.keep: policy 'student' needs keep"]),
    ("per-milestone-length", both(drop_key("masking.keep"), set_key("masking.per_milestone", [25, 20, 10])),
     ["masking.per_milestone: needs one keep per milestone (2"]),
    ("per-milestone-range", both(drop_key("masking.keep"), set_key("masking.per_milestone", [25, 50])),
     ["masking.per_milestone[1]: must be between 1 and 49"]),
    ("unknown-policy", set_key("masking.policy", "saliency"), ["masking.policy: unknown masking policy 'saliency'", "student_inverse"]),
    ("negative-tolerance", set_key("masking.tolerance", -1), ["masking.tolerance: must be greater than or equal to 0"]),
    ("missing-weights-file", both(drop_key("teacher.train"), set_key("teacher.weights", "nope.safetensors")),
     ["teacher.weights: file", "nope.safetensors does not exist"]),
    ("weights-suffix", both(drop_key("teacher.train"), set_key("teacher.weights", "w.txt")), ["teacher.weights: must be a .safetensors"]),
    ("teacher-pretrained-head", both(drop_key("teacher.train"), set_key("teacher.pretrained", True)),
     ["teacher.pretrained: vit_tiny_patch16_224's pretrained classifier has 1000 classes but data.num_classes is 10",
      "fine-tune it with a teacher.train block"]),
    ("student-pretrained-classes", both(set_key("student.pretrained", True),
                                        set_key("student.kwargs", {k: v for k, v in TINY.items() if k != "num_classes"})),
     ["student.kwargs.num_classes: the student has 1000 classes", "set student.kwargs.num_classes: 10"]),
    ("crop-pct-hint", set_key("data.crop_pct", 0.9), ["data.crop_pct: unknown key", "teacher.crop_pct, student.crop_pct"]),
    ("model-mean-without-std", set_key("student.mean", [0.5]), ["student.std: give mean and std together"]),
    ("model-std-length", both(set_key("teacher.mean", [0.5]), set_key("teacher.std", [0.5, 0.5])),
     ["teacher.std: has 2 values but mean has 1"]),
    ("local-dir-without-config", both(set_key("teacher.model", "local-dir:nowhere"), set_key("teacher.pretrained", True)),
     ["teacher.model:", "nowhere has no config.json"]),
    ("teacher-neither", drop_key("teacher.train"), ["teacher.weights: the teacher needs weights"]),
    ("student-seed-and-weights", both(set_key("student.weights", "w.safetensors"), set_key("student.init_seed", 1)),
     ["student.init_seed: give either"]),
    ("teacher-train-kd", set_key("teacher.train.kd", "kl"), ["teacher.train.kd: must be 'off'"]),
    ("milestones-order", set_key("schedule.milestones", [0, 3, 2]), ["schedule.milestones[2]: must be strictly increasing"]),
    ("milestones-start", set_key("schedule.milestones", [1, 2]), ["schedule.milestones: must start at 0"]),
    ("milestones-beyond", set_key("schedule.milestones", [0, 4]), ["schedule.milestones: must all be < epochs (4)"]),
    ("milestones-and-every", set_key("schedule.every", 2), ["schedule.every: give milestones or every"]),
    ("lag-one-milestone", both(set_key("schedule.milestones", [0]), set_key("schedule.lag", 1)), ["schedule.lag: lag 1 needs at least 2"]),
    ("lag-2", set_key("schedule.lag", 2), ["schedule.lag: must be 0 or 1"]),
    ("unknown-model", set_key("teacher.model", "vit_tiny_patch16_2244"), ["teacher.model: unknown timm model", "vit_tiny_patch16_224"]),
    ("bad-kwargs", set_key("student.kwargs", {**TINY, "num_heads": 5}), ["student.kwargs: timm.create_model"]),
    ("kwargs-pretrained", set_key("student.kwargs", {**TINY, "pretrained": True}), ["student.kwargs: 'pretrained' is not allowed"]),
    ("unmaskable-teacher", set_key("teacher.kwargs", {**TINY, "class_token": False, "global_pool": "avg"}),
     ["teacher.model: cannot mask"]),
    ("grid-mismatch", set_key("student.kwargs", {**TINY, "patch_size": 7}), ["student.kwargs: the student's patch grid 4x4"]),
    ("num-classes-mismatch", set_key("teacher.kwargs", {**TINY, "num_classes": 100}),
     ["teacher.kwargs.num_classes: the teacher has 100 classes"]),
    ("manifest-classes", set_key("data.num_classes", 12), ["data.num_classes: is 12 but"]),
    ("topk-too-big", set_key("labels.topk", 11), ["labels.topk: must be <= data.num_classes (10)"]),
    ("resize-lanczos", both(set_key("data.resize", "torch"), set_key("data.interpolation", "lanczos")),
     ["data.resize: is torch, which antialiases bilinear and bicubic only, but interpolation is lanczos"]),
    ("topk-word", set_key("labels.topk", "many"), ["labels.topk: must be an integer >= 1 or 'all'"]),
    ("auto-without-budget", set_key("masking.keep", "auto"), ["masking.budget: keep: auto needs a budget"]),
    ("budget-without-auto", set_key("masking.budget", {"agreement": 0.9}), ["masking.budget: only used with keep: auto"]),
    ("budget-both-bounds", both(set_key("masking.keep", "auto"), set_key("masking.budget", {"agreement": 0.9, "kl": 0.1})),
     ["masking.budget: give exactly one of agreement or kl"]),
    ("budget-agreement-above-1", both(set_key("masking.keep", "auto"), set_key("masking.budget", {"agreement": 1.5})),
     ["masking.budget.agreement: must be less than or equal to 1"]),
    ("ladder-above-1", both(set_key("masking.keep", "auto"), set_key("masking.budget", {"kl": 0.1}),
                            set_key("masking.ladder", [0.5, 1.5])),
     ["masking.ladder: fractions of the patches must be in (0, 1], got 1.5"]),
    ("auto-online", both(set_key("masking.keep", "auto"), set_key("masking.budget", {"kl": 0.1}), set_key("online", True)),
     ["masking.keep: auto is chosen at each milestone before labelling"]),
    ("saliency-scale-online", both(set_key("masking.saliency_scale", 0.5), set_key("online", True)),
     ["masking.saliency_scale: makes the offline saliency pass cheaper"]),
    ("saliency-scale-above-1", set_key("masking.saliency_scale", 2.0),
     ["masking.saliency_scale: must be less than or equal to 1"]),
    ("keep-word", set_key("masking.keep", "half"), ["masking.keep:"]),
    ("policies-without-auto", set_key("masking.policies", ["random", "lowres"]),
     ["masking.policies: only used with policy: auto"]),
    ("policy-auto-fixed-keep", set_key("masking.policy", "auto"),
     ["masking.policy: auto chooses among policies by the budget rule of keep: auto"]),
    ("policy-auto-unknown-candidate", both(set_key("masking.policy", "auto"), set_key("masking.keep", "auto"),
                                           set_key("masking.budget", {"agreement": 0.9}),
                                           set_key("masking.policies", ["random", "lowress"])),
     ["masking.policies: ", "item 1: 'lowress' is not a candidate policy", "did you mean 'lowres'"]),
    ("lowres-keep-too-big", both(set_key("masking.policy", "lowres"), set_key("masking.keep", 50)),
     ["masking.keep: must be between 1 and 49"]),
    ("teacher-patch-drop-1", set_key("teacher.train.patch_drop_rate", 1.0), ["teacher.train.patch_drop_rate: must be less than 1"]),
    ("teacher-full-view-without-drop", set_key("teacher.train.full_view_weight", 1.0),
     ["teacher.train.full_view_weight: needs patch_drop_rate above 0"]),
    ("teacher-consistency-negative", both(set_key("teacher.train.patch_drop_rate", 0.5),
                                          set_key("teacher.train.consistency_weight", -1.0)),
     ["teacher.train.consistency_weight: must be greater than or equal to 0"]),
    ("labels-dtype-float32", set_key("labels.dtype", "float32"), ["labels.dtype: only float16 is supported", "got 'float32'"]),
    ("mean-length", both(set_key("data.mean", [0.5, 0.5, 0.5]), set_key("data.std", [0.5, 0.5, 0.5])),
     ["data.mean: has 3 values but the teacher takes 1 channels"]),
    ("std-length", set_key("data.std", [0.5, 0.5]), ["data.std: has 2 values but mean has 1"]),
    ("std-zero", set_key("data.std", [0.0]), ["data.std: every std must be > 0"]),
    ("missing-data-root", set_key("data.root", "nowhere"), ["data.root: dataset folder", "mkd-pipeline data import fashion-mnist --out"]),
    ("run-dir-uri", set_key("run_dir", "s3://bucket/runs/t"), ["run_dir: must be a local folder, got the URI 's3://bucket/runs/t'"]),
    ("store-uri-query", set_key("labels.store", "s3://bucket/labels?endpoint_override=localhost:9000"),
     ["labels.store: s3://bucket/labels?...: no query string in a URI; give endpoints, regions and credentials in the environment"]),
    ("data-root-uri-query", set_key("data.root", "s3://bucket/data?region=x"), ["data.root: s3://bucket/data?...: no query string"]),
    ("unknown-split", set_key("data.val", "validation"), ["data.val: split 'validation' is not in"]),
    ("subset-too-big", set_key("data.subset", 5000), ["data.subset: asks for 5000 samples"]),
    ("views-scale", set_key("views.scale", [0.9, 0.1]), ["views.scale: must be [lo, hi]"]),
    ("views-auto-augment", set_key("views.auto_augment", "autoaug"), ["views.auto_augment:", "autoaug"]),
    ("views-pool", set_key("views.pool", 0), ["views.pool: must be 'epochs' or an integer >= 1"]),
    ("unknown-optimizer", set_key("train.optimizer", "adamz"), ["train.optimizer: unknown timm optimizer 'adamz'"]),
    ("lr-and-lr-base", both(set_key("train.lr", 1e-3), set_key("train.lr_base", 5e-4)), ["train.lr_base: set lr or lr_base"]),
    ("kd-kind", set_key("train.kd", "soft"), ["train.kd: must be 'kl', 'hard' or 'off'"]),
    ("tau-not-stored", set_key("train.tau", 4.0), ["train.tau: 4.0 is not in labels.temperatures"]),
    ("warmup-too-long", set_key("train.warmup_epochs", 4), ["train.warmup_epochs: must be less than schedule.epochs"]),
    ("grad-accum-zero", set_key("train.grad_accum_steps", 0), ["train.grad_accum_steps: must be greater than or equal to 1"]),
    ("ema-decay-one", set_key("train.model_ema_decay", 1.0), ["train.model_ema_decay: must be less than 1"]),
    ("compile-mode-alone", set_key("train.compile_mode", "max-autotune"), ["train.compile_mode: needs compile: true"]),
    ("compile-mode-unknown", both(set_key("train.compile", True), set_key("train.compile_mode", "fast")),
     ["train.compile_mode: must be 'default', 'reduce-overhead', 'max-autotune' or 'max-autotune-no-cudagraphs'"]),
    ("teacher-grad-accum-zero", set_key("teacher.train.grad_accum_steps", 0),
     ["teacher.train.grad_accum_steps: must be greater than or equal to 1"]),
    ("workers-zero", set_key("compute.workers", 0), ["compute.workers: must be an integer >= 1 or 'auto'"]),
    ("precision", set_key("compute.precision", "fp16"), ["compute.precision: must be 'auto', 'fp32' or 'bf16'"]),
    ("bad-yaml", "name: t\ndata: {root: data\nteacher: 3\n", ["line 3", "invalid YAML"]),
    ("tab-yaml", "name: t\ndata:\n\troot: data\n", ["line 3", "invalid YAML"]),
    ("duplicate-key", "name: t\nname: u\n", ["line 2", "duplicate key 'name'"]),
    ("empty-file", "", ["the file is empty"]),
    ("comment-only-file", "# nothing here\n", ["the file is empty"]),
    ("top-level-list", "- name: t\n", ["the top level must be a mapping", "got list"]),
    ("top-level-scalar", "hello\n", ["the top level must be a mapping", "got str"]),
]


def write_case(ws, change):
    """The stage file of a MALFORMED case: ``change`` is raw YAML text or an edit of BASE."""
    if isinstance(change, str):
        return write_doc(ws, change)
    doc = copy.deepcopy(BASE)
    change(doc)
    return write_doc(ws, doc)
