"""Committed run records (pipeline/report/records.py): a finished run's outcome written as JSON and
read back where the run folder is gone, refused with the file named when it does not fit."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.errors import ConfigError
from pipeline.report.cli import report_cmd
from pipeline.report.collect import RunOutcome
from pipeline.report.records import read_outcome, read_record, record_path, write_record

COMMITTED = Path(__file__).resolve().parents[3] / "stages" / "results" / "plain-mkd50-s0.yaml"


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    """A copy of a committed row config in ``tmp_path/stages`` (its run folder, ``runs/...``, is never made)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "stages" / "row-s0.yaml"
    path.parent.mkdir()
    path.write_text(COMMITTED.read_text())
    return path


def _outcome(config: Path) -> RunOutcome:
    return RunOutcome(
        config=config, name="results-row-s0", row="plain teacher: offline MaskedKD 50%", seed=0, online=False, kd="kl",
        policy="student", keep=25, every=[0, 1, 2, 4, 6], tolerance=0, pool="epochs", lr=8e-3, epochs=8,
        train_samples=20000, keeps=[25] * 5, finished=True, top1=0.8123, teacher_top1=0.8873, teacher_macs=123 * 10**9,
        label_macs=124 * 10**9, full_macs=250 * 10**9, teacher_forwards=160000, rows=160000, seconds=301.5,
        masked_top1=[(0, 0.61), (6, 0.79)], epoch_top1=[(1, 0.7), (7, 0.8123)], spot_kl=[0.01],
        used_keeps=[25, 25, 25, 25, 25], auto=[{"milestone": 0, "keep": 37, "budget": "agreement >= 0.9",
                                                 "curve": [{"keep": 37, "agreement": 0.93}], "teacher_macs": 10**6}],
        load=[1.9, 2.1], teacher_file={"weights": "stages/results/teachers/t.safetensors", "finetune": {"macs": 3}},
        num_patches=49, sizes="tiny", saliency_macs=30 * 10**9, net_macs=153 * 10**9)


def test_a_record_reads_back_the_outcome_it_was_written_from(config, tmp_path):
    r = _outcome(config)
    path = write_record(r, tmp_path / "records")
    assert path == tmp_path / "records" / "row-s0.json"
    assert json.loads(path.read_text())["outcome"]["config"] == config.as_posix()
    back = read_record(path, config)
    assert back == dataclasses.replace(r, record=path)
    assert back.masked_top1 == [(0, 0.61), (6, 0.79)] and back.net_label_macs == 154 * 10**9


def test_without_a_run_folder_the_record_beside_the_config_stands_for_the_run(config):
    path = write_record(_outcome(config), config.parent / "records")
    r = read_outcome(config)
    assert r.finished and r.record == path and r.top1 == 0.8123


def test_a_comment_edit_keeps_the_record_a_setting_edit_refuses_it(config, tmp_path):
    path = write_record(_outcome(config), tmp_path)
    config.write_text("# one more comment line\n" + config.read_text())
    assert read_record(path, config).finished
    config.write_text(config.read_text().replace("lr: 8.0e-3", "lr: 4.0e-3"))
    with pytest.raises(ConfigError, match="has changed since the run it records"):
        read_record(path, config)


def _edit(doc: dict, **outcome) -> dict:
    doc["outcome"].update(outcome)
    return doc


@pytest.mark.parametrize("change, why", [
    (lambda d: "{not json", "cannot read it as JSON"),
    (lambda d: dict(d, record=99), 'expected {"record": 1'),
    (lambda d: _edit(d, colour="blue"), "unknown field(s) colour"),
    (lambda d: (d["outcome"].pop("seed"), d)[1], "missing field(s) seed"),
    (lambda d: _edit(d, top1="81%", masked_top1=[[0, 1, 2]]), "wrong type of masked_top1 ([[0, 1, 2]]), top1 (\"81%\")"),
    (lambda d: _edit(d, config="stages/other-s0.yaml"), "it records stages/other-s0.yaml"),
    (lambda d: _edit(d, finished=False), "did not finish"),
])
def test_a_bad_record_is_refused_naming_the_file(config, tmp_path, change, why):
    path = write_record(_outcome(config), tmp_path)
    doc = change(json.loads(path.read_text()))
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ConfigError, match=re.escape(why)) as e:
        read_record(path, config)
    assert str(e.value).startswith(f"{path}: not a usable run record: ") and "--record-to" in str(e.value)


def test_an_unfinished_outcome_is_not_recorded(config, tmp_path):
    with pytest.raises(ValueError, match="not finished"):
        write_record(dataclasses.replace(_outcome(config), finished=False), tmp_path)
    assert not record_path(tmp_path, config).exists()


def test_the_page_and_the_command_say_which_rows_came_from_records(config, tmp_path):
    write_record(_outcome(config), config.parent / "records")
    out = tmp_path / "page.md"
    res = CliRunner().invoke(report_cmd, ["--results", str(config), "--out", str(out), "--probes", str(tmp_path / "none")])
    assert res.exit_code == 0, res.output
    assert "1 of 1 configs finished (1 read from records: row-s0)" in res.output
    text = out.read_text()
    assert "Read from records: `row-s0`." in text and f"the run's committed record ({config.parent.as_posix()}/records)" in text
    row = next(line for line in text.splitlines() if line.startswith("| plain teacher: offline MaskedKD 50% |"))
    assert "81.23 (1 seed)" in row and "row-s0.yaml` (record)" in row and "| 124.0 | 50% | 154.0 | 62% |" in row


def test_a_bad_record_stops_the_report_with_its_name(config, tmp_path):
    bad = config.parent / "records" / "row-s0.json"
    bad.parent.mkdir()
    bad.write_text("[]")
    res = CliRunner().invoke(report_cmd, ["--results", str(config), "--out", str(tmp_path / "page.md")])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError) and str(bad) in str(res.exception)
