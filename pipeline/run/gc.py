"""Garbage collection of label stores: partitions no run lock references, and temp files.

Safe beside live runs sharing the store (docs/design.md §6, "gc and live runs"): gc holds the
run folder lock of every run it knows while it collects (runs of those folders cannot start
meanwhile; a folder whose lock is taken has a run in progress), keeps everything referenced by
the run locks of the given configs *and* of every run registered with the store
(:mod:`pipeline.run.claims`), keeps what an in-flight precompute has announced (its live intent
record) and the temp files of those writes, and never deletes a file younger than ``grace_s``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipeline._atomic import TMP_PREFIX
from pipeline._lock import LOCK_NAME, load_lock
from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.run.claims import live_intents, registered_runs
from pipeline.run.folder_lock import hold_run_folder

DEFAULT_GRACE_S = 3600.0


def collect_garbage(cfgs, *, delete: bool = False, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
    """List (and with ``delete`` remove) unreferenced partitions of the configs' local stores.

    Returns ``{"files": [(path, bytes)], "bytes", "kept", "announced", "young", "live_runs",
    "stale_intents", "not_collected"}``: ``announced`` partitions kept for in-flight precomputes,
    ``young`` files kept for being younger than ``grace_s``, ``live_runs`` the run folders with a
    run in progress, ``not_collected`` the stores whose partitions are left alone: remote URIs
    (``s3://`` ...), whose run registry and intent records this module cannot lock or list safely
    (an object store has no flock). Of those only the temp objects of killed writes go
    (``.tmp-*`` older than ``grace_s``: a write in flight holds its temp key for seconds).
    """
    stores: set[str] = set()
    locks: list[tuple[Path, str]] = []  # (run lock file, directory its relative paths are relative to)
    for cfg in cfgs:
        run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name
        stores.add(cfg.labels.store)
        locks.append((run_dir / LOCK_NAME, os.getcwd()))
    registry: list[Path] = []
    cutoff = time.time() - grace_s
    for store in sorted(stores):
        if _local_store(store):
            for record, doc in registered_runs(store):
                lock = Path(doc["lock"])
                if lock.exists():
                    locks.append((lock, doc.get("cwd", os.getcwd())))
                elif not lock.parent.exists() and _mtime(str(record)) <= cutoff:
                    registry.append(record)  # the run folder is gone: its record goes too
                # else: a run that registered and has recorded nothing yet
    run_dirs = sorted({os.path.abspath(lock.parent) for lock, _ in locks})
    with contextlib.ExitStack() as stack:
        # runs of these folders cannot start while gc decides; a folder already held is a live run
        live = [d for d in run_dirs if Path(d).is_dir() and not stack.enter_context(hold_run_folder(d, wait=False))]
        report = _collect(stores, locks, run_dirs, set(live), registry, delete=delete, grace_s=grace_s)
    report["not_collected"] = sorted(s for s in stores if paths.local_root(s) is None)
    for store in report["not_collected"]:
        files, young = _remote_temp_files(store, cutoff, delete=delete)
        report["files"] += files
        report["bytes"] += sum(size for _, size in files)
        report["young"] += young
    return report


def _remote_temp_files(store: str, cutoff: float, *, delete: bool) -> tuple[list[tuple[str, int]], int]:
    """The temp objects killed writes left in a remote store (older than ``cutoff``), removed
    with ``delete``; and the count of younger ones (writes in flight)."""
    fs, fs_root = paths.resolve(store)
    selector = pafs.FileSelector(fs_root, recursive=True, allow_not_found=True)
    found: list[tuple[str, int]] = []
    young = 0
    try:
        infos = fs.get_file_info(selector)
    except OSError as e:
        raise StoreError(f"{store}: cannot list the store ({e})") from e
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.startswith(TMP_PREFIX):
            continue
        if info.mtime is not None and info.mtime.timestamp() > cutoff:
            young += 1
            continue
        found.append((paths.join(store, *info.path[len(fs_root):].lstrip("/").split("/")), info.size))
        if delete:
            fs.delete_file(info.path)
    return found, young


def _collect(stores, locks, run_dirs, live, registry, *, delete: bool, grace_s: float) -> dict[str, Any]:
    referenced: set[str] = set()
    for lock_path, cwd in locks:
        for p in _lock_paths(lock_path):
            referenced.add(paths.local_root(p) or p if paths.is_uri(p) else os.path.normpath(os.path.join(cwd, p)))
    cutoff = time.time() - grace_s
    files: list[tuple[str, int]] = []
    kept = announced_kept = young = stale_intents = 0
    for store in sorted(stores):
        if not _local_store(store):
            continue
        announced, stale = live_intents(store, remove_stale=delete)
        store = paths.local_root(store)  # a file:// store is listed as the local folder it is
        assert store is not None  # a local store (above)
        stale_intents += stale
        for p in paths.list_partitions(store):
            ap = os.path.abspath(p)
            if ap in referenced:
                kept += 1
            elif ap in announced:
                announced_kept += 1
            elif _mtime(p) > cutoff:
                young += 1
            else:
                files.append((p, os.path.getsize(p)))
        for p in paths.list_temp_files(store):
            if _final_name(p) in announced or _mtime(p) > cutoff:
                young += 1  # a write in flight
            else:
                files.append((p, os.path.getsize(p)))
    for run_dir in run_dirs:  # killed checkpoint / lock / report writes leave temp files there too
        if Path(run_dir).is_dir() and run_dir not in live:
            for p in paths.list_temp_files(run_dir):
                if _mtime(p) > cutoff:
                    young += 1
                else:
                    files.append((p, os.path.getsize(p)))
    if delete:
        for p, _ in files:
            Path(p).unlink(missing_ok=True)
        for record in registry:
            record.unlink(missing_ok=True)
    return {"files": files, "bytes": sum(s for _, s in files), "kept": kept, "announced": announced_kept,
            "young": young, "live_runs": sorted(live), "stale_intents": stale_intents}


def _lock_paths(lock_path: Path) -> list[str]:
    """Every partition and output path a run lock references (none when it does not exist)."""
    if not lock_path.exists():
        return []
    stages = load_lock(lock_path)["stages"]  # unreadable: StoreError (exit 4), it may reference anything
    out = []
    for rec in stages.values():
        out += [p["path"] for p in rec.get("partitions", [])]
        out += [o["path"] for o in rec.get("outputs", {}).values()]
    return out


def _local_store(store: str) -> bool:
    root = paths.local_root(store)
    return root is not None and Path(root).is_dir()


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return float("inf")  # gone meanwhile (renamed into place): treat as young, nothing to do


def _final_name(tmp: str) -> str:
    """The path a temp file of :mod:`pipeline._atomic` will be renamed to (``.tmp-NAME.RANDOM``)."""
    head, base = os.path.split(os.path.abspath(tmp))
    return os.path.join(head, base[len(TMP_PREFIX):].rsplit(".", 1)[0])

