"""Synthetic teacher outputs for the label store tests: valid inputs of ``write_partition``."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline._fingerprint import sha256_json


def teacher_outputs(n: int, num_classes: int, num_patches: int, *, seed: int = 0) -> dict[str, Any]:
    """``{"keys", "labels", "keep", "logits"}`` of ``n`` rows: keys like ``train_0000123`` (tar
    order), uniform labels, float32 logits [n, C] of a teacher that is right ~85% of the time,
    and keep sets of half the patches chosen at random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    predicted = np.where(rng.random(n) < 0.85, labels, rng.integers(0, num_classes, n))
    logits = rng.normal(0.0, 1.5, (n, num_classes)).astype(np.float32)
    logits[np.arange(n), predicted] += rng.uniform(4, 12, n).astype(np.float32)
    keep = np.zeros((n, num_patches), dtype=bool)
    np.put_along_axis(keep, rng.random((n, num_patches)).argsort(axis=1)[:, : num_patches // 2], True, axis=1)
    return {"keys": [f"train_{i:07d}" for i in range(n)], "labels": labels, "keep": keep, "logits": logits}


def partition_metadata(n: int, shard: str = "train-000000") -> dict[str, Any]:
    """A valid metadata record for a partition of ``n`` rows, all computed."""
    fingerprints = {name: sha256_json({"test": name}) for name in ("teacher", "student", "shard", "view", "mask", "label")}
    return {
        "shard": shard,
        "view_epoch": 0,
        "fingerprints": fingerprints,
        "counters": {"rows_computed": n, "rows_reused": 0, "teacher_macs": 0},
    }


def write_small(path: str):
    """A real 200-row top-3 partition at ``path`` (local or a URI), with the writer's own checks."""
    import torch

    from maskedkd import from_logits
    from pipeline.labels import write_partition

    d = teacher_outputs(200, 20, 16)
    return write_partition(path, keys=d["keys"], labels=d["labels"], keep=d["keep"], metadata=partition_metadata(200),
                           target=from_logits(torch.from_numpy(d["logits"]), 3), num_classes=20)
