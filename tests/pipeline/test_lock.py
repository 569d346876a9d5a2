"""The run lock: freshness reasons, outputs checked by sha256, and safe writes from two threads
(``lag: 1`` records a precompute stage from a background thread while training records its own)."""

from __future__ import annotations

import json
import threading

from pipeline._lock import RunLock, file_record
from pipeline.labels.schema import json_problem


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
