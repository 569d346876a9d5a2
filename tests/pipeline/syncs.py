"""Counting what makes the host wait for a device, on the CPU (the device is ``meta`` in these tests)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

# Tensor methods that read a device tensor back to the host (each a sync on a GPU)
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


def count_syncs(monkeypatch, module: ModuleType) -> dict[str, Any]:
    """``{"to_host": calls of module.to_host, "syncs": [syncing methods called on non-CPU tensors]}``,
    filled while the test runs (``module`` is the code under test, which transfers through ``to_host``)."""
    seen: dict[str, Any] = {"to_host": 0, "syncs": []}
    real = module.to_host

    def to_host(*tensors):
        seen["to_host"] += 1
        return real(*tensors)

    monkeypatch.setattr(module, "to_host", to_host)
    for name in SYNCING:
        method = getattr(torch.Tensor, name)

        def wrapped(self, *a, _method=method, _name=name, **kw):
            if self.device.type != "cpu":
                seen["syncs"].append(_name)
            return _method(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return seen
