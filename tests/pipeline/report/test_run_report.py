"""A run's report (pipeline/report/run_report.py, headline.py, baseline.py): the headline answers
"better than without the teacher?" and "what did the labels cost net?", a baseline run shows
beside the student, and a lock written before the net cost was recorded still renders."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.precompute.costs import full_teacher_macs_per_view
from pipeline.report import run_report
from pipeline.report.baseline import read_baseline
from pipeline.report.run_report import write_report
from pipeline.run.graph import expand
from tests.pipeline.run.test_graph import config


class Lock:
    """The run lock's ``info`` by stage name (what the report reads)."""

    def __init__(self, infos: dict) -> None:
        self.infos = infos

    def info(self, name: str) -> dict:
        return self.infos.get(name, {})


def infos(full: int, *, net: bool = True) -> dict:
    """Two labelled segments of 100 rows each; ``net=False``: as a lock before the saliency count."""
    out: dict = {"teacher": {"top1": 0.8}}
    for i in (0, 1):
        pre = {"rows": 100, "rows_computed": 100, "keep": 8, "teacher_macs": 50 * full, "student_forwards": 100}
        if net:
            pre.update(saliency_macs=20 * full, net_macs=70 * full, full_teacher_macs=100 * full)
        out[f"precompute-{i}"] = pre
        out[f"train-{i}"] = {"epochs": [{"epoch": 2 * i + k, "val_top1": 0.5 + 0.1 * i + 0.01 * k, "top1": 0.5}
                                        for k in (0, 1)]}
    return out


def write_baseline(tmp_path):
    run = tmp_path / "ce"
    run.mkdir()
    (run / "run.lock.json").write_text(json.dumps({"stages": {
        "train-1": {"info": {"epochs": [{"epoch": 2, "val_top1": 0.55}, {"epoch": 3, "val_top1": 0.58}]}},
        "train-0": {"info": {"epochs": [{"epoch": 0, "val_top1": 0.3}, {"epoch": 1, "val_top1": 0.5}]}}}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "t-ce", "train": {"kd": "off"}}))
    return run


def test_headline_gives_final_top1_and_net_ratio_with_its_parts(tmp_path):
    cfg = config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    text = write_report(cfg, Lock(infos(full_teacher_macs_per_view(cfg))), out, expand(cfg)).read_text()
    head = text.split("## ")[0]
    assert "final val top-1 0.6100" in head and "no baseline given" in head
    assert ("0.70x of the full teacher's MACs net (teacher 0.50x + saliency 0.20x + spot-checks 0.00x + "
            "reuse checks 0.00x)") in head
    assert "net saving" in head and "more than not masking" not in head
    assert (out / "student_accuracy.png").read_bytes().startswith(b"\x89PNG")


def test_a_baseline_run_shows_beside_the_student_and_above_1x_says_so(tmp_path):
    cfg = config(tmp_path)
    full = full_teacher_macs_per_view(cfg)
    lock = infos(full)
    for i in (0, 1):  # labels dearer than the full teacher: 0.95x teacher + 0.20x saliency
        lock[f"precompute-{i}"].update(teacher_macs=95 * full, net_macs=115 * full)
    out = tmp_path / "out"
    out.mkdir()
    baseline = read_baseline(write_baseline(tmp_path))
    assert baseline.epochs == [(0, 0.3), (1, 0.5), (2, 0.55), (3, 0.58)] and baseline.top1 == 0.58
    head = write_report(cfg, Lock(lock), out, expand(cfg), baseline).read_text().split("## ")[0]
    assert "final val top-1 0.6100; baseline t-ce (cross-entropy only): 0.5800, +3.00 points." in head
    assert "1.15x of the full teacher's MACs net" in head and "more than not masking" in head
    assert (out / "student_accuracy.png").stat().st_size > 0


def test_an_old_lock_without_the_saliency_count_renders_not_recorded(tmp_path):
    cfg = config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    text = write_report(cfg, Lock(infos(full_teacher_macs_per_view(cfg), net=False)), out, expand(cfg)).read_text()
    head = text.split("## ")[0]
    assert "net not recorded" in head and "saliency not recorded" in head
    assert "## Milestones" in text


def test_reuse_checks_show_in_the_net_headline_or_make_an_old_net_not_recorded(tmp_path):
    cfg = config(tmp_path)
    full = full_teacher_macs_per_view(cfg)
    out = tmp_path / "out"
    out.mkdir()
    lock = infos(full)
    for i in (0, 1):  # 0.05x of the full teacher re-run on 16 rows reused under tolerance
        lock[f"precompute-{i}"].update(spot_check_rows=16, reuse_check_macs=5 * full, net_macs=75 * full)
    head = write_report(cfg, Lock(lock), out, expand(cfg)).read_text().split("## ")[0]
    assert ("0.75x of the full teacher's MACs net (teacher 0.50x + saliency 0.20x + spot-checks 0.00x + "
            "reuse checks 0.05x)") in head
    for i in (0, 1):  # a lock from before the field, whose spot-checks ran: its net_macs left them out
        del lock[f"precompute-{i}"]["reuse_check_macs"]
    text = write_report(cfg, Lock(lock), out, expand(cfg)).read_text()
    assert "net not recorded" in text.split("## ")[0] and "reuse checks not recorded" in text.split("## ")[0]
    assert f"| {20 * full / 1e9:.2f} | not recorded | {100 * full / 1e9:.2f} |" in text


def test_a_baseline_without_a_run_lock_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no run lock"):
        read_baseline(tmp_path)


def test_milestone_rows_show_saliency_and_net_gmacs_or_not_recorded(tmp_path):
    cfg = config(tmp_path)
    full = full_teacher_macs_per_view(cfg)
    out = tmp_path / "out"
    out.mkdir()
    new = write_report(cfg, Lock(infos(full)), out, expand(cfg)).read_text()
    assert f"| {50 * full / 1e9:.2f} | {20 * full / 1e9:.2f} | {70 * full / 1e9:.2f} | {100 * full / 1e9:.2f} |" in new
    old = write_report(cfg, Lock(infos(full, net=False)), out, expand(cfg)).read_text()
    assert f"| {50 * full / 1e9:.2f} | not recorded | not recorded | {100 * full / 1e9:.2f} |" in old


def test_run_refuses_a_baseline_without_a_run_lock_before_any_stage(tmp_path, capsys):
    config(tmp_path)  # writes tmp_path / "stage.yaml" (its data folder does not exist: the baseline is read first)
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "stage.yaml"), "--baseline", str(tmp_path)])
    assert e.value.code == 2 and "no run lock" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_student_figure_counts_epochs_trained_so_milestones_sit_on_their_checkpoints(tmp_path, monkeypatch):
    cfg = config(tmp_path)  # 4 epochs, milestones [0, 2]
    drawn = {}
    monkeypatch.setattr(run_report, "_plot", lambda path, xs, series, *a, **kw: drawn.setdefault(path.name, (xs, series, kw)))
    out = tmp_path / "out"
    out.mkdir()
    write_report(cfg, Lock(infos(full_teacher_macs_per_view(cfg))), out, expand(cfg), read_baseline(write_baseline(tmp_path)))
    xs, series, kw = drawn["student_accuracy.png"]
    # epoch e is evaluated after it: at e + 1 epochs trained; c_1 (after 2 epochs) is the line at 2, where
    # the point of epoch 1 is, and the baseline's points line up with the student's
    assert xs == [1, 2, 3, 4] and kw["vlines"][1] == [0, 2]
    assert next(v for k, v in series.items() if k.endswith(" val")) == [0.5, 0.51, 0.6, 0.61]
    (label, (bx, by)), = kw["more"].items()
    assert label == "baseline t-ce (cross-entropy only) val" and bx == xs and by == [0.3, 0.5, 0.55, 0.58]
    assert kw["hline"] == ("teacher vit_tiny_patch16_224 val (0.800)", 0.8)


def test_an_ema_run_says_the_emas_top1_beside_the_trained_weights(tmp_path):
    cfg = config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    full = full_teacher_macs_per_view(cfg)
    plain = write_report(cfg, Lock(infos(full)), out, expand(cfg)).read_text()
    assert "EMA" not in plain
    lock = infos(full)
    lock["train-1"]["epochs"][-1]["ema_val_top1"] = 0.75
    text = write_report(cfg, Lock(lock), out, expand(cfg)).read_text()
    line = next(x for x in text.splitlines() if x.startswith("Student EMA"))
    assert "val top-1 0.75" in line and "after epoch 3" in line and "trained weights 0.61" in line



def _auto_lock(full: int, chosen: list[tuple[str, int]]) -> dict:
    """``infos`` of a ``masking.policy: auto`` run whose milestone i chose ``chosen[i]`` (policy,
    keep), recorded as the runner does: ``auto.policy`` and ``keep`` in the precompute stage's info."""
    lock = infos(full)
    for i, (policy, keep) in enumerate(chosen):
        curve = [{"keep": k, "top1": 0.7, "agreement": 0.95, "kl": 0.1, "macs": k * full // 16, "saliency_macs": 0}
                 for k in (4, 8, 12)] + [{"keep": None, "top1": 0.8, "agreement": 1.0, "kl": 0.0, "macs": full}]
        lock[f"precompute-{i}"].update(keep=keep, auto={
            "budget": "agreement >= 0.9", "reason": "the fewest net MACs", "curve": curve, "samples": 64,
            "teacher_macs": 0, "teacher_forwards": 0, "policy": policy, "curves": {policy: curve}})
    return lock


def test_policy_auto_names_the_policy_and_keep_the_runner_chose(tmp_path):
    cfg = config(tmp_path, masking__policy="auto", masking__keep="auto", masking__budget={"agreement": 0.9})
    full = full_teacher_macs_per_view(cfg)
    out = tmp_path / "out"
    out.mkdir()
    text = write_report(cfg, Lock(_auto_lock(full, [("tome", 8), ("tome", 8)])), out, expand(cfg)).read_text()
    assert "Config: policy `auto` → `tome` (keep 8), keep auto of 16 patches," in text
    assert "| 0 | 0-1 | 8 (tome) | no student |" in text and "| 1 | 2-3 | 8 (tome) | no student |" in text
    assert "| milestone 0 (tome) | 8 ← |" in text and "(policy `auto` → `tome` (keep 8), which reads no student)" in text
    # milestones that chose differently are named one by one (all patches: the full teacher)
    text = write_report(cfg, Lock(_auto_lock(full, [("tome", 8), ("student", 16)])), out, expand(cfg)).read_text()
    assert "Config: policy `auto` → milestone 0 `tome` (keep 8), milestone 1 `student` (all 16 patches), keep auto" in text
    assert "| 1 | 2-3 | 16 (student) | no student |" in text and "| milestone 1 (student) | 16 ← |" in text
    # a lock that records no choice (nothing labelled yet) still says auto, and a fixed policy is unchanged
    assert "Config: policy `auto`, keep auto" in write_report(cfg, Lock({}), out, expand(cfg)).read_text()
    text = write_report(config(tmp_path), Lock(infos(full)), out, expand(config(tmp_path))).read_text()
    assert "Config: policy `student`, keep 8 of 16 patches," in text and "| 0 | 0-1 | 8 | " in text
