"""Gradient accumulation (``train.grad_accum_steps``): how an epoch's batches group into optimizer steps.

As timm's train.py does it: every ``steps`` batches make one optimizer step, the epoch's last group
may be shorter (no batch is dropped), each batch's loss is divided by the size of its group, and under
DDP the gradients are all-reduced only on a group's last batch. The LR schedule and the global update
count advance once per group. A resume record is only written after a group's last batch, so a
resumed segment never holds half-accumulated gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager


@dataclass(frozen=True)
class Accumulation:
    """The grouping of an epoch of ``batches`` batches into optimizer steps of ``steps`` batches.

    Attributes:
        steps: batches per optimizer step (``train.grad_accum_steps``).
        batches: batches in an epoch.
    """

    steps: int
    batches: int

    @property
    def updates(self) -> int:
        """Optimizer steps per epoch (the last may accumulate fewer batches)."""
        return -(-self.batches // self.steps)

    def first(self, position: int) -> bool:
        """Whether batch ``position`` of the epoch starts a group (its gradients start from zero)."""
        return position % self.steps == 0

    def last(self, position: int) -> bool:
        """Whether batch ``position`` ends a group: the optimizer steps after it."""
        return position % self.steps == self.steps - 1 or position == self.batches - 1

    def group_size(self, position: int) -> int:
        """Batches in the group of batch ``position`` (its loss is divided by this)."""
        return min(self.steps, self.batches - (position - position % self.steps))


def no_sync_unless(last: bool, ddp: Any) -> ContextManager[Any]:
    """DDP's ``no_sync()`` of ``ddp`` (a DistributedDataParallel, or None) on a batch that does not end
    its group: the forward and backward accumulate locally, the group's last batch all-reduces them."""
    if last or ddp is None:
        return contextlib.nullcontext()
    return ddp.no_sync()
