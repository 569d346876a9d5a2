"""A store on a full filesystem: a real tmpfs sized so the trained teacher fits but the first
label partition does not (skipped, with the reason, where mounting is not permitted). The run
fails with exit 4 naming the store (the workers' pre-task check cannot write its marker) or the
partition, and ENOSPC, leaves no partial partition and no temp file;
after the filesystem grows, a rerun completes with the same bytes as the baseline. And the run
folder on a full filesystem: exit 6 naming the file (issue 16)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.reliability.conftest import snapshot
from tests.reliability.helpers import cli, temp_files

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _mount(path, size: str, remount: bool = False) -> subprocess.CompletedProcess:
    opts = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)


def test_store_on_full_filesystem(baseline, tally):
    b = baseline
    b.clear()
    store = b.work / "store"
    store.mkdir()
    r = _mount(store, "80k")  # teacher (67 KB) + sidecar fit; a 10 KB partition does not
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}); needs root")
    try:
        r = cli("run", "a.yaml", cwd=b.work)
        out = r.stdout + r.stderr
        assert r.returncode == 4, out
        # the workers' pre-task check writes a marker into the store first (precompute/reach.py): ENOSPC
        # there, before any task, or at the first partition when the marker still fits
        assert "cannot be written from the client" in out or "cannot write the partition" in out, out
        assert "No space left on device" in out and str(store) in out, out
        assert not list(store.rglob("*.parquet")), "a partial partition was left under its final name"
        assert temp_files(store) == []
        tally("disk full", "store on an 80 KB tmpfs (ENOSPC at the pre-task store check or the first partition)",
              "exit 4 naming the store or partition file and ENOSPC; no partial partition, no temp file")
        assert _mount(store, "20m", remount=True).returncode == 0
        r = cli("run", "a.yaml", cwd=b.work)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "[teacher] cached" in r.stdout or "trained earlier" in r.stdout, r.stdout
        assert snapshot(b.work, ("tiny",)) == b.a
        tally("disk full", "rerun after freeing space", "completed, teacher reused, byte-identical to the baseline")
    finally:
        subprocess.run(["umount", str(store)], capture_output=True)


def _fill(folder) -> None:
    """Write a filler file until the filesystem holding ``folder`` is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_run_folder_on_full_filesystem(baseline, tally):
    """The run folder on a full tmpfs, the store elsewhere: a rerun whose training stage is stale
    (`--set train.lr=...`) fails with exit 6 naming the file it could not write and ENOSPC, no
    traceback; the run lock keeps its bytes and no temp file is left. With space again the rerun
    completes."""
    b = baseline
    b.restore("a")
    run_dir = b.work / "runs/tiny"
    shutil.rmtree(run_dir)
    run_dir.mkdir()
    r = _mount(run_dir, "4m")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}); needs root")
    try:
        shutil.copytree(b.work / ".snap-a/runs/tiny", run_dir, dirs_exist_ok=True)
        lock = (run_dir / "run.lock.json").read_bytes()
        _fill(run_dir)
        r = cli("run", "a.yaml", "--set", "train.lr=1.0e-3", cwd=b.work)
        out = r.stdout + r.stderr
        assert r.returncode == 6, out
        assert "cannot write (No space left on device)" in out and f"{run_dir}/" in out, out
        assert "Traceback" not in out, out
        assert (run_dir / "run.lock.json").read_bytes() == lock  # nothing recorded, nothing half
        assert temp_files(run_dir) == []
        tally("disk full", "run folder on a full tmpfs (ENOSPC writing a checkpoint / resume record)",
              "exit 6 naming the file and ENOSPC, no traceback; run lock unchanged, no temp file")
        (run_dir / "filler").unlink()
        r = cli("run", "a.yaml", "--set", "train.lr=1.0e-3", cwd=b.work)
        assert r.returncode == 0, r.stdout + r.stderr
        assert cli("status", "a.yaml", "--set", "train.lr=1.0e-3", cwd=b.work).returncode == 0
        tally("disk full", "rerun after freeing space in the run folder", "completed; status fresh")
    finally:
        subprocess.run(["umount", str(run_dir)], capture_output=True)
