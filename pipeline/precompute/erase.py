"""Random erasing on the device: each erased view's noise drawn ahead on the host, one copy per batch.

The noise of an erased box is the view's (:func:`maskedkd.rendering.view_erase_fill`, a CPU generator
seeded by the view): the trainer renders it on the CPU, so the teacher must see the same bits.
The feed's render threads draw it while they render the view (ahead of the device); a batch's
fills go to the device in one non-blocking copy from pinned memory, and
:func:`maskedkd.rendering.finish_views` writes them there. On the CPU the values and the order of
operations are those of :func:`maskedkd.rendering.render_batch`, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskedkd.rendering import view_erase_fill
from maskedkd.views import View
from pipeline.placement import pin, to_device


def draw_fill(view: View, channels: int, hw: tuple[int, int]) -> torch.Tensor | None:
    """The noise random erasing writes into ``view`` at ``hw`` (None: not erased); host side."""
    return view_erase_fill(view, channels, hw)


class FillStage:
    """Moves a batch's erase fills to the device in one copy, through two pinned buffers in turn.

    A buffer is written again two batches later, once the batch loop has synced on the batch
    that used it (its one transfer of labels per batch), so its copy has finished.
    """

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor | None] = [None, None]

    def to_device(self, fills: Sequence[torch.Tensor | None], device: str | torch.device,
                  slot: int) -> dict[int, torch.Tensor]:
        """``{position: fill on device}`` for the erased positions of ``fills``."""
        present = [(i, f) for i, f in enumerate(fills) if f is not None]
        if not present or torch.device(device).type == "cpu":
            return dict(present)
        total = sum(f.numel() for _, f in present)
        buf = self.buffers[slot]
        if buf is None or buf.numel() < total:
            buf = self.buffers[slot] = pin(torch.empty(max(total, 2 * (0 if buf is None else buf.numel()))), device)
        torch.cat([f.reshape(-1) for _, f in present], out=buf[:total])
        flat = to_device(buf[:total], device)
        out, start = {}, 0
        for i, f in present:
            out[i] = flat[start:start + f.numel()].view(f.shape)
            start += f.numel()
        return out
