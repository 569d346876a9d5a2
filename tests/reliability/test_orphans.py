"""kill -9 of the client only (``run``'s own process, not its group): the embedded cluster's
workers live on as orphans, one of them still in a task. The rerun starts while the orphan is
still writing (it is released during the rerun); the rerun completes, every file its lock names
has the bytes the lock records, ``labels verify`` passes, and its partitions and checkpoint are
byte-identical to an uninterrupted run's (first writer wins on a partition path)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from tests.reliability.faults import fault_env
from tests.reliability.helpers import cli, kill9, main_in_process, stage, start, temp_files

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _partitions(lock: Path) -> list[dict]:

    return [p for rec in load_lock(lock)["stages"].values() for p in rec.get("partitions", [])]


def test_client_killed_alone_orphaned_workers_keep_writing(baseline, tmp_path, tally):
    b = baseline
    b.restore("a")
    stage(b.work / "c.yaml", name="tiny-c", masking__keep=16)
    gate = tmp_path / "gate"
    gate.mkdir()
    first = start("run", "c.yaml", "--until", "precompute-0", "--workers", "2", cwd=b.work, log=b.work / "orphan-1.log",
                  **fault_env(f"wait:train-000001:{gate}"))
    try:
        deadline = time.monotonic() + 600  # a bound on a hang, not a timing assertion
        while not any(gate.glob("waiting-*")):
            assert first.poll() is None and time.monotonic() < deadline, (b.work / "orphan-1.log").read_text()
            time.sleep(0.1)
        os.kill(first.pid, signal.SIGKILL)  # the client alone: its workers become orphans
        first.wait()
        # the rerun starts while the orphan still holds its task; it is released meanwhile
        second = start("run", "c.yaml", "--until", "precompute-0", cwd=b.work, log=b.work / "orphan-2.log")
        (gate / "release").touch()
        assert second.wait(timeout=600) == 0, (b.work / "orphan-2.log").read_text()
    finally:
        (gate / "release").touch()
        kill9(first)  # the orphans are still in its process group
    parts = _partitions(b.work / "runs/tiny-c/run.lock.json")
    assert parts and all(sha256_file(p["path"]) == p["sha256"] for p in parts)
    code, out = main_in_process("labels", "verify", "store", "--lock", "runs/tiny-c/run.lock.json", cwd=b.work)
    assert code == 0, out
    code, out = main_in_process("gc", "c.yaml", "--yes", "--grace", "0", cwd=b.work)
    assert code == 0 and temp_files(b.work / "store", b.work / "runs/tiny-c") == [], out
    for p in parts:  # still readable as the rows the lock counted
        assert pq.read_metadata(p["path"]).num_rows == p["rows"]
    got = {p["path"]: p["sha256"] for p in parts} | {"c0": sha256_file(b.work / "runs/tiny-c/checkpoints/c0.pth")}

    b.restore("a")  # the same stage, uninterrupted
    r = cli("run", "c.yaml", "--until", "precompute-0", cwd=b.work)
    assert r.returncode == 0, r.stdout + r.stderr
    clean = _partitions(b.work / "runs/tiny-c/run.lock.json")
    assert got == {p["path"]: p["sha256"] for p in clean} | {"c0": sha256_file(b.work / "runs/tiny-c/checkpoints/c0.pth")}
    tally("crash", "kill -9 of the client only, orphaned workers still writing while the rerun starts",
          "rerun completes; partitions and checkpoint byte-identical to an uninterrupted run; every lock checksum "
          "matches; verify OK; no temp file after gc")
