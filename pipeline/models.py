"""Models: created through timm's registry, weights loaded from files only (never from a hub).

Checkpoints are plain timm state_dicts saved with ``torch.save`` (loadable with
``timm.create_model(name, checkpoint_path=...)``); weights files may also be ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_bytes
from pipeline.errors import ConfigError, DataError


def create_model(name: str, kwargs: Mapping[str, Any] | None = None, *, seed: int | None = None,
                 weights: str | Path | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``, seeded init or weights from a file."""
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **dict(kwargs or {}))
    if weights is not None:
        load_weights(model, weights)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, or a torch file read with ``weights_only=True``.

    Accepts the common wrappers ``{"model": ...}``, ``{"state_dict": ...}``, ``{"model_ema": ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise DataError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    for wrapper in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path}: not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model`` strictly; a mismatch names the file and the keys."""
    sd = read_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise DataError(f"{path}: weights do not fit {type(model).__name__}: {' '.join(first)}") from None


def checkpoint_bytes(model: nn.Module) -> bytes:
    """The bytes of a plain state_dict checkpoint (deterministic for the same weights)."""
    buf = io.BytesIO()
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, buf)
    return buf.getvalue()


def save_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Atomically save ``model``'s state_dict to ``path``; returns the file's sha256."""
    data = checkpoint_bytes(model)
    write_atomic(path, data)
    return sha256_bytes(data)


def state_dict_fingerprint(state_dict: Mapping[str, Any], name: str = "") -> str:
    """sha256 over a model's name and its tensors in sorted key order (name, dtype, shape, bytes).

    Independent of how the weights were saved (file format, key order), so the same weights
    always give the same fingerprint.
    """
    h = hashlib.sha256(name.encode() + b"\0")
    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous()
        h.update(key.encode() + b"\0" + str(t.dtype).encode() + b"\0" + str(tuple(t.shape)).encode())
        # view as bytes via numpy; bfloat16 has no numpy dtype, so reinterpret as int16 first
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module, name: str) -> str:
    """Fingerprint of a model's weights and its timm name (see :func:`state_dict_fingerprint`)."""
    return state_dict_fingerprint(model.state_dict(), name)
