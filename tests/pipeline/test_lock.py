"""The run lock: freshness reasons, outputs checked by sha256, and safe writes from two threads
(``lag: 1`` records a precompute stage from a background thread while training records its own)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from pipeline._lock import RunLock, file_record, load_lock
from pipeline.errors import StoreError
from pipeline.labels.schema import json_problem

FIXTURES = Path(__file__).parent / "fixtures"


def test_freshness_says_why(tmp_path):
    out = tmp_path / "c1.pth"
    out.write_bytes(b"weights")
    lock = RunLock(tmp_path / "run.lock.json")
    assert lock.check("train-0", {"lr": 1}).reason == "never run"
    lock.record("train-0", {"lr": 1, "start": "a" * 64}, outputs={"checkpoint": file_record(out)})

    again = RunLock(tmp_path / "run.lock.json")  # read back from disk
    assert again.check("train-0", {"lr": 1, "start": "a" * 64}).fresh
    assert again.check("train-0", {"lr": 2, "start": "a" * 64}).reason == "input 'lr' changed (1 -> 2)"
    assert again.check("train-0", {"lr": 1, "start": "b" * 64}).reason == "input 'start' changed (aaaaaaaaaa… -> bbbbbbbbbb…)"
    assert again.check("train-0", {"lr": 1}).reason.startswith("input 'start' changed")
    out.write_bytes(b"other weights")
    assert "changed since it was written" in again.check("train-0", {"lr": 1, "start": "a" * 64}).reason
    out.unlink()
    assert again.check("train-0", {"lr": 1, "start": "a" * 64}).reason == f"output {out} is missing"


def test_records_from_two_threads_all_land(tmp_path):
    lock = RunLock(tmp_path / "run.lock.json", store=str(tmp_path / "store"))
    errors = []

    def work(prefix: str) -> None:
        try:
            for i in range(200):
                lock.record(f"{prefix}-{i}", {"i": i}, info={"rows": i})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in ("precompute", "train")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    doc = json.loads((tmp_path / "run.lock.json").read_text())
    assert json_problem("run-lock", doc) is None
    assert len(doc["stages"]) == 400 and doc["stages"]["train-199"]["info"] == {"rows": 199}


def test_overrides_are_kept_with_the_lock(tmp_path):
    path = tmp_path / "run.lock.json"
    lock = RunLock(path)
    lock.overrides = ["train.lr=5e-4"]
    lock.save_overrides()  # no file yet: nothing to update
    assert not path.exists()
    lock.record("init", {"init": "seed:0"})
    doc = json.loads(path.read_text())
    assert doc["overrides"] == ["train.lr=5e-4"] and json_problem("run-lock", doc) is None

    again = RunLock(path)
    assert again.overrides == ["train.lr=5e-4"]
    before = path.stat().st_mtime_ns
    again.save_overrides()  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == before
    again.overrides = []
    again.save_overrides()  # a rerun without them that recorded no stage still says so
    assert json.loads(path.read_text())["overrides"] == [] and RunLock(path).stages == again.stages

    old = {"lock_version": 1, "stages": {}}  # written before overrides existed
    path.write_text(json.dumps(old))
    assert RunLock(path).overrides == [] and json_problem("run-lock", old) is None


def _parts(n: int, store) -> list[dict]:
    return [{"path": str(store / f"p{i}.parquet"), "inputs": {"teacher": "a" * 64, "view": f"{i:064x}", "student": None},
             "rows": i, "sha256": f"{i:064x}"} for i in range(n)]


def test_partition_records_go_to_their_own_file_written_once(tmp_path):
    path, store = tmp_path / "run.lock.json", tmp_path / "store"
    store.mkdir()
    parts = _parts(5, store) + [{"path": str(store / "odd.parquet"), "inputs": {"teacher": 3}, "rows": 1, "sha256": "b" * 64}]
    for p in parts:
        Path(p["path"]).write_bytes(b"x")
    lock = RunLock(path, store=str(store))
    lock.record("precompute-0", {"tasks": "t"}, partitions=parts, info={"rows": 11})
    head = json.loads(path.read_text())
    assert "partitions" not in head["stages"]["precompute-0"] and json_problem("run-lock", head) is None
    records = tmp_path / head["stages"]["precompute-0"]["partitions_file"]["path"]
    written = records.stat().st_mtime_ns
    lock.record("train-0", {"lr": 1})  # another stage: the records file is not rewritten
    assert records.stat().st_mtime_ns == written
    assert RunLock(path).stages["precompute-0"]["partitions"] == parts  # read back exactly, odd record too
    assert load_lock(path)["stages"]["precompute-0"]["partitions"] == parts
    assert RunLock(path).check("precompute-0", {"tasks": "t"}).fresh
    Path(parts[2]["path"]).unlink()
    assert RunLock(path).check("precompute-0", {"tasks": "t"}, deep=False).fresh  # no stat per partition
    assert RunLock(path).check("precompute-0", {"tasks": "t"}).reason == f"output {parts[2]['path']} is missing"

    lock.record("precompute-0", {"tasks": "u"}, partitions=parts[:2])  # re-recorded: the old records file goes
    assert not records.exists() and len(list(records.parent.iterdir())) == 1
    records = tmp_path / json.loads(path.read_text())["stages"]["precompute-0"]["partitions_file"]["path"]
    records.write_bytes(records.read_bytes()[:-3])
    with pytest.raises(StoreError, match="partition records changed"):
        load_lock(path)


def test_a_lock_written_before_records_files_is_read_then_moved_once(tmp_path):
    """``fixtures/run-lock-v1.json`` was written by the RunLock of lock_version 1 (records inline)."""
    path, store = tmp_path / "run.lock.json", tmp_path / "store"
    shutil.copy(FIXTURES / "run-lock-v1.json", path)
    old = json.loads(path.read_text())
    parts = old["stages"]["precompute-0"]["partitions"]
    for p in parts:
        (store / p["path"]).parent.mkdir(parents=True, exist_ok=True)
        (store / p["path"]).write_bytes(b"x")
    lock = RunLock(path, store=str(store))
    assert lock.stages["precompute-0"]["partitions"] == parts and lock.overrides == ["train.lr=5e-4"]
    assert lock.check("precompute-0", old["stages"]["precompute-0"]["inputs"]).fresh
    assert load_lock(path) == old

    lock.record("train-0", {"lr": 1})  # the first write moves the records out, atomically
    head = json.loads(path.read_text())
    assert head["lock_version"] == 2 and "partitions" not in head["stages"]["precompute-0"]
    again = load_lock(path)
    assert again["stages"]["precompute-0"] == old["stages"]["precompute-0"] and again["stages"]["init"] == old["stages"]["init"]
    assert RunLock(path, store=str(store)).check("precompute-0", old["stages"]["precompute-0"]["inputs"]).fresh
