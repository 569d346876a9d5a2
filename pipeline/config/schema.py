"""The stage config's schema: one pydantic model per YAML section (see :mod:`pipeline.config`).

Every section forbids unknown keys; validators raise ``FieldProblems`` naming the dotted field, which
:mod:`pipeline.config.loader` turns into ``file: field: message`` lines (exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import timm
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from timm.optim import list_optimizers

from maskedkd import DEFAULT_LADDER, POLICIES, Budget, needs_saliency, resolve_keep
from maskedkd.resize import TORCH_INTERPOLATIONS
from maskedkd.views import ViewSpec
from pipeline._gpu import resolve_precision
from pipeline.config.model_info import ModelInfo, model_info
from pipeline.models import is_sourced_name

SCHEDULER_ENV = "MKD_SCHEDULER"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
IMPORT_HINT = ("create it with `mkd-pipeline data import fashion-mnist --out {root}` "
               "or `mkd-pipeline data import imagefolder SRC --out {root} --split NAME`")
# Model kwargs that would fetch or load weights behind the config's back.
_FORBIDDEN_KWARGS = {
    "pretrained": "use the model's `pretrained: true` field (its fingerprint records the file loaded)",
    "pretrained_cfg": "weights come from `pretrained` or `weights`; preprocessing from `mean`, `std`, `interpolation`",
    "pretrained_cfg_overlay": "weights come from `pretrained` or `weights`; preprocessing from `mean`, `std`, `interpolation`",
    "checkpoint_path": "use the `weights` field",
}


# ----------------------------------------------------------------------------- problems


class FieldProblems(ValueError):
    """Raised inside validators: ``(dotted field relative to the model, message)`` pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in self.problems))


def _check_files(info: ValidationInfo) -> bool:
    ctx = info.context or {}
    return bool(ctx.get("check_files", True))


def _abspath(p: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(p)))


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def did_you_mean(word: str, options: list[str] | set[str]) -> str:
    """`` (did you mean 'x'?)`` naming the option closest to ``word``, or ``""`` when none is close."""
    match = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ----------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """The dataset: a folder of WebDataset shards with its ``manifest.json``."""

    root: Path = Field(
        description="Dataset folder holding manifest.json and the shards; create one with "
        "`mkd-pipeline data import fashion-mnist --out DIR`. Relative to the working directory."
    )
    train: str = Field("train", description="Split the student (and a trained teacher) learn from.")
    val: str | None = Field("test", description="Split to evaluate on; null: no evaluation.")
    subset: int | None = Field(None, ge=1, description="Use only the first N training samples (demos, tests).")
    val_subset: int | None = Field(None, ge=1, description="Use only the first N evaluation samples.")
    num_classes: int = Field(ge=2, description="Number of classes; both models' heads must match it.")
    mean: list[float] = Field(
        [0.485, 0.456, 0.406], min_length=1, description="Per-channel normalisation mean (length = channels) of a model without its own "
                                                 "(teacher.mean, or a pretrained model's pretrained_cfg)."
    )
    std: list[float] = Field(
        [0.229, 0.224, 0.225], min_length=1, description="Per-channel normalisation std of a model without its own (see mean)."
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field(
        "bicubic", description="Resampling used to render views of a model without its own (see mean)."
    )
    resize: Literal["pil", "torch"] = Field(
        "pil", description="Who resizes a view's crop: pil (Pillow, from the fractional crop box, timm's default), or "
                           "torch (uint8 antialiased kernels on the whole-pixel box: ~4x less CPU than Pillow for the resize "
                           "of a 224 px view with AVX2; other pixels than pil, so part of the view fingerprint; "
                           "bilinear or bicubic only).",
    )

    @field_validator("root")
    @classmethod
    def _abs_root(cls, v: Path) -> Path:
        return _abspath(v)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"every std must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "DataConfig":
        problems = []
        if len(self.std) != len(self.mean):
            problems.append(("std", f"has {len(self.std)} values but mean has {len(self.mean)}"))
        if self.resize == "torch" and self.interpolation not in TORCH_INTERPOLATIONS:
            problems.append(("resize", f"is torch, which antialiases {' and '.join(TORCH_INTERPOLATIONS)} only, but "
                                       f"interpolation is {self.interpolation}; use resize: pil"))
        if _check_files(info):
            problems += self._check_root()
        if problems:
            raise FieldProblems(*problems)
        return self

    def _check_root(self) -> list[tuple[str, str]]:
        how = IMPORT_HINT.format(root=self.root)
        if not self.root.is_dir():
            return [("root", f"dataset folder {self.root} does not exist; {how}")]
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            return [("root", f"{self.root} has no manifest.json; {how}")]
        try:
            doc = json.loads(manifest.read_text())
        except (OSError, ValueError) as e:
            return [("root", f"{manifest} is not readable JSON ({e}); re-import the dataset")]
        problems = []
        # Only what the manifest states is checked; `mkd-pipeline data verify` checks the rest.
        splits = doc.get("splits") if isinstance(doc, dict) else None
        if isinstance(splits, dict):
            for field, split, limit in (("train", self.train, self.subset), ("val", self.val, self.val_subset)):
                if split is None:
                    continue
                if split not in splits:
                    problems.append((field, f"split {split!r} is not in {manifest}; it has {sorted(splits)}"))
                    continue
                n = splits[split].get("num_samples") if isinstance(splits[split], dict) else None
                if limit is not None and isinstance(n, int) and limit > n:
                    sub = "subset" if field == "train" else "val_subset"
                    problems.append((sub, f"asks for {limit} samples but split {split!r} has {n}"))
        classes = doc.get("classes") if isinstance(doc, dict) else None
        if isinstance(classes, list) and len(classes) != self.num_classes:
            problems.append(("num_classes", f"is {self.num_classes} but {manifest} has {len(classes)} classes"))
        return problems


class ViewsConfig(_Section):
    """How training views are drawn; every :class:`maskedkd.views.ViewSpec` field, plus seed and pool.

    Views are a pure function of ``(seed, sample key, view epoch)``, so precompute and trainer
    derive the same ones (docs/design.md §2).
    """

    seed: int = Field(0, description="Seed of every view draw.")
    pool: Union[int, Literal["epochs"]] = Field(
        "epochs", description="'epochs': fresh views every epoch; an int P: epoch e uses view epoch e mod P."
    )
    scale: tuple[float, float] = Field((0.08, 1.0), description="Random-resized-crop area range (fraction of the image).")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="Random-resized-crop aspect-ratio range (w/h).")
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    shift: int = Field(0, ge=0, le=32767, description="Maximal random translation in source pixels, zero-padded.")
    auto_augment: str | None = Field(None, description="timm RandAugment string, e.g. 'rand-m9-mstd0.5-inc1'; null: off.")
    reprob: float = Field(0.0, ge=0, le=1, description="Random-erasing probability.")
    remode: Literal["pixel", "rand", "const"] = Field("pixel", description="Random-erasing fill.")
    mixup: float = Field(0.0, ge=0, description="Mixup Beta alpha (0: off).")
    cutmix: float = Field(0.0, ge=0, description="CutMix Beta alpha (0: off).")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Probability of mixing a sample when mixup/cutmix is on.")
    switch_prob: float = Field(0.5, ge=0, le=1, description="Probability of CutMix over Mixup when both are on.")
    mix_window: int = Field(64, ge=2, description="Mixing partners come from aligned blocks of this many shard positions.")

    @field_validator("pool", mode="plain")
    @classmethod
    def _pool(cls, v: Any) -> int | str:
        if v == "epochs" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be 'epochs' or an integer >= 1 (view pool size), got {v!r}")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"must be [lo, hi] with 0 < lo <= hi <= 1, got {list(v)}")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be [lo, hi] with 0 < lo <= hi, got {list(v)}")
        return v

    @field_validator("auto_augment")
    @classmethod
    def _auto_augment(cls, v: str | None) -> str | None:
        if v is not None:
            ViewSpec(auto_augment=v)  # its ValueError says what is wrong with the string
        return v

    @model_validator(mode="after")
    def _spec(self) -> "ViewsConfig":
        try:
            self.view_spec()
        except (ValueError, TypeError) as e:  # a rule of ViewSpec this schema does not mirror
            raise FieldProblems(("", str(e))) from None
        return self

    def view_spec(self) -> ViewSpec:
        """The :class:`maskedkd.views.ViewSpec` these settings describe."""
        names = [f.name for f in dataclasses.fields(ViewSpec)]
        return ViewSpec(**{n: getattr(self, n) for n in names if n in type(self).model_fields})

    @property
    def pool_size(self) -> int | None:
        """``pool`` as a size: None for ``epochs`` (a fresh view every epoch), else P; the view
        epoch of an epoch is :func:`pipeline.labels.contract.view_epoch_of` of it."""
        return None if self.pool == "epochs" else int(self.pool)


class TrainConfig(_Section):
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
    eval_every: int = Field(
        1, ge=1, description="Evaluate on data.val every this many epochs, and always at the last epoch of a segment."
    )
    checkpoint_every: int = Field(200, ge=1, description="Write a resume record every this many updates.")
    amp: bool = Field(True, description="bf16 autocast when training on CUDA (CPU stays float32).")

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
        if self.min_lr > self.learning_rate:
            raise FieldProblems(("min_lr", f"is {self.min_lr}, above the learning rate {self.learning_rate}"))
        return self

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``lr``, or ``lr_base * batch_size / lr_base_size``."""
        if self.lr is not None:
            return self.lr
        return float(self.lr_base or 5e-4) * self.batch_size / self.lr_base_size


class TeacherTrainConfig(TrainConfig):
    """Train the teacher first, as a stage of its own, with cross-entropy only (lam, tau unused)."""

    epochs: int = Field(ge=1, description="Epochs of teacher training.")
    kd: Literal["off"] = Field("off", description="Always off: the teacher learns from labels only.")
    views: ViewsConfig | None = Field(None, description="Views for teacher training; null: the stage's views block.")
    patch_drop_rate: float = Field(0.0, ge=0, lt=1, description="timm's patch_drop_rate while training: drop this share of "
                                   "patch tokens at random, so the teacher learns to tolerate masks (nothing at eval).")

    @model_validator(mode="after")
    def _teacher_check(self) -> "TeacherTrainConfig":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise FieldProblems(("warmup_epochs", f"must be less than epochs ({self.epochs}), got {self.warmup_epochs}"))
        return self


class _ModelConfig(_Section):
    model: str = Field(description="timm model name (timm.list_models(), a pretrained tag such as "
                                   "deit_base_patch16_224.fb_in1k, or hf-hub:ORG/NAME, local-dir:PATH).")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of timm.create_model (img_size, patch_size, in_chans, ...)."
    )
    pretrained: bool = Field(
        False, description="Load the model name's pretrained weights through timm's loader (create_model(name, "
                           "pretrained=True): the Hugging Face hub and its cache, HF_HUB_OFFLINE=1 the cache only); "
                           "with weights: that file holds them. Also sets the model's preprocessing (pretrained_cfg).",
    )
    weights: Path | None = Field(
        None, description="Weights file (.safetensors, .pth, .pt, .bin, .npz), loaded through timm's loader "
                          "(position embeddings resampled to img_size); relative to the working directory.",
    )
    mean: list[float] | None = Field(
        None, min_length=1, description="This model's normalisation mean; null: its pretrained_cfg's when "
                                        "pretrained, else data.mean.",
    )
    std: list[float] | None = Field(
        None, min_length=1, description="This model's normalisation std; null: its pretrained_cfg's when "
                                        "pretrained, else data.std.",
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] | None = Field(
        None, description="This model's view resampling; null: its pretrained_cfg's when pretrained, else data.interpolation.",
    )

    crop_pct: float | None = Field(
        None, gt=0, le=1, description="Evaluation only: centre crop of this share of the image per side (timm's "
                                      "crop_pct); null: its pretrained_cfg's when pretrained, else the whole image.",
    )

    _info: ModelInfo | None = PrivateAttr(None)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if is_sourced_name(v):
            return v
        if not timm.is_model(v):
            near = difflib.get_close_matches(v, timm.list_models(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else "; see timm.list_models()"
            raise ValueError(f"unknown timm model {v!r}{hint}")
        return v

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, why in _FORBIDDEN_KWARGS.items():
            if key in v:
                raise ValueError(f"{key!r} is not allowed here: {why}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if v.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(f"must be a {', '.join(WEIGHT_SUFFIXES)} file, got {str(v)!r}")
        return _abspath(v)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"every std must be > 0, got {v}")
        return v

    def _check_model(self, info: ValidationInfo) -> None:
        """Weights file exists (when checking files) and the kwargs build the model; raises FieldProblems."""
        problems = []
        if self.weights is not None and _check_files(info) and not self.weights.is_file():
            problems.append(("weights", f"file {self.weights} does not exist"))
        if self.model.startswith("local-dir:") and _check_files(info):
            folder = Path(self.model.removeprefix("local-dir:")).expanduser()
            if not (folder / "config.json").is_file():
                problems.append(("model", f"{folder} has no config.json (timm's local-dir: layout: config.json and "
                                          "model.safetensors or pytorch_model.bin, as timm's save_for_hf writes them)"))
                raise FieldProblems(*problems)
        if is_sourced_name(self.model) and not (self.pretrained or self.weights):
            problems.append(("pretrained", f"{self.model.split(':')[0]}: names a model with its weights; set "
                                           "pretrained: true (or give weights)"))
        if (self.mean is None) != (self.std is None):
            problems.append(("mean" if self.mean is None else "std", "give mean and std together"))
        elif self.mean is not None and len(self.mean) != len(self.std or []):
            problems.append(("std", f"has {len(self.std or [])} values but mean has {len(self.mean)}"))
        try:
            self._info = model_info(self.model, self.kwargs)
        except Exception as e:  # noqa: BLE001 - timm raises all kinds for bad kwargs (and a hub name offline)
            msg = str(e).strip() or type(e).__name__
            # a hub name's config.json may be what failed (offline, not cached): name the model then
            field = "model" if is_sourced_name(self.model) else "kwargs"
            problems.append((field, f"timm.create_model({self.model!r}, **kwargs) fails: {msg}"))
        if problems:
            raise FieldProblems(*problems)

    def info(self) -> ModelInfo:
        """Patch grid, channels, classes and maskability of this model (cheap, cached)."""
        if self._info is None:
            self._info = model_info(self.model, self.kwargs)
        return self._info

    def preprocessing(self, data: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...], str]:
        """``(mean, std, interpolation)`` this model sees views with.

        Each value, in order: this section's own field; the model's ``pretrained_cfg`` when its
        weights are pretrained (``pretrained: true``); else the ``data`` section's (today's shared
        default). A model without ``pretrained`` therefore renders exactly as before these fields.
        """
        pre = self.info().pretrained if self.pretrained else None
        if self.mean is not None:
            mean, std = tuple(self.mean), tuple(self.std or ())
        elif pre is not None and pre.mean is not None and pre.std is not None:
            mean, std = pre.mean, pre.std
        else:
            mean, std = tuple(data.mean), tuple(data.std)
        interpolation = self.interpolation or (pre.interpolation if pre is not None else None) or data.interpolation
        if interpolation not in _INTERPOLATIONS:
            interpolation = data.interpolation  # a pretrained_cfg name views cannot render (e.g. "random")
        return mean, std, interpolation

    def eval_crop_pct(self) -> float | None:
        """The evaluation centre crop: ``crop_pct``, else its pretrained_cfg's when pretrained, else None
        (the whole image, as before the field)."""
        if self.crop_pct is not None:
            return self.crop_pct
        return self.info().pretrained.crop_pct if self.pretrained else None


class TeacherConfig(_ModelConfig):
    """The teacher: pretrained or a weights file (frozen), trained first (``train``), or both (a fine-tune)."""

    train: TeacherTrainConfig | None = Field(
        None, description="Train the teacher first with this recipe (CE only); with pretrained or weights: a "
                          "fine-tune from them (the head re-initialised when it has other classes than data.num_classes).",
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "TeacherConfig":
        if self.weights is None and not self.pretrained and self.train is None:
            raise FieldProblems(("weights", "the teacher needs weights (a file), pretrained: true (the model name's "
                                        "weights through timm), or a train block (train it first)"))
        self._check_model(info)
        return self

    @property
    def frozen(self) -> bool:
        """Used as loaded (no ``train`` block): its classifier must already predict the dataset's classes."""
        return self.train is None


class StudentConfig(_ModelConfig):
    """The student: a timm model initialised from a seed, a weights file, or its pretrained weights."""

    init_seed: int | None = Field(
        None, description="Seed of the random initialisation (default 0 without weights; with pretrained: of a "
                          "re-initialised head).",
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "StudentConfig":
        if self.weights is not None and not self.pretrained and self.init_seed is not None:
            raise FieldProblems(("init_seed", "give either init_seed or weights, not both"))
        if (self.weights is None or self.pretrained) and self.init_seed is None:
            self.init_seed = 0
        self._check_model(info)
        return self


class ScheduleConfig(_Section):
    """Epochs, and the milestones where the student is checkpointed and masks are recomputed."""

    epochs: int = Field(ge=1, description="Student training epochs.")
    milestones: list[int] | None = Field(
        None, description="Epochs starting a segment: strictly increasing, first 0, all < epochs. Default [0]."
    )
    every: int | None = Field(None, ge=1, description="Shorthand for milestones 0, every, 2*every, ... (< epochs).")
    lag: Literal[0, 1] = Field(
        0, description="1: labels of segment i+1 come from checkpoint i, so precompute overlaps training."
    )

    @model_validator(mode="after")
    def _check(self) -> "ScheduleConfig":
        if self.every is not None and self.milestones is not None:
            raise FieldProblems(("every", "give milestones or every, not both"))
        if self.every is not None:
            self.milestones, self.every = list(range(0, self.epochs, self.every)), None
        elif self.milestones is None:
            self.milestones = [0]
        m = self.milestones
        if not m:
            raise FieldProblems(("milestones", "must list at least epoch 0"))
        if m[0] != 0:
            raise FieldProblems(("milestones", f"must start at 0, got {m}"))
        bad = next((i for i in range(1, len(m)) if m[i] <= m[i - 1]), None)
        if bad is not None:
            raise FieldProblems((f"milestones[{bad}]", f"must be strictly increasing, got {m}"))
        if m[-1] >= self.epochs:
            raise FieldProblems(("milestones", f"must all be < epochs ({self.epochs}), got {m}"))
        if self.lag == 1 and len(m) < 2:
            raise FieldProblems(("lag", f"lag 1 needs at least 2 milestones, got {m}"))
        return self

    def segments(self) -> list[tuple[int, int]]:
        """``[(start_epoch, end_epoch), ...]`` one per milestone; end is exclusive."""
        m = list(self.milestones or [0])
        return list(zip(m, m[1:] + [self.epochs]))


class BudgetConfig(_Section):
    """How much a mask may cost the teacher, measured on a spot-check of the segment's views:
    exactly one of a minimum top-1 agreement with the unmasked teacher or a maximum mean KL."""

    agreement: float | None = Field(None, ge=0, le=1, description="Masked top-1 equals the unmasked teacher's on at least this share of views.")
    kl: float | None = Field(None, ge=0, description="Mean KL(unmasked || masked) at most this many nats.")

    @model_validator(mode="after")
    def _one(self) -> "BudgetConfig":
        if (self.agreement is None) == (self.kl is None):
            raise FieldProblems(("", "give exactly one of agreement or kl"))
        return self

    def budget(self) -> Budget:
        """The :class:`maskedkd.Budget` this section describes."""
        return Budget(agreement=self.agreement, kl=self.kl)


class MaskingConfig(_Section):
    """Which patches the teacher sees: a policy and how many patches to keep."""

    policy: str = Field("student", description="maskedkd.POLICIES name: student, student_inverse, random, none.")
    keep: Union[Annotated[int, Field(ge=1)], Literal["auto"], None] = Field(
        None, description="Patches the teacher keeps (98 of 196 = MaskedKD 50%), or 'auto': per milestone, the smallest "
                          "rung of the ladder within the budget, measured on a spot-check of the segment's views.")
    ratio: float | None = Field(None, gt=0, le=1, description="Fraction of patches kept: keep = round(ratio * patches).")
    per_milestone: list[int] | None = Field(None, description="One keep per milestone (a curriculum); instead of keep/ratio.")
    budget: BudgetConfig | None = Field(None, description="With keep: auto, what a mask may cost (agreement or kl).")
    ladder: list[float] = Field(list(DEFAULT_LADDER), min_length=1,
                                description="With keep: auto, the fractions of patches tried (round(f * patches)).")
    probe_samples: int = Field(512, ge=1, description="With keep: auto, views in the seeded spot-check (across shards).")
    tolerance: int = Field(0, ge=0, description="Reuse stored labels whose keep set differs in at most this many patches.")
    spot_check: int = Field(64, ge=0, description="Reused rows per partition recomputed to report the KL of reuse.")

    _num_patches: int | None = PrivateAttr(None)

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in POLICIES:
            raise ValueError(f"unknown masking policy {v!r}{did_you_mean(v, set(POLICIES))}; known: {', '.join(sorted(POLICIES))}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "MaskingConfig":
        given = [f for f in ("keep", "ratio", "per_milestone") if getattr(self, f) is not None]
        if len(given) > 1:
            raise FieldProblems((given[1], f"give one of keep, ratio or per_milestone, got {' and '.join(given)}"))
        if not given and self.policy != "none":
            raise FieldProblems(("keep", f"policy {self.policy!r} needs keep (patches), ratio or per_milestone"))
        if self.keep == "auto":
            if self.policy == "none":
                raise FieldProblems(("keep", "auto chooses how many patches a policy keeps; policy 'none' keeps all of them"))
            if self.budget is None:
                raise FieldProblems(("budget", "keep: auto needs a budget: {agreement: 0.95} or {kl: <nats>}"))
        elif self.budget is not None:
            raise FieldProblems(("budget", "only used with keep: auto"))
        bad = [f for f in self.ladder if not 0 < f <= 1]
        if bad:
            raise FieldProblems(("ladder", f"fractions of the patches must be in (0, 1], got {bad[0]}"))
        return self

    @property
    def auto(self) -> bool:
        """Whether each milestone's keep is chosen by the fidelity spot-check."""
        return self.keep == "auto"

    def keep_for_segment(self, i: int, num_patches: int | None = None) -> int | str:
        """Patches the teacher keeps in segment ``i`` (all of them for policy ``none``; ``"auto"``
        when the runner chooses it per milestone, see :mod:`pipeline.precompute.probe`).

        Args:
            i: segment index (0-based, one per milestone).
            num_patches: the teacher's patch count; defaults to the one found at load time.
        """
        n = num_patches if num_patches is not None else self._num_patches
        if n is None:
            raise ValueError("keep_for_segment needs num_patches (the config was not loaded with load_config)")
        if self.policy == "none":
            return n
        if self.per_milestone is not None:
            return self.per_milestone[i]
        if self.keep is not None:
            return self.keep
        return round(float(self.ratio) * n)  # type: ignore[arg-type]


class LabelsConfig(_Section):
    """The soft-label store and what each row keeps."""

    store: str = Field("store", validate_default=True, description="Label store root: a folder (relative to the working directory) or a URI.")
    topk: Union[int, Literal["all"]] = Field(10, description="Classes kept per row (plus the exact tail bucket), or 'all'.")
    dtype: Literal["float16"] = Field("float16", description="Stored logit dtype; the store writes float16 only.")
    temperatures: list[float] = Field([1.0], min_length=1, description="Temperatures whose log-sum-exp is stored.")

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v if "://" in v else str(_abspath(Path(v)))

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> Any:
        if v != "float16":
            raise ValueError(f"only float16 is supported (the store writes float16 logits), got {v!r}")
        return v

    @field_validator("topk", mode="plain")
    @classmethod
    def _topk(cls, v: Any) -> int | str:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be an integer >= 1 or 'all', got {v!r}")

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError(f"every temperature must be > 0, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        return v


def _keep_in_range(keep: int, num_patches: int) -> bool:
    """maskedkd's keep rule (:func:`maskedkd.resolve_keep`), as a yes/no for the config's own messages."""
    try:
        resolve_keep(keep, num_patches)
    except ValueError:
        return False
    return True


def check_address(v: str) -> str:
    """``v`` when it looks like a scheduler address (non-empty, no spaces); raises ValueError."""
    if not v.strip() or any(c.isspace() for c in v):
        raise ValueError(f"must be a scheduler address like tcp://host:8786, got {v!r}")
    return v


class SecurityConfig(_Section):
    """TLS between this client and a shared Dask cluster (``distributed.security.Security``).

    One certificate serves every role here: the client's, and the scheduler's and workers' of an
    embedded cluster (which then listens on ``tls://``). A remote cluster has its own certificates,
    signed by a CA in ``tls_ca_file``.
    """

    tls_ca_file: Path = Field(description="CA certificate(s) (PEM) the scheduler and workers are signed by.")
    tls_client_cert: Path = Field(description="This client's certificate (PEM; may hold the key too).")
    tls_client_key: Path | None = Field(None, description="Its private key (PEM), unless tls_client_cert holds it.")
    require_encryption: bool = Field(True, description="Refuse unencrypted (tcp://) connections.")

    @field_validator("tls_ca_file", "tls_client_cert", "tls_client_key")
    @classmethod
    def _pem(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        v = _abspath(v)
        if _check_files(info) and not v.is_file():
            raise ValueError(f"file {v} does not exist")
        return v

    def security(self) -> Any:
        """The ``distributed.security.Security`` of these settings."""
        from distributed.security import Security  # lazy: `config check` needs no distributed import

        cert, key = str(self.tls_client_cert), None if self.tls_client_key is None else str(self.tls_client_key)
        return Security(tls_ca_file=str(self.tls_ca_file), tls_client_cert=cert, tls_client_key=key,
                        tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key,
                        require_encryption=self.require_encryption)


class ComputeConfig(_Section):
    """Where and how the teacher runs (a Dask cluster)."""

    scheduler: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786); null: $MKD_SCHEDULER, $DASK_SCHEDULER_ADDRESS, else a LocalCluster."
    )
    workers: Union[int, Literal["auto"]] = Field("auto", description="LocalCluster workers; 'auto': one per GPU, or per core.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per LocalCluster worker.")
    train_threads: int | None = Field(
        None, ge=1, description="torch threads of the training process (teacher and student); null: $OMP_NUM_THREADS "
                                "if set, else every core the process may use.",
    )
    nproc: int = Field(
        1, ge=1, description="Processes per student train stage: > 1 runs each under torchrun (DDP: gloo on CPU, nccl "
                             "with one GPU per process); the batch sequence and the result do not depend on it.",
    )
    batch_size: int = Field(256, ge=1, description="Teacher / saliency forward batch size.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Teacher and saliency forward precision (bf16: autocast, with q.k and the teacher head in "
                            "fp32); auto: bf16 when compute.device is (or, for auto, this machine has) cuda, else fp32. "
                            "Part of the label fingerprint.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of the workers' models.")
    timeout_s: float | None = Field(3600, gt=0, description="Per-task time limit in seconds; null: none.")
    retries: int = Field(2, ge=0, description="Retries of a failed task.")
    lost_timeout_s: float = Field(
        60, gt=0, description="Seconds the cluster may be without any worker, or the client without its scheduler, "
                              "before the stage fails (exit 5) instead of waiting for ever.",
    )
    security: SecurityConfig | None = Field(
        None, description="TLS to the Dask cluster (CA, client certificate and key); null: plain tcp://. "
                          "Stage configs are code: see the README's Trust section.",
    )
    feed_workers: int | None = Field(
        None, ge=1, description="Decode/render threads of each precompute task (they work while the task's own thread "
                                "drives the device); null: the threads its worker was given (threads_per_worker).",
    )
    decode: Literal["pil", "cuda"] = Field(
        "pil", description="JPEG decoder of precompute tasks: pil (libjpeg, on the CPU), or cuda (nvJPEG on the "
                           "task's GPU; other pixels than pil, so part of the view fingerprint; needs CUDA workers).",
    )

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v)

    @model_validator(mode="after")
    def _decode(self) -> "ComputeConfig":
        if self.decode == "cuda" and self.device == "cpu":
            raise FieldProblems(("decode", "is cuda (nvJPEG on the GPU) but device is cpu; use decode: pil"))
        return self

    def task_precision(self) -> str:
        """The precision precompute tasks run at, ``auto`` resolved (:func:`pipeline._gpu.resolve_precision`)."""
        return resolve_precision(self.precision, self.device)

    @field_validator("workers", mode="plain")
    @classmethod
    def _workers(cls, v: Any) -> int | str:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be an integer >= 1 or 'auto', got {v!r}")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StageConfig(_Section):
    """A whole run: teacher -> student init -> per segment: precompute labels, train -> evaluate."""

    name: str = Field(description="Run name; the run folder is runs/<name> unless run_dir says otherwise.")
    run_dir: Path | None = Field(None, description="Run folder (checkpoints, lock, report); default runs/<name>.")
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    schedule: ScheduleConfig
    masking: MaskingConfig
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    online: bool = Field(False, description="Comparison baseline: the teacher in the loop, masked per step (the paper).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"must be a folder name (letters, digits, '.', '_', '-'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_check(self) -> "StageConfig":
        if self.run_dir is None:
            self.run_dir = Path("runs") / self.name
        self.run_dir = _abspath(self.run_dir)
        p: list[tuple[str, str]] = []
        t, s = self.teacher.info(), self.student.info()
        nc = self.data.num_classes
        for who, mc in (("teacher", self.teacher), ("student", self.student)):
            p += self._check_model_fits(who, mc)
        if isinstance(self.labels.topk, int) and self.labels.topk > nc:
            p.append(("labels.topk", f"must be <= data.num_classes ({nc}), got {self.labels.topk}"))
        m = self.masking
        if m.policy != "none" and t.maskable_error:
            p.append(("teacher.model", t.maskable_error))
        if needs_saliency(m.policy):
            if s.maskable_error:
                p.append(("student.model", f"policy {m.policy!r} reads the student's attention: {s.maskable_error}"))
            elif t.grid_size and s.grid_size and t.grid_size != s.grid_size:
                p.append(("student.kwargs", f"the student's patch grid {s.grid_size[0]}x{s.grid_size[1]} differs from the "
                                            f"teacher's {t.grid_size[0]}x{t.grid_size[1]}; saliency masking needs the same grid"))
        n = t.num_patches
        if n is not None:
            m._num_patches = n
            p += self._check_keep(n)
            if m.tolerance > n:
                p.append(("masking.tolerance", f"must be between 0 and {n} (the teacher's patches), got {m.tolerance}"))
        segs = len(self.schedule.segments())
        if m.per_milestone is not None and len(m.per_milestone) != segs:
            p.append(("masking.per_milestone", f"needs one keep per milestone ({segs}: {self.schedule.milestones}), "
                                               f"got {len(m.per_milestone)}"))
        tr = self.train
        if tr.warmup_epochs and tr.warmup_epochs >= self.schedule.epochs:
            p.append(("train.warmup_epochs", f"must be less than schedule.epochs ({self.schedule.epochs}), got {tr.warmup_epochs}"))
        if self.online and m.auto:
            p.append(("masking.keep", "auto is chosen at each milestone before labelling; the online baseline "
                                      "(online: true) has no such step: give a keep"))
        if (tr.kd == "kl" and not self.online and self.labels.topk != "all"
                and tr.tau not in self.labels.temperatures):
            p.append(("train.tau", f"{tr.tau} is not in labels.temperatures {self.labels.temperatures}; "
                                   "add it there (the store keeps the log-sum-exp per temperature)"))
        if p:
            raise FieldProblems(*p)
        return self

    def _check_model_fits(self, who: str, mc: _ModelConfig) -> list[tuple[str, str]]:
        """The model's classes and channels fit the data; a frozen pretrained teacher keeps its head."""
        mi, nc, p = mc.info(), self.data.num_classes, []
        head = mi.pretrained.num_classes
        if who == "teacher" and mc.pretrained and self.teacher.frozen and head is not None and head != nc:
            p.append(("teacher.pretrained", f"{mc.model}'s pretrained classifier has {head} classes but data.num_classes "
                                            f"is {nc}: a frozen teacher must predict the dataset's classes; fine-tune it "
                                            f"with a teacher.train block (and kwargs.num_classes: {nc}; the head is "
                                            "re-initialised), e.g. train: {epochs: 2, lr: 1.0e-4, patch_drop_rate: 0.5}"))
        elif mi.num_classes != nc:
            hint = f"; set {who}.kwargs.num_classes: {nc} (the pretrained head is re-initialised)" if mc.pretrained else ""
            p.append((f"{who}.kwargs.num_classes", f"the {who} has {mi.num_classes} classes, data.num_classes is {nc}{hint}"))
        mean = mc.preprocessing(self.data)[0]
        if mi.in_chans is not None and mi.in_chans != len(mean):
            field = f"{who}.mean" if mc.mean is not None or mc.pretrained else "data.mean"
            p.append((field, f"has {len(mean)} values but the {who} takes {mi.in_chans} channels ({who}.kwargs.in_chans)"))
        interpolation = mc.preprocessing(self.data)[2]
        if self.data.resize == "torch" and interpolation not in TORCH_INTERPOLATIONS:
            p.append((f"{who}.interpolation", f"is {interpolation} but data.resize is torch, which antialiases "
                                              f"{' and '.join(TORCH_INTERPOLATIONS)} only; use resize: pil"))
        return p

    def _check_keep(self, n: int) -> list[tuple[str, str]]:
        m = self.masking
        if m.policy == "none":
            return []
        rng = f"must be between 1 and {n} (the teacher's patches)"
        if isinstance(m.keep, int) and not _keep_in_range(m.keep, n):
            return [("masking.keep", f"{rng}, got {m.keep}")]
        if m.ratio is not None and round(m.ratio * n) < 1:
            return [("masking.ratio", f"round({m.ratio} * {n}) = {round(m.ratio * n)} patches; must keep at least 1")]
        return [(f"masking.per_milestone[{i}]", f"{rng}, got {k}")
                for i, k in enumerate(m.per_milestone or []) if not _keep_in_range(k, n)]

    @property
    def num_patches(self) -> int | None:
        """Patch tokens of the teacher (what ``keep`` counts), None for non-ViT teachers."""
        return self.teacher.info().num_patches

    def keep_for_segment(self, i: int) -> int | str:
        """Patches the teacher keeps in segment ``i`` (see :meth:`MaskingConfig.keep_for_segment`)."""
        return self.masking.keep_for_segment(i, self.num_patches)

    def teacher_views(self) -> ViewsConfig:
        """Views for teacher training: ``teacher.train.views``, else the stage's ``views``."""
        tt = self.teacher.train
        return tt.views if tt is not None and tt.views is not None else self.views
