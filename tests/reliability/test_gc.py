"""``gc --yes`` after a kill: temp files of interrupted atomic writes are removed from the run
folder too (checkpoints, resume records, run lock, report plots), not only from the store.
Found by the kill -9 chain (a kill while the report's plots were written left one behind).
And gc beside live and finished runs of other configs sharing the store (issue 16)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from tests.pipeline.config.cases import BASE, write_doc
from tests.reliability.faults import fault_env
from tests.reliability.helpers import main_in_process, stage, start

pytestmark = pytest.mark.reliability


def test_gc_removes_temp_files_in_run_folder_and_store(ws, tally):
    cfg = write_doc(ws, BASE)
    leftovers = [ws / "runs/t/.tmp-student_accuracy.png.k2j4", ws / "runs/t/checkpoints/.tmp-c1.pth.x8",
                 ws / "runs/t/train/.tmp-resume.json.q1", ws / "store/ab12/train-000000/.tmp-e0000-v1.parquet.z"]
    keep = [ws / "runs/t/checkpoints/c0.pth", ws / "runs/t/train/resume.json"]
    for p in leftovers + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    code, out = main_in_process("gc", str(cfg), "--grace", "0", cwd=ws)
    assert code == 0 and all(str(p.relative_to(ws)) in out for p in leftovers), out  # dry run lists them
    assert all(p.exists() for p in leftovers)
    code, out = main_in_process("gc", str(cfg), "--yes", "--grace", "0", cwd=ws)
    assert code == 0, out
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
    tally("crash", "temp files left by kills in the run folder", "`gc --yes` removes them (store and run folder)")


def _orphan(work: Path) -> Path:
    """An unreferenced partition an hour old: what gc is for."""
    p = work / "store/teacher=000000000000/shard=train-000000/epoch=0/v00000000-0000000000000000.parquet"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"PAR1 left over")
    past = time.time() - 3600
    os.utime(p, (past, past))
    return p


def _partitions(lock: Path) -> list[dict]:
    stages = load_lock(lock)["stages"]
    return [p for rec in stages.values() for p in rec.get("partitions", [])]


@pytest.mark.slow
def test_gc_during_another_configs_precompute_keeps_its_partitions_and_temp_files(baseline, tmp_path, tally):
    """`gc a.yaml --yes --grace 0` while config C (same store, keep 16) is mid-precompute: one of
    C's tasks is held after reading its shard, another has already published its partition,
    which C's lock does not name yet. gc keeps it (announced), C finishes, its lock is true."""
    b = baseline
    b.restore("a")
    stage(b.work / "c.yaml", name="tiny-c", masking__keep=16)
    orphan = _orphan(b.work)
    before = {p for p in (b.work / "store").rglob("*.parquet")}
    gate = tmp_path / "gate"
    gate.mkdir()
    log = b.work / "gc-live.log"
    proc = start("run", "c.yaml", "--until", "precompute-0", "--workers", "2", cwd=b.work, log=log,
                 **fault_env(f"wait:train-000001:{gate}"))
    try:
        deadline = time.monotonic() + 600  # a bound on a hang, not a timing assertion
        fresh: set[Path] = set()
        while not (fresh and any(gate.glob("waiting-*"))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
            fresh = {p for p in (b.work / "store").rglob("*.parquet")} - before - {orphan}
        code, out = main_in_process("gc", "a.yaml", "--yes", "--grace", "0", cwd=b.work)
        assert code == 0, out
        assert f"run in progress in {b.work / 'runs/tiny-c'}" in out, out
        assert int(re.search(r"; (\d+) announced", out).group(1)) >= len(fresh), out
        assert all(p.exists() for p in fresh) and not orphan.exists(), out
    finally:
        (gate / "release").touch()
        proc.wait(timeout=600)
    assert proc.returncode == 0, log.read_text()
    parts = _partitions(b.work / "runs/tiny-c/run.lock.json")
    assert parts and all(sha256_file(p["path"]) == p["sha256"] for p in parts)
    assert {str(p) for p in fresh} <= {p["path"] for p in parts}
    code, out = main_in_process("labels", "verify", "store", "--lock", "runs/tiny/run.lock.json",
                                "--lock", "runs/tiny-c/run.lock.json", cwd=b.work)
    assert code == 0, out
    tally("concurrency", "`gc --yes` of one config during another config's precompute (same store)",
          "the live run's published-but-unrecorded partitions and temp files are kept (intent record, run folder "
          "lock held); it finishes, its lock verifies; only the stale orphan goes")


@pytest.mark.slow
def test_gc_of_one_config_beside_another_configs_finished_run(baseline, tally):
    b = baseline
    b.restore("ab")
    orphan = _orphan(b.work)
    code, out = main_in_process("gc", "a.yaml", "--yes", "--grace", "0", cwd=b.work)
    assert code == 0, out
    assert not orphan.exists()
    parts = _partitions(b.work / "runs/tiny-b/run.lock.json")
    assert parts and all(Path(p["path"]).exists() for p in parts), out
    code, out = main_in_process("status", "b.yaml", cwd=b.work)
    assert code == 0, out  # nothing of B went stale
    tally("concurrency", "`gc --yes` naming one config of a store another finished run shares",
          "the other run's partitions are kept (it is registered with the store); its status stays fresh")
