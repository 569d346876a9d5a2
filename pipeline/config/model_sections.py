"""The ``teacher`` and ``student`` sections: a timm model, its weights and its preprocessing."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import timm
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from pipeline.config.data_views import DataConfig
from pipeline.config.model_info import ModelInfo, model_info
from pipeline.config.recipe import TeacherTrainConfig
from pipeline.config.validation import FieldProblems, Section, abspath, check_files
from pipeline.models import is_sourced_name

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
# Model kwargs that would fetch or load weights behind the config's back.
_FORBIDDEN_KWARGS = {
    "pretrained": "use the model's `pretrained: true` field (its fingerprint records the file loaded)",
    "pretrained_cfg": "weights come from `pretrained` or `weights`; preprocessing from `mean`, `std`, `interpolation`",
    "pretrained_cfg_overlay": "weights come from `pretrained` or `weights`; preprocessing from `mean`, `std`, `interpolation`",
    "checkpoint_path": "use the `weights` field",
}

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


class ModelConfig(Section):
    """What the teacher and student sections share: the timm model, its weights, its preprocessing."""

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
        return abspath(v)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"every std must be > 0, got {v}")
        return v

    def _check_model(self, info: ValidationInfo) -> None:
        """Weights file exists (when checking files) and the kwargs build the model; raises FieldProblems."""
        problems = []
        if self.weights is not None and check_files(info) and not self.weights.is_file():
            problems.append(("weights", f"file {self.weights} does not exist"))
        if self.model.startswith("local-dir:") and check_files(info):
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


class TeacherConfig(ModelConfig):
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

    @property
    def fine_tuned(self) -> bool:
        """Loaded (pretrained or a weights file) *and* trained: a fine-tune from those weights, a stage
        of its own after the one that loads them (``teacher-finetune``)."""
        return self.train is not None and (self.pretrained or self.weights is not None)


class StudentConfig(ModelConfig):
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
