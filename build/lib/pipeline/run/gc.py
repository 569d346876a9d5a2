"""Garbage collection of label stores: partitions no run lock references, and temp files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline._lock import LOCK_NAME, RunLock
from pipeline.labels import paths


def collect_garbage(cfgs, *, delete: bool = False) -> dict[str, Any]:
    """List (and with ``delete`` remove) unreferenced partitions of the configs' local stores.

    A partition is kept when any given config's run lock names it. Teachers under
    ``<store>/teachers`` are kept when a lock names them. Temp files of killed writes (in the
    stores and the run folders) go too.
    """
    referenced: set[str] = set()
    stores: set[str] = set()
    run_dirs: set[str] = set()
    for cfg in cfgs:
        run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name
        lock = RunLock(run_dir / LOCK_NAME, store=cfg.labels.store)
        stores.add(cfg.labels.store)
        run_dirs.add(str(run_dir))
        for rec in lock.stages.values():
            for p in rec.get("partitions", []):
                referenced.add(os.path.abspath(p["path"]))
            for out in rec.get("outputs", {}).values():
                referenced.add(os.path.abspath(out["path"]))
    files: list[tuple[str, int]] = []
    kept = 0
    for store in sorted(stores):
        if paths.is_uri(store) or not Path(store).is_dir():
            continue
        for p in paths.list_partitions(store):
            if os.path.abspath(p) in referenced:
                kept += 1
            else:
                files.append((p, os.path.getsize(p)))
        files += [(p, os.path.getsize(p)) for p in paths.list_temp_files(store)]
    for run_dir in sorted(run_dirs):  # killed checkpoint / lock / report writes leave temp files there too
        if Path(run_dir).is_dir():
            files += [(p, os.path.getsize(p)) for p in paths.list_temp_files(run_dir)]
    if delete:
        for p, _ in files:
            Path(p).unlink(missing_ok=True)
    return {"files": files, "bytes": sum(s for _, s in files), "kept": kept}
