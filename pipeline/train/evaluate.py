"""Top-1 accuracy and loss on a split, on the un-augmented view (full image, no flip)."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from maskedkd.rendering import render_batch
from pipeline.data.shards import Sample, read_shard
from pipeline.labels.contract import RenderSpec, ShardRef
from pipeline.placement import place_model, to_device, to_host
from pipeline.train.dist import DistInfo, all_sum
from pipeline.train.stream import decode_row


def _samples(refs: Sequence[ShardRef]) -> Iterator[tuple[ShardRef, Sample]]:
    # encoded: each rank decodes only its own rows; hashed as streamed like the training shards
    for ref in refs:
        for sample in read_shard(ref.path, sha256=ref.sha256, limit=ref.rows, decode=False):
            yield ref, sample


def _chunks(refs: Sequence[ShardRef], batch_size: int, rank: int, world: int):
    """Rank ``rank``'s rows (every ``world``-th sample), ``batch_size`` at a time, decoded."""
    mine = itertools.islice(_samples(refs), rank, None, world)
    while chunk := list(itertools.islice(mine, batch_size)):
        yield [Sample(s.key, decode_row(ref.path, s.key, s.image), s.label) for ref, s in chunk]


def eval_pixels(render: RenderSpec, images: Sequence[Image.Image], keys: Sequence[str]) -> torch.Tensor:
    """The evaluation views of decoded ``images`` as a model takes them: float32 ``[N, C, H, W]``.

    Whole images, or timm's eval transform to a level under ``render.crop_pct``
    (:meth:`RenderSpec.eval_view`, :attr:`RenderSpec.eval_resize`).
    """
    views = [render.eval_view(key, *image.size) for key, image in zip(keys, images)]
    return render_batch(images, views, render.size, mean=render.mean, std=render.std,
                        interpolation=render.interpolation, resize=render.eval_resize)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    shards: Sequence[ShardRef],
    render: RenderSpec,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    amp: bool = True,
    split_ranks: bool = False,
) -> dict[str, Any]:
    """Top-1 and mean cross-entropy of ``model`` over the shards' first ``rows`` samples each.

    Every image is rendered whole (the View's default full crop, no flip, no augmentation), or
    centre-cropped by ``render.crop_pct`` (:func:`eval_pixels`), at ``render.size``; works for
    students and teachers alike. Runs in eval mode and restores the model's mode after. The model is
    moved to ``device`` (:func:`pipeline.placement.place_model`: in place, and it stays there). The
    sums stay on the device until the end (one transfer). With ``split_ranks`` under an initialised process group every rank
    must call it: each evaluates every ``world``-th sample and the sums are all-reduced, so all
    ranks return the totals (otherwise it evaluates every sample, whoever calls it).

    Returns:
        ``{"top1": float, "loss": float, "samples": int}``.

    Raises:
        DataError: a shard unreadable; ShardChangedError (exit 3) a shard's bytes differ from its
            ``sha256`` (no accuracy is reported from it), naming the shard.
    """
    device = torch.device(device)
    grouped = split_ranks and dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if grouped else (0, 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else contextlib.nullcontext()
    was = model.training
    place_model(model, device, "the evaluated model")
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # correct, loss: read once, at the end
    n = 0
    try:
        for chunk in _chunks(shards, batch_size, rank, world):
            images = eval_pixels(render, [s.image for s in chunk], [s.key for s in chunk])
            labels = torch.tensor([s.label for s in chunk])
            images, labels = to_device(images, device), to_device(labels, device)
            with autocast:
                logits = model(images)
            logits = logits.float()
            sums += torch.stack([(logits.argmax(1) == labels).sum().double(),
                                 F.cross_entropy(logits, labels, reduction="sum").double()])
            n += len(chunk)
    finally:
        model.train(was)
    correct, loss_sum = to_host(sums)[0].tolist()
    totals = all_sum([correct, loss_sum, n], DistInfo(rank, world), device)
    correct, loss_sum, n = int(totals[0]), float(totals[1]), int(totals[2])
    return {"top1": correct / max(n, 1), "loss": loss_sum / max(n, 1), "samples": n}
