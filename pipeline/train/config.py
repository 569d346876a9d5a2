"""Plain values the trainer takes; the runner maps the validated stage config onto them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch.nn as nn

KD_KINDS = ("kl", "hard", "off")


@dataclass(frozen=True)
class ShardRef:
    """One training shard as the trainer uses it.

    Attributes:
        name: the shard's name, its file name without ``.tar`` (what label partitions record).
        path: the tar file.
        rows: how many samples of the shard are used: the first ``rows`` that
            :func:`pipeline.data.shards.read_shard` yields (all of them unless a subset is
            used, see :func:`pipeline.train.stream.subset_rows`).
    """

    name: str
    path: Path
    rows: int


@dataclass(frozen=True)
class LabelRef:
    """A label partition to stream beside a shard.

    Attributes:
        path: the partition file (local path or ``pyarrow.fs`` URI).
        sha256: the file's sha256 as the run lock records it (checked on open when given).
        expect: metadata the partition must have, e.g. ``{"fingerprints": {...}}``
            (see :func:`pipeline.labels.open_partition`); ``shard`` and ``view_epoch`` are
            always checked.
    """

    path: str
    sha256: str | None = None
    expect: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RenderConfig:
    """How a model's input is rendered from a View: size, normalisation, interpolation."""

    size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not isinstance(self.size, int):
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    @classmethod
    def for_model(cls, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                  interpolation: str = "bicubic") -> "RenderConfig":
        """Render at the model's own input size (``patch_embed.img_size`` of a timm ViT)."""
        size = tuple(int(s) for s in model.patch_embed.img_size)
        return cls(size=size, mean=tuple(mean), std=tuple(std), interpolation=interpolation)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe (timm names), loss and checkpointing.

    Attributes:
        epochs: total epochs of the whole run (sets the LR schedule; a segment trains a part).
        batch_size: global batch size (split over ranks under DDP; must divide by world size).
        opt, lr, weight_decay, momentum, opt_kwargs: ``timm.optim.create_optimizer_v2``.
        sched, warmup_epochs, warmup_lr, min_lr, sched_kwargs: ``timm.scheduler.create_scheduler_v2``,
            stepped per update (``step_on_epochs=False``).
        clip_grad: gradient-norm clipping (None = off).
        kd: ``kl`` (KL at ``tau``), ``hard`` (CE on the teacher's argmax) or ``off`` (CE alone:
            no labels needed; also the teacher-training stage).
        lam, tau, ce_weight: loss ``ce_weight * CE + lam * KD`` (docs/design.md §1).
        smoothing: label smoothing of the ground-truth targets.
        checkpoint_every: write a resume record every this many updates (and at the end).
        amp: bf16 autocast; used on CUDA only (CPU runs stay in float32, deterministic).
        workers: threads rendering upcoming batches while the model trains (0 = render in the
            training thread). PIL releases the GIL while decoding and resizing, so threads
            overlap; batches are pure functions of their rows, so results do not change.
    """

    epochs: int
    batch_size: int = 64
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    opt_kwargs: dict[str, Any] = field(default_factory=dict)
    sched: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    sched_kwargs: dict[str, Any] = field(default_factory=dict)
    clip_grad: float | None = None
    kd: str = "kl"
    lam: float = 1.0
    tau: float = 1.0
    ce_weight: float = 1.0
    smoothing: float = 0.0
    checkpoint_every: int = 200
    amp: bool = True
    workers: int = 0

    def __post_init__(self) -> None:
        if self.kd not in KD_KINDS:
            raise ValueError(f"train.kd must be one of {KD_KINDS}, got {self.kd!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("train.epochs, train.batch_size and train.checkpoint_every must be >= 1")
        if self.workers < 0:
            raise ValueError(f"train.workers must be >= 0, got {self.workers}")
        if self.tau <= 0:
            raise ValueError(f"train.tau must be > 0, got {self.tau}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"train.smoothing must be in [0, 1), got {self.smoothing}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (part of the segment fingerprint)."""
        return asdict(self)


@dataclass(frozen=True)
class OnlineTeacher:
    """The paper's baseline: the teacher in the loop, masked by the current student each step.

    Attributes:
        model: the teacher (a maskable timm ViT, see :func:`maskedkd.masked_forward`).
        render: how the teacher's view is rendered (its own size and normalisation).
        policy: masking policy name (:data:`maskedkd.POLICIES`).
        keep: patches kept (``None`` = all, the full teacher).
    """

    model: nn.Module
    render: RenderConfig
    policy: str = "student"
    keep: int | None = None
