"""Data-parallel setup: the trainer runs as one process or under ``torchrun`` (DDP).

A rank that fails ends every rank promptly with its message (:func:`failing_together`): it
posts the message in the process group's store, and a watcher thread on each other rank, which
may be blocked in a collective, prints it and exits with the failing rank's code.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline._gpu import enable_tf32, local_rank_device
from pipeline.errors import PipelineError
from pipeline.placement import to_host, use_device

FAILED_KEY = "mkd-pipeline/failed"  # in the process group's store: the first failing rank's message
POLL_S = 0.25  # how often a rank looks for another's failure
_STOP_WATCHING: list = []  # this process's failure watchers, to stop before it exits


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
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank_device(local_rank, torch.cuda.device_count()))
    if device.type == "cuda":
        # before the group: NCCL binds each rank's communicator to the current device
        use_device(device)
        enable_tf32()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
        if info.world > 1:
            _watch_failures(info.rank)
    else:
        info = DistInfo()
    return info, device


def _store():  # torch.distributed.Store, or None
    """The default group's store (where torchrun's ranks rendezvoused), None without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # a torch without it: no fail-fast, torchrun still tears down
        return None


def _failure(store) -> dict | None:
    try:
        return json.loads(store.get(FAILED_KEY)) if store.check([FAILED_KEY]) else None
    except (RuntimeError, ValueError):  # the store is gone (the group is shutting down)
        return None


def _watch_failures(rank: int) -> None:
    """Start this rank's watcher: when another rank posts a failure, print it and exit now."""
    store = _store()
    try:
        # a connection of its own: a wait blocks its connection, and the main thread's store calls need theirs
        store = None if store is None else store.clone()
    except (AttributeError, RuntimeError):
        store = None
    if store is None:
        return

    stop = threading.Event()

    def watch() -> None:
        # polled (check does not block; a timed-out store wait logs a warning each time)
        while not stop.wait(POLL_S):
            try:
                if not store.check([FAILED_KEY]):
                    continue
            except RuntimeError:  # the store is gone: the run ended
                return
            failed = _failure(store)
            if failed is None or failed["rank"] == rank:
                return  # this rank's own failure: its main thread reports it
            print(f"error: rank {failed['rank']} failed: {failed['message']} (rank {rank} stops)",
                  file=sys.stderr, flush=True)
            os._exit(int(failed["exit_code"]))

    thread = threading.Thread(target=watch, name="mkd-rank-failures", daemon=True)
    thread.start()

    def stop_watching() -> None:
        # before the interpreter exits: a thread still inside a store call then aborts the process
        stop.set()
        thread.join(timeout=5)

    _STOP_WATCHING.append(stop_watching)
    atexit.register(stop_watching)


@contextlib.contextmanager
def failing_together() -> Iterator[None]:
    """Around a rank's work: an exception here ends every rank of the group with its message.

    The first failure is posted in the group's store (the others' watchers exit with it). An
    exception that follows another rank's failure (a collective broken by that rank's exit) is
    replaced by a :class:`PipelineError` carrying the first rank's message and exit code.
    """
    try:
        yield
    except BaseException as e:
        _fail(e)
        raise
    finally:
        while _STOP_WATCHING:  # the work is over: so is the watch (quiet when the store goes away next)
            _STOP_WATCHING.pop()()


def _fail(e: BaseException) -> None:
    """Post ``e`` as this rank's failure, or raise the failure another rank posted first."""
    store = _store()
    if store is None:
        return
    rank = dist.get_rank()
    first = _failure(store)
    if first is not None and first["rank"] != rank:
        raise PipelineError(f"rank {first['rank']} failed: {first['message']}",
                            exit_code=int(first["exit_code"])) from e
    code = e.exit_code if isinstance(e, PipelineError) else 1
    message = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
    try:  # first failure wins: compare_set writes only while the key is absent
        store.compare_set(FAILED_KEY, "", json.dumps({"rank": rank, "exit_code": code, "message": message}))
    except RuntimeError:
        pass  # the store is gone: torchrun tears the group down


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity when not distributed)."""
    if info.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return to_host(t)[0].tolist()
