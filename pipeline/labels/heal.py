"""The store is a cache: a damaged partition is moved aside (quarantined) and recomputed, never reused.

A partition counts as reusable only once it is checked: against the sha256 a run lock recorded
for it (:func:`damaged_recorded`, a hash of the whole file) or, where no record is at hand, by
decoding every page against its page checksum (:func:`partition_problem`). One that fails is
moved into the store's quarantine folder (:data:`QUARANTINE`), named ``<when>-<its path under
the store, '/' as '~'>.damaged`` so that nothing lists it as a partition again; its path is then
free and the next precompute of its task writes it anew, with the same bytes (a pure function of
its inputs). Quarantined files are kept for a look and deleted by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.labels.reader import open_partition

QUARANTINE = "quarantine"
DAMAGED_SUFFIX = ".damaged"


def partition_problem(path: str, *, expect: Mapping[str, Any] | None = None, sha256: str | None = None) -> str | None:
    """Why the partition at ``path`` cannot be reused (footer, ``expect``ed metadata, ``sha256``
    when given, every page's checksum), or None when it is whole. Costs a full read of the file."""
    try:
        with open_partition(path, sha256=sha256, expect=expect) as part:
            for _ in part.iter_batches(65536):  # decodes every page of every column: checks every CRC
                pass
    except StoreError as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def quarantine(store: str, path: str) -> str:
    """Move the partition at ``path`` into ``store``'s quarantine folder; returns where it went.

    Raises:
        StoreError: it cannot be moved (naming both paths).
    """
    root = store.rstrip("/") if paths.is_uri(store) else os.path.abspath(store)
    rel = path[len(root):].lstrip("/") if path.startswith(root) else os.path.basename(path)
    dest = paths.join(root, QUARANTINE, f"{time.strftime('%Y%m%dT%H%M%S')}-{rel.replace('/', '~')}{DAMAGED_SUFFIX}")
    fs, src = paths.resolve(path)
    _, dst = paths.resolve(dest)
    try:
        fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        fs.move(src, dst)
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: damaged, and cannot be moved to {dest} ({e}); delete it and rerun") from e
    return dest


def damaged_recorded(partitions: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(path, why)`` of each recorded partition whose file exists but no longer has its recorded
    sha256 (``partitions``: a run lock's records, paths resolved). Hashes every file whole."""
    out = []
    for p in partitions:
        if paths.file_exists(p["path"]) and (got := paths.file_sha256(p["path"])) != p["sha256"]:
            out.append((p["path"], f"sha256 is {got}, the run lock records {p['sha256']}"))
    return out


def quarantine_all(store: str, damaged: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Quarantine each ``(path, why)``; returns ``[{"path", "reason", "moved_to"}]``."""
    return [{"path": path, "reason": why, "moved_to": quarantine(store, path)} for path, why in damaged]
