"""metrics.csv / teacher_metrics.csv from the run lock (the end-to-end run is in tests/pipeline/run)."""

from __future__ import annotations

import csv

from pipeline._lock import RunLock
from pipeline.report.metrics import write_metrics


def _epoch(e: int, val: bool) -> dict:
    rec = {"epoch": e, "loss": 2.0 - e / 10, "top1": 0.1 * e, "lr": 1e-3, "steps": 4, "samples": 32, "samples_per_s": 100.5}
    return {**rec, "val_top1": 0.25 + e / 100, "val_loss": 1.5} if val else rec


def test_one_row_per_epoch_blank_where_not_evaluated_and_same_lock_same_bytes(tmp_path):
    lock = RunLock(tmp_path / "run.lock.json")
    lock.record("train-0", {}, info={"epochs": [_epoch(0, False), _epoch(1, True)]})
    lock.record("train-1", {}, info={"epochs": [_epoch(2, True)]})
    lock.record("teacher", {}, info={"epochs": [_epoch(0, True)], "top1": 0.25})
    written = write_metrics(lock, 2, tmp_path)
    assert written == [tmp_path / "metrics.csv", tmp_path / "teacher_metrics.csv"]

    text = (tmp_path / "metrics.csv").read_text()
    assert text.splitlines()[:2] == ["epoch,segment,train_loss,train_top1,val_top1,val_loss,lr,samples_per_s",
                                     "0,0,2.0,0.0,,,0.001,100.5"]
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["epoch"], r["segment"], r["val_top1"]) for r in rows] == [("0", "0", ""), ("1", "0", "0.26"), ("2", "1", "0.27")]
    teacher = list(csv.DictReader((tmp_path / "teacher_metrics.csv").read_text().splitlines()))
    assert teacher == [{"epoch": "0", "train_loss": "2.0", "train_top1": "0.0", "val_top1": "0.25", "val_loss": "1.5",
                        "lr": "0.001", "samples_per_s": "100.5"}]

    before = {p: p.read_bytes() for p in written}
    write_metrics(RunLock(tmp_path / "run.lock.json"), 2, tmp_path)  # the lock read back: same bytes
    assert {p: p.read_bytes() for p in written} == before

    lock.record("teacher", {}, info={"top1": 0.25})  # teacher weights from a file: nothing trained
    assert write_metrics(lock, 2, tmp_path) == [tmp_path / "metrics.csv"]
    assert not (tmp_path / "teacher_metrics.csv").exists()


def test_a_run_with_an_ema_gets_its_column_and_one_without_keeps_its_bytes(tmp_path):
    lock = RunLock(tmp_path / "run.lock.json")
    lock.record("train-0", {}, info={"epochs": [_epoch(0, False), {**_epoch(1, True), "ema_val_top1": 0.3}]})
    write_metrics(lock, 1, tmp_path)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [r["ema_val_top1"] for r in rows] == ["", "0.3"]
