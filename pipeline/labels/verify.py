"""Check a whole label store: every partition readable, its schema, rows and sha256 (run lock)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pipeline._lock import load_lock
from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.labels.reader import open_partition

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


def lock_partitions(lock_path: str | Path) -> list[LockEntry]:
    """The partitions a run lock names, with their paths resolved.

    Raises:
        StoreError: the lock is unreadable or does not fit its schema (naming the field).
    """
    lock_path = str(lock_path)
    lock = load_lock(lock_path)
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


@dataclass
class VerifyReport:
    """What :func:`verify_store` found.

    Attributes:
        checked: every partition file looked at.
        problems: ``(path, reason)`` per bad or missing file.
        locks: the run locks used.
        temp_files: leftovers of killed writes (harmless, safe to delete).
    """

    checked: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)


def verify_store(store: str, locks: Sequence[str] = ()) -> VerifyReport:
    """Open and fully decode every partition under ``store``; check rows and sha256 against locks.

    Args:
        store: store root (local path or ``pyarrow.fs`` URI).
        locks: run lock files; ``store/*.lock.json`` are added. Partitions no lock names are
            checked for readability, schema and row count only.

    Raises:
        StoreError: ``store`` is not a directory, or a lock is unreadable.
    """
    report = VerifyReport(checked=paths.list_partitions(store), locks=sorted(set(locks) | set(find_locks(store))))
    report.temp_files = paths.list_temp_files(store)
    expected: dict[str, LockEntry] = {}
    entry: LockEntry | None
    _, fs_root = paths.resolve(store)
    for lock in report.locks:
        for entry in lock_partitions(lock):
            key = paths.resolve(entry.path)[1]
            if key.startswith(fs_root.rstrip("/") + "/"):
                expected[key] = entry
    for path in report.checked:
        entry = expected.pop(paths.resolve(path)[1], None)
        try:
            # the fingerprints too: a file swapped in together with its checksum is still refused
            expect = {"fingerprints": entry.fingerprints} if entry and entry.fingerprints else None
            with open_partition(path, sha256=entry.sha256 if entry else None, expect=expect) as partition:
                if entry and partition.num_rows != entry.rows:
                    raise StoreError(f"{path}: {partition.num_rows} rows, the run lock {entry.lock} records {entry.rows}")
                for _ in partition.iter_batches(65536):  # decodes every page: checks every CRC
                    pass
        except StoreError as e:
            report.problems.append((path, str(e).removeprefix(f"{path}: ")))
    for entry in expected.values():
        report.problems.append((entry.path, f"missing: run lock {entry.lock} (stage {entry.stage!r}) names it"))
    return report
