"""Content fingerprints: sha256 over canonical bytes (docs/design.md §5).

Every cached artefact (label partition, checkpoint, stage output) is addressed by the
fingerprints of its inputs, so identical inputs land on the same path and are reused as is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

_CHUNK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of :func:`canonical_json` of ``obj``."""
    return sha256_bytes(canonical_json(obj))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def state_dict_fingerprint(state_dict: Mapping[str, Any], name: str = "") -> str:
    """sha256 over a model's name and its tensors in sorted key order (name, dtype, shape, bytes).

    Independent of how the weights were saved (file format, key order), so the same weights
    always give the same fingerprint.
    """
    import torch

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


def combine(**parts: str) -> str:
    """One fingerprint from named fingerprints (order-independent in the names)."""
    return sha256_json(parts)
