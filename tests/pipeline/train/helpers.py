"""Inputs of the trainer tests, built with the pipeline's public API: real Fashion-MNIST shards
(the importer) and label partitions of an unmasked teacher (the store's writer).

Also imported by ``run_segment.py`` (a subprocess), so no fixtures here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from maskedkd import from_logits, logsumexp_at
from maskedkd.digests import view_spec_fingerprint
from maskedkd.rendering import render_batch
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline.data.manifest import load_manifest
from pipeline.labels import partition_path, write_partition
from pipeline.labels.contract import ShardRef, shard_refs, store_view_columns
from pipeline.models import model_fingerprint
from pipeline.train.stream import load_shard
from tests.pipeline.data.helpers import real_fashion_mnist_subset

VIT = "vit_tiny_patch16_224"
GRAY = ((0.2860,), (0.3530,))  # Fashion-MNIST mean / std


def fashion_mnist_shards(out: Path, samples: int, shard_size: int, *, split: str = "train") -> list[ShardRef]:
    """The first ``samples`` real Fashion-MNIST images of ``split`` ("train" or "test") as shards
    of ``shard_size``, imported into ``out``; returns the trainer's view of them."""
    counts = {"train": 1, "test": 1, split: samples}  # the importer writes both splits
    root = real_fashion_mnist_subset(out, counts["train"], counts["test"], shard_size)
    return shard_refs(load_manifest(root), split)


def write_teacher_labels(store: str | Path, teacher: torch.nn.Module, shards: Sequence[ShardRef], *, spec, seed: int,
                         view_epochs: Sequence[int], render, k: int | str = 5,
                         taus: Sequence[float] = (), batches=None) -> dict[tuple[str, int], str]:
    """The *unmasked* teacher's top-``k`` labels on every shard's views (each shard rendered as one
    batch: test shards are small), written as a precompute would: real fingerprints of the
    teacher, shard and views in the metadata, the mask's says "none". Returns
    ``{(shard, view_epoch): path}``. ``batches(ref, view_epoch)``: the rows' global batches, for
    ``mix_mode: batch`` (as precompute's plan derives them)."""
    teacher = teacher.eval()
    fps = {"teacher": model_fingerprint(teacher, VIT), "view": sha256_json({"spec": view_spec_fingerprint(spec), "seed": seed}),
           "mask": sha256_json({"policy": "none"}), "label": sha256_json({"k": k, "taus": list(taus)})}
    out: dict[tuple[str, int], str] = {}
    for ref in shards:
        fingerprints = dict(fps, shard=sha256_file(ref.path))
        for ve in view_epochs:
            sh = load_shard(ref, spec=spec, seed=seed, view_epoch=ve, batches=None if batches is None else batches(ref, ve))
            images = render_batch(sh.images, sh.views, render.size, mean=render.mean, std=render.std,
                                  interpolation=render.interpolation, partners=sh.partner, resize=render.resize)
            with torch.no_grad():
                logits = teacher(images).float()
            path = partition_path(str(store), shard=ref.name, view_epoch=ve, fingerprints=fingerprints)
            metadata = {"shard": ref.name, "view_epoch": ve, "fingerprints": fingerprints,
                        "counters": {"rows_computed": len(sh.keys), "rows_reused": 0, "teacher_macs": 0}}
            keep = np.ones((len(sh.keys), teacher.patch_embed.num_patches), bool)
            write_partition(path, keys=sh.keys, labels=sh.labels.numpy(), keep=keep, target=from_logits(logits, k),
                            metadata=metadata, view_columns=store_view_columns(sh.views, spec),
                            num_classes=logits.shape[1], extra_lse=logsumexp_at(logits, taus) if k != "all" else None)
            out[(ref.name, ve)] = path
    return out


def loaded_batches(order, load, start: int = 0):
    """An :class:`pipeline.labels.order.EpochOrder`'s global batches with their shards loaded by ``load``
    (each once, in the order first used)."""
    shards: dict = {}
    for batch in order.batches(start):
        out = []
        for ref, rows in batch:
            if ref.name not in shards:
                shards[ref.name] = load(ref)
            out.append((shards[ref.name], rows))
        yield out
