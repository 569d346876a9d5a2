"""The staged runner end to end on real Fashion-MNIST (issue 6): a demo-like config with tiny
ViTs, a 2-worker LocalCluster, 2 segments; reruns, staleness with reasons, ``--dry-run``,
SIGKILL + resume, ``lag: 1``, ``online: true``, ``gc`` and a bad config.

One full run (``base``, through the CLI in a subprocess) is shared; every other test works on a
*clone* of its store + run folder (the run lock's absolute paths rewritten), so tests stay
independent and only pay for the stages they make stale.
"""

from __future__ import annotations

import copy
import csv
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from maskedkd import FORWARD_POLICIES, teacher_macs
from maskedkd.digests import render_digest
from maskedkd.rendering import INTERPOLATIONS
from pipeline._lock import LOCK_NAME, load_lock
from pipeline.cli import main
from pipeline.config import dump_config, load_config, set_fields
from pipeline.labels import open_partition
from pipeline.models import create_model
from pipeline.run.runner import Runner

CLI = str(Path(sys.executable).parent / "mkd-pipeline")
# One intra-op thread in subprocesses too (see the `one_thread` fixture); every run here and the
# run it is compared with use the same setting, so checkpoint bytes are comparable.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
VIT = "vit_tiny_patch16_224"
# 7x7 patches: a 4x4 grid of 16 patches; keep 8. Sized so the student (CE + KD) reaches
# ~0.45 val top-1 after 4 epochs of 768 images (the teacher ~0.5): chance is 0.1.
BASE_KW = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "num_heads": 2}
TRAIN_ROWS, EPOCHS, BATCH = 768, 4, 8

pytestmark = pytest.mark.usefixtures("one_thread")


def stage_doc(root: Path, data: Path) -> dict:
    """The demo-like config: teacher trained 3 epochs (~0.5 val top-1), student 4 epochs in 2 segments."""
    return {
        "name": "t",
        "run_dir": str(root / "run"),
        "data": {"root": str(data), "train": "train", "val": "test", "num_classes": 10, "mean": [0.2860],
                 "std": [0.3530], "interpolation": "bilinear"},
        "teacher": {"model": VIT, "kwargs": dict(BASE_KW, embed_dim=64, depth=2),
                    "train": {"epochs": 3, "lr": 2.0e-3, "warmup_epochs": 0, "batch_size": BATCH, "seed": 0}},
        "student": {"model": VIT, "kwargs": dict(BASE_KW, embed_dim=32, depth=2), "init_seed": 0},
        "schedule": {"epochs": EPOCHS, "every": 2, "lag": 0},
        "masking": {"policy": "student", "keep": 8},
        "views": {"seed": 0, "scale": [0.85, 1.0], "hflip": 0.5},
        "labels": {"store": str(root / "store"), "topk": 10, "temperatures": [1.0]},
        "compute": {"scheduler": None, "workers": 2, "threads_per_worker": 1, "batch_size": 256, "device": "cpu",
                    "timeout_s": 300},
        "train": {"lr": 1.0e-3, "warmup_epochs": 0, "batch_size": BATCH, "checkpoint_every": 10},
    }


def write_stage(root: Path, doc: dict, name: str = "stages.yaml", **changes) -> Path:
    """Write ``doc`` with dotted-key ``changes`` (``train__lr=...`` -> ``train.lr``) as YAML."""
    doc = set_fields(copy.deepcopy(doc), {k.replace("__", "."): v for k, v in changes.items()})
    path = root / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def clone(base, dst: Path) -> SimpleNamespace:
    """A copy of the base run's store + run folder at ``dst`` (lock paths rewritten), and its config."""
    shutil.copytree(base.root / "store", dst / "store")
    shutil.copytree(base.root / "run", dst / "run")
    lock = dst / "run" / LOCK_NAME
    lock.write_text(json.dumps(load_lock(lock)).replace(str(base.root), str(dst)))  # records inline
    doc = stage_doc(dst, base.data)
    return SimpleNamespace(root=dst, doc=doc, yaml=write_stage(dst, doc), lock=lock)


def cli(*args: str, capsys) -> tuple[int, str]:
    """Run ``mkd-pipeline ARGS`` in this process; returns (exit code, stdout)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().out


def status_json(path: Path, capsys, *extra: str) -> tuple[int, dict[str, dict]]:
    code, out = cli("status", str(path), "--json", *extra, capsys=capsys)
    return code, {s["stage"]: s for s in json.loads(out)}


def lock_of(root: Path) -> dict:
    return load_lock(root / "run" / LOCK_NAME)


def run_in_process(path: Path) -> "Runner":
    runner = Runner(load_config(path), progress=False, echo=lambda _s: None)
    runner.run()
    return runner


def files_under(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for r in roots if r.exists() for p in r.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def base(fmnist_small, tmp_path_factory):
    """The demo-like config run once from scratch by ``mkd-pipeline run`` (a 2-worker LocalCluster)."""
    root = tmp_path_factory.mktemp("base")
    doc = stage_doc(root, fmnist_small)
    path = write_stage(root, doc)
    t0 = time.perf_counter()
    proc = subprocess.run([CLI, "run", str(path)], capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(root=root, data=fmnist_small, doc=doc, yaml=path, out=proc.stdout,
                           seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_demo_like_run_learns_reports_and_a_rerun_computes_nothing(base, capsys):
    lock = lock_of(base.root)
    assert set(lock["stages"]) == {"teacher", "init", "precompute-0", "train-0", "precompute-1", "train-1"}
    assert "teacher forwards 3072, student forwards" in base.out  # 2 segments x 2 view epochs x 768 rows
    student = lock["stages"]["train-1"]["info"]["epochs"][-1]["val_top1"]
    assert student > 0.3, f"student val top-1 {student} is not well above chance (0.1)"
    for i in (0, 1):
        info = lock["stages"][f"precompute-{i}"]["info"]
        assert info["rows"] == 2 * TRAIN_ROWS and info["source"] == f"c{i}.pth" and info["keep"] == 8
        assert len(lock["stages"][f"precompute-{i}"]["partitions"]) == 3 * 2  # 3 shards x 2 view epochs
        # every MAC of the labels: one student saliency forward per computed label, beside the teacher's
        assert info["student_forwards"] > 0 and info["saliency_macs"] > 0 and "spot_check_macs" not in info
        assert info["saliency_macs"] % info["student_forwards"] == 0 and info["full_teacher_macs"] % info["rows"] == 0
        assert info["net_macs"] == info["teacher_macs"] + info["saliency_macs"] < info["full_teacher_macs"]

    run = base.root / "run"
    report = run / "report.md"
    for name in ("report.md", "student_accuracy.png", "teacher_masked_accuracy.png", "rows_reused.png"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "student_accuracy.png").read_bytes().startswith(b"\x89PNG")
    text = report.read_text()
    assert f"| {EPOCHS - 1} | {student:.4f} |" in text
    assert f"**Student:** final val top-1 {student:.4f} (no baseline given" in text.split("## ")[0]
    assert f"report: {report}" in base.out

    # the run folder keeps the resolved config and one metrics row per epoch, like timm's summary.csv
    assert (run / "config.yaml").read_text() == dump_config(load_config(base.yaml))
    assert lock["overrides"] == []
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "segment", "train_loss", "train_top1", "val_top1", "val_loss", "lr", "samples_per_s"]
    assert [(r["epoch"], r["segment"]) for r in rows] == [("0", "0"), ("1", "0"), ("2", "1"), ("3", "1")]
    epochs = lock["stages"]["train-0"]["info"]["epochs"] + lock["stages"]["train-1"]["info"]["epochs"]
    assert [float(r["val_top1"]) for r in rows] == [e["val_top1"] for e in epochs] and float(rows[-1]["val_top1"]) == student
    assert [float(r["train_loss"]) for r in rows] == [e["loss"] for e in epochs]
    assert all(float(r["lr"]) > 0 and float(r["samples_per_s"]) > 0 for r in rows)
    teacher_rows = list(csv.DictReader((run / "teacher_metrics.csv").open()))
    assert [r["epoch"] for r in teacher_rows] == ["0", "1", "2"] and "segment" not in teacher_rows[0]
    assert float(teacher_rows[-1]["val_top1"]) == lock["stages"]["teacher"]["info"]["top1"]
    written = {n: (run / n).read_bytes() for n in ("config.yaml", "metrics.csv", "teacher_metrics.csv")}

    ckpt = (run / "checkpoints" / "c2.pth").read_bytes()
    runner = Runner(load_config(base.yaml), progress=False, echo=lambda _s: None)
    res = runner.run()
    assert res.teacher_forwards == 0 == res.student_forwards
    assert res.stages == {k: "cached" for k in lock["stages"]}
    assert res.final_accuracy == student
    assert (run / "checkpoints" / "c2.pth").read_bytes() == ckpt
    assert report.read_text() == text
    assert lock_of(base.root) == lock
    assert {n: (run / n).read_bytes() for n in written} == written  # rewritten from the lock: same bytes

    code, steps = status_json(base.yaml, capsys)
    assert code == 0 and all(s["fresh"] for s in steps.values())


@pytest.mark.slow
def test_changing_one_input_makes_exactly_its_dependents_stale(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    lr = write_stage(c.root, c.doc, "lr.yaml", train__lr=5.0e-4)
    code, steps = status_json(lr, capsys)
    assert code == 1
    assert [s for s, v in steps.items() if v["fresh"]] == ["teacher", "init", "precompute-0"]
    assert "recipe" in steps["train-0"]["reason"]
    assert steps["precompute-1"]["reason"] == "depends on train-0, which is stale"  # masks come from c1
    assert steps["train-1"]["reason"] == "depends on train-0, which is stale"

    keep = write_stage(c.root, c.doc, "keep.yaml", masking__keep=4)
    code, steps = status_json(keep, capsys)
    assert code == 1
    assert [s for s, v in steps.items() if v["fresh"]] == ["teacher", "init"]
    assert steps["precompute-0"]["reason"] == "input 'keep' changed (8 -> 4)"
    assert "depends on precompute-0" in steps["train-0"]["reason"]

    seed = write_stage(c.root, c.doc, "seed.yaml", student__init_seed=1)
    code, steps = status_json(seed, capsys)
    assert code == 1 and [s for s, v in steps.items() if v["fresh"]] == ["teacher"]
    assert steps["init"]["reason"] == 'input \'init\' changed ("seed:0" -> "seed:1")'
    assert steps["precompute-0"]["reason"] == "depends on init, which is stale"

    code, steps = status_json(c.yaml, capsys)  # the unchanged config is still all fresh
    assert code == 0

    # --set is the edit without the file: the same stages stale, for the same reasons
    assert status_json(c.yaml, capsys, "--set", "train.lr=5.0e-4") == status_json(lr, capsys)
    assert status_json(c.yaml, capsys, "--set", "masking.keep=4") == status_json(keep, capsys)

    # a partition gone: plain status does not stat each one, --deep does (as run does before it trusts a stage)
    gone = Path(lock_of(c.root)["stages"]["precompute-0"]["partitions"][0]["path"])
    gone.unlink()
    assert status_json(c.yaml, capsys)[0] == 0
    code, steps = status_json(c.yaml, capsys, "--deep")
    assert code == 1 and steps["precompute-0"]["reason"] == f"output {gone} is missing"


@pytest.mark.slow
def test_overrides_are_recorded_in_the_lock_and_the_run_folder(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    code, out = cli("run", str(c.yaml), "--set", "compute.timeout_s=600", "--set", "labels.topk=10", capsys=capsys)
    assert code == 0 and "everything was cached" in out  # neither changes what a stage computes
    sets = ["compute.timeout_s=600", "labels.topk=10"]
    assert lock_of(c.root)["overrides"] == sets
    config = (c.root / "run" / "config.yaml").read_text()
    assert config == dump_config(load_config(c.yaml, overrides=sets), sets)
    assert "# --set compute.timeout_s=600\n# --set labels.topk=10\n" in config and "timeout_s: 600" in config

    code, out = cli("run", str(c.yaml), capsys=capsys)  # without them again: the lock says so
    assert code == 0 and lock_of(c.root)["overrides"] == []
    assert "--set" not in (c.root / "run" / "config.yaml").read_text()

    code, out = cli("run", str(c.yaml), "--set", "masking.kep=4", capsys=capsys)
    assert code == 2 and lock_of(c.root)["overrides"] == []


@pytest.mark.slow
def test_an_upgrade_keeps_labels_unless_it_renders_views_differently(base, tmp_path, capsys, monkeypatch):
    c = clone(base, tmp_path)
    render_digest.cache_clear()
    try:
        # new versions of every library, same rendering: nothing is stale
        monkeypatch.setattr(importlib.metadata, "version", lambda dist: "99.0")
        monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
        code, steps = status_json(c.yaml, capsys)
        assert code == 0 and all(s["fresh"] for s in steps.values())
        # as if Pillow's bilinear filter (the config's interpolation) changed
        render_digest.cache_clear()
        monkeypatch.setitem(INTERPOLATIONS, "bilinear", Image.Resampling.BICUBIC)
        code, steps = status_json(c.yaml, capsys)
        assert code == 1 and [s for s, v in steps.items() if v["fresh"]] == ["teacher", "init"]
        assert steps["precompute-0"]["reason"].startswith("input 'render' changed (")
        assert "depends on precompute-0" in steps["train-0"]["reason"]
    finally:
        monkeypatch.undo()
        render_digest.cache_clear()


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(base, tmp_path, capsys):
    c = clone(base, tmp_path / "c")
    lr = write_stage(c.root, c.doc, "lr.yaml", train__lr=5.0e-4)
    before = files_under(c.root)
    code, out = cli("run", str(lr), "--dry-run", capsys=capsys)
    assert code == 0
    assert "fresh  precompute-0" in out and "stale  train-0" in out and "recipe" in out
    assert files_under(c.root) == before

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code, out = cli("run", str(write_stage(fresh, stage_doc(fresh, base.data))), "--dry-run", capsys=capsys)
    assert code == 0 and "stale  teacher        never run" in out
    assert sorted(p.name for p in fresh.iterdir()) == ["stages.yaml"]  # no run folder, no store


@pytest.mark.slow
def test_sigkill_mid_segment_then_rerun_gives_the_same_checkpoint_bytes(base, tmp_path):
    c = clone(base, tmp_path)
    lock = load_lock(c.lock)
    for name in ("train-0", "train-1"):  # train again; teacher, c0 and the labels stay cached
        del lock["stages"][name]
    c.lock.write_text(json.dumps(lock))
    for p in ("checkpoints/c1.pth", "checkpoints/c2.pth", "report.md"):
        (c.root / "run" / p).unlink()
    shutil.rmtree(c.root / "run" / "train")

    record = c.root / "run" / "train" / "resume.json"
    proc = subprocess.Popen([CLI, "run", str(c.yaml)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=ENV)
    try:
        deadline = time.monotonic() + 180
        at = None
        while time.monotonic() < deadline and proc.poll() is None:
            if record.is_file():
                at = json.loads(record.read_text())
                if not at["done"] and at["position"] > 0:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (c.root / "run" / "checkpoints" / "c2.pth").exists()

    done = subprocess.run([CLI, "run", str(c.yaml)], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming at epoch" in done.stdout
    resumed = [lock_of(c.root)["stages"][f"train-{i}"]["info"]["resumed"] for i in (0, 1)]
    assert any(r is not None for r in resumed)
    name = "c2.pth"
    assert (c.root / "run" / "checkpoints" / name).read_bytes() == (base.root / "run" / "checkpoints" / name).read_bytes()


@pytest.mark.slow
def test_lag_1_labels_segment_1_from_c0(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    lag = write_stage(c.root, c.doc, "lag.yaml", schedule__lag=1)
    code, steps = status_json(lag, capsys)
    assert code == 1 and steps["precompute-0"]["fresh"] and steps["train-0"]["fresh"]
    assert "input 'student' changed" in steps["precompute-1"]["reason"]  # c0 instead of c1

    runner = run_in_process(lag)
    assert runner.result.stages == {"teacher": "cached", "init": "cached", "precompute-0": "cached",
                                    "train-0": "cached", "precompute-1": "ran", "train-1": "ran"}
    lock = lock_of(c.root)["stages"]
    assert lock["precompute-1"]["info"]["source"] == "c0.pth"
    c0 = next(iter(lock["precompute-0"]["partitions"]))["inputs"]["student"]
    assert {p["inputs"]["student"] for p in lock["precompute-1"]["partitions"]} == {c0}
    assert "| 1 | 2-3 | 8 | c0.pth |" in (c.root / "run" / "report.md").read_text()
    assert status_json(lag, capsys)[0] == 0


@pytest.mark.slow
def test_a_finished_cross_entropy_baseline_goes_beside_the_student_in_the_report(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    # the comparison run as a user makes it: the same stage file, cross-entropy only, a run folder of its own
    ce = tmp_path / "ce"
    code, out = cli("run", str(c.yaml), "--set", "train.kd=off", "--set", "name=t-ce", "--set", f"run_dir={ce}",
                    capsys=capsys)
    done = next(line for line in out.splitlines() if line.startswith("done:"))
    assert code == 0 and "train-1" in done and "precompute" not in done  # no labels for CE only
    ce_report = (ce / "report.md").read_text()
    assert "no teacher labels in this run (cross-entropy only)" in ce_report
    assert "Config: cross-entropy only" in ce_report and "fidelity spot-check" not in ce_report
    ce_top1 = load_lock(ce / LOCK_NAME)["stages"]["train-1"]["info"]["epochs"][-1]["val_top1"]
    student = lock_of(c.root)["stages"]["train-1"]["info"]["epochs"][-1]["val_top1"]
    # the KD run's report, rewritten by a cached rerun that names it: both top-1s and the difference
    code, out = cli("run", str(c.yaml), "--baseline", str(ce), capsys=capsys)
    assert code == 0 and "everything was cached" in out
    head = (c.root / "run" / "report.md").read_text().split("## ")[0]
    assert (f"final val top-1 {student:.4f}; baseline t-ce (cross-entropy only): {ce_top1:.4f}, "
            f"{100 * (student - ce_top1):+.2f} points.") in head
    assert "of the full teacher's MACs net" in head
    # the run's own folder is no comparison (a stage file names its own run folder): refused before any stage
    with pytest.raises(SystemExit) as e:
        main(["run", str(c.yaml), "--baseline", str(c.yaml)])
    assert e.value.code == 2 and "this run's own folder" in capsys.readouterr().err


@pytest.mark.slow
def test_tolerance_reuse_checks_are_counted_in_the_lock_net_and_report(base, tmp_path):
    # labelling segment 1 again from c0 reuses c1's labels of the same views within tolerance;
    # the spot-check re-runs the masked teacher on some of those rows, and that is paid for
    c = clone(base, tmp_path)
    tol = write_stage(c.root, c.doc, "tol.yaml", schedule__lag=1, masking__tolerance=16, masking__spot_check=8)
    run_in_process(tol)
    info = lock_of(c.root)["stages"]["precompute-1"]["info"]
    assert info["rows_reused_tolerance"] > 0 and info["spot_check_rows"] > 0
    cfg = load_config(tol)
    with torch.device("meta"):
        per_view = teacher_macs(create_model(cfg.teacher.model, cfg.teacher.kwargs), 8)
    assert info["reuse_check_macs"] == info["spot_check_rows"] * per_view > 0
    assert info["net_macs"] == info["teacher_macs"] + info["saliency_macs"] + info["reuse_check_macs"]
    assert lock_of(c.root)["stages"]["precompute-0"]["info"]["reuse_check_macs"] == 0  # labelled fresh: nothing checked
    head = (c.root / "run" / "report.md").read_text().split("## ")[0]
    full = sum(lock_of(c.root)["stages"][f"precompute-{i}"]["info"]["full_teacher_macs"] for i in (0, 1))
    assert f"reuse checks {info['reuse_check_macs'] / full:.2f}x)" in head


@pytest.mark.slow
def test_online_runs_without_precompute_and_counts_teacher_forwards(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    online = write_stage(c.root, c.doc, "online.yaml", online=True)
    runner = run_in_process(online)
    assert runner.result.stages == {"teacher": "cached", "init": "cached", "train-0": "ran", "train-1": "ran"}
    assert runner.result.teacher_forwards == EPOCHS * TRAIN_ROWS
    assert runner.result.student_forwards == EPOCHS * TRAIN_ROWS
    assert runner.result.final_accuracy > 0.3
    code, steps = status_json(online, capsys)
    assert code == 0 and list(steps) == ["teacher", "init", "train-0", "train-1"]
    assert "online True" in (c.root / "run" / "report.md").read_text()


@pytest.mark.slow
def test_eval_every_skips_evaluations_but_never_a_segment_end(base, tmp_path):
    c = clone(base, tmp_path)
    runner = run_in_process(write_stage(c.root, c.doc, "eval.yaml", train__eval_every=3))
    # evaluating less often changes no weights: c1 is the same, so segment 1's labels stay cached
    assert runner.result.stages == {"teacher": "cached", "init": "cached", "precompute-0": "cached", "train-0": "ran",
                                    "precompute-1": "cached", "train-1": "ran"}
    stages = lock_of(c.root)["stages"]
    epochs = [e for i in (0, 1) for e in stages[f"train-{i}"]["info"]["epochs"]]
    assert [e["epoch"] for e in epochs if "val_top1" in e] == [1, 2, 3]  # 2: every 3rd; 1, 3: segment ends
    assert runner.result.final_accuracy == lock_of(base.root)["stages"]["train-1"]["info"]["epochs"][-1]["val_top1"]
    report = (c.root / "run" / "report.md").read_text()
    assert "| 0 | - | - |" in report and f"| 3 | {runner.result.final_accuracy:.4f} |" in report


@pytest.mark.slow
def test_torch_resizing_trains_on_its_own_labels_beside_pillows(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    sets = ("--set", "data.resize=torch")
    code, steps = status_json(c.yaml, capsys, *sets)
    # the teacher trains on the views too: all but the student's init are stale
    assert code == 1 and [s for s, v in steps.items() if v["fresh"]] == ["init"], steps
    assert steps["teacher"]["reason"].startswith("input 'render' changed")
    code, out = cli("run", str(c.yaml), *sets, capsys=capsys)
    assert code == 0, out
    lock, before = lock_of(c.root), lock_of(base.root)
    for i in (0, 1):
        new = lock["stages"][f"precompute-{i}"]["partitions"]
        old = before["stages"][f"precompute-{i}"]["partitions"]
        assert len(new) == len(old) == 6
        # other pixels, other view fingerprint: new partitions beside Pillow's, none reused
        assert {p["inputs"]["view"] for p in new}.isdisjoint({p["inputs"]["view"] for p in old})
        assert all(Path(p["path"]).is_file() for p in new + old)
    student = lock["stages"]["train-1"]["info"]["epochs"][-1]["val_top1"]
    assert student > 0.3, f"student val top-1 {student} with torch resizing is not well above chance (0.1)"
    assert status_json(c.yaml, capsys, *sets)[0] == 0  # fresh under the setting it ran with
    assert status_json(c.yaml, capsys)[0] == 1  # back to Pillow: stale (its labels are still stored, above)


@pytest.mark.slow
def test_auto_keep_chooses_each_milestones_keep_from_a_recorded_spot_check(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    auto = write_stage(c.root, c.doc, "auto.yaml", masking__keep="auto", masking__budget={"agreement": 0.45},
                       masking__probe_samples=64)
    code, steps = status_json(auto, capsys)
    assert code == 1 and not steps["probe-0"]["fresh"] and "depends on probe-0" in steps["precompute-0"]["reason"]
    runner = run_in_process(auto)
    assert runner.result.stages["probe-0"] == "ran" and runner.result.stages["probe-1"] == "ran"
    stages = lock_of(c.root)["stages"]
    for i in (0, 1):
        probe, info = stages[f"probe-{i}"]["info"], stages[f"precompute-{i}"]["info"]
        curve = probe["curves"]["student"]
        assert [r["keep"] for r in curve] == [4, 6, 8, 10, 12, 14, None] and probe["samples"] == 64
        assert curve[-1]["agreement"] == 1.0 and probe["source"] == f"c{i}.pth"
        # the smallest rung within the budget, all 16 patches when none is
        want = min((r["keep"] for r in curve if r["keep"] is not None and r["agreement"] >= 0.45), default=16)
        assert info["keep"] == want < 16 and info["auto"]["curve"] == curve  # this budget masks (the tiny teacher is frail)
        assert info["auto"]["reason"].startswith("the smallest keep within the budget (agreement >= 0.45), net ")
        # the spot-check's MACs count in the segment's teacher MACs
        assert info["teacher_macs"] == info["rows_computed"] * info["auto"]["curve"][[r["keep"] for r in curve].index(
            None if want == 16 else want)]["macs"] + probe["teacher_macs"]
        # beside it: the spot-check alone, the student's saliency forwards, net and full-teacher MACs
        assert info["spot_check_macs"] == probe["teacher_macs"] > 0
        # (0 here when every row was reused from the base run's store: spent MACs, like teacher_macs)
        assert info["saliency_macs"] == info["student_forwards"] * curve[0]["saliency_macs"] and curve[0]["saliency_macs"] > 0
        assert info["net_macs"] == info["teacher_macs"] + info["saliency_macs"]
        assert info["full_teacher_macs"] == info["rows"] * curve[-1]["macs"]
        part = stages[f"precompute-{i}"]["partitions"][0]["path"]
        with open_partition(part) as pt:
            assert (pt.read_all(columns=("keep",)).keep.sum(1) == want).all()
    report = (c.root / "run" / "report.md").read_text()
    assert "of the full teacher's MACs net (teacher " in report.split("## ")[0]
    assert "## Fidelity spot-check (masking.keep: auto)" in report and (c.root / "run" / "fidelity_curves.png").is_file()
    # a rerun measures nothing again and labels nothing again
    again = run_in_process(auto)
    assert again.result.teacher_forwards == 0 and set(again.result.stages.values()) == {"cached"}
    assert status_json(auto, capsys)[0] == 0
    # a budget no masked rung meets gives the full teacher, from the recorded curves (no new spot-check)
    strict = write_stage(c.root, c.doc, "strict.yaml", masking__keep="auto", masking__budget={"kl": 0.0},
                         masking__probe_samples=64)
    runner = run_in_process(strict)
    assert runner.result.stages["probe-0"] == "cached" and runner.result.stages["precompute-0"] == "ran"
    assert lock_of(c.root)["stages"]["precompute-0"]["info"]["keep"] == 16


@pytest.mark.slow
def test_probe_command_measures_every_policy_at_a_milestone(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    code, out = cli("probe", str(c.yaml), "--milestone", "1", "--samples", "48", "--json", capsys=capsys)
    assert code == 0
    res = json.loads(out)  # stdout is the JSON alone (progress lines go to stderr)
    assert res["source"] == "c1.pth" and res["samples"] == 48 and set(res["curves"]) == {"student", "random", "student_inverse", *FORWARD_POLICIES}
    for curve in res["curves"].values():
        assert [r["keep"] for r in curve] == [4, 6, 8, 10, 12, 14, None]
        assert curve[-1]["agreement"] == 1.0 and curve[-1]["top1"] == res["unmasked_top1"]
        assert all(0 <= r["agreement"] <= 1 and r["kl"] >= 0 for r in curve)
    assert (c.root / "run" / "probe-m1.png").is_file()
    assert "probe-1" not in lock_of(c.root)["stages"]  # measures; records nothing
    code, out = cli("probe", str(c.yaml), "--milestone", "0", "--samples", "16", capsys=capsys)
    assert code == 0 and "| student | 8 | 50.0% |" in out and "masks from c0.pth on 16 views" in out
    code, _ = cli("probe", str(c.yaml), "--milestone", "5", capsys=capsys)
    assert code == 2


@pytest.mark.slow
def test_gc_after_a_config_change_lists_then_removes_only_unreferenced_partitions(base, tmp_path, capsys):
    c = clone(base, tmp_path)
    old = {p["path"] for i in (0, 1) for p in lock_of(c.root)["stages"][f"precompute-{i}"]["partitions"]}
    keep = write_stage(c.root, c.doc, "keep.yaml", masking__keep=12)
    runner = run_in_process(keep)
    assert runner.result.stages["precompute-0"] == runner.result.stages["precompute-1"] == "ran"
    assert status_json(keep, capsys)[0] == 0
    new = {p["path"] for i in (0, 1) for p in lock_of(c.root)["stages"][f"precompute-{i}"]["partitions"]}
    assert len(old) == len(new) == 12 and not old & new

    before = files_under(c.root / "store")
    code, out = cli("gc", str(keep), "--grace", "0", capsys=capsys)
    assert code == 0
    listed = {line.split()[2] for line in out.splitlines() if line.startswith("would remove")}
    assert listed == old
    assert files_under(c.root / "store") == before
    assert "12 partition(s) kept" in out

    code, out = cli("gc", str(keep), "--yes", "--grace", "0", capsys=capsys)
    assert code == 0 and "12 file(s)" in out
    assert not any(Path(p).exists() for p in old) and all(Path(p).exists() for p in new)
    assert next((c.root / "store" / "teachers").glob("*.pth")).exists()  # the teacher is referenced
    code, out = cli("labels", "verify", str(c.root / "store"), "--lock", str(c.lock), capsys=capsys)
    assert code == 0, out
    assert run_in_process(keep).result.stages == {k: "cached" for k in runner.result.stages}


def test_bad_config_exits_2_and_writes_nothing(fmnist_small, tmp_path, capsys):
    path = write_stage(tmp_path, stage_doc(tmp_path, fmnist_small), masking__keep=300)
    with pytest.raises(SystemExit) as e:
        main(["run", str(path)])
    assert e.value.code == 2
    assert "masking.keep" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stages.yaml"]
