"""Replace a dataset folder as a whole: build the new one beside it, swap it in at the end.

An import that is interrupted, fails or races another import never leaves a folder whose
manifest describes other shards than the ones in it: readers see the old dataset or the new
one. The swap is one ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, with a
moment where the folder is missing (a reader then fails naming it, it never reads a mix).
A build folder left by an import killed mid-way is removed by the next import of that folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from pipeline._atomic import fsync_dir

BUILD_PREFIX = ".import-"  # build folders are named .<folder>.import-XXXX beside the folder
OLD_PREFIX = ".old-"  # the old folder, between the two renames of a swap without renameat2
log = logging.getLogger(__name__)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextlib.contextmanager
def build_beside(out: str | Path, *, carry: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` to build the new dataset in; on a clean exit swap it
    in as ``out`` (the old folder is removed), on an error remove it and leave ``out`` alone.

    ``carry(name)``: files of the current ``out`` (top level) to bring into the build folder
    first (its folders and links always come along), as hard links where possible (e.g. the shards of the splits an import keeps; files
    rewritten later are replaced by rename, so the old folder's copies stay as they were).
    Concurrent imports of one folder wait for each other (a flock beside it). Build folders an
    interrupted import left beside ``out`` are removed first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # imports of one folder take turns: each starts from what the previous one swapped in
    with open(out.parent / f".{out.name}.import.lock", "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        remove_stale_builds(out)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}{BUILD_PREFIX}", dir=out.parent))
        try:
            if out.is_dir():
                for src in sorted(out.iterdir()):
                    if src.is_symlink():
                        os.symlink(os.readlink(src), work / src.name)
                    elif src.is_dir():  # never dataset files: kept as they are
                        shutil.copytree(src, work / src.name, symlinks=True, copy_function=_link_or_copy)
                    elif carry(src.name):
                        _link_or_copy(src, work / src.name)
            yield work
            swap_in(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # after a swap: the old dataset


def remove_stale_builds(out: Path) -> list[Path]:
    """Remove the build (and half-swapped old) folders of ``out`` that killed imports left; returns them.

    Call it holding the import turn of ``out``: build folders are only made under it, so every
    one found then belongs to an import that is gone, whatever its age or process (no grace
    period or pid check needed, and none would be right across hosts sharing the folder). An
    import killed between the two renames of a swap without ``renameat2`` left ``out`` missing
    and the old dataset in its ``.old-`` folder: that dataset is put back first.
    """
    # exactly `.NAME.import-XXXX` / `.NAME.old-XXXX` (mkdtemp suffixes have no dots): a prefix
    # match would also take a live build of a sibling dataset named `NAME.import-...`
    ours = re.compile(rf"\.{re.escape(out.name)}({re.escape(BUILD_PREFIX)}|{re.escape(OLD_PREFIX)})[^.]+")
    stale = sorted(p for p in out.parent.iterdir() if p.is_dir() and not p.is_symlink() and ours.fullmatch(p.name))
    for p in stale:
        if p.name.startswith(f".{out.name}{OLD_PREFIX}") and not out.exists() and (p / out.name).is_dir():
            os.rename(p / out.name, out)
            log.warning("%s: put back from %s, where an interrupted import left it", out, p.name)
    for p in stale:
        log.warning("%s: removing %s, left by an interrupted import", out, p.name)
        shutil.rmtree(p, ignore_errors=True)
    return stale


def swap_in(new: Path, out: Path) -> None:
    """Make ``new`` the folder ``out``; what was ``out`` ends up at ``new`` (or is removed)."""
    if not out.exists():
        os.rename(new, out)
    elif not _exchange(new, out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD_PREFIX}", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(new, out)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)
