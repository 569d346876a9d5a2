"""What a shared local store knows about the runs using it, so ``gc`` cannot hurt them.

Under ``<store>/.mkd/``:

- ``runs/<digest>.json``: one record per run lock that ever used the store (its absolute path
  and the working directory its relative paths are relative to). ``gc`` keeps everything any
  of these locks references, not only the locks of the configs it was given.
- ``intents/<digest>.json``: written by a precompute stage *before* its tasks start, listing the
  partitions it will write; its writer holds a shared flock on it until the stage is recorded in
  the run lock. An intent whose flock nobody holds is stale (the writer died) and protects nothing.

Remote stores (``s3://``...) get neither: ``gc`` only collects local ones (a path or ``file://``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from pipeline._atomic import TMP_PREFIX, fsync_dir, write_atomic
from pipeline._fingerprint import sha256_json
from pipeline.errors import OutputError, StoreError
from pipeline.labels.paths import local_root

CLAIMS_DIR = ".mkd"


def _dir(store: str, kind: str) -> Path:
    return Path(store) / CLAIMS_DIR / kind


def register_run(store: str, lock_path: str | Path) -> None:
    """Record that the run lock ``lock_path`` uses ``store`` (idempotent; local stores only)."""
    root = local_root(store)
    if root is None:
        return
    lock = os.path.abspath(lock_path)
    path = _dir(root, "runs") / f"{sha256_json(lock)[:16]}.json"
    if not path.exists():
        try:
            write_atomic(path, json.dumps({"lock": lock, "cwd": os.getcwd()}).encode())
        except OutputError as e:
            raise StoreError(f"{path}: cannot register the run with its label store ({e.__cause__ or e})") from e


def registered_runs(store: str) -> list[tuple[Path, dict[str, Any]]]:
    """``[(record file, {"lock", "cwd"})]`` of the runs registered with ``store`` (unreadable ones skipped)."""
    out = []
    for p in sorted(_dir(local_root(store) or store, "runs").glob("[!.]*.json")):
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError):
            continue  # a record cut by a crash: the run re-registers on its next start
    return out


@contextlib.contextmanager
def announce(store: str, lock_path: str | Path, stage: str, partitions: list[str]) -> Iterator[None]:
    """Announce the partitions a precompute stage is about to write, for the ``with`` block.

    The intent file is flocked (shared) before it appears under its name, and the lock dies
    with this process, so ``gc`` can tell a live intent from one a killed run left behind.
    """
    root = local_root(store)
    if root is None or not partitions:
        yield
        return
    d = _dir(root, "intents")
    name = f"{sha256_json([os.path.abspath(lock_path), stage])[:16]}-{os.getpid()}.json"
    tmp = d / f"{TMP_PREFIX}{name}"
    doc = {"lock": os.path.abspath(lock_path), "stage": stage, "created": time.time(),
           "partitions": [local_root(p) for p in partitions]}
    f = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "w")
        fcntl.flock(f, fcntl.LOCK_SH)
        f.write(json.dumps(doc))
        f.flush()
        os.fsync(f.fileno())
        os.replace(tmp, d / name)
        fsync_dir(d)
    except OSError as e:
        if f is not None:
            f.close()
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{d / name}: cannot announce the stage's partitions in the label store ({e})") from e
    with f:
        try:
            yield
        finally:
            (d / name).unlink(missing_ok=True)


def live_intents(store: str, *, remove_stale: bool = False) -> tuple[set[str], int]:
    """(absolute paths announced by in-flight precomputes, count of stale intents found).

    ``remove_stale``: delete intent files whose writer is gone.
    """
    announced: set[str] = set()
    stale = 0
    for p in sorted(_dir(local_root(store) or store, "intents").glob("[!.]*.json")):
        try:
            f = open(p)
        except FileNotFoundError:
            continue  # its stage finished meanwhile
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer holds it: live
                try:
                    announced.update(json.loads(f.read()).get("partitions", []))
                except ValueError:
                    pass
                continue
            stale += 1
            if remove_stale:
                p.unlink(missing_ok=True)
    return announced, stale
