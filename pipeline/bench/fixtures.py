"""What the benchmarks share: their inputs (real Fashion-MNIST shards and datasets, ImageNet-like
JPEG shards, random-weight ViT checkpoints, stage configs, planned precompute tasks, stored
teacher labels) and the helpers that time a precompute run on a Dask cluster.

Every name here is public: the harnesses (``precompute.py``, ``hashing.py``, ``train.py``,
``train_input.py``, ``feed.py``, ``data.py``) import them from this one module, never from each other.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from maskedkd import from_logits, logsumexp_at, view_spec_fingerprint
from maskedkd.rendering import render_batch
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline.config import load_config
from pipeline.data.importers import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SRC,
    SourceImage,
    fashion_mnist_split,
    png_gray8,
    write_split,
)
from pipeline.data.manifest import DatasetManifest, load_manifest
from pipeline.data.shards import ShardWriter, sample_key, write_shards
from pipeline.labels import partition_path, write_partition
from pipeline.labels.contract import ShardRef, store_view_columns
from pipeline.models import create_model, model_fingerprint, save_checkpoint
from pipeline.precompute.plan import plan_segment
from pipeline.precompute.run import run_precompute
from pipeline.precompute.spec import model_spec
from pipeline.train.stream import load_shard

VIT = "vit_tiny_patch16_224"
GRAY = ((0.2860,), (0.3530,))  # Fashion-MNIST mean / std
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Shards and datasets


def make_imagenet_like_shard(path: Path, n: int, *, seed: int = 0) -> Path:
    """Write a shard of ``n`` ImageNet-sized JPEGs (500x375 and 375x500, quality 90, ~110 KB like ImageNet's average).

    The content is smooth random colour fields plus sensor-like noise, so the JPEGs cost about
    what photographs cost to decode (pure noise would be far larger, flat colour far smaller).
    """
    rng = np.random.default_rng(seed)
    with ShardWriter(path) as writer:
        for i in range(n):
            w, h = (500, 375) if i % 4 else (375, 500)
            coarse = Image.fromarray(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8))
            smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
            pixels = np.clip(smooth + rng.normal(0, 18, smooth.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            writer.write(sample_key("bench", i), {"jpg": buf.getvalue(), "cls": str(int(rng.integers(1000))).encode()})
    return path


def fashion_mnist_dataset(out: str | Path, samples: int, shard_size: int, *, offset: int = 0,
                          test_samples: int = 0) -> DatasetManifest:
    """A dataset folder (shards + ``manifest.json``) of ``samples`` real Fashion-MNIST training
    images starting at ``offset``, as split ``train`` (and the first ``test_samples`` test images
    as split ``test``, when not 0); returns its :class:`DatasetManifest`."""
    out = Path(out)
    skipped: list[dict] = []
    splits = {}
    for name, n, start in (("train", samples, offset), ("test", test_samples, 0)):
        if not n:
            continue
        images, labels = fashion_mnist_split(FASHION_MNIST_SRC, name)
        items = (SourceImage(png_gray8(images[i]), "png", int(labels[i]), f"{name}[{i}]") for i in range(start, start + n))
        splits[name] = write_split(out, name, items, n, shard_size, skipped)
    manifest = DatasetManifest(name="fashion-mnist-subset", classes=list(FASHION_MNIST_CLASSES), splits=splits,
                               source={"kind": "fashion-mnist", "offset": offset, "samples": samples}, skipped=skipped)
    manifest.save(out)
    return manifest


def fashion_mnist_shards(out: str | Path, samples: int, shard_size: int, *, split: str = "train",
                         offset: int = 0) -> list[ShardRef]:
    """Write ``samples`` real Fashion-MNIST images (from ``offset``) as WebDataset shards; return ShardRefs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = fashion_mnist_split(FASHION_MNIST_SRC, "train" if split == "train" else "test")
    items = ((sample_key(split, i), {"png": png_gray8(images[i]), "cls": str(int(labels[i])).encode()})
             for i in range(offset, offset + samples))
    written = write_shards(items, out, split, shard_size)
    return [ShardRef(name.removesuffix(".tar"), out / name, n) for name, n in written]


# ---------------------------------------------------------------------------------------------
# Models, stage configs, tasks


def vit_kwargs(img_size: int = 28) -> tuple[dict, dict]:
    """(teacher, student) timm kwargs on ``img_size`` inputs with 4x4 patches (28: 49 patches,
    56: 196 like ViT-B/16 at 224). At keep 50% the teacher's masked forward costs 9.7x (28) and
    7.1x (56) the student's full forward in MACs (31.8 vs 3.3 and 132 vs 18.5 MMACs)."""
    base = {"img_size": img_size, "patch_size": 4, "in_chans": 1, "num_classes": 10}
    return dict(base, embed_dim=128, depth=6, num_heads=4), dict(base, embed_dim=48, depth=2, num_heads=3)


TEACHER, STUDENT = vit_kwargs(28)


def save_vit(kwargs: dict, path: str | Path, *, seed: int, perturb: float = 0.0, perturb_seed: int = 0) -> Path:
    """Save a random-weight ViT checkpoint; ``perturb`` adds N(0, perturb * std) noise to every
    weight of the last block (a small "student update" that changes some keep sets)."""
    model = create_model(VIT, kwargs, seed=seed)
    if perturb:
        g = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            blocks: Any = model.blocks  # a timm ViT's
            for p in blocks[-1].parameters():
                p.add_(torch.randn(p.shape, generator=g) * perturb * float(p.std() if p.numel() > 1 else 1.0))
    save_checkpoint(model, path)
    return Path(path)


def stage_doc(*, name: str, data_root: str | Path, store: str | Path, teacher_weights: str | Path,
              teacher: dict = TEACHER, student: dict = STUDENT, policy: str = "student", keep: int | None = 25,
              tolerance: int = 0, spot_check: int = 64, topk: int | str = 10, batch_size: int = 256,
              subset: int | None = None,
              workers: int = 2, retries: int = 1, timeout_s: float = 600, view_pool: int | str = "epochs",
              epochs: int = 1, every: int | None = None, run_dir: str | Path | None = None,
              device: str = "cpu") -> dict[str, Any]:
    """A stage config (the YAML document) for a precompute on the dataset at ``data_root``."""
    doc: dict[str, Any] = {
        "name": name,
        "data": {"root": str(data_root), "train": "train", "val": None, "subset": subset, "num_classes": 10,
                 "mean": list(GRAY[0]), "std": list(GRAY[1]), "interpolation": "bilinear"},
        "teacher": {"model": VIT, "kwargs": dict(teacher), "weights": str(teacher_weights)},
        "student": {"model": VIT, "kwargs": dict(student), "init_seed": 0},
        "schedule": {"epochs": epochs, **({"every": every} if every else {})},
        "masking": {"policy": policy, "tolerance": tolerance, "spot_check": spot_check,
                    **({"keep": keep} if policy != "none" else {})},
        "views": {"seed": 0, "pool": view_pool, "scale": [0.6, 1.0], "hflip": 0.5},
        "labels": {"store": str(store), "topk": topk, "temperatures": [1.0]},
        "compute": {"workers": workers, "threads_per_worker": 1, "batch_size": batch_size, "device": device,
                    "timeout_s": timeout_s, "retries": retries},
        "train": {"lr": 1e-3, "warmup_epochs": 0},
    }
    if run_dir is not None:
        doc["run_dir"] = str(run_dir)
    return doc


def write_stage(path: str | Path, doc: dict[str, Any]):
    """Write ``doc`` as a stage YAML at ``path`` and load it with :func:`pipeline.config.load_config`."""
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def plan(cfg, teacher_weights: str | Path, student_weights: str | Path | None, segment: int = 0):
    """``plan_segment`` of ``cfg`` with these checkpoints (what the runner does for a segment)."""
    student = model_spec(cfg, "student", student_weights) if student_weights is not None else None
    return plan_segment(cfg, segment, manifest=load_manifest(cfg.data.root), teacher=model_spec(cfg, "teacher", teacher_weights),
                        student=student, device="auto", num_classes=cfg.data.num_classes)


# ---------------------------------------------------------------------------------------------
# Stored labels


def write_teacher_labels(
    store: str | Path,
    teacher,
    shards: Sequence,
    *,
    spec,
    seed: int,
    view_epochs: Sequence[int],
    render,
    k: int | str = 5,
    taus: Sequence[float] = (),
    batch_size: int = 256,
) -> dict[tuple[str, int], str]:
    """A minimal precompute: the *unmasked* teacher's labels on every shard's views.

    Real fingerprints (teacher weights, shard bytes, view spec + seed) go into each partition's
    metadata; the mask fingerprint says "none". Returns ``{(shard, view_epoch): path}``.
    """
    teacher = teacher.eval()
    fps = {"teacher": model_fingerprint(teacher, VIT), "view": sha256_json({"spec": view_spec_fingerprint(spec), "seed": seed}),
           "mask": sha256_json({"policy": "none"}), "label": sha256_json({"k": k, "taus": list(taus)})}
    out: dict[tuple[str, int], str] = {}
    for ref in shards:
        shard_fp = sha256_file(ref.path)
        for ve in view_epochs:
            sh = load_shard(ref, spec=spec, seed=seed, view_epoch=ve)
            chunks: list[torch.Tensor] = []
            with torch.no_grad():
                for i in range(0, len(sh.keys), batch_size):
                    images = render_batch(sh.images[i:i + batch_size], sh.views[i:i + batch_size], render.size,
                                          mean=render.mean, std=render.std, interpolation=render.interpolation,
                                          partners=sh.partner, resize=render.resize)
                    chunks.append(teacher(images).float())
            logits = torch.cat(chunks)
            fingerprints = dict(fps, shard=shard_fp)
            path = partition_path(str(store), shard=ref.name, view_epoch=ve, fingerprints=fingerprints)
            metadata = {"shard": ref.name, "view_epoch": ve, "fingerprints": fingerprints,
                        "counters": {"rows_computed": len(sh.keys), "rows_reused": 0, "teacher_macs": 0}}
            write_partition(path, keys=sh.keys, labels=sh.labels.numpy(), keep=np.ones((len(sh.keys), teacher.patch_embed.num_patches), bool),
                            target=from_logits(logits, k), metadata=metadata, view_columns=store_view_columns(sh.views, spec),
                            num_classes=logits.shape[1], extra_lse=logsumexp_at(logits, taus) if k != "all" else None)
            out[(ref.name, ve)] = path
    return out


# ---------------------------------------------------------------------------------------------
# Timing precompute runs on a cluster


def cluster_cpu_seconds(cluster) -> float:
    """CPU seconds used so far by all worker processes of ``cluster``."""
    return sum(cluster.client.run(time.process_time).values())


def timed_run(tasks, cluster, cfg, key: str) -> tuple[float, float, dict]:
    """(wall seconds, workers' CPU seconds, summary) of one ``run_precompute``."""
    c0 = cluster_cpu_seconds(cluster)
    t0 = time.perf_counter()
    summary = run_precompute(tasks, cluster, cfg=cfg, key_prefix=key, progress=False)
    wall = time.perf_counter() - t0
    return wall, cluster_cpu_seconds(cluster) - c0, summary


def fresh_tasks(tasks, store: Path) -> list:
    """The same tasks writing into another (empty) store: a first run again."""
    return [replace(t, store=str(store), path=partition_path(str(store), shard=t.shard, view_epoch=t.view_epoch,
                                                             fingerprints=t.fingerprints)) for t in tasks]


def warm_workers(cluster, cfg, tasks, scratch: Path, key: str) -> None:
    """Start every worker's torch and model cache on a few rows into a scratch store."""
    warm = [replace(t, limit=32) for t in fresh_tasks(tasks, scratch)[: len(cluster.workers())]]
    timed_run(warm, cluster, cfg, key)
