"""The run lock, as far as the label store needs it: which partition should have which bytes.

The runner writes the lock (format: ``manifests/run-lock.schema.json``); this module only reads
the ``partitions`` of each stage so ``labels verify`` can check rows and sha256 against it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.labels.schema import json_problem

LOCK_GLOB = "*.lock.json"


@dataclass(frozen=True)
class LockEntry:
    """One partition a lock names."""

    lock: str
    stage: str
    path: str
    rows: int
    sha256: str
    fingerprints: dict | None = None  # the task's input fingerprints, as the lock records them


def read_lock(lock_path: str | Path) -> list[LockEntry]:
    """The partitions a run lock names, with their paths resolved.

    Raises:
        StoreError: the lock is unreadable or does not fit its schema (naming the field).
    """
    lock_path = str(lock_path)
    try:
        lock = json.loads(Path(lock_path).read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{lock_path}: cannot read the run lock ({e})") from e
    problem = json_problem("run-lock", lock)
    if problem:
        raise StoreError(f"{lock_path}: run lock field {problem}")
    base = lock.get("store") or os.path.dirname(os.path.abspath(lock_path))
    return [
        LockEntry(
            lock=lock_path,
            stage=stage,
            path=p["path"] if paths.is_uri(p["path"]) or os.path.isabs(p["path"]) else paths.join(base, p["path"]),
            rows=p["rows"],
            sha256=p["sha256"],
            fingerprints=p.get("inputs"),
        )
        for stage, body in sorted(lock["stages"].items())
        for p in body.get("partitions", [])
    ]


def find_locks(store: str) -> list[str]:
    """The run locks kept in a local store's root (``*.lock.json``)."""
    if paths.is_uri(store):
        return []
    return sorted(str(p) for p in Path(store).glob(LOCK_GLOB))
