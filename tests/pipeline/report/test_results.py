"""``mkd-pipeline report --spec stages/results/results.toml --results``: the RESULTS.md generator on tiny *real* runs (issues 7, 13).

Three tiny configs are run for real on real Fashion-MNIST images (a CE-only student, an offline
MaskedKD student and an auto-keep student with a 1-worker LocalCluster, sharing one trained
teacher); a fourth config is never run. The report must show the numbers the lock files hold,
average seeds, list the unrun config as "not run" with its command, show what auto keep chose and
what its spot-checks cost, embed a probe's curves, and draw the curriculum figure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline._lock import load_lock
from pipeline.config import load_config, set_fields
from pipeline.report.cli import report_cmd
from pipeline.report.collect import collect_run
from pipeline.run.runner import Runner

# results v2's spec: its rows include auto keep, which these tiny runs exercise (v3's results.toml shows fewer rows)
SPEC = Path(__file__).resolve().parents[3] / "stages" / "results" / "results-v2.toml"
VIT = "vit_tiny_patch16_224"
KW = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "num_heads": 2}  # 4x4 = 16 patches


def _doc(root: Path, data: Path, name: str, **over) -> dict:
    doc = {
        "name": name,
        "run_dir": str(root / "runs" / name),
        "data": {"root": str(data), "train": "train", "val": "test", "subset": 256, "val_subset": 128,
                 "num_classes": 10, "mean": [0.2860], "std": [0.3530], "interpolation": "bilinear"},
        "teacher": {"model": VIT, "kwargs": dict(KW, embed_dim=32, depth=1),
                    "train": {"epochs": 1, "lr": 2.0e-3, "warmup_epochs": 0, "batch_size": 32, "seed": 0}},
        "student": {"model": VIT, "kwargs": dict(KW, embed_dim=16, depth=1), "init_seed": 0},
        "schedule": {"epochs": 2, "every": 1, "lag": 0},
        "masking": {"policy": "student", "keep": 8},
        "views": {"seed": 0, "scale": [0.85, 1.0], "hflip": 0.5},
        "labels": {"store": str(root / "store"), "topk": 10, "temperatures": [1.0]},
        "compute": {"scheduler": None, "workers": 1, "threads_per_worker": 1, "device": "cpu", "timeout_s": 300},
        "train": {"lr": 1.0e-3, "warmup_epochs": 0, "batch_size": 32},
    }
    return set_fields(doc, {k.replace("__", "."): v for k, v in over.items()})


def _write(root: Path, stem: str, row: str, doc: dict) -> Path:
    path = root / "stages" / f"{stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Row: {row}\n#\n# Run: mkd-pipeline run {path}\n\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fmnist_tiny(tmp_path_factory) -> Path:
    """The first 256 training / 128 test images of real Fashion-MNIST as shards + manifest."""
    from tests.pipeline.data.helpers import real_fashion_mnist_subset

    root = tmp_path_factory.mktemp("results-fmnist")
    return real_fashion_mnist_subset(root / "fashion-mnist", 256, 128, 128)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


def test_report_from_real_runs(fmnist_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ce = _write(tmp_path, "ce-s0", "CE only", _doc(tmp_path, fmnist_tiny, "ce-s0", train__kd="off",
                                                     masking={"policy": "none"}))
    mkd_row = "plain teacher: offline MaskedKD 50%"
    mkd = _write(tmp_path, "plain-mkd50-s0", mkd_row, _doc(tmp_path, fmnist_tiny, "mkd-s0"))
    auto_row = "plain teacher: offline auto keep, agreement 0.90"
    auto = _write(tmp_path, "plain-auto90-s0", auto_row, _doc(
        tmp_path, fmnist_tiny, "auto-s0", masking={"policy": "student", "keep": "auto", "budget": {"agreement": 0.9},
                                                   "probe_samples": 32}))
    unrun = _write(tmp_path, "plain-mkd50-s1", mkd_row,
                   _doc(tmp_path, fmnist_tiny, "mkd-s1", student__init_seed=1, train__seed=1))
    for path in (ce, mkd, auto):
        Runner(load_config(path), progress=False, echo=lambda _s: None).run()
    probes = tmp_path / "probes"
    probes.mkdir()
    res = Runner(load_config(mkd), progress=False, echo=lambda _s: None).probe(1, 32)
    (probes / "plain-m1.json").write_text(json.dumps(res))

    out = tmp_path / "RESULTS.md"
    args = ["--spec", str(SPEC), "--results", str(ce), str(mkd), str(auto), str(unrun), "--out", str(out), "--logs", str(tmp_path / "logs"),
            "--probes", str(probes)]
    res = CliRunner().invoke(report_cmd, args)
    assert res.exit_code == 0, res.output
    assert "3 of 4 configs finished" in res.output
    text = out.read_text()

    # the numbers are the lock files' numbers
    lock = load_lock(tmp_path / "runs" / "mkd-s0" / "run.lock.json")["stages"]
    top1 = lock["train-1"]["info"]["epochs"][-1]["val_top1"]
    macs = sum(lock[f"precompute-{i}"]["info"]["teacher_macs"] for i in (0, 1))
    r = collect_run(mkd)
    assert r.finished and r.top1 == top1 and r.teacher_macs == macs
    assert r.label_macs == macs  # it computed every row itself, no spot-checks: what it spent is what its labels cost
    assert r.rows == 2 * 256 and r.full_macs > macs > 0
    assert [m for m, _ in r.masked_top1] == [0, 1] and r.used_keeps == [8, 8] and r.keep_label == "8"
    assert [e for e, _ in r.epoch_top1] == [0, 1] and r.epoch_top1[-1][1] == top1
    assert f"| {mkd_row}, seed 0 | {100 * r.epoch_top1[0][1]:.2f} | {100 * top1:.2f} |" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {mkd_row} |"))
    assert f"{100 * top1:.2f} (1 seed)" in row and "| 8 |" in row
    assert f"{macs / 1e9:.1f}" in row
    # keep 8 of 16 patches: the masked teacher costs about half of the full one
    frac = int(re.search(r"\| (\d+)% \|", row).group(1))
    assert 35 <= frac <= 65, row
    assert "plain-mkd50-s1.yaml` (not run)" in row

    ce_row = next(line for line in text.splitlines() if line.startswith("| CE only |"))
    ce_top1 = load_lock(tmp_path / "runs" / "ce-s0" / "run.lock.json")["stages"]["train-1"]["info"]["epochs"][-1]["val_top1"]
    assert f"{100 * ce_top1:.2f} (1 seed)" in ce_row
    assert "| 0.0 | - |" in ce_row  # no teacher compute without KD
    assert "## Learning rate: a CE-only sweep" in text and "| 0.001 ← used |" in text

    # auto keep: the chosen keeps and the spot-checks' MACs, which count in the run's teacher MACs
    a = collect_run(auto)
    alock = load_lock(tmp_path / "runs" / "auto-s0" / "run.lock.json")["stages"]
    assert a.used_keeps == [alock[f"precompute-{i}"]["info"]["keep"] for i in (0, 1)]
    assert len(a.auto) == 2 and 0 < a.spot_macs < a.teacher_macs <= a.label_macs
    assert a.spot_macs == sum(alock[f"precompute-{i}"]["info"]["auto"]["teacher_macs"] for i in (0, 1))
    assert "## Auto keep: what the budget chose" in text and f"| {auto_row}, seed 0 | agreement >= 0.9 |" in text
    # the targets name what they could not decide
    assert "## Targets (computed)" in text
    assert "plain teacher, offline auto keep, agreement 0.90: within" in text and "**not measured**" in text

    assert f"**{mkd_row}** − **CE only**" in text
    png = tmp_path / "results_curriculum.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![curriculum](results_curriculum.png)" in text
    # the probe's curves: a table per policy and a plot
    assert "### plain-m1 (masks from c1.pth, 32 views" in text and "| student_inverse | 8 | 50.0% |" in text
    assert (tmp_path / "results_probe_plain-m1.png").is_file()
    # regenerating gives the same table (nothing but the uptime line depends on the moment)
    again = CliRunner().invoke(report_cmd, args)
    assert again.exit_code == 0
    strip = lambda s: [x for x in s.splitlines() if not x.startswith("Machine:")]  # noqa: E731
    assert strip(out.read_text()) == strip(text)

    # net costs: the MaskedKD row's saliency forwards come on top of its teacher MACs; none without KD
    assert r.saliency_macs > 0 and r.net_label_macs == r.label_macs + r.saliency_macs
    assert r.saliency_macs == sum(lock[f"precompute-{i}"]["info"]["saliency_macs"] for i in (0, 1))
    assert f"| {r.label_macs / 1e9:.1f} | {frac}% | {r.net_label_macs / 1e9:.1f} | {r.net_label_macs / r.full_macs:.0%} |" in row
    assert "| 0.0 | - | 0.0 | - |" in ce_row

    # records: written for the finished runs, they stand for the run folders once those are gone
    records = tmp_path / "stages" / "records"  # beside the configs: where the report looks by default
    made = CliRunner().invoke(report_cmd, [*args[2:args.index("--out")], "--logs", str(tmp_path / "logs"),
                                           "--record-to", str(records)])
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in records.iterdir()) == ["ce-s0.json", "plain-auto90-s0.json", "plain-mkd50-s0.json"]
    assert "configs finished" not in made.output  # records only, no page
    (tmp_path / "runs").rename(tmp_path / "runs-gone")
    from_records = CliRunner().invoke(report_cmd, args)
    assert from_records.exit_code == 0, from_records.output
    assert "3 of 4 configs finished (3 read from records: ce-s0, plain-mkd50-s0, plain-auto90-s0)" in from_records.output
    regenerated = out.read_text()
    assert "Read from records: `ce-s0`, `plain-mkd50-s0`, `plain-auto90-s0`." in regenerated
    assert "plain-mkd50-s0.yaml` (record)" in regenerated and "plain-mkd50-s1.yaml` (not run)" in regenerated

    def same(page: str) -> list[str]:  # all but the lines that say where the numbers were read from
        page = re.sub(r"^Read from records: .*\n\n", "", page, flags=re.M)
        return [x.replace(" (record)", "") for x in strip(page) if not x.startswith("Generated by")]
    assert same(regenerated) == same(text)


def test_sizes_of_a_full_split_config(fmnist_tiny, tmp_path):
    """No ``subset``: the sizes line counts the split from the manifest (the full-scale rows)."""
    doc = _doc(tmp_path, fmnist_tiny, "full")
    del doc["data"]["subset"], doc["data"]["val_subset"]
    r = collect_run(_write(tmp_path, "full-s0", "full split", doc), logs=tmp_path / "logs")
    assert not r.finished and r.train_samples == 256
    assert "on 256 training images" in r.sizes and "test top-1 on all 128 test images" in r.sizes
