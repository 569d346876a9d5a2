"""``kill -9`` of ``mkd-pipeline run`` (and its Dask workers) at seeded-random moments, each
followed by a rerun, on a tiny real config (2 segments, 1 Dask worker, a resume record every 2
updates). Checks after every kill: no stage the lock already recorded is redone, no file of a
recorded stage is rewritten, no file changes content; at the end: the store and checkpoints are byte-identical to an uninterrupted
run, and no temp file is left after ``gc --yes``.

The kills are chained (the rerun after kill i is itself killed at moment i+1, the run after the
tenth kill completes; a run that ends before its moment starts a new chain after the checks): a
full uninterrupted rerun after each of 10 independent kills costs ~10 minutes on this 2-core
machine, mostly process start-up (torch imports) of the CLI and its Dask worker. Each moment: a
seeded-random stage the lock lacks, then a time uniform over that stage's baseline duration after
its first log line.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from tests.reliability.conftest import snapshot
from tests.reliability.helpers import cli, kill9, main_in_process, start, temp_files

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

KILLS = 10
SEED = 20261126
STAGES = ("teacher", "init", "precompute-0", "train-0", "precompute-1", "train-1")


def _lock(work):
    p = work / "runs/tiny/run.lock.json"
    return load_lock(p)["stages"] if p.exists() else {}


def _finals(work):
    """inode, mtime and sha256 of every file under the store and the checkpoints (temp files aside)."""
    out = {}
    for root in (work / "store", work / "runs/tiny/checkpoints"):
        for p in root.rglob("*") if root.exists() else ():
            if p.is_file() and not p.name.startswith(".tmp-"):
                st = p.stat()
                out[str(p)] = (st.st_ino, st.st_mtime_ns, sha256_file(p))
    return out


def _recorded(lock: dict) -> set[str]:
    """The files the lock names as outputs of finished stages."""
    out = set()
    for rec in lock.values():
        out |= {o["path"] for o in rec.get("outputs", {}).values()} | {p["path"] for p in rec.get("partitions", [])}
    return out


def _in_flight(log: str) -> str:
    stages = re.findall(r"^\[([a-z0-9-]+)\]", log, re.M)
    return stages[-1] if stages else "start-up"


def _check_complete(b) -> None:
    code, out = main_in_process("gc", "a.yaml", "--yes", "--grace", "0", cwd=b.work)
    assert code == 0, out
    assert temp_files(b.work / "store", b.work / "runs") == []
    assert snapshot(b.work, ("tiny",)) == b.a, "store / checkpoints differ from the uninterrupted run"


def test_kill9_at_random_moments_then_rerun(baseline, tally):
    b = baseline
    work = b.work
    b.clear()
    rng = random.Random(SEED)
    moments, completed, i = [], 0, 0
    while len(moments) < KILLS:
        lock_before, files_before = _lock(work), _finals(work)
        if all(s in lock_before for s in STAGES):  # a chain got to the end: check it, start another
            _check_complete(b)
            completed += 1
            b.clear()
            continue
        i += 1
        log = work / f"kill-{i}.log"
        # the moment: a seeded-random stage the lock does not have yet, and a seeded-random time
        # into it (uniform over the time the stage took in the uninterrupted baseline run)
        target = rng.choice([s for s in STAGES if s not in lock_before])
        delay = rng.uniform(0.0, b.spans.get(target, 1.0))
        proc = start("run", "a.yaml", cwd=work, log=log)
        t0 = time.monotonic()
        while f"[{target}]" not in log.read_text() and proc.poll() is None and time.monotonic() - t0 < 180:
            time.sleep(0.05)
        time.sleep(delay)
        finished = proc.poll() is not None
        kill9(proc)
        text = log.read_text()
        assert not finished or proc.returncode == 0, text
        if finished:  # the run ended before the moment came: not a kill; its result is checked above
            continue
        where = _in_flight(text)
        moments.append((target, round(delay, 2), where))
        lock_after, files_after = _lock(work), _finals(work)
        redone = [s for s in lock_before if lock_after.get(s) != lock_before[s]]
        assert not redone, f"kill {i}: stages {redone} were recorded again although the lock had them"
        # files of recorded stages are never touched; a file the killed stage had already written
        # (e.g. its checkpoint, before the stage was recorded) may be written again, same bytes
        touched = [p for p, v in files_before.items() if p in _recorded(lock_before) and files_after.get(p) != v]
        assert not touched, f"kill {i}: files of finished stages rewritten: {touched}"
        changed = [p for p, v in files_before.items() if p in files_after and files_after[p][2] != v[2]]
        assert not changed, f"kill {i}: files changed content: {changed}"
        tally("crash", f"kill -9 of `run` during {where}",
              "the next run redid no recorded stage, touched no file of one, changed no file's bytes")
    r = cli("run", "a.yaml", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    ran = re.search(r"done: (\d+) stage\(s\) ran \(([^)]*)\)", r.stdout)
    assert ran, r.stdout
    _check_complete(b)
    completed += 1
    resumed = sum(len(re.findall(r"resuming at epoch", (work / f"kill-{j}.log").read_text())) for j in range(1, i + 1))
    tally("crash", "completed chain of kills + reruns", f"{completed} chain(s), each: byte-identical store + checkpoints, "
          f"no temp file after `gc --yes`; {resumed} training resume(s) from a resume record", tried=completed, ok=completed)
    print("kill moments (target stage, s after its first line, stage in flight at the kill):", moments)
