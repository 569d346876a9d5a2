"""Helpers of the precompute tests: run a segment's tasks, read a store back, and the students'
keep sets computed independently of the task."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from maskedkd import cls_attention, select_keep
from maskedkd.rendering import render_batch
from maskedkd.views import ViewSpec, shard_views
from pipeline.data.shards import read_shard
from pipeline.labels import open_partition
from pipeline.precompute.run import run_precompute
from pipeline.precompute.spec import PartitionTask

VIT = "vit_tiny_patch16_224"


def run(tasks, cluster, cfg, key: str) -> dict:
    """``run_precompute`` without a progress bar: totals plus per-task ``results``."""
    return run_precompute(tasks, cluster, cfg=cfg, key_prefix=key, progress=False)


def read(tasks) -> dict:
    """Every task's partition read back, concatenated in task order:
    ``{"keys": [(view_epoch, key)], "keep": bool [N, P], "logp": float32 [N, C]}``."""
    keys, keep, logp = [], [], []
    for t in tasks:
        with open_partition(t.path, expect={"fingerprints": t.fingerprints}) as part:
            b = part.read_all(columns=("keys", "keep", "target"))
        keys += [(t.view_epoch, k) for k in b.keys]
        keep.append(b.keep)
        dense = torch.full((len(b.keys), t.num_classes), float("-inf"))
        dense.scatter_(1, b.target.idx, b.target.logit - b.target.lse[:, None])
        logp.append(dense)
    return {"keys": keys, "keep": torch.cat(keep).numpy(), "logp": torch.cat(logp)}


def keep_sets(student: torch.nn.Module, tasks: Sequence[PartitionTask]) -> np.ndarray:
    """bool [rows, patches]: the keep sets of ``student`` on the views of ``tasks``, in task and
    tar order, computed here from maskedkd and the shard reader (the student's own rendering,
    ``cls_attention`` + ``select_keep`` in the tasks' batch size), not by the precompute task."""
    out = []
    student = student.eval()
    for t in tasks:
        samples = list(read_shard(t.shard_path))[: t.limit]
        views = shard_views(ViewSpec.from_dict(t.view_spec), t.view_seed, t.view_epoch, [s.key for s in samples],
                            shard=t.shard)
        r = t.student.render
        for i in range(0, len(samples), t.batch_size):
            images = render_batch([s.image for s in samples[i:i + t.batch_size]], views[i:i + t.batch_size], r.size,
                                  mean=r.mean, std=r.std, interpolation=r.interpolation, resize=r.resize)
            with torch.inference_mode():
                idx = select_keep(cls_attention(student, images), t.keep, t.policy)
            keep = np.zeros((len(idx), student.patch_embed.num_patches), dtype=bool)
            np.put_along_axis(keep, idx.numpy(), True, axis=1)
            out.append(keep)
    return np.concatenate(out)


def warm(cluster) -> None:
    """Wait for both workers and import torch + the task module in each (seconds per process),
    so that this start-up is not charged to whichever test runs first."""
    cluster.client.wait_for_workers(2, timeout=60)
    cluster.client.run(_import_task)


def _import_task() -> None:
    import pipeline.precompute.task  # noqa: F401
