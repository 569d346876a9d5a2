"""Run a segment's precompute tasks on a Dask cluster and sum up what they did."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

from pipeline._fingerprint import sha256_json
from pipeline.precompute.address import resolve_address
from pipeline.precompute.cluster import (
    Cluster,
    open_cluster,
    run_tasks,
)
from pipeline.precompute.plan import classify
from pipeline.precompute.reach import check_reach, precompute_needs
from pipeline.precompute.spec import PartitionTask
from pipeline.precompute.task import run_shard

SUM_FIELDS = ("rows", "rows_computed", "rows_reused", "rows_reused_tolerance", "student_forwards",
              "teacher_forwards", "teacher_macs", "teacher_macs_saved", "spot_check_rows", "reuse_check_macs")


@contextlib.contextmanager
def cluster_for(cfg, *, scheduler: str | None = None, workers: int | Literal["auto"] | None = None,
                cluster: Cluster | None = None):
    """The cluster to use: the one given, or one opened from the config and CLI overrides
    (scheduler precedence: :mod:`pipeline.precompute.address`)."""
    if cluster is not None:
        yield cluster
        return
    # the config loader already filled compute.scheduler from $MKD_SCHEDULER
    address = resolve_address(scheduler, cfg.compute.scheduler)
    security = cfg.compute.security.security() if cfg.compute.security is not None else None
    with open_cluster(address, workers=workers or cfg.compute.workers, threads_per_worker=cfg.compute.threads_per_worker,
                      device=cfg.compute.device, security=security) as c:
        yield c


def group_by_shard(tasks: list[PartitionTask], slots: int = 1) -> list[dict[str, Any]]:
    """One Dask item per shard: its tasks of every view epoch (decoded once, see :func:`run_shard`), in plan order.

    With fewer shards than twice the cluster's task ``slots``, each (shard, view epoch) is an item
    of its own instead: a few coarse tasks of unequal shards would leave workers idle (the demo's
    5,000- and 1,000-row shards on 2 workers: 10,000 labels on one worker, 2,000 on the other),
    and decoding twice costs less than that on so small a job.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault((t.shard, t.shard_path), []).append(i)
    if len(groups) < 2 * slots:
        groups = {(tasks[i].shard, tasks[i].shard_path, i): [i] for i in range(len(tasks))}
    items = []
    for (shard, *_), rows in groups.items():
        group = [tasks[i] for i in rows]
        items.append({"id": f"{shard}-{sha256_json([t.id for t in group])[:10]}", "shard": shard,
                      "view_epoch": ",".join(str(t.view_epoch) for t in group), "tasks": group, "index": rows})
    return items


def run_precompute(tasks: list[PartitionTask], cluster: Cluster, *, cfg, key_prefix: str, progress: bool = True,
                   on_result: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Submit one future per shard (all its view epochs); returns totals and the per-task results (in task order).

    ``on_result`` is called once per partition, as its shard's task finishes.
    """
    if not tasks:
        return summarize([])
    # the workers that can take a task, each checked to see the shards, weights and store first
    slots = len(check_reach(cluster, precompute_needs(tasks)))
    items = group_by_shard(tasks, slots)

    def per_partition(result: dict) -> None:
        assert on_result is not None  # passed on only then
        for r in result["partitions"]:
            on_result(r)

    done = run_tasks(cluster, run_shard, items, resources=cluster.task_resources, key_prefix=key_prefix,
                     retries=cfg.compute.retries, timeout_s=cfg.compute.timeout_s, progress=progress,
                     on_result=per_partition if on_result is not None else None, lost_after_s=cfg.compute.lost_timeout_s)
    results: list[dict] = [{}] * len(tasks)
    for item, result in zip(items, done):
        for i, r in zip(item["index"], result["partitions"]):
            results[i] = r
    return summarize(results)


def summarize(results: list[dict]) -> dict[str, Any]:
    """Totals over task results, plus the results themselves."""
    out: dict[str, Any] = {k: sum(int(r.get(k, 0)) for r in results) for k in SUM_FIELDS}
    out["partitions"] = len(results)
    out["cached"] = sum(1 for r in results if r.get("cached"))
    checked = [r for r in results if r.get("spot_check_rows")]
    if checked:
        n = sum(r["spot_check_rows"] for r in checked)
        out["spot_check_kl"] = sum(r["spot_check_kl"] * r["spot_check_rows"] for r in checked) / n
    seconds: dict[str, float] = {}
    for r in results:
        for k, v in (r.get("seconds") or {}).items():
            seconds[k] = seconds.get(k, 0.0) + v
    out["task_seconds"] = seconds
    out["skipped_samples"] = [s for r in results for s in r.get("skipped", [])]
    fallbacks = sum(int(r.get("decode_fallbacks", 0)) for r in results)
    if fallbacks:  # compute.decode: cuda only: JPEGs nvJPEG could not decode, decoded by PIL
        out["decode_fallbacks"] = fallbacks
    quarantined = [r["quarantined"] for r in results if r.get("quarantined")]
    if quarantined:  # only then: the summary of an undamaged store stays as it was
        out["quarantined"] = quarantined
    out["results"] = results
    return out


def dry_run(tasks: list[PartitionTask]) -> list[dict[str, Any]]:
    """What ``run`` would do for each task: cached / reusable (rows) / compute, and why."""
    return [{"shard": t.shard, "view_epoch": t.view_epoch, "path": t.path, **classify(t)} for t in tasks]
