"""Real Fashion-MNIST shards and real label partitions from a tiny timm ViT teacher (builders in helpers.py)."""

from __future__ import annotations

import pytest
import torch

from maskedkd.views import ViewSpec
from pipeline.config import TrainConfig
from pipeline.labels.contract import RenderSpec
from pipeline.models import create_model
from tests.pipeline.train.helpers import (
    GRAY,
    VIT,
    fashion_mnist_shards,
    write_teacher_labels,
)

# 16 patches of 7x7: tiny ViTs that learn Fashion-MNIST within a few hundred steps.
BASE = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "num_heads": 2}
TEACHER = dict(BASE, embed_dim=64, depth=2)
STUDENT = dict(BASE, embed_dim=32, depth=2)
SPEC = ViewSpec(scale=(0.6, 1.0), ratio=(0.8, 1.25), hflip=0.5)
FLIP_SPEC = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5)  # mild: tiny ViTs learn in a few epochs
MIX_SPEC = ViewSpec(scale=(0.6, 1.0), hflip=0.5, mixup=0.8, cutmix=1.0, mix_window=16)
RENDER = RenderSpec(28, *GRAY)
SEED = 7
# The trainer tests' recipe: the schema's defaults, but batch 64, lr 1e-3 and no warm-up.
RECIPE = {"batch_size": 64, "lr": 1e-3, "warmup_epochs": 0}


def recipe(**overrides) -> TrainConfig:
    """A validated ``train`` section: :data:`RECIPE` with ``overrides``."""
    return TrainConfig(**{**RECIPE, **overrides})


def student(seed: int = 0):
    return create_model(VIT, STUDENT, seed=seed)


def teacher(seed: int = 1):
    return create_model(VIT, TEACHER, seed=seed)


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    """384 training images in 3 shards of 128."""
    return fashion_mnist_shards(tmp_path_factory.mktemp("fmnist") / "train", 384, 128)


@pytest.fixture(scope="session")
def test_shards(tmp_path_factory):
    """256 test images in one shard."""
    return fashion_mnist_shards(tmp_path_factory.mktemp("fmnist-test") / "test", 256, 256, split="test")


@pytest.fixture(scope="session")
def labels(tmp_path_factory, train_shards):
    """Top-5 partitions (with lse at tau 2) of a random-weight teacher, view epochs 0 and 1."""
    torch.set_num_threads(1)
    return write_teacher_labels(tmp_path_factory.mktemp("store"), teacher(), train_shards, spec=SPEC, seed=SEED,
                                view_epochs=[0, 1], render=RENDER, taus=(2.0,))
