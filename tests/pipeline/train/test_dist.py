"""pipeline.train.dist: each torchrun rank's CUDA device, with CUDA absent (mocked)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from pipeline.errors import ConfigError
from pipeline.train import dist as tdist


@pytest.fixture
def two_ranks(monkeypatch):
    """A process group of 2 that is already up (so setup joins none), two visible GPUs."""
    pinned = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setattr(tdist, "enable_tf32", lambda: pinned.append("tf32"))
    return pinned


@pytest.mark.parametrize("rank", [0, 1])
def test_each_local_rank_takes_its_own_visible_gpu(monkeypatch, two_ranks, rank):
    # CUDA_VISIBLE_DEVICES=4,5: rank i's cuda:i is the i-th listed GPU (4 and 5), never another
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    info, device = tdist.setup("cuda")
    assert (info.rank, info.world, info.local_rank) == (rank, 2, rank)
    assert device == torch.device("cuda", rank) and two_ranks == [device, "tf32"]


def test_a_rank_without_a_gpu_of_its_own_is_refused(monkeypatch, two_ranks):
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    with pytest.raises(ConfigError, match=r"local rank 2 has no GPU of its own.*CUDA_VISIBLE_DEVICES=4,5"):
        tdist.setup("cuda")
    assert two_ranks == []


def test_cpu_ranks_touch_no_gpu(monkeypatch, two_ranks):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    _, device = tdist.setup("cpu")
    assert device == torch.device("cpu") and two_ranks == []

