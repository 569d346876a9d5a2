"""Where models and tensors live: the one set of functions that places them (docs/architecture.md).

Every model handed to precompute, the probe, the trainer or :func:`pipeline.train.evaluate.evaluate`
goes through :func:`place_model` (moved, then audited: every parameter and buffer on the target
device), every batch through :func:`to_device`, and every result that comes back to the host
through :func:`to_host` (one copy for all of a batch's tensors). A CUDA process sets its device
in each thread that touches CUDA with :func:`use_device`.

The ``meta`` device is a second device for CPU-only tests: a model placed on it runs every op
without memory or values, so a tensor left on the CPU while the model is on ``meta`` fails as it
would on a GPU, and :func:`to_host` returns zeros for it (the values are meaningless, the
placement is what is tested).

``MKD_SYNC_DEBUG=warn|error`` turns on ``torch.cuda.set_sync_debug_mode`` inside the batch loops
(:func:`sync_debug`): every host sync there warns or raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from pipeline.errors import ComputeError

SYNC_DEBUG_ENV = "MKD_SYNC_DEBUG"

__all__ = ["SYNC_DEBUG_ENV", "allowed_sync", "check_placed", "pin", "place_model", "sync_debug", "sync_debug_mode",
           "to_device", "to_host", "use_device"]


def place_model(model: nn.Module, device: str | torch.device, what: str = "model") -> nn.Module:
    """``model`` moved to ``device`` (in place, as ``Module.to``) and audited there; returns it."""
    model.to(torch.device(device))
    check_placed(model, device, what)
    return model


def check_placed(model: nn.Module, device: str | torch.device, what: str = "model") -> None:
    """Raise unless every parameter and buffer of ``model`` is on ``device``.

    ``cuda`` without an index matches any CUDA device (the process's current one is used).

    Raises:
        ComputeError: naming the first tensor found elsewhere (exit 5).
    """
    want = torch.device(device)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not _same(tensor.device, want):
            raise ComputeError(f"{what} is not on {want}: {name} is on {tensor.device} (place it with "
                               f"pipeline.placement.place_model before running it)")


def _same(have: torch.device, want: torch.device) -> bool:
    return have.type == want.type and (want.index is None or have.index in (None, want.index))


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, the host not waiting for the device.

    From the CPU the copy is always ``non_blocking``: torch's blocking host-to-device copy ends
    with a stream sync (the device's queued work drained first). From pinned memory the copy
    overlaps the host; from pageable memory CUDA stages it before the call returns, so the
    source may be reused at once either way.
    """
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=tensor.device.type == "cpu")


def pin(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` in pinned host memory when ``device`` is CUDA (copies to it can then overlap), else as it is."""
    return tensor.pin_memory() if torch.device(device).type == "cuda" and tensor.numel() else tensor


def to_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors on the CPU, in one device-to-host copy (the one sync of a batch).

    Tensors already on the CPU come back as they are; ``meta`` tensors as zeros of their shape
    and dtype (see the module docstring). The others are packed into one byte buffer on their
    device, copied once and unpacked.
    """
    out: list[torch.Tensor | None] = [t if t.device.type == "cpu" else None for t in tensors]
    far = [i for i, t in enumerate(tensors) if out[i] is None]
    for i in far:
        if tensors[i].device.type == "meta":
            out[i] = torch.zeros(tensors[i].shape, dtype=tensors[i].dtype)
    far = [i for i in far if out[i] is None]
    with allowed_sync():
        _copy_back(tensors, far, out)
    return list(out)  # type: ignore[arg-type]


def _copy_back(tensors: Sequence[torch.Tensor], far: list[int], out: list[torch.Tensor | None]) -> None:
    if len(far) == 1:
        out[far[0]] = tensors[far[0]].cpu()
    elif far:
        parts = [_bytes(tensors[i]) for i in far]
        flat = torch.cat(parts).cpu()
        start = 0
        for i, part in zip(far, parts):
            t = tensors[i]
            size = t.numel() * t.element_size()
            out[i] = flat[start:start + size].view(t.dtype).reshape(t.shape)
            start += part.numel()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes, padded to a multiple of 8 so that every tensor packed after it stays aligned."""
    raw = t.contiguous().reshape(-1).view(torch.uint8)
    pad = -raw.numel() % 8
    return torch.cat([raw, raw.new_zeros(pad)]) if pad else raw


def use_device(device: str | torch.device) -> None:
    """Make ``device`` this thread's current CUDA device (a no-op elsewhere).

    CUDA's current device is per thread: a Dask worker's setup runs in another thread than its
    tasks, and pinned memory, nvJPEG or a stream created in a thread that never set it open a
    context on GPU 0. Call it first in every thread that touches CUDA.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


@contextlib.contextmanager
def sync_debug(device: str | torch.device, mode: str | None = None) -> Iterator[None]:
    """Within the block, host syncs on CUDA warn or raise (``torch.cuda.set_sync_debug_mode``).

    ``mode``: ``warn``, ``error`` or ``default`` (off); default ``$MKD_SYNC_DEBUG``, off when unset.
    For batch loops that mean to sync only in :func:`to_host` (exempt, see :func:`allowed_sync`).
    """
    before = torch.cuda.get_sync_debug_mode() if torch.device(device).type == "cuda" else None
    if not sync_debug_mode(device, mode):
        yield
        return
    try:
        yield
    finally:
        assert before is not None  # sync_debug_mode turns it on only on CUDA
        torch.cuda.set_sync_debug_mode(before)


def sync_debug_mode(device: str | torch.device, mode: str | None = None) -> bool:
    """:func:`sync_debug` from here on, for a process that runs one loop (the trainer); whether it is on."""
    mode = mode or os.environ.get(SYNC_DEBUG_ENV) or "default"
    if torch.device(device).type != "cuda" or mode == "default":
        return False
    torch.cuda.set_sync_debug_mode(mode)
    return True


@contextlib.contextmanager
def allowed_sync() -> Iterator[None]:
    """A sync the loop means to do (its one transfer per batch): not reported by :func:`sync_debug`."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)
