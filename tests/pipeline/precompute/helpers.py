"""Helpers of the precompute tests: run a segment's tasks, read a store back."""

from __future__ import annotations

import torch

from pipeline.labels import open_partition
from pipeline.precompute.run import run_precompute


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


def warm(cluster) -> None:
    """Wait for both workers and import torch + the task module in each (seconds per process),
    so that this start-up is not charged to whichever test runs first."""
    cluster.client.wait_for_workers(2, timeout=60)
    cluster.client.run(_import_task)


def _import_task() -> None:
    import pipeline.precompute.task  # noqa: F401
