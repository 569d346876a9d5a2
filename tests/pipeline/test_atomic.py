import os

import pytest

from pipeline._atomic import atomic_path, write_atomic


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    write_atomic(p, b"one")
    write_atomic(p, lambda f: f.write(b"two"))
    assert p.read_bytes() == b"two"
    assert os.listdir(p.parent) == ["f.bin"]


def test_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.bin"
    write_atomic(p, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash between write and rename")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
