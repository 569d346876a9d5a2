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



def test_setup_sets_the_device_before_the_nccl_group_and_binds_it(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls and calls[-1][0] == "init"))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend, kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(tdist, "enable_tf32", lambda: None)
    monkeypatch.setattr(tdist, "_watch_failures", lambda rank: None)
    tdist.setup("cuda")
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl", {"device_id": torch.device("cuda", 1)})]


def test_an_error_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    # two gloo processes on the CPU: rank 1 raises while rank 0 waits in an all_reduce
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[3]
    procs = []
    for rank in (0, 1):
        env = {**__import__("os").environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.pipeline.train.rank_fails"], cwd=root, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        # far below gloo's 30-minute collective timeout: only fail-fast ends rank 0 in time
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = [p.returncode for p in procs]
    assert codes == [9, 9], outs
    assert "rank one cannot go on" in outs[1][1]
    assert "rank 1 failed: rank one cannot go on" in outs[0][1], outs[0][1]
