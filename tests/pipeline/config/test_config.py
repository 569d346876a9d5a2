"""Stage config schema, loader and `mkd-pipeline config check` (pipeline/config.py, stages/*.yaml)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import StageConfig, ViewsConfig, dump_config, load_config
from pipeline.errors import ConfigError
from pipeline.labels.contract import view_epoch_of
from tests.pipeline.config.cases import (
    BASE,
    MALFORMED,
    run_cli,
    tree,
    write_case,
    write_doc,
    write_manifest,
)

STAGES = Path(__file__).resolve().parents[3] / "stages"


@pytest.mark.parametrize("case,change,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_exits_2_names_field_writes_nothing(case, change, expected, ws, capsys):
    path = write_case(ws, change)
    before = tree(ws)
    code, out, err = run_cli(["config", "check", str(path)], capsys)
    assert code == 2, (out, err)
    assert err.startswith(f"error: {path}: "), err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert tree(ws) == before  # nothing written (no run folder, no store, no cache)
    assert out == ""


def test_base_config_is_valid(ws, capsys):
    path = write_doc(ws, BASE)
    code, out, err = run_cli(["config", "check", str(path)], capsys)
    assert code == 0, err
    assert "# 2 segment(s) of 2 epoch(s), milestones [0, 2]" in out
    assert "# teacher keeps 25 in every segment, of 49 patches" in out


def test_missing_config_file(ws, capsys):
    code, _, err = run_cli(["config", "check", "nope.yaml"], capsys)
    assert code == 2 and "error: nope.yaml: no such file" in err


def test_every_problem_is_reported(ws):
    doc = copy.deepcopy(BASE)
    doc["masking"]["tolerance"] = -1
    doc["schedule"]["epochs"] = 0
    doc["labels"] = {"dtype": "int8"}
    with pytest.raises(ConfigError) as e:
        load_config(write_doc(ws, doc))
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{ws / 'stage.yaml'}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"masking.tolerance", "schedule.epochs", "labels.dtype"}


@pytest.mark.parametrize("name", ["fashion-mnist-demo", "fashion-mnist"])
def test_shipped_fashion_mnist_configs_validate(name, ws, capsys):
    write_manifest(ws / "data" / "fashion-mnist", 60_000, 10_000)
    if name == "fashion-mnist-demo":  # it loads a committed results teacher, a path relative to the repo root
        (ws / "stages" / "results").mkdir(parents=True)
        (ws / "stages" / "results" / "teachers").symlink_to(STAGES / "results" / "teachers")
    before = tree(ws)
    code, out, err = run_cli(["config", "check", str(STAGES / f"{name}.yaml")], capsys)
    assert code == 0, err
    cfg = load_config(STAGES / f"{name}.yaml")
    assert cfg.data.root == ws / "data" / "fashion-mnist"
    assert cfg.num_patches == 49 and cfg.data.num_classes == 10
    if name == "fashion-mnist-demo":  # RESULTS.md's mask-robust teacher, random masks: the labels' net cost ~0.5x
        assert cfg.masking.policy == "random" and not cfg.masking.auto and cfg.keep_for_segment(0) == 25
        assert cfg.teacher.train is None and cfg.teacher.weights.name == "results-v2-teacher-robust.safetensors"
    else:
        assert cfg.keep_for_segment(0) == 25 and cfg.teacher.train is not None
    assert tree(ws) == before


def test_shipped_configs_open_with_how_to_run():
    for path in sorted(STAGES.glob("*.yaml")):
        head = path.read_text().split("\nname:")[0]
        assert head.startswith("#") and "Run:" in head and "Prints:" in head and "Hardware:" in head, path


def test_imagenet_config_validates_without_files(ws, capsys):
    path = STAGES / "imagenet.yaml"
    code, _, err = run_cli(["config", "check", str(path)], capsys)
    assert code == 2 and "data.root" in err and "teacher" not in err  # pretrained: no weights file to miss
    code, out, err = run_cli(["config", "check", "--no-files", str(path)], capsys)
    assert code == 0, err
    cfg = load_config(path, check_files=False)
    assert cfg.teacher.model == "deit_base_patch16_224.fb_in1k" and cfg.teacher.pretrained
    assert cfg.teacher.weights is None and not cfg.teacher.fine_tuned  # the fine-tune block is commented out
    assert cfg.student.model == "deit_tiny_patch16_224"
    assert cfg.num_patches == 196 and cfg.keep_for_segment(29) == 98
    assert cfg.schedule.segments()[-1] == (290, 300) and len(cfg.schedule.segments()) == 30
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    # timm's train.py scales lr_base by the samples of one optimizer step: accumulated batches count
    assert cfg.train.model_copy(update={"grad_accum_steps": 4}).learning_rate == pytest.approx(4e-3)
    spec = cfg.views.view_spec()
    assert spec.auto_augment == "rand-m9-mstd0.5-inc1" and spec.mixup == 0.8 and spec.cutmix == 1.0
    assert spec.reprob == 0.25 and spec.scale == (0.08, 1.0)
    assert cfg.compute.precision == "bf16" and cfg.compute.device == "cuda" and cfg.compute.scheduler is None


def test_imagenet_configs_commented_fine_tune_block_validates(ws, capsys):
    text = (STAGES / "imagenet.yaml").read_text()
    block = [line for line in text.splitlines() if line.startswith(("  # train:", "  #   "))]
    assert block and block[0] == "  # train:"
    uncommented = text.replace("\n  # train:", "\n  train:").replace("\n  #   ", "\n    ")
    path = ws / "imagenet-ft.yaml"
    path.write_text(uncommented)
    code, _, err = run_cli(["config", "check", "--no-files", str(path)], capsys)
    assert code == 0, err
    t = load_config(path, check_files=False).teacher
    assert t.fine_tuned and t.pretrained and t.train is not None
    assert t.train.patch_drop_rate == 0.5 and t.train.epochs == 2 and t.train.batch_size % 8 == 0  # --nproc 8


def test_scheduler_from_environment(ws, monkeypatch):
    monkeypatch.setenv("MKD_SCHEDULER", "tcp://head:8786")
    assert load_config(STAGES / "imagenet.yaml", check_files=False).compute.scheduler == "tcp://head:8786"
    doc = copy.deepcopy(BASE)
    doc["compute"] = {"scheduler": "tcp://other:8786"}
    assert load_config(write_doc(ws, doc)).compute.scheduler == "tcp://other:8786"


def test_resolved_config_round_trips(ws):
    doc = copy.deepcopy(BASE)
    doc["schedule"] = {"epochs": 7, "every": 3}
    cfg = load_config(write_doc(ws, doc))
    text = dump_config(cfg)
    again = load_config(write_doc(ws, text, "resolved.yaml"))
    assert again.model_dump() == cfg.model_dump()
    assert cfg.schedule.milestones == [0, 3, 6] and cfg.schedule.every is None
    assert cfg.schedule.segments() == [(0, 3), (3, 6), (6, 7)]
    assert cfg.run_dir == ws / "runs" / "t" and cfg.labels.store == str(ws / "store")
    assert cfg.student.init_seed == 0


def test_keep_helpers(ws):
    doc = copy.deepcopy(BASE)
    doc["masking"] = {"ratio": 0.5}
    cfg = load_config(write_doc(ws, doc))
    assert cfg.keep_for_segment(0) == round(0.5 * 49) == cfg.masking.keep_for_segment(1, 49)
    assert cfg.masking.keep_for_segment(0, 196) == 98
    doc["masking"] = {"per_milestone": [40, 20]}
    cfg = load_config(write_doc(ws, doc))
    assert [cfg.keep_for_segment(i) for i in range(2)] == [40, 20]
    doc["masking"] = {"policy": "none"}
    cfg = load_config(write_doc(ws, doc))
    assert cfg.keep_for_segment(1) == 49


def test_forward_and_auto_policies_validate(ws):
    from maskedkd import FORWARD_POLICIES

    doc = copy.deepcopy(BASE)
    doc["masking"] = {"policy": "lowres", "ratio": 0.5}
    cfg = load_config(write_doc(ws, doc))
    assert cfg.keep_for_segment(0) == round(0.5 * 49) == 24 and cfg.masking.candidates() == ("lowres",)
    assert not cfg.masking.reads_saliency
    doc["masking"] = {"policy": "auto", "keep": "auto", "budget": {"agreement": 0.9}}
    cfg = load_config(write_doc(ws, doc))
    assert cfg.masking.auto and cfg.masking.candidates() == ("student", "random", *sorted(FORWARD_POLICIES))
    assert "lowres" in cfg.masking.candidates()
    assert cfg.masking.reads_saliency
    doc["masking"]["policies"] = ["random", "lowres"]
    cfg = load_config(write_doc(ws, doc))
    assert cfg.masking.candidates() == ("random", "lowres") and not cfg.masking.reads_saliency


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
    cfg = load_config(write_doc(ws, text))
    assert cfg.train.kd == "off" and cfg.online is False
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    # timm's train.py scales lr_base by the samples of one optimizer step: accumulated batches count
    assert cfg.train.model_copy(update={"grad_accum_steps": 4}).learning_rate == pytest.approx(4e-3)


def test_teacher_views_fall_back_to_stage_views(ws):
    doc = copy.deepcopy(BASE)
    cfg = load_config(write_doc(ws, doc))
    assert cfg.teacher_views() is cfg.views
    doc["teacher"]["train"]["views"] = {"hflip": 0.0}
    cfg = load_config(write_doc(ws, doc))
    assert cfg.teacher_views().hflip == 0.0 and cfg.views.hflip == 0.5


def test_programmatic_construction_validates(ws):
    doc = copy.deepcopy(BASE)
    cfg = StageConfig.model_validate(doc)
    assert cfg.keep_for_segment(0) == 25
    doc["masking"]["keep"] = 50
    with pytest.raises(ValueError, match="masking.keep"):
        StageConfig.model_validate(doc)


# ------------------------------------------------------------------------------ --set overrides


def test_overrides_change_the_config_like_the_file(ws, capsys):
    path = write_doc(ws, BASE)
    sets = ["views.scale=[0.6, 1.0]", "train.kd=off", "train.lr=5.0e-4", "masking.keep=16", "online=false",
            "teacher.kwargs.embed_dim=48", "data.val_subset="]
    cfg = load_config(path, overrides=sets)
    assert cfg.views.scale == (0.6, 1.0) and cfg.train.kd == "off" and cfg.train.lr == 5.0e-4
    assert cfg.keep_for_segment(0) == 16 and cfg.online is False and cfg.teacher.kwargs["embed_dim"] == 48
    assert cfg.data.val_subset is None
    edited = copy.deepcopy(BASE)
    edited["views"] = {"scale": [0.6, 1.0]}
    edited["train"].update(kd="off", lr=5.0e-4)
    edited["masking"]["keep"] = 16
    edited["teacher"]["kwargs"] = {**edited["teacher"]["kwargs"], "embed_dim": 48}
    edited.update(online=False)
    edited["data"]["val_subset"] = None
    assert cfg.model_dump() == load_config(write_doc(ws, edited, "edited.yaml")).model_dump()
    assert load_config(path, overrides=["masking.keep=20", "masking.keep=16"]).keep_for_segment(0) == 16  # last wins
    assert load_config(path).keep_for_segment(0) == 25  # the file is unchanged

    code, out, err = run_cli(["config", "check", str(path), "--set", "masking.keep=16", "--set", "train.kd=off"], capsys)
    assert code == 0, err
    assert "# --set masking.keep=16\n# --set train.kd=off\n" in out and "# teacher keeps 16 in every segment" in out
    again = load_config(write_doc(ws, out, "resolved.yaml"))  # the dump loads again to the same config
    assert again.model_dump() == load_config(path, overrides=["masking.keep=16", "train.kd=off"]).model_dump()


@pytest.mark.parametrize("sets,expected", [
    (["masking.keep=0"], "(--set masking.keep=0): masking.keep: must be greater than or equal to 1"),
    (["masking.kep=3"], "(--set masking.kep=3): masking.kep: unknown key 'kep' (did you mean 'keep'?)"),
    (["maskin.keep=3"], "(--set maskin.keep=3): maskin: unknown key 'maskin' (did you mean 'masking'?)"),
    (["train.kd=soft"], "(--set train.kd=soft): train.kd: must be 'kl', 'hard' or 'off'"),
    (["views.scale=[0.9, 0.1]"], "(--set views.scale=[0.9, 0.1]): views.scale: must be [lo, hi]"),
    (["online=maybe"], "(--set online=maybe): online: must be a valid boolean"),
    (["masking.keep"], "(--set masking.keep): expected SECTION.FIELD=VALUE"),
    ([".keep=3"], "(--set .keep=3): expected SECTION.FIELD=VALUE"),
    (["name.x=1"], "(--set name.x=1): name is a str, not a section with fields"),
    (["views.scale=[0.6"], "(--set views.scale=[0.6): the value is not valid YAML"),
], ids=["value", "unknown-field", "unknown-section", "choice", "list", "bool", "no-equals", "empty-part", "not-a-section",
        "bad-yaml"])
def test_bad_override_exits_2_naming_it_and_the_field(sets, expected, ws, capsys):
    path = write_doc(ws, BASE)
    before = tree(ws)
    args = [x for s in sets for x in ("--set", s)]
    code, out, err = run_cli(["config", "check", str(path), *args], capsys)
    assert code == 2 and out == "", (out, err)
    assert err.startswith(f"error: {path} {expected}"), err
    assert tree(ws) == before


def test_a_problem_the_override_did_not_write_names_only_the_file(ws):
    doc = copy.deepcopy(BASE)
    doc["masking"]["tolerance"] = -1
    with pytest.raises(ConfigError) as e:
        load_config(write_doc(ws, doc), overrides=["masking.keep=0"])
    lines = str(e.value).splitlines()
    path = ws / "stage.yaml"
    assert f"{path}: masking.tolerance: must be greater than or equal to 0, got -1" in lines
    assert any(x.startswith(f"{path} (--set masking.keep=0): masking.keep:") for x in lines)


def test_override_of_an_aliased_section_changes_only_that_place(ws):
    text = yaml.safe_dump(BASE, sort_keys=False)  # teacher and student share one kwargs dict: an alias
    assert "&id001" in text and "*id001" in text
    cfg = load_config(write_doc(ws, text), overrides=["teacher.kwargs.embed_dim=48"])
    assert cfg.teacher.kwargs["embed_dim"] == 48 and cfg.student.kwargs["embed_dim"] == 24


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["status"], ["precompute", "--segment", "0"], ["probe"]])
def test_every_command_with_set_validates_it_before_anything_else(command, ws, capsys):
    path = write_doc(ws, BASE)
    before = tree(ws)
    code, out, err = run_cli([*command, str(path), "--set", "masking.kep=3"], capsys)
    assert code == 2, (out, err)
    assert f"{path} (--set masking.kep=3): masking.kep: unknown key 'kep'" in err
    assert tree(ws) == before
