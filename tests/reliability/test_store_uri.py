"""A label store given as a ``file://`` URI, end to end through ``pyarrow.fs``: the run writes its
partitions and its trained teacher into that folder (not into a local folder named ``file:``),
its checkpoints are byte-identical to the same config's run with a plain path, ``labels verify``
reads the store by URI, a rerun is all cached, and ``gc`` collects it like a local store."""

from __future__ import annotations

import shutil

import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from tests.reliability.helpers import cli, hashes, main_in_process, stage

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_file_uri_store_end_to_end(baseline, tally):
    b = baseline
    b.clear()
    uri = f"file://{b.work}/store-uri"
    stage(b.work / "u.yaml", name="tiny", labels__store=uri)
    try:
        r = cli("run", "u.yaml", cwd=b.work)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not (b.work / "file:").exists()
        assert list((b.work / "store-uri/teachers").glob("*.pth"))
        lock = load_lock(b.work / "runs/tiny/run.lock.json")
        parts = [p for rec in lock["stages"].values() for p in rec.get("partitions", [])]
        assert parts and all(p["path"].startswith(uri + "/teacher=") for p in parts)
        assert all(sha256_file(p["path"][len("file://"):]) == p["sha256"] for p in parts)
        ckpts = hashes(b.work / "runs/tiny/checkpoints")
        assert ckpts == {k.split("/checkpoints/")[1]: v for k, v in b.a.items() if "/checkpoints/" in k}
        code, out = main_in_process("labels", "verify", uri, "--lock", "runs/tiny/run.lock.json", cwd=b.work)
        assert code == 0, out
        r = cli("run", "u.yaml", cwd=b.work)
        assert r.returncode == 0 and "none: everything was cached" in r.stdout, r.stdout + r.stderr
        code, out = main_in_process("gc", "u.yaml", "--yes", "--grace", "0", cwd=b.work)
        assert code == 0 and f"{len(parts)} partition(s) kept" in out and "0 file(s)" in out, out
    finally:
        shutil.rmtree(b.work / "store-uri", ignore_errors=True)
    tally("store", "label store given as a file:// URI (pyarrow.fs), end to end",
          "run, verify, cached rerun and gc work; teacher and partitions in that folder; checkpoints byte-identical "
          "to the plain-path run")
