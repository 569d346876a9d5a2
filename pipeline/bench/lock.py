"""``mkd-pipeline bench lock``: the run lock at ImageNet scale (1,281 shards x 300 view epochs).

Builds a synthetic run lock segment by segment as a run records it (teacher, init, then per
segment a precompute stage naming its shards x view epochs partitions and a train stage) and
times what grows with it: committing one segment's records, ``status``'s share (open the lock,
check every stage without statting partitions, read every precompute stage's records, as
``status`` does to fingerprint the labels a train stage reads), reading the whole lock (``gc``,
``labels verify``), and the bytes on disk. Fingerprints are random hex like real ones, the
teacher's shared by all partitions, the student's by a segment's, a shard's by its view epochs.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._lock import LOCK_NAME, RunLock, load_lock
from pipeline.bench.timing import machine_line

STORE = "/data/mkd/store"  # partition paths are absolute, as runs record them


def synthetic_partitions(rng: np.random.Generator, teacher: str, student: str, shards: int,
                         epochs: range) -> list[dict[str, Any]]:
    """One precompute segment's partition records: ``shards`` x ``epochs``, shaped as a run's."""
    def hexes(n: int) -> list[str]:
        return [rng.bytes(32).hex() for _ in range(n)]

    out = []
    for s in range(shards):
        shard_fp = f"{s:064x}"  # one per shard, shared by its view epochs
        for e in epochs:
            view, mask, label, sha, name = hexes(5)
            out.append({"path": f"{STORE}/teacher={teacher[:12]}/shard=train-{s:06d}/epoch={e}/v{view[:8]}-{name[:16]}.parquet",
                        "inputs": {"label": label, "mask": mask, "shard": shard_fp, "student": student,
                                   "teacher": teacher, "view": view},
                        "rows": 1000, "sha256": sha})
    return out


def build_lock(path: Path, *, shards: int, view_epochs: int, segments: int, seed: int = 0) -> list[tuple[float, float]]:
    """Record a whole synthetic run into the lock at ``path``; returns each segment's commit
    (wall, CPU) seconds: the precompute stage's :meth:`RunLock.record`, its records file and the
    lock file, fsync'd."""
    rng = np.random.default_rng(seed)
    teacher = rng.bytes(32).hex()
    lock = RunLock(path, store=STORE)
    lock.record("teacher", {"recipe": rng.bytes(32).hex()}, outputs={"weights": {"path": "/w/t.pth", "sha256": teacher}},
                info={"fingerprint": teacher})
    lock.record("init", {"init": "seed:0"}, outputs={"checkpoint": {"path": "/r/c0.pth", "sha256": rng.bytes(32).hex()}})
    bounds = np.linspace(0, view_epochs, segments + 1).astype(int)
    commits = []
    for i in range(segments):
        student = rng.bytes(32).hex()
        parts = synthetic_partitions(rng, teacher, student, shards, range(bounds[i], bounds[i + 1]))
        inputs = {"tasks": rng.bytes(32).hex(), "render": rng.bytes(32).hex(), "teacher": teacher, "student": student,
                  "policy": "student", "keep": 98, "tolerance": 0}
        t0, c0 = time.perf_counter(), time.process_time()
        lock.record(f"precompute-{i}", inputs, partitions=parts,
                    info={"rows": 1000 * len(parts), "partitions": len(parts), "cached": 0, "seconds": 1.0})
        commits.append((time.perf_counter() - t0, time.process_time() - c0))
        lock.record(f"train-{i}", {"start": student, "labels": rng.bytes(32).hex()},
                    outputs={"checkpoint": {"path": f"/r/c{i + 1}.pth", "sha256": rng.bytes(32).hex()}},
                    info={"epochs": [{"epoch": int(bounds[i]), "val_top1": 0.5}]})
    return commits


def status_seconds(path: Path) -> tuple[float, float, int]:
    """``status``'s work on the lock: open it, check every stage against its recorded inputs (no
    stat per partition), and read each precompute stage's records' path and sha256 (what the
    labels fingerprint of a train stage is made of). Returns (wall s, CPU s, records read)."""
    t0, c0 = time.perf_counter(), time.process_time()
    lock = RunLock(path)
    records = 0
    for name, rec in lock.stages.items():
        lock.check(name, rec["inputs"], deep=False)  # stale for want of the synthetic checkpoints: not timed apart
        if name.startswith("precompute-"):
            records += len({(p["path"], p["sha256"]) for p in rec["partitions"]})
    return time.perf_counter() - t0, time.process_time() - c0, records


def disk_bytes(path: Path) -> int:
    """The lock file plus its records files."""
    folder = path.with_name(path.name.removesuffix(".json") + ".d")
    return path.stat().st_size + sum(f.stat().st_size for f in folder.iterdir()) if folder.is_dir() else path.stat().st_size


def bench_lock_run(shards: int, view_epochs: int, segments: int, repeats: int, one_file: bool) -> dict[str, Any]:
    """Build the lock in a temporary folder and time it; the result of ``bench lock --json``."""
    with tempfile.TemporaryDirectory(prefix="bench-lock-") as tmp:
        path = Path(tmp) / LOCK_NAME
        t0 = time.perf_counter()
        commits = build_lock(path, shards=shards, view_epochs=view_epochs, segments=segments)
        build_s = time.perf_counter() - t0
        status = [status_seconds(path) for _ in range(repeats)]
        t0 = time.perf_counter()
        whole = load_lock(path)
        load_s = time.perf_counter() - t0
        records = sum(len(r.get("partitions", [])) for r in whole["stages"].values())
        out = {"shards": shards, "view_epochs": view_epochs, "segments": segments, "partition_records": records,
               "status_s": statistics.median(s for s, _, _ in status), "status_cpu_s": statistics.median(c for _, c, _ in status),
               "status_records_read": status[0][2],
               "commit_segment_s": {"median": statistics.median(w for w, _ in commits), "max": max(w for w, _ in commits),
                                    "cpu_median": statistics.median(c for _, c in commits)},
               "bytes_on_disk": disk_bytes(path), "lock_file_bytes": path.stat().st_size,
               "load_whole_lock_s": load_s, "build_s": build_s, "repeats": repeats, "machine": machine_line(),
               "cpus": os.cpu_count()}
        if one_file:  # what lock_version 1 rewrote at every stage: the whole lock as one JSON file
            t0 = time.perf_counter()
            one = (json.dumps(whole, indent=1, sort_keys=True) + "\n").encode()
            (Path(tmp) / "v1.json").write_bytes(one)
            out["one_file"] = {"bytes": len(one), "rewrite_s": time.perf_counter() - t0}
    return out


def lock_table(r: dict[str, Any]) -> str:
    """The bench's result as the lines ``mkd-pipeline bench lock`` prints."""
    c = r["commit_segment_s"]
    lines = [f"{r['partition_records']:,} partition records ({r['shards']} shards x {r['view_epochs']} view epochs, "
             f"{r['segments']} segments); machine: {r['machine']}",
             f"status: {r['status_s']:.2f} s (median of {r['repeats']}; CPU {r['status_cpu_s']:.2f} s); commit one segment: "
             f"{c['median']:.3f} s median (CPU {c['cpu_median']:.3f} s), {c['max']:.3f} s max",
             f"on disk: {r['bytes_on_disk'] / 1e6:.1f} MB (lock file {r['lock_file_bytes'] / 1e3:.0f} kB); "
             f"whole lock read: {r['load_whole_lock_s']:.2f} s"]
    if "one_file" in r:
        lines.append(f"as one JSON file (lock_version 1): {r['one_file']['bytes'] / 1e6:.0f} MB, "
                     f"{r['one_file']['rewrite_s']:.1f} s to write once")
    return "\n".join(lines)
