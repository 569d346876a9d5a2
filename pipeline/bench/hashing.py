"""What hashing each shard while it streams costs (``--hash-cost`` of ``bench precompute`` and
``bench train``): the same work timed with the shards' sha256 checked and without, interleaved
in one process, and the ratio of the two.

Runs check every shard against its manifest's sha256 (docs/design.md §6, "Inputs are checked
where they are used"); the benchmark's "off" side clears that sha256, which nothing but a
benchmark does.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline._fingerprint import sha256_file
from pipeline.bench.fixtures import (
    fashion_mnist_dataset,
    fresh_tasks,
    plan,
    save_vit,
    stage_doc,
    timed_run,
    vit_kwargs,
    warm_workers,
    write_stage,
)
from pipeline.precompute.cluster import open_cluster


def precompute_hash_cost(samples: int, shard_size: int, batch: int, img_size: int, keep: int | None,
                         repeats: int) -> dict[str, Any]:
    """First (from-scratch) precompute runs on one worker of one thread, with the shards hashed
    while read (as runs do) and without, interleaved ``repeats`` times; medians and their ratio."""
    teacher, student = vit_kwargs(img_size)
    keep = keep or ((img_size // 4) ** 2 + 1) // 2
    with tempfile.TemporaryDirectory(prefix="bench-hash-") as tmp:
        root = Path(tmp)
        fashion_mnist_dataset(root / "data", samples, shard_size)
        t_path = save_vit(teacher, root / "teacher.pth", seed=1)
        cfg = write_stage(root / "h.yaml", stage_doc(name="h", data_root=root / "data", store=root / "h",
                                                     teacher_weights=t_path, teacher=teacher, student=student,
                                                     keep=keep, batch_size=batch, workers=1))
        tasks = plan(cfg, t_path, save_vit(student, root / "c0.pth", seed=0))
        assert all(t.shard_sha256 for t in tasks)  # planned from the manifest: runs hash every shard
        with open_cluster(workers=1, threads_per_worker=1, device="cpu", dashboard=False, announce=None) as c:
            warm_workers(c, cfg, tasks, root / "warm", "hash-warm")
            seconds: dict[str, list[float]] = {"hash on": [], "hash off": []}
            cpu: dict[str, list[float]] = {"hash on": [], "hash off": []}  # the worker's: steadier under load
            for r in range(repeats):
                for name, times in seconds.items():
                    key = f"{name.replace(' ', '-')}-{r}"
                    run = fresh_tasks(tasks, root / key)
                    if name == "hash off":
                        run = [replace(t, shard_sha256=None) for t in run]
                    wall, cpu_s, _ = timed_run(run, c, cfg, key)
                    times.append(wall)
                    cpu[name].append(cpu_s)
        record = hash_cost_record(statistics.median(seconds["hash on"]), statistics.median(seconds["hash off"]),
                                  rows=samples, unit="labels", shards=sorted({t.shard_path for t in tasks}))
    med = statistics.median
    return dict(record, seconds=seconds, cpu_seconds=cpu, ratio_on_off_cpu=med(cpu["hash on"]) / med(cpu["hash off"]))


def train_shards_hashed(shards: Sequence) -> list:
    """``shards`` (ShardRefs) as a dataset manifest gives them: with their sha256, so the trainer
    hashes each one while it streams it."""
    return [replace(r, sha256=sha256_file(r.path)) for r in shards]


def hash_cost_record(on_s: float, off_s: float, *, rows: int, unit: str, shards: Sequence[str | Path] = (),
                     repeats: int = 5) -> dict[str, Any]:
    """The record of one measurement: median wall seconds with and without hashing, their ratio,
    and ``sha256_s``: the sha256 of the ``shards`` alone in this process (median of ``repeats``,
    files in the page cache), an upper bound of what hashing adds that load on a shared machine
    does not blur as it blurs the ratio of two whole runs."""
    record: dict[str, Any] = {"median_on_s": on_s, "median_off_s": off_s, "ratio_on_off": on_s / off_s, "unit": unit,
              "per_s_on": rows / on_s, "per_s_off": rows / off_s}
    if shards:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for p in shards:
                sha256_file(p)
            times.append(time.perf_counter() - t0)
        record.update(sha256_s=statistics.median(times), shard_bytes=sum(Path(p).stat().st_size for p in shards))
        record["sha256_fraction"] = record["sha256_s"] / off_s
    return record


def hash_cost_table(cost: dict[str, Any], what: str) -> str:
    """A small markdown table of :func:`hash_cost_record`'s record, printed after a bench's own table."""
    row = (f"| {what} | {cost['ratio_on_off']:.3f} ({cost['median_on_s']:.2f} s / {cost['median_off_s']:.2f} s; "
           f"{cost['per_s_on']:.1f} / {cost['per_s_off']:.1f} {cost['unit']}/s) | <= 1.03 |")
    if "ratio_on_off_cpu" in cost:
        row += (f"\n| {what}, the worker's CPU seconds | {cost['ratio_on_off_cpu']:.3f} "
                f"({statistics.median(cost['cpu_seconds']['hash on']):.2f} s / "
                f"{statistics.median(cost['cpu_seconds']['hash off']):.2f} s) | <= 1.03 |")
    if "sha256_s" in cost:
        row += (f"\n| sha256 of the shards alone ({cost['shard_bytes'] / 1e6:.2f} MB) / the run without | "
                f"{cost['sha256_fraction']:.4f} ({cost['sha256_s'] * 1e3:.1f} ms) | <= 0.03 |")
    return f"\n| shard hashing while streamed | with / without (wall, median) | target |\n|---|---:|---:|\n{row}"
