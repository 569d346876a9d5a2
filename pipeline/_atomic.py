"""Atomic local file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader never sees a partial file under a final name, and a crash at any moment leaves either
the old file or the new one. An exclusive write (first writer wins) publishes with a hard link,
or on a filesystem without hard links under a flocked claim file (:func:`publish_once`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from pipeline.errors import OutputError

TMP_PREFIX = ".tmp-"
CLAIM_SUFFIX = ".claim"  # .tmp-NAME.claim: the lock file of publish_once without hard links
# what link(2) answers on a filesystem without hard links: EPERM (Linux's documented answer,
# e.g. vfat, some FUSE mounts), ENOTSUP/EOPNOTSUPP/ENOSYS (SMB, object-store mounts), EMLINK
# (link count full: no second name for this inode either way)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK})


@contextlib.contextmanager
def atomic_path(path: str | Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit fsync it and rename it into place.

    ``exclusive``: publish only if ``path`` does not exist yet (:func:`publish_once`), else raise
    :class:`FileExistsError` and leave the existing file alone: the first of concurrent writers wins.

    Raises:
        OutputError: (exit 6) the file cannot be written (disk full, read-only, permissions),
            naming it; nothing is left under ``path`` but what was there before.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        if exclusive:
            publish_once(tmp_path, path)
        else:
            os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except FileExistsError:
        raise
    except OSError as e:
        raise _cannot_write(path, e) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def publish_once(tmp: Path, path: Path) -> None:
    """Give the finished file ``tmp`` the name ``path`` unless ``path`` exists (then raise
    :class:`FileExistsError`, ``path`` untouched): a hard link, atomic, where the filesystem has them.

    Without hard links: an exclusive ``flock`` on a claim file beside ``path``
    (``.tmp-NAME.claim``), then, holding it, an existence check and a rename of ``tmp``. Readers
    still only ever see a complete file under ``path`` (the rename of a finished, fsync'd file),
    and a writer that loses the race waits for the winner's rename and gets the same
    FileExistsError as with a link. Trade-offs: a file create, a lock and an unlink more per
    publish; exclusion holds only among writers whose ``flock`` the filesystem honours (local
    filesystems, NFSv4; a mount that only emulates locks per host lets two hosts both publish,
    the last rename then wins and the loser's run lock names bytes no longer there, which
    ``labels verify`` reports). ``renameat2(RENAME_NOREPLACE)`` would need no claim, but the
    mounts without hard links (SMB, many FUSE) mostly lack it too.
    A writer killed while holding the claim leaves the claim file (its lock dies with it): the
    next writer takes it over, and ``gc`` removes it as a temp file of a killed write.
    """
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
    claim = path.with_name(f"{TMP_PREFIX}{path.name}{CLAIM_SUFFIX}")
    while True:
        fd = os.open(claim, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another writer publishes this path
            except OSError as e:
                raise OutputError(f"{path}: the filesystem has neither hard links nor file locks ({e.strerror}); "
                                  f"the store cannot make concurrent writers of one partition agree. Put "
                                  f"labels.store on a local filesystem, NFSv4 or an object store URI") from e
            # the claim we waited on may have been removed by the writer before us: lock the current one
            try:
                current = os.stat(claim)
            except FileNotFoundError:
                continue
            if not os.path.samestat(os.fstat(fd), current):
                continue
            try:
                if os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, "already published", str(path))
                os.replace(tmp, path)
            finally:
                os.unlink(claim)  # before the lock is released, so nobody locks a removed claim
            return
        finally:
            os.close(fd)


def _cannot_write(path: Path, e: OSError) -> OutputError:
    why = e.strerror or str(e)
    return OutputError(f"{path}: cannot write ({why}); the previous version of the file, if any, is unchanged "
                       f"and nothing was recorded half. Free space (or fix permissions) and run again")


def write_atomic(path: str | Path, writer: Callable[[IO[bytes]], object] | bytes, *, exclusive: bool = False) -> None:
    """Write ``path`` atomically from bytes or a ``writer(file)`` callback (``exclusive``: see :func:`atomic_path`)."""
    with atomic_path(path, exclusive=exclusive) as tmp, open(tmp, "wb") as f:
        if isinstance(writer, (bytes, bytearray)):
            f.write(writer)
        else:
            writer(f)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename in it survives a power loss (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
