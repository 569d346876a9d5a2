"""Real inputs for the precompute tests: Fashion-MNIST shards with a manifest, tiny random-weight
timm ViT checkpoints, stage YAMLs loaded with ``load_config``, and a 2-process LocalCluster.

The builders are the benchmark's (:mod:`pipeline.bench.precompute`), so tests and bench share them.
"""

from __future__ import annotations

import pytest

from pipeline.bench.precompute import fashion_mnist_dataset, plan, save_vit, stage_doc, write_stage
from pipeline.precompute.cluster import open_cluster
from tests.pipeline.precompute.helpers import warm

BASE = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10}  # 7x7 = 49 patches
TEACHER = dict(BASE, embed_dim=64, depth=2, num_heads=2)
STUDENT = dict(BASE, embed_dim=32, depth=1, num_heads=2)
SHARD = 96
ROWS = 2 * SHARD


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """192 real Fashion-MNIST images in two shards of 96, with their manifest."""
    root = tmp_path_factory.mktemp("fmnist")
    fashion_mnist_dataset(root, ROWS, SHARD)
    return root


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """``{"teacher", "c0", "c1"}``: checkpoint paths; c1 is c0 after a small update of its last
    block that changes some (not all) keep sets."""
    d = tmp_path_factory.mktemp("ckpt")
    return {"teacher": save_vit(TEACHER, d / "teacher.pth", seed=1), "c0": save_vit(STUDENT, d / "c0.pth", seed=0),
            "c1": save_vit(STUDENT, d / "c1.pth", seed=0, perturb=0.05)}


@pytest.fixture
def stage(tmp_path, dataset, ckpts):
    """stage(name="s", **overrides) -> a StageConfig loaded from a YAML written into tmp_path
    (store tmp_path/store unless given; batch 32 so a shard spans several batches)."""

    def make(name: str = "s", **overrides):
        kw = dict(name=name, data_root=dataset, store=tmp_path / "store", teacher_weights=ckpts["teacher"],
                  teacher=TEACHER, student=STUDENT, keep=25, batch_size=32, run_dir=tmp_path / "runs" / name)
        kw.update(overrides)
        return write_stage(tmp_path / f"{name}.yaml", stage_doc(**kw))

    return make


@pytest.fixture
def tasks(ckpts):
    """tasks(cfg, student="c0") -> the PartitionTasks of segment 0 (plan_segment)."""

    def make(cfg, student: str | None = "c0", segment: int = 0):
        return plan(cfg, ckpts["teacher"], ckpts[student] if student else None, segment)

    return make


@pytest.fixture(scope="session")
def cluster():
    """One embedded LocalCluster for all precompute tests: 2 worker processes x 1 thread, CPU."""
    with open_cluster(workers=2, threads_per_worker=1, device="cpu", dashboard=False, memory_limit=None,
                      announce=None) as c:
        warm(c)
        yield c
