import errno
import fcntl
import os
import threading

import pytest

from pipeline._atomic import CLAIM_SUFFIX, TMP_PREFIX, atomic_path, write_atomic
from pipeline.errors import OutputError


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


# --- first writer wins on a filesystem without hard links (publish_once's claim fallback) ---


@pytest.fixture
def no_links(monkeypatch):
    """A filesystem without hard links: link(2) answers EPERM, as Linux documents."""
    calls = []

    def link(src, dst, *a, **kw):
        calls.append(dst)
        raise OSError(errno.EPERM, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", link)
    return calls


def test_exclusive_without_links_publishes_then_refuses_the_second(tmp_path, no_links):
    p = tmp_path / "f.bin"
    write_atomic(p, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(p, b"second", exclusive=True)
    assert no_links  # the link path was tried first
    assert p.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temp file, no claim left


def test_a_claim_left_by_a_killed_writer_is_taken_over(tmp_path, no_links):
    p = tmp_path / "f.bin"
    (tmp_path / f"{TMP_PREFIX}f.bin{CLAIM_SUFFIX}").write_bytes(b"")  # its lock died with it
    write_atomic(p, b"data", exclusive=True)
    assert p.read_bytes() == b"data"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_loser_waits_for_the_claim_holder_then_sees_file_exists(tmp_path, no_links):
    """A writer holding the claim publishes while another waits on it: the waiter must get
    FileExistsError (as with a link), not replace the file."""
    p = tmp_path / "f.bin"
    claim = tmp_path / f"{TMP_PREFIX}f.bin{CLAIM_SUFFIX}"
    fd = os.open(claim, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # we are the writer publishing now
    seen: list[BaseException | None] = []

    def loser():
        try:
            write_atomic(p, b"loser", exclusive=True)
            seen.append(None)
        except BaseException as e:  # noqa: BLE001  (the test inspects it)
            seen.append(e)

    t = threading.Thread(target=loser)
    t.start()
    t.join(0.5)
    assert t.is_alive() and not p.exists()  # it waits on our claim, publishing nothing
    p.write_bytes(b"winner")  # our rename
    os.unlink(claim)
    os.close(fd)
    t.join(30)
    assert not t.is_alive()
    assert len(seen) == 1 and isinstance(seen[0], FileExistsError)
    assert p.read_bytes() == b"winner"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_racing_writers_without_links_one_wins_and_readers_never_see_partial_bytes(tmp_path, no_links):
    size = 1 << 20
    rounds = 12
    stop = threading.Event()
    bad: list[str] = []
    reads = [0]

    def reader(paths):
        while not stop.is_set():
            for q in paths:
                try:
                    data = q.read_bytes()
                except FileNotFoundError:
                    continue
                reads[0] += 1
                if len(data) != size or len(set(data)) != 1:
                    bad.append(f"{q}: {len(data)} bytes, {len(set(data))} distinct values")

    paths = [tmp_path / f"p{i}.bin" for i in range(rounds)]
    r = threading.Thread(target=reader, args=(paths,))
    r.start()
    try:
        for q in paths:
            start = threading.Barrier(2)
            outcome: dict[int, str] = {}

            def write(fill: int, q=q, start=start, outcome=outcome):
                def body(f):
                    for _ in range(16):  # written in pieces, so a torn file would show
                        f.write(bytes([fill]) * (size // 16))
                    start.wait()  # both publish at once
                try:
                    write_atomic(q, body, exclusive=True)
                    outcome[fill] = "won"
                except FileExistsError:
                    outcome[fill] = "lost"

            ws = [threading.Thread(target=write, args=(fill,)) for fill in (1, 2)]
            for w in ws:
                w.start()
            for w in ws:
                w.join(60)
            assert sorted(outcome.values()) == ["lost", "won"], outcome
            winner = next(k for k, v in outcome.items() if v == "won")
            assert q.read_bytes() == bytes([winner]) * size
    finally:
        stop.set()
        r.join(30)
    assert bad == []
    assert reads[0] > 0
    assert sorted(os.listdir(tmp_path)) == sorted(q.name for q in paths)  # no temp or claim file left


def test_a_real_link_error_is_not_swallowed(tmp_path, monkeypatch):
    def link(src, dst, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(OutputError, match="No space left"):
        write_atomic(tmp_path / "f.bin", b"x", exclusive=True)
    assert os.listdir(tmp_path) == []
