"""Concurrent use of one store: the same config run twice at once (one run folder) and a second
config sharing the teacher and segment-0 partitions (``train.lr`` differs), all three at once.
All finish; no torn file; every lock's checksums match the files; checkpoints byte-identical to
sequential runs and the labels equal. Plus the race it exposed, made deterministic: a partition
another run publishes between our existence check and our write is kept, not replaced."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from tests.reliability.conftest import snapshot
from tests.reliability.helpers import main_in_process, start, temp_files

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _labels(path: Path):
    """A partition's rows (every column), without its metadata record (counters say how it was made)."""
    return pq.read_table(path).replace_schema_metadata(None)


def test_three_concurrent_runs_same_store(baseline, tally):
    b = baseline
    b.clear()
    procs = [start("run", cfg, cwd=b.work, log=b.work / f"conc-{i}.log")
             for i, cfg in enumerate(("a.yaml", "a.yaml", "b.yaml"))]
    deadline = time.monotonic() + 600
    for p in procs:
        p.wait(timeout=max(1, deadline - time.monotonic()))
    logs = [(b.work / f"conc-{i}.log").read_text() for i in range(3)]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert sum("another run of this config is in progress; waiting" in log for log in logs[:2]) == 1, logs[:2]
    waited = next(log for log in logs[:2] if "waiting" in log)
    assert "none: everything was cached" in waited, waited  # the second run of A found A's work done

    now = snapshot(b.work, ("tiny", "tiny-b"))
    ckpts = {k: v for k, v in b.ab.items() if "/checkpoints/" in k}
    assert {k: now.get(k) for k in ckpts} == ckpts  # byte-identical to sequential runs
    assert sorted(k for k in now if k.startswith("store/")) == sorted(k for k in b.ab if k.startswith("store/"))
    for k in (k for k in now if k.endswith(".parquet")):
        assert _labels(b.work / k).equals(_labels(b.work / ".snap-ab" / k)), k  # same labels, row for row
    for name in ("tiny", "tiny-b"):
        lock = load_lock(b.work / f"runs/{name}/run.lock.json")
        for stage in lock["stages"].values():
            for p in stage.get("partitions", []):
                assert sha256_file(p["path"]) == p["sha256"], p  # no lock names bytes that are not there
    code, out = main_in_process("labels", "verify", "store", "--lock", "runs/tiny/run.lock.json",
                                "--lock", "runs/tiny-b/run.lock.json", cwd=b.work)
    assert code == 0, out
    assert temp_files(b.work / "store", b.work / "runs") == []
    tally("concurrency", "same config run twice at once (one run folder)",
          "second waits on <run_dir>/.lock, then finds everything cached; checkpoints byte-identical")
    tally("concurrency", "another config sharing teacher + segment-0 labels, at the same time",
          "both finish; checkpoints byte-identical to sequential runs, labels equal row for row "
          "(only the counters of how rows were obtained may differ); every lock checksum matches; verify OK")


def test_partition_published_meanwhile_is_kept(baseline, monkeypatch, tally):
    """Another run publishes the partition after our task checked it was absent: the task keeps
    that file (first writer wins) and reports its checksum, so both run locks stay true."""
    from pipeline.config import load_config
    from pipeline.precompute import task as task_mod
    from pipeline.run.runner import Runner
    from pipeline.run.stages import plan_precompute, recorded_teacher

    b = baseline
    b.restore("a")
    monkeypatch.chdir(b.work)
    runner = Runner(load_config("a.yaml"), progress=False)
    t = plan_precompute(runner, 0, recorded_teacher(runner), runner.checkpoint(0))[0]
    before = Path(t.path).stat()
    monkeypatch.setattr(task_mod.paths, "file_exists", lambda path: False)  # the check ran before the other's rename
    res = task_mod.run_partition({"task": t})
    after = Path(t.path).stat()
    assert res["cached"] and res["sha256"] == sha256_file(t.path)
    assert res["teacher_forwards"] > 0  # it did compute (the race path), not the early "cached" return
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not replaced
    assert not [p for p in Path(t.path).parent.iterdir() if p.name.startswith(".tmp-")]
    tally("concurrency", "two writers of one partition path (race made deterministic)",
          "the first published file is kept; the second writer reports its checksum")
