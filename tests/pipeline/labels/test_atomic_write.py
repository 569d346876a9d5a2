"""A write killed or failing at any point never leaves a partial file under the final name."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.labels import list_partitions, open_partition
from pipeline.labels.paths import list_temp_files
from tests.pipeline.labels.helpers import write_small

# A fresh process that SIGKILLs itself between the fsync'd temp file and the rename.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from tests.pipeline.labels.helpers import write_small
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    write_small(sys.argv[1])
    """
)


def test_writer_killed_between_write_and_rename_leaves_no_file(tmp_path):
    store = tmp_path / "store"
    path = str(store / "t" / "shard" / "e0000.parquet")
    root = Path(__file__).resolve().parents[3]
    killed = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, timeout=120, cwd=root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not os.path.exists(path)
    assert list_partitions(str(store)) == []
    [temp] = list_temp_files(str(store))  # the fsync'd temp file, under another name
    assert os.path.basename(temp).startswith(".tmp-e0000.parquet")
    rerun = write_small(path)
    with open_partition(path, sha256=rerun.sha256) as partition:
        assert partition.num_rows == 200


def test_failed_rename_keeps_the_old_file_and_no_temp(write, tmp_path, monkeypatch):
    first = write()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(StoreError, match=f"{first.path}: cannot write the partition"):
        write(labels=[0] * first.rows)
    open_partition(first.path, sha256=first.sha256).close()
    assert list_temp_files(str(tmp_path / "store")) == []


def test_disk_full_is_a_clear_error_and_leaves_nothing(write, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreError, match="cannot write the partition .*No space left"):
        write()
    store = str(tmp_path / "store")
    assert list_partitions(store) == [] and list_temp_files(store) == []
