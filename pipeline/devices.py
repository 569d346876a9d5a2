"""Where this process computes: the one resolution of ``compute.device: auto``."""

from __future__ import annotations


def resolve_device(setting: str) -> str:
    """``setting`` unless it is ``auto``: then ``cuda`` when this process sees a CUDA device, else ``cpu``.

    The planning process resolves ``auto`` with this (its tasks' precision and label fingerprint,
    the trainer's device); a Dask worker resolves its own (:func:`pipeline.precompute.worker.worker_device`).
    """
    if setting != "auto":
        return setting
    import torch  # here: Dask workers import this (through pipeline._gpu) before their setup sets torch's thread environment

    return "cuda" if torch.cuda.is_available() else "cpu"
