"""A label store on a filesystem without hard links (``link(2)`` fails with EPERM, as on some
FUSE, SMB and object-store mounts): first-writer-wins falls back to a rename under a flocked
claim file (``pipeline/_atomic.py: publish_once``). A whole ``run`` whose workers cannot link
gives a store and checkpoints byte-identical to the baseline; a second writer of a published
partition keeps the first file, as on the link path. (Racing writers and a reader polling the
final name: ``tests/pipeline/test_atomic.py``.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipeline._fingerprint import sha256_file
from tests.reliability.conftest import snapshot
from tests.reliability.faults import fault_env
from tests.reliability.helpers import cli, temp_files

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_run_on_a_store_without_hard_links_is_byte_identical(baseline, tmp_path, tally):
    b = baseline
    b.clear()
    r = cli("run", "a.yaml", cwd=b.work, **fault_env(f"nolinks:{tmp_path}"))
    assert r.returncode == 0, r.stdout + r.stderr
    refused = list(tmp_path.glob("link-refused-*"))
    parts = list((b.work / "store").rglob("*.parquet"))
    assert parts and len(refused) >= len(parts)  # every partition went through the fallback
    assert snapshot(b.work, ("tiny",)) == b.a
    assert temp_files(b.work / "store", b.work / "runs") == []  # no temp file, no claim left
    tally("store", "store on a filesystem without hard links (link(2) -> EPERM in every worker)",
          "`run` publishes through the flocked-claim fallback; store and checkpoints byte-identical to the "
          "baseline, no temp or claim file left")


def test_second_writer_without_hard_links_keeps_the_first_file(baseline, monkeypatch, tally):
    """The race of test_concurrency's ``test_partition_published_meanwhile_is_kept``, without links."""
    from pipeline.config import load_config
    from pipeline.precompute import task as task_mod
    from pipeline.run.runner import Runner
    from pipeline.run.stages import plan_precompute, recorded_teacher

    def link(src, dst, *a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted", str(src))

    b = baseline
    b.restore("a")
    monkeypatch.chdir(b.work)
    monkeypatch.setattr(os, "link", link)
    runner = Runner(load_config("a.yaml"), progress=False)
    t = plan_precompute(runner, 0, recorded_teacher(runner), runner.checkpoint(0))[0]
    first = Path(t.path).read_bytes()
    Path(t.path).unlink()
    res = task_mod.run_partition({"task": t})  # a real partition write, published by the fallback
    assert not res.get("cached") and Path(t.path).read_bytes() == first
    before = Path(t.path).stat()
    monkeypatch.setattr(task_mod.paths, "file_exists", lambda path: False)  # the check ran before the other's rename
    res = task_mod.run_partition({"task": t})
    after = Path(t.path).stat()
    assert res["cached"] and res["sha256"] == sha256_file(t.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not replaced
    assert not [p for p in Path(t.path).parent.iterdir() if p.name.startswith(".tmp-")]
    tally("store", "two writers of one partition path without hard links (race made deterministic)",
          "the partition is rewritten byte-identical through the fallback; the second writer keeps the first "
          "file and reports its checksum")
