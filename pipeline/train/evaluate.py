"""Top-1 accuracy and loss on a split, on the un-augmented view (full image, no flip)."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskedkd.views import View, render_batch
from pipeline.data.shards import read_shard
from pipeline.labels.contract import RenderSpec, ShardRef


def _chunks(refs: Sequence[ShardRef], batch_size: int):
    # each shard is hashed while it streams, as the trainer does (limit: the rest is still read for
    # the hash): one whose bytes differ from its manifest raises ShardChangedError (exit 3) at its
    # end, so no accuracy is reported from it
    samples = itertools.chain.from_iterable(read_shard(r.path, sha256=r.sha256, limit=r.rows) for r in refs)
    while chunk := list(itertools.islice(samples, batch_size)):
        yield chunk


@torch.no_grad()
def evaluate(
    model: nn.Module,
    shards: Sequence[ShardRef],
    render: RenderSpec,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    amp: bool = True,
) -> dict[str, Any]:
    """Top-1 and mean cross-entropy of ``model`` over the shards' first ``rows`` samples each.

    Every image is rendered whole (the View's default full crop, no flip, no augmentation)
    at ``render.size``; works for students and teachers alike. Runs in eval mode and restores
    the model's mode after.

    Returns:
        ``{"top1": float, "loss": float, "samples": int}``.

    Raises:
        ShardChangedError: (exit 3) a shard's bytes differ from its ``sha256``, naming the shard.
    """
    device = torch.device(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else contextlib.nullcontext()
    was = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for chunk in _chunks(shards, batch_size):
            views = [View(key=s.key, epoch=0, seed=0) for s in chunk]
            images = render_batch([s.image for s in chunk], views, render.size, mean=render.mean, std=render.std,
                                  interpolation=render.interpolation).to(device)
            labels = torch.tensor([s.label for s in chunk], device=device)
            with autocast:
                logits = model(images)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            n += len(chunk)
    finally:
        model.train(was)
    return {"top1": correct / max(n, 1), "loss": loss_sum / max(n, 1), "samples": n}
