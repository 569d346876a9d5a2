"""The training recipe: the ``train`` section (the student's) and ``teacher.train`` (a teacher
trained or fine-tuned first), timm optimizer and scheduler names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from timm.optim import list_optimizers

from pipeline.config.data_views import ViewsConfig
from pipeline.config.validation import FieldProblems, Section, did_you_mean


class TrainConfig(Section):
    """The training recipe (timm optimizer and scheduler names)."""

    optimizer: str = Field("adamw", description="timm optimizer name (timm.optim.list_optimizers()).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate; or give lr_base instead.")
    lr_base: float | None = Field(
        None, gt=0, description="Learning rate per lr_base_size samples: lr = lr_base * batch_size / lr_base_size (timm)."
    )
    lr_base_size: int = Field(512, ge=1, description="Batch size lr_base refers to.")
    weight_decay: float = Field(0.05, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of SGD-style optimizers.")
    clip_grad: float | None = Field(None, gt=0, description="Gradient-norm clipping; null: off.")
    sched: Literal["cosine", "step", "none"] = Field("cosine", description="timm scheduler: cosine, step or none.")
    decay_epochs: float = Field(30, gt=0, description="step: epochs between decays.")
    decay_rate: float = Field(0.1, gt=0, le=1, description="step: factor per decay.")
    warmup_epochs: int = Field(5, ge=0, description="Linear warm-up epochs from warmup_lr.")
    warmup_lr: float = Field(1e-6, ge=0, description="Learning rate at the start of warm-up.")
    min_lr: float = Field(1e-5, ge=0, description="Floor of the cosine schedule.")
    batch_size: int = Field(256, ge=1, description="Global batch size (split across torchrun ranks).")
    lam: float = Field(1.0, ge=0, description="Weight of the KD term: loss = ce_weight * CE + lam * KD.")
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    tau: float = Field(1.0, gt=0, description="KD temperature; must be one of labels.temperatures (top-K labels).")
    kd: Literal["kl", "hard", "off"] = Field(
        "kl", description="KD kind: kl (soft, tau^2-scaled), hard (CE on the teacher's argmax), off (CE only)."
    )
    smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the CE term.")
    seed: int = Field(0, description="Seed of the data order and of dropout / drop-path (views: views.seed; the teacher's init: this seed too).")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes decoding and rendering upcoming batches while the model trains "
                             "(0: in the training process)."
    )
    lanes: int = Field(
        1, ge=1, description="Lanes of the epoch order: each global batch is one chunk of batch_size/lanes rows of "
                             "every lane; torchrun ranks take whole lanes (reading only their shards) when their number "
                             "divides lanes. Not tied to the world size, so neither is the order (pipeline.labels.order)."
    )
    interleave: int = Field(
        1, ge=1, description="Shards whose rows the epoch order shuffles together (1: one shard after the other)."
    )
    eval_every: int = Field(
        1, ge=1, description="Evaluate on data.val every this many epochs, and always at the last epoch of a segment."
    )
    checkpoint_every: int = Field(200, ge=1, description="Write a resume record every this many updates.")
    amp: bool = Field(True, description="bf16 autocast when training on CUDA (CPU stays float32).")
    # DeiT's extras (timm's train.py: --model-ema*, --grad-accum-steps, --torchcompile*, --channels-last)
    model_ema: bool = Field(False, description="Keep an EMA of the weights (timm's ModelEmaV3), updated after each "
                            "optimizer step and evaluated beside the model (ema_val_top1); the next milestone's "
                            "checkpoint stays the trained weights.")
    model_ema_decay: float = Field(0.99996, gt=0, lt=1, description="EMA decay per optimizer step (DeiT: 0.99996).")
    model_ema_warmup: bool = Field(False, description="ModelEmaV3's decay warm-up (1 - (1 + step)^-2/3, capped at the decay).")
    grad_accum_steps: int = Field(1, ge=1, description="Batches of batch_size per optimizer step (effective batch: "
                                  "batch_size x this; the LR schedule and lr_base count optimizer steps).")
    compile: bool = Field(False, description="torch.compile the model's training forward (checkpoints stay plain).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = Field(
        None, description="torch.compile mode with compile: true; null: torch's default.")
    channels_last: bool = Field(False, description="The model and its input batches in channels_last memory format.")

    @field_validator("kd", mode="before")
    @classmethod
    def _kd_bool(cls, v: Any) -> Any:
        return "off" if v is False else v  # `kd: off` parsed by a YAML 1.1 loader

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        known = [name for name in list_optimizers() if isinstance(name, str)]  # names only (no descriptions asked)
        if v.lower() not in known:
            raise ValueError(f"unknown timm optimizer {v!r}{did_you_mean(v.lower(), known)}; see timm.optim.list_optimizers()")
        return v.lower()

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.lr is not None and self.lr_base is not None:
            raise FieldProblems(("lr_base", "set lr or lr_base, not both"))
        if self.lr is None and self.lr_base is None:
            self.lr_base = 5e-4  # DeiT / timm default: 5e-4 per 512 samples
        if self.compile_mode is not None and not self.compile:
            raise FieldProblems(("compile_mode", "needs compile: true"))
        if self.min_lr > self.learning_rate:
            raise FieldProblems(("min_lr", f"is {self.min_lr}, above the learning rate {self.learning_rate}"))
        return self

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``lr``, or ``lr_base * batch_size * grad_accum_steps / lr_base_size``
        (timm's train.py scales by the samples of one optimizer step)."""
        if self.lr is not None:
            return self.lr
        return float(self.lr_base or 5e-4) * self.batch_size * self.grad_accum_steps / self.lr_base_size


class TeacherTrainConfig(TrainConfig):
    """Train the teacher first, as a stage of its own, from the labels only: cross-entropy (and, with the
    full-view options, a consistency KL between its own two views of a batch); lam, tau unused."""

    epochs: int = Field(ge=1, description="Epochs of teacher training.")
    kd: Literal["off"] = Field("off", description="Always off: the teacher learns from labels only.")
    views: ViewsConfig | None = Field(None, description="Views for teacher training; null: the stage's views block.")
    patch_drop_rate: float = Field(0.0, ge=0, lt=1, description="timm's patch_drop_rate while training: drop this share of "
                                   "patch tokens at random, so the teacher learns to tolerate masks (nothing at eval).")
    full_view_weight: float = Field(0.0, ge=0, description="Also train on the full (undropped) view of each batch: "
                                    "loss += this x its cross-entropy, so the unmasked accuracy is kept while the "
                                    "dropped view learns masks (one more forward and backward per step at all "
                                    "tokens). 0: the dropped view only. Needs patch_drop_rate.")
    consistency_weight: float = Field(0.0, ge=0, description="loss += this x KL from the full view's prediction (no "
                                      "gradient through it) into the dropped view's: the dropped view learns to agree "
                                      "with the unmasked teacher, which is what masked labels need. 0: off. Needs "
                                      "patch_drop_rate.")

    @model_validator(mode="after")
    def _teacher_check(self) -> "TeacherTrainConfig":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise FieldProblems(("warmup_epochs", f"must be less than epochs ({self.epochs}), got {self.warmup_epochs}"))
        for name in ("full_view_weight", "consistency_weight"):
            if getattr(self, name) and not self.patch_drop_rate:
                raise FieldProblems((name, "needs patch_drop_rate above 0 (the full view is the only view without it)"))
        return self

    @property
    def trains_full_view(self) -> bool:
        """Whether each step also runs the full view (for its cross-entropy or as the consistency target)."""
        return bool(self.full_view_weight or self.consistency_weight)
