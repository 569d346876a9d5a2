"""Real inputs for the precompute tests: Fashion-MNIST shards with a manifest, tiny random-weight
timm ViT checkpoints, stage YAMLs loaded with ``load_config``, and a 2-process LocalCluster.

Built with the pipeline's own API (the importer, ``create_model`` / ``save_checkpoint``,
``load_config``, ``plan_segment``), as the runner builds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.models import create_model, save_checkpoint
from pipeline.precompute.cluster import open_cluster
from pipeline.precompute.plan import plan_segment
from pipeline.precompute.spec import model_spec
from tests.pipeline.data.helpers import real_fashion_mnist_subset
from tests.pipeline.precompute.helpers import VIT, warm

BASE = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10}  # 7x7 = 49 patches
TEACHER = dict(BASE, embed_dim=64, depth=2, num_heads=2)
STUDENT = dict(BASE, embed_dim=32, depth=1, num_heads=2)
SHARD = 96
ROWS = 2 * SHARD


def stage_doc(*, name: str, data_root: Path, store: Path, teacher_weights: Path, run_dir: Path, policy: str = "student",
              keep: int = 25, tolerance: int = 0, spot_check: int = 64, topk: int | str = 10,
              epochs: int = 1, saliency_scale: float = 1.0) -> dict[str, Any]:
    """The stage document of a precompute test (batch 32, so a shard spans several batches)."""
    return {
        "name": name,
        "run_dir": str(run_dir),
        "data": {"root": str(data_root), "train": "train", "val": None, "subset": None, "num_classes": 10,
                 "mean": [0.2860], "std": [0.3530], "interpolation": "bilinear"},
        "teacher": {"model": VIT, "kwargs": dict(TEACHER), "weights": str(teacher_weights)},
        "student": {"model": VIT, "kwargs": dict(STUDENT), "init_seed": 0},
        "schedule": {"epochs": epochs},
        "masking": {"policy": policy, "tolerance": tolerance, "spot_check": spot_check,
                    **({"keep": keep} if policy != "none" else {}),
                    **({"saliency_scale": saliency_scale} if saliency_scale != 1 else {})},
        "views": {"seed": 0, "pool": "epochs", "scale": [0.6, 1.0], "hflip": 0.5},
        "labels": {"store": str(store), "topk": topk, "temperatures": [1.0]},
        "compute": {"workers": 2, "threads_per_worker": 1, "batch_size": 32, "device": "cpu", "timeout_s": 600,
                    "retries": 1},
        "train": {"lr": 1e-3, "warmup_epochs": 0},
    }


def save_vit(kwargs: dict, path: Path, *, seed: int, nudge: float = 0.0) -> Path:
    """A random-weight ViT checkpoint; ``nudge`` adds N(0, nudge * std) noise to every weight of
    the last block (a small "student update" that changes some keep sets)."""
    model = create_model(VIT, kwargs, seed=seed)
    if nudge:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.blocks[-1].parameters():
                p.add_(torch.randn(p.shape, generator=g) * nudge * float(p.std() if p.numel() > 1 else 1.0))
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """192 real Fashion-MNIST training images in two shards of 96, with their manifest."""
    return real_fashion_mnist_subset(tmp_path_factory.mktemp("fmnist") / "fashion-mnist", ROWS, 1, SHARD)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """``{"teacher", "c0", "c1"}``: checkpoint paths; c1 is c0 after a small update of its last
    block that changes some (not all) keep sets."""
    d = tmp_path_factory.mktemp("ckpt")
    return {"teacher": save_vit(TEACHER, d / "teacher.pth", seed=1), "c0": save_vit(STUDENT, d / "c0.pth", seed=0),
            "c1": save_vit(STUDENT, d / "c1.pth", seed=0, nudge=0.05)}


@pytest.fixture
def stage(tmp_path, dataset, ckpts):
    """stage(name="s", **overrides) -> a StageConfig loaded from a YAML written into tmp_path
    (store tmp_path/store unless given)."""

    def make(name: str = "s", **overrides):
        kw = dict(name=name, data_root=dataset, store=tmp_path / "store", teacher_weights=ckpts["teacher"],
                  run_dir=tmp_path / "runs" / name)
        kw.update(overrides)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(stage_doc(**kw), sort_keys=False))
        return load_config(path)

    return make


@pytest.fixture
def tasks(ckpts):
    """tasks(cfg, student="c0") -> the PartitionTasks of segment 0 (plan_segment)."""

    def make(cfg, student: str | None = "c0", segment: int = 0):
        return plan_segment(cfg, segment, manifest=load_manifest(cfg.data.root),
                            teacher=model_spec(cfg, "teacher", ckpts["teacher"]),
                            student=model_spec(cfg, "student", ckpts[student]) if student else None,
                            device="auto", num_classes=cfg.data.num_classes)

    return make


@pytest.fixture(scope="session")
def cluster():
    """One embedded LocalCluster for all precompute tests: 2 worker processes x 1 thread, CPU."""
    with open_cluster(workers=2, threads_per_worker=1, device="cpu", dashboard=False, memory_limit=None,
                      announce=None) as c:
        warm(c)
        yield c
