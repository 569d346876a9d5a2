"""The run's declared graph (pipeline/run/graph.py): which stages a config has, in which order,
reading which outputs; ``--until`` refuses a stage the run does not have."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config, set_fields
from pipeline.errors import ConfigError
from pipeline.run.graph import KINDS, StageKind, expand, teacher_source
from tests.pipeline.run.test_runner import stage_doc


def config(tmp_path: Path, **changes):
    doc = set_fields(copy.deepcopy(stage_doc(tmp_path, Path("/data"))), {k.replace("__", "."): v
                                                                        for k, v in changes.items()})
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path, check_files=False)


def graph(cfg) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.deps) for s in expand(cfg)]


def test_lag_0_labels_each_segment_from_the_checkpoint_it_starts_from(tmp_path):
    assert graph(config(tmp_path)) == [
        ("teacher", {}), ("init", {}),
        ("precompute-0", {"teacher": "teacher", "source": "init"}),
        ("train-0", {"start": "init", "labels": "precompute-0"}),
        ("precompute-1", {"teacher": "teacher", "source": "train-0"}),
        ("train-1", {"start": "train-0", "labels": "precompute-1"}),
    ]


def test_lag_1_and_auto_keep_spot_check_the_checkpoint_one_segment_back(tmp_path):
    cfg = config(tmp_path, schedule__lag=1, masking__keep="auto", masking__budget={"agreement": 0.9})
    assert graph(cfg)[2:] == [
        ("probe-0", {"teacher": "teacher", "source": "init"}),
        ("precompute-0", {"teacher": "teacher", "source": "init", "probe": "probe-0"}),
        ("train-0", {"start": "init", "labels": "precompute-0"}),
        ("probe-1", {"teacher": "teacher", "source": "init"}),
        ("precompute-1", {"teacher": "teacher", "source": "init", "probe": "probe-1"}),
        ("train-1", {"start": "train-0", "labels": "precompute-1"}),
    ]
    # the next segment's labels may run while this one trains: their kinds say so
    assert {k.kind for k in KINDS if k.overlaps == "train"} == {"probe", "precompute"}


@pytest.mark.parametrize("changes, train_deps", [
    ({"online": True}, {"start": "init", "teacher": "teacher"}),
    ({"train__kd": "off"}, {"start": "init"}),
])
def test_runs_without_stored_labels_have_no_precompute_stage(tmp_path, changes, train_deps):
    stages = graph(config(tmp_path, **changes))
    assert [name for name, _ in stages] == ["teacher", "init", "train-0", "train-1"]
    assert stages[2][1] == train_deps


def test_a_stage_between_the_teacher_and_its_consumers_is_one_declaration(tmp_path, monkeypatch):
    """The teacher fine-tune of issue 24 as the graph admits it: declared after `teacher` and named
    by `teacher_source`, every consumer of the teacher then reads it."""
    import pipeline.run.graph as g

    teacher = KINDS[0]
    finetune = StageKind("teacher-finetune", per_segment=False, present=lambda cfg: True,
                         deps=lambda cfg, i: {"teacher": "teacher"}, plan=teacher.plan, cached=teacher.cached,
                         run=teacher.run)
    monkeypatch.setattr(g, "KINDS", (teacher, finetune, *KINDS[1:]))
    monkeypatch.setattr(g, "teacher_source", lambda cfg: "teacher-finetune")
    stages = graph(config(tmp_path, online=False))
    assert [n for n, _ in stages][:3] == ["teacher", "teacher-finetune", "init"]
    assert all(deps.get("teacher") == "teacher-finetune" for n, deps in stages if n.startswith("precompute"))
    assert teacher_source(config(tmp_path)) == "teacher"  # the real graph is unchanged


@pytest.mark.parametrize("teacher, fine_tunes", [
    ({"pretrained": True, "train": {"epochs": 1, "lr": 1.0e-4, "warmup_epochs": 0}}, True),  # loaded and trained: a fine-tune
    ({"weights": "/w.pth", "train": {"epochs": 1, "lr": 1.0e-4, "warmup_epochs": 0}}, True),
    ({"weights": "/w.pth", "train": None}, False),  # frozen
    ({}, False),  # trained from scratch (stage_doc's teacher): today's graph, today's teacher stage
])
def test_only_a_loaded_teacher_with_a_train_block_gets_the_finetune_stage(tmp_path, teacher, fine_tunes):
    changes = {f"teacher__{k}": v for k, v in teacher.items()}
    if teacher.get("pretrained"):
        changes["teacher__model"] = "vit_tiny_patch16_224"  # a name timm has pretrained weights for
        changes.update(teacher__mean=[0.286], teacher__std=[0.353])  # one channel, as the data
    cfg = config(tmp_path, **changes)
    stages = graph(cfg)
    names = [n for n, _ in stages]
    if fine_tunes:
        assert names[:3] == ["teacher", "teacher-finetune", "init"]
        assert stages[1][1] == {"teacher": "teacher"}
        assert teacher_source(cfg) == "teacher-finetune"
    else:
        assert names[:2] == ["teacher", "init"] and "teacher-finetune" not in names
        assert teacher_source(cfg) == "teacher"
    # every consumer of the teacher reads the source, online trainers too
    assert all(deps["teacher"] == teacher_source(cfg) for n, deps in stages if n.startswith("precompute"))
    online = graph(config(tmp_path, online=True, **changes))
    assert all(deps["teacher"] == teacher_source(cfg) for n, deps in online if n.startswith("train"))


def test_until_names_a_stage_of_the_run(fmnist_small, tmp_path):
    from pipeline.run.runner import Runner
    from tests.pipeline.run.test_runner import write_stage

    runner = Runner(load_config(write_stage(tmp_path, stage_doc(tmp_path, fmnist_small))), progress=False,
                    echo=lambda _s: None)
    with pytest.raises(ConfigError, match="no stage 'probe-0'.*teacher, init, precompute-0, train-0"):
        runner.run(until="probe-0")
    assert not (tmp_path / "run" / "run.lock.json").exists()  # nothing ran
