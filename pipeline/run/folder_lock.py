"""The run folder's exclusive lock (``<run_dir>/.lock``, flock): one ``run`` of a folder at a time,
and ``gc`` knows which folders have a run in progress (docs/design.md §6, "gc and live runs")."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import IO, Callable, Iterator

FOLDER_LOCK_NAME = ".lock"


@contextlib.contextmanager
def hold_run_folder(run_dir: str | Path, *, wait: bool = True,
                    on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold ``<run_dir>/.lock`` for the ``with`` block; yields whether it is held.

    ``wait=False``: yields False at once when another process holds it (a run is in progress).
    ``on_wait`` is called once before waiting for another holder. The lock goes with the
    process, so a killed run never leaves it taken.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / FOLDER_LOCK_NAME, "a") as f:
        held = _take(f, block=False)
        if not held and wait:
            if on_wait is not None:
                on_wait()
            held = _take(f, block=True)
        yield held


def _take(f: IO[str], *, block: bool) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True
