"""Dask worker faults during a real ``mkd-pipeline precompute`` (injected into the task's test seam
``pipeline/precompute/task.py:after_shard_read`` by a worker preload, ``tests/reliability/faults.py``):
a worker SIGKILLed mid-task and a task hanging past ``compute.timeout_s`` -> the job completes, every
row exactly once, the partitions byte-identical to a fault-free run; a task that kills its worker
every time -> exit 5 naming the shard."""

from __future__ import annotations

import json

import pytest

from pipeline._lock import load_lock
from tests.reliability.faults import fault_env
from tests.reliability.helpers import cli, stage

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FAULTY = {"compute__timeout_s": 12, "compute__retries": 1}


def _segment0_undone(b) -> dict:
    """The baseline with teacher and c0 done and segment 0's labels still to compute."""
    b.restore("a")
    lock_path = b.work / "runs/tiny/run.lock.json"
    lock = load_lock(lock_path)
    for p in lock["stages"]["precompute-0"]["partitions"]:
        (b.work / p["path"]).unlink()
    parts = lock["stages"]["precompute-0"]["partitions"]
    lock["stages"] = {k: v for k, v in lock["stages"].items() if k in ("teacher", "init")}
    lock_path.write_text(json.dumps(lock))
    return {p["path"]: p["sha256"] for p in parts}


def test_killed_and_hanging_workers_job_completes_rows_once(baseline, tmp_path, tally):
    from pipeline.labels import open_partition

    b = baseline
    want = _segment0_undone(b)
    stage(b.work / "w.yaml", name="tiny", **FAULTY)  # same run as a.yaml; compute settings are no input
    marks = tmp_path / "marks"
    marks.mkdir()
    fault = f"kill:train-000000:{marks},hang:train-000001:{marks}"
    r = cli("precompute", "w.yaml", "--segment", "0", cwd=b.work, **fault_env(fault))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in marks.iterdir()) == ["hang-train-000001-0", "kill-train-000000-0"]  # both happened
    lock = load_lock(b.work / "runs/tiny/run.lock.json")
    got = {p["path"]: p["sha256"] for p in lock["stages"]["precompute-0"]["partitions"]}
    assert got == want  # byte-identical to the fault-free baseline
    for path in got:
        with open_partition(path) as part:
            keys = part.read_all(columns=("keys",)).keys
        assert len(keys) == len(set(keys)) == 100  # every row exactly once
    tally("workers", "worker SIGKILLed mid-task (once)", "task retried on the restarted worker; partitions "
          "byte-identical to a fault-free run, every row once")
    tally("workers", f"task hanging past compute.timeout_s={FAULTY['compute__timeout_s']} (once)",
          "worker restarted, task retried; partitions byte-identical, every row once")


def test_task_killing_its_worker_every_time_is_named(baseline, tally):
    b = baseline
    _segment0_undone(b)
    stage(b.work / "w.yaml", name="tiny", **FAULTY)
    r = cli("precompute", "w.yaml", "--segment", "0", cwd=b.work, **fault_env("kill:train-000000"),
            DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    out = r.stdout + r.stderr
    assert r.returncode == 5, out
    assert "train-000000" in out and "worker died 2 times" in out, out
    assert "precompute-0" not in load_lock(b.work / "runs/tiny/run.lock.json")["stages"]
    tally("workers", "task SIGKILLs its worker on every attempt", "exit 5: 'task for train-000000 ... its worker "
          "died 2 times' (Dask allowed-failures 1 here); stage not recorded")
