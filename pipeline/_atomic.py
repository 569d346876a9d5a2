"""Atomic local file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader never sees a partial file under a final name, and a crash at any moment leaves either
the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from pipeline.errors import OutputError

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit fsync it and rename it into place.

    ``exclusive``: publish only if ``path`` does not exist yet (a hard link, atomic), else raise
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
            os.link(tmp_path, path)
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


def _cannot_write(path: Path, e: OSError) -> OutputError:
    why = e.strerror or str(e)
    return OutputError(f"{path}: cannot write ({why}); the previous version of the file, if any, is unchanged "
                       f"and nothing was recorded half. Free space (or fix permissions) and run again")


def write_atomic(path: str | Path, writer: Callable[[IO[bytes]], None] | bytes, *, exclusive: bool = False) -> None:
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
