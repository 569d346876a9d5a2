"""Plan a segment's precompute: one :class:`PartitionTask` per (shard, view epoch), and say
for each whether it is cached, partly reusable, or to compute (``--dry-run``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from maskedkd import needs_saliency, resolve_keep, view_spec_fingerprint
from maskedkd.views import ViewSpec
from pipeline.data.manifest import DatasetManifest
from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.labels.contract import ShardRef, reused_mask, segment_partitions, shard_refs, stored_mask
from pipeline.labels.order import epoch_order
from pipeline.labels.reader import open_partition
from pipeline.precompute.spec import (
    ModelSpec,
    PartitionTask,
    reuse_expect,
    task_fingerprints,
)


def plan_segment(cfg, segment: int, *, manifest: DatasetManifest, teacher: ModelSpec, student: ModelSpec | None,
                 device: str, num_classes: int, keep: int | None | str = "config",
                 policy: str | None = None) -> list[PartitionTask]:
    """The tasks that produce segment ``segment``'s labels, with fingerprints and paths filled in.

    Args:
        student: the checkpoint whose saliency picks the masks (ignored by policies that need none,
            and when all patches are kept).
        keep: patches kept (``None``: all); ``"config"`` reads ``masking.keep`` (not ``auto``,
            whose keep the runner chooses per milestone from a spot-check).
        policy: the masking policy (default ``masking.policy``; with ``policy: auto``, the one the
            runner chose from the spot-check).
    """
    policy = policy or cfg.masking.policy
    if policy == "auto":
        raise ValueError("masking.policy is auto: plan_segment needs the policy the spot-check chose")
    if keep == "config":
        keep = cfg.keep_for_segment(segment)
        if keep == "auto":
            raise ValueError("masking.keep is auto: plan_segment needs the keep the spot-check chose")
    assert keep is None or isinstance(keep, int), keep
    keep = resolve_keep(keep, cfg.num_patches, policy)  # None: all patches
    spec = cfg.views.view_spec()
    refs = shard_refs(manifest, cfg.data.train, cfg.data.subset)
    # with views.repeats each epoch trains on some shards only: label just those (at each repeat)
    wanted = segment_partitions(refs, range(*cfg.schedule.segments()[segment]), pool=cfg.views.pool_size, spec=spec,
                                seed=cfg.train.seed)
    batches = _mix_batches(cfg, refs, spec, wanted)
    tasks = []
    for ref, view_epoch in wanted:
        assert ref.sha256 is not None  # from the manifest
        t = PartitionTask(
            shard=ref.name, shard_path=str(ref.path), shard_sha256=ref.sha256,
            limit=ref.limit, view_epoch=view_epoch, view_spec=spec.to_dict(), view_spec_fingerprint=view_spec_fingerprint(spec),
            view_seed=cfg.views.seed, teacher=teacher,
            student=student if keep is not None and needs_saliency(policy) else None,
            policy=policy, keep=keep, tolerance=cfg.masking.tolerance, spot_check=cfg.masking.spot_check,
            topk=cfg.labels.topk, temperatures=tuple(cfg.labels.temperatures), num_classes=num_classes,
            store=cfg.labels.store, batch_size=cfg.compute.batch_size, device=device,
            precision=cfg.compute.task_precision(), feed_workers=cfg.compute.feed_workers, decode=cfg.compute.decode,
            saliency_scale=cfg.masking.saliency_scale if keep is not None and needs_saliency(policy) else 1.0,
            mix_batches=batches.get((ref.name, view_epoch)),
        )
        fps = task_fingerprints(t)
        path = paths.partition_path(cfg.labels.store, shard=t.shard, view_epoch=view_epoch, fingerprints=fps)
        tasks.append(replace(t, fingerprints=fps, path=path))
    return tasks


def _mix_batches(cfg, refs: list[ShardRef], spec: ViewSpec,
                 wanted: list[tuple[ShardRef, int]]) -> dict[tuple[str, int], tuple[int, ...]]:
    """With ``mix_mode: batch``, each partition's rows' global batches in the epoch that trains them
    (the trainer's order, :func:`pipeline.labels.order.epoch_order`); empty otherwise. ``views.pool``
    is ``epochs`` then (config validation), so a view epoch's repeats belong to one training epoch."""
    if not (spec.mixes and spec.mix_mode == "batch"):
        return {}
    out: dict[tuple[str, int], tuple[int, ...]] = {}
    for epoch in sorted({v // spec.repeats for _, v in wanted}):
        order = epoch_order(refs, seed=cfg.train.seed, epoch=epoch, batch_size=cfg.train.batch_size,
                            lanes=cfg.train.lanes, interleave=cfg.train.interleave, spec=spec, view_seed=cfg.views.seed,
                            view_epoch=epoch)
        for ref, v in wanted:
            if v // spec.repeats == epoch:
                r = v % spec.repeats
                out[(ref.name, v)] = tuple(int(b) for b in order.batch_of(ref.name)[r * ref.rows:(r + 1) * ref.rows])
    return out


def classify(task: PartitionTask) -> dict[str, Any]:
    """``{"state": cached|reusable|compute, "reason": ..., "candidates": n, "rows": n}`` for ``--dry-run``."""
    damaged = None
    try:
        with open_partition(task.path, expect={"fingerprints": task.fingerprints}) as part:
            return {"state": "cached", "reason": "partition for exactly these inputs exists", "rows": part.num_rows}
    except StoreError as e:
        if paths.file_exists(task.path):
            damaged = f"the partition exists but cannot be used, it is recomputed ({e})"
    # the candidates run_partition reuses rows from: same teacher, shard, views and label spec
    rows, usable = 0, 0
    for p in paths.related_partitions(task.store, shard=task.shard, view_epoch=task.view_epoch,
                                      fingerprints=task.fingerprints):
        if p == task.path:
            continue
        try:
            with open_partition(p, expect=reuse_expect(task.fingerprints)) as part:
                if stored_mask(part.metadata) != reused_mask(task.policy, task.keep):
                    continue  # rows run_partition would not reuse (a forward policy's, or keep sets for one)
                rows, usable = max(rows, part.num_rows), usable + 1
        except StoreError:
            continue
    if usable:
        reason = f"{usable} partition(s) of the same teacher, shard, views and label spec; rows whose keep set matches are reused"
        if damaged:
            reason = f"{damaged}; {reason}"
        return {"state": "reusable", "reason": reason, "candidates": usable, "rows": rows}
    return {"state": "compute", "reason": damaged or "no partition of this teacher, shard, views and label spec yet", "rows": 0}
