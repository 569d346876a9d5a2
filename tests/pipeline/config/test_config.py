"""Stage config schema, loader and `mkd-pipeline config check` (pipeline/config.py, stages/*.yaml)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import StageConfig, ViewsConfig, dump_config, load_config
from pipeline.errors import ConfigError
from pipeline.labels.contract import view_epoch_of

STAGES = Path(__file__).resolve().parents[3] / "stages"
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


def _manifest(root: Path, train: int = 1000, test: int = 200) -> None:
    root.mkdir(parents=True, exist_ok=True)
    doc = {"classes": [str(i) for i in range(10)],
           "splits": {"train": {"num_samples": train}, "test": {"num_samples": test}}}
    (root / "manifest.json").write_text(json.dumps(doc))


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a minimal dataset folder ``data/`` and a weights file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MKD_SCHEDULER", raising=False)
    _manifest(tmp_path / "data")
    (tmp_path / "w.safetensors").write_bytes(b"")
    return tmp_path


def _write(ws: Path, doc: Any, name: str = "stage.yaml") -> Path:
    path = ws / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


def _both(*fns: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        for fn in fns:
            fn(doc)
    return mutate


# (id, mutation of BASE or raw YAML text, substrings the error must contain: the field first)
MALFORMED: list[tuple[str, Any, list[str]]] = [
    ("unknown-top-key", _set("epochs", 3), ["epochs: unknown key 'epochs'", "allowed: name, run_dir, data"]),
    ("unknown-nested-key", _set("masking.kep", 3), ["masking.kep: unknown key", "did you mean 'keep'"]),
    ("unknown-deep-key", _set("teacher.train.views.flip", 0.5), ["teacher.train.views.flip: unknown key"]),
    ("student-epochs-hint", _set("train.epochs", 3), ["train.epochs: unknown key", "schedule.epochs"]),
    ("wrong-type", _set("schedule.epochs", "ten"), ["schedule.epochs: must be a valid integer", "'ten'"]),
    ("wrong-type-list", _set("data.mean", 0.5), ["data.mean: must be a valid list"]),
    ("missing-section", _drop("schedule"), ["schedule: required, missing"]),
    ("missing-field", _drop("data.num_classes"), ["data.num_classes: required"]),
    ("bad-name", _set("name", "a/b"), ["name: must be a folder name"]),
    ("keep-too-big", _set("masking.keep", 300), ["masking.keep: must be between 1 and 49", "got 300"]),
    ("keep-zero", _set("masking.keep", 0), ["masking.keep: must be greater than or equal to 1"]),
    ("keep-float", _set("masking.keep", 2.5), ["masking.keep: must be a valid integer"]),
    ("ratio-above-1", _both(_drop("masking.keep"), _set("masking.ratio", 1.5)), ["masking.ratio: must be less than or equal to 1"]),
    ("ratio-rounds-to-0", _both(_drop("masking.keep"), _set("masking.ratio", 0.001)), ["masking.ratio: round(0.001 * 49) = 0"]),
    ("keep-and-ratio", _set("masking.ratio", 0.5), ["masking.ratio: give one of keep, ratio or per_milestone"]),
    ("no-keep", _drop("masking.keep"), ["masking.keep: policy 'student' needs keep"]),
    ("per-milestone-length", _both(_drop("masking.keep"), _set("masking.per_milestone", [25, 20, 10])),
     ["masking.per_milestone: needs one keep per milestone (2"]),
    ("per-milestone-range", _both(_drop("masking.keep"), _set("masking.per_milestone", [25, 50])),
     ["masking.per_milestone[1]: must be between 1 and 49"]),
    ("unknown-policy", _set("masking.policy", "saliency"), ["masking.policy: unknown masking policy 'saliency'", "student_inverse"]),
    ("negative-tolerance", _set("masking.tolerance", -1), ["masking.tolerance: must be greater than or equal to 0"]),
    ("missing-weights-file", _both(_drop("teacher.train"), _set("teacher.weights", "nope.safetensors")),
     ["teacher.weights: file", "nope.safetensors does not exist"]),
    ("weights-suffix", _both(_drop("teacher.train"), _set("teacher.weights", "w.txt")), ["teacher.weights: must be a .safetensors"]),
    ("teacher-weights-and-train", _set("teacher.weights", "w.safetensors"), ["teacher.weights: give either weights", "not both"]),
    ("teacher-neither", _drop("teacher.train"), ["teacher.weights: the teacher needs weights"]),
    ("student-seed-and-weights", _both(_set("student.weights", "w.safetensors"), _set("student.init_seed", 1)),
     ["student.init_seed: give either"]),
    ("teacher-train-kd", _set("teacher.train.kd", "kl"), ["teacher.train.kd: must be 'off'"]),
    ("milestones-order", _set("schedule.milestones", [0, 3, 2]), ["schedule.milestones[2]: must be strictly increasing"]),
    ("milestones-start", _set("schedule.milestones", [1, 2]), ["schedule.milestones: must start at 0"]),
    ("milestones-beyond", _set("schedule.milestones", [0, 4]), ["schedule.milestones: must all be < epochs (4)"]),
    ("milestones-and-every", _set("schedule.every", 2), ["schedule.every: give milestones or every"]),
    ("lag-one-milestone", _both(_set("schedule.milestones", [0]), _set("schedule.lag", 1)), ["schedule.lag: lag 1 needs at least 2"]),
    ("lag-2", _set("schedule.lag", 2), ["schedule.lag: must be 0 or 1"]),
    ("unknown-model", _set("teacher.model", "vit_tiny_patch16_2244"), ["teacher.model: unknown timm model", "vit_tiny_patch16_224"]),
    ("bad-kwargs", _set("student.kwargs", {**TINY, "num_heads": 5}), ["student.kwargs: timm.create_model"]),
    ("kwargs-pretrained", _set("student.kwargs", {**TINY, "pretrained": True}), ["student.kwargs: 'pretrained' is not allowed"]),
    ("unmaskable-teacher", _set("teacher.kwargs", {**TINY, "class_token": False, "global_pool": "avg"}),
     ["teacher.model: cannot mask"]),
    ("grid-mismatch", _set("student.kwargs", {**TINY, "patch_size": 7}), ["student.kwargs: the student's patch grid 4x4"]),
    ("num-classes-mismatch", _set("teacher.kwargs", {**TINY, "num_classes": 100}),
     ["teacher.kwargs.num_classes: the teacher has 100 classes"]),
    ("manifest-classes", _set("data.num_classes", 12), ["data.num_classes: is 12 but"]),
    ("topk-too-big", _set("labels.topk", 11), ["labels.topk: must be <= data.num_classes (10)"]),
    ("topk-word", _set("labels.topk", "many"), ["labels.topk: must be an integer >= 1 or 'all'"]),
    ("labels-dtype-float32", _set("labels.dtype", "float32"), ["labels.dtype: only float16 is supported", "got 'float32'"]),
    ("mean-length", _both(_set("data.mean", [0.5, 0.5, 0.5]), _set("data.std", [0.5, 0.5, 0.5])),
     ["data.mean: has 3 values but the teacher takes 1 channels"]),
    ("std-length", _set("data.std", [0.5, 0.5]), ["data.std: has 2 values but mean has 1"]),
    ("std-zero", _set("data.std", [0.0]), ["data.std: every std must be > 0"]),
    ("missing-data-root", _set("data.root", "nowhere"), ["data.root: dataset folder", "mkd-pipeline data import fashion-mnist --out"]),
    ("unknown-split", _set("data.val", "validation"), ["data.val: split 'validation' is not in"]),
    ("subset-too-big", _set("data.subset", 5000), ["data.subset: asks for 5000 samples"]),
    ("views-scale", _set("views.scale", [0.9, 0.1]), ["views.scale: must be [lo, hi]"]),
    ("views-auto-augment", _set("views.auto_augment", "autoaug"), ["views.auto_augment:", "autoaug"]),
    ("views-pool", _set("views.pool", 0), ["views.pool: must be 'epochs' or an integer >= 1"]),
    ("unknown-optimizer", _set("train.optimizer", "adamz"), ["train.optimizer: unknown timm optimizer 'adamz'"]),
    ("lr-and-lr-base", _both(_set("train.lr", 1e-3), _set("train.lr_base", 5e-4)), ["train.lr_base: set lr or lr_base"]),
    ("kd-kind", _set("train.kd", "soft"), ["train.kd: must be 'kl', 'hard' or 'off'"]),
    ("tau-not-stored", _set("train.tau", 4.0), ["train.tau: 4.0 is not in labels.temperatures"]),
    ("warmup-too-long", _set("train.warmup_epochs", 4), ["train.warmup_epochs: must be less than schedule.epochs"]),
    ("workers-zero", _set("compute.workers", 0), ["compute.workers: must be an integer >= 1 or 'auto'"]),
    ("precision", _set("compute.precision", "fp16"), ["compute.precision: must be 'fp32' or 'bf16'"]),
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
        return _write(ws, change)
    doc = copy.deepcopy(BASE)
    change(doc)
    return _write(ws, doc)


@pytest.mark.parametrize("case,change,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_exits_2_names_field_writes_nothing(case, change, expected, ws, capsys):
    path = write_case(ws, change)
    before = _tree(ws)
    code, out, err = _cli(["config", "check", str(path)], capsys)
    assert code == 2, (out, err)
    assert err.startswith(f"error: {path}: "), err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert _tree(ws) == before  # nothing written (no run folder, no store, no cache)
    assert out == ""


def test_base_config_is_valid(ws, capsys):
    path = _write(ws, BASE)
    code, out, err = _cli(["config", "check", str(path)], capsys)
    assert code == 0, err
    assert "# 2 segment(s) of 2 epoch(s), milestones [0, 2]" in out
    assert "# teacher keeps 25 in every segment, of 49 patches" in out


def test_missing_config_file(ws, capsys):
    code, _, err = _cli(["config", "check", "nope.yaml"], capsys)
    assert code == 2 and "error: nope.yaml: no such file" in err


def test_every_problem_is_reported(ws):
    doc = copy.deepcopy(BASE)
    doc["masking"]["tolerance"] = -1
    doc["schedule"]["epochs"] = 0
    doc["labels"] = {"dtype": "int8"}
    with pytest.raises(ConfigError) as e:
        load_config(_write(ws, doc))
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{ws / 'stage.yaml'}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"masking.tolerance", "schedule.epochs", "labels.dtype"}


@pytest.mark.parametrize("name", ["fashion-mnist-demo", "fashion-mnist"])
def test_shipped_fashion_mnist_configs_validate(name, ws, capsys):
    _manifest(ws / "data" / "fashion-mnist", 60_000, 10_000)
    before = _tree(ws)
    code, out, err = _cli(["config", "check", str(STAGES / f"{name}.yaml")], capsys)
    assert code == 0, err
    cfg = load_config(STAGES / f"{name}.yaml")
    assert cfg.data.root == ws / "data" / "fashion-mnist"
    assert cfg.num_patches == 49 and cfg.keep_for_segment(0) == 25
    assert cfg.teacher.train is not None and cfg.data.num_classes == 10
    assert _tree(ws) == before


def test_shipped_configs_open_with_how_to_run():
    for path in sorted(STAGES.glob("*.yaml")):
        head = path.read_text().split("\nname:")[0]
        assert head.startswith("#") and "Run:" in head and "Prints:" in head and "Hardware:" in head, path


def test_imagenet_config_validates_without_files(ws, capsys):
    path = STAGES / "imagenet.yaml"
    code, _, err = _cli(["config", "check", str(path)], capsys)
    assert code == 2 and "data.root" in err and "teacher.weights" in err
    code, out, err = _cli(["config", "check", "--no-files", str(path)], capsys)
    assert code == 0, err
    cfg = load_config(path, check_files=False)
    assert cfg.teacher.model == "deit_base_patch16_224" and cfg.student.model == "deit_tiny_patch16_224"
    assert cfg.num_patches == 196 and cfg.keep_for_segment(29) == 98
    assert cfg.schedule.segments()[-1] == (290, 300) and len(cfg.schedule.segments()) == 30
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    spec = cfg.views.view_spec()
    assert spec.auto_augment == "rand-m9-mstd0.5-inc1" and spec.mixup == 0.8 and spec.cutmix == 1.0
    assert spec.reprob == 0.25 and spec.scale == (0.08, 1.0)
    assert cfg.compute.precision == "bf16" and cfg.compute.device == "cuda" and cfg.compute.scheduler is None


def test_scheduler_from_environment(ws, monkeypatch):
    monkeypatch.setenv("MKD_SCHEDULER", "tcp://head:8786")
    assert load_config(STAGES / "imagenet.yaml", check_files=False).compute.scheduler == "tcp://head:8786"
    doc = copy.deepcopy(BASE)
    doc["compute"] = {"scheduler": "tcp://other:8786"}
    assert load_config(_write(ws, doc)).compute.scheduler == "tcp://other:8786"


def test_resolved_config_round_trips(ws):
    doc = copy.deepcopy(BASE)
    doc["schedule"] = {"epochs": 7, "every": 3}
    cfg = load_config(_write(ws, doc))
    text = dump_config(cfg)
    again = load_config(_write(ws, text, "resolved.yaml"))
    assert again.model_dump() == cfg.model_dump()
    assert cfg.schedule.milestones == [0, 3, 6] and cfg.schedule.every is None
    assert cfg.schedule.segments() == [(0, 3), (3, 6), (6, 7)]
    assert cfg.run_dir == ws / "runs" / "t" and cfg.labels.store == str(ws / "store")
    assert cfg.student.init_seed == 0


def test_keep_helpers(ws):
    doc = copy.deepcopy(BASE)
    doc["masking"] = {"ratio": 0.5}
    cfg = load_config(_write(ws, doc))
    assert cfg.keep_for_segment(0) == round(0.5 * 49) == cfg.masking.keep_for_segment(1, 49)
    assert cfg.masking.keep_for_segment(0, 196) == 98
    doc["masking"] = {"per_milestone": [40, 20]}
    cfg = load_config(_write(ws, doc))
    assert [cfg.keep_for_segment(i) for i in range(2)] == [40, 20]
    doc["masking"] = {"policy": "none"}
    cfg = load_config(_write(ws, doc))
    assert cfg.keep_for_segment(1) == 49


def test_views_block_covers_every_viewspec_field(ws):
    from maskedkd.views import ViewSpec

    missing = {f.name for f in dataclasses.fields(ViewSpec)} - set(ViewsConfig.model_fields)
    assert not missing, f"ViewsConfig lacks ViewSpec fields {missing}"
    assert ViewsConfig().view_spec() == ViewSpec()
    views = ViewsConfig(pool=3, scale=(0.6, 1.0), shift=2, hflip=0.0)
    assert views.view_spec() == ViewSpec(scale=(0.6, 1.0), shift=2, hflip=0.0)
    assert [view_epoch_of(e, views.pool_size) for e in range(5)] == [0, 1, 2, 0, 1]
    assert view_epoch_of(7, ViewsConfig().pool_size) == 7


def test_yaml_12_booleans_and_lr_base(ws):
    doc = copy.deepcopy(BASE)
    text = yaml.safe_dump(doc, sort_keys=False) + "online: false\n"
    text = text.replace("train:\n  warmup_epochs: 0\n", "train:\n  warmup_epochs: 0\n  kd: off\n  lr_base: 5.0e-4\n  batch_size: 1024\n")
    cfg = load_config(_write(ws, text))
    assert cfg.train.kd == "off" and cfg.online is False
    assert cfg.train.learning_rate == pytest.approx(1e-3)


def test_teacher_views_fall_back_to_stage_views(ws):
    doc = copy.deepcopy(BASE)
    cfg = load_config(_write(ws, doc))
    assert cfg.teacher_views() is cfg.views
    doc["teacher"]["train"]["views"] = {"hflip": 0.0}
    cfg = load_config(_write(ws, doc))
    assert cfg.teacher_views().hflip == 0.0 and cfg.views.hflip == 0.5


def test_programmatic_construction_validates(ws):
    doc = copy.deepcopy(BASE)
    cfg = StageConfig.model_validate(doc)
    assert cfg.keep_for_segment(0) == 25
    doc["masking"]["keep"] = 50
    with pytest.raises(ValueError, match="masking.keep"):
        StageConfig.model_validate(doc)
