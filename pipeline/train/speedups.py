"""``train.compile`` and ``train.channels_last``: how the trained model runs, not what it computes.

As timm's train.py does it: the model (and every input batch) in ``channels_last`` memory format, and
``torch.compile`` over the (DDP-wrapped) training model. Only the training forward is compiled: the
module itself is never replaced, so checkpoints, resume records and the EMA hold its plain state_dict
(no ``_orig_mod.`` prefixes), and evaluation and saliency run it eagerly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.errors import ComputeError


def to_channels_last(model: nn.Module, cfg) -> None:
    """Put ``model``'s weights in channels_last memory format (in place) when ``cfg.channels_last``."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)


def batch_format(images: torch.Tensor, cfg) -> torch.Tensor:
    """``images`` in the memory format the model trains in (channels_last for a 4-d batch when ``cfg.channels_last``)."""
    if cfg.channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


class CompiledForward(nn.Module):
    """``torch.compile`` of ``model`` (``mode``: torch's modes; None: its default) as a module whose
    compile failures are a :class:`ComputeError` naming ``train.compile``. Call it only to train:
    ``model`` itself stays the one saved and evaluated."""

    def __init__(self, model: nn.Module, mode: str | None) -> None:
        super().__init__()
        self.compiled = torch.compile(model, mode=mode)

    def forward(self, *args, **kwargs):
        try:
            return self.compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as e:  # raised on the first call, where compiling happens
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ComputeError(f"train.compile: torch.compile failed on this machine ({type(e).__name__}: {first}); "
                               f"train without it (train.compile: false)") from e


def training_forward(model: nn.Module, cfg) -> nn.Module:
    """What the training step calls: ``model`` (the student, or its DDP wrapper), compiled when ``cfg.compile``."""
    if not cfg.compile:
        return model
    return CompiledForward(model, cfg.compile_mode)
