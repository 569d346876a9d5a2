"""Data-parallel setup: the trainer runs as one process or under ``torchrun`` (DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline._gpu import enable_tf32, local_rank_device
from pipeline.placement import to_host


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world`` (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and records."""
        return self.rank == 0


def setup(device: str | torch.device = "cpu") -> tuple[DistInfo, torch.device]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE > 1``).

    Uses gloo on CPU and nccl on CUDA; a group the caller initialised already is reused.
    On CUDA each process takes ``cuda:LOCAL_RANK``: the LOCAL_RANK-th device of the
    ``CUDA_VISIBLE_DEVICES`` torchrun's parent had (``4,5``: ranks on physical GPUs 4 and 5),
    refused with a :class:`ConfigError` when there are fewer devices than local ranks; float32
    matmuls may use TF32 (:func:`pipeline._gpu.enable_tf32`).

    Returns:
        ``(DistInfo, device)``.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    else:
        info = DistInfo()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank_device(info.local_rank, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        enable_tf32()
    return info, device


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity when not distributed)."""
    if info.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return to_host(t)[0].tolist()
