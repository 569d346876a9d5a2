"""The ``data`` section (the dataset folder and its default preprocessing) and the ``views`` section
(how training views are drawn from it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from maskedkd.resize import TORCH_INTERPOLATIONS
from maskedkd.views import ViewSpec
from pipeline.config.validation import FieldProblems, Section, check_files, local_or_uri, word_or_count
from pipeline.errors import PipelineError
from pipeline.paths import child, file_exists, is_uri, read_bytes

IMPORT_HINT = ("create it with `mkd-pipeline data import fashion-mnist --out {root}` "
               "or `mkd-pipeline data import imagefolder SRC --out {root} --split NAME`")


class DataConfig(Section):
    """The dataset: a folder of WebDataset shards with its ``manifest.json``."""

    root: Path | str = Field(
        description="Dataset folder holding manifest.json and the shards; create one with "
        "`mkd-pipeline data import fashion-mnist --out DIR`. Relative to the working directory, or a URI "
        "(s3://bucket/prefix; credentials and endpoint from the environment)."
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

    @field_validator("root", mode="before")
    @classmethod
    def _abs_root(cls, v: Any) -> Any:
        return local_or_uri(v)

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
        if check_files(info):
            problems += self._check_root()
        if problems:
            raise FieldProblems(*problems)
        return self

    def _check_root(self) -> list[tuple[str, str]]:
        how = IMPORT_HINT.format(root=self.root)
        if not is_uri(self.root) and not Path(self.root).is_dir():
            return [("root", f"dataset folder {self.root} does not exist; {how}")]
        manifest = child(self.root, "manifest.json")
        try:
            if not file_exists(manifest):
                return [("root", f"{self.root} has no manifest.json; {how}")]
            doc = json.loads(read_bytes(manifest))
        except (OSError, ValueError, PipelineError) as e:
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


class ViewsConfig(Section):
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
    mix_window: int = Field(64, ge=2, description="mix_mode window: partners come from aligned blocks of this many shard positions.")
    mix_mode: Literal["pair", "elem", "batch", "window"] = Field(
        "pair", description="pair: rows are paired within their shard and batch, one lambda/box per pair (timm Mixup "
                            "mode 'pair'); elem: the same pairs, one draw per row; batch: the same pairs, one draw per "
                            "global batch (timm's and DeiT's 'batch'; needs pool: epochs); window: the first algorithm (a "
                            "partner per row within mix_window shard positions, rendered again)."
    )
    repeats: int = Field(
        1, ge=1, le=64, description="Repeated augmentation (DeiT uses 3): each epoch trains on 1/repeats of the shards, "
                                    "every row repeats times with its own view each, a row's repeats in one batch."
    )

    @field_validator("pool", mode="plain")
    @classmethod
    def _pool(cls, v: Any) -> int | str:
        if word_or_count(v, "epochs"):
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
    def _batch_mode(self) -> "ViewsConfig":
        if self.mix_mode == "batch" and (self.mixup > 0 or self.cutmix > 0) and self.pool != "epochs":
            raise FieldProblems(("mix_mode", f"batch draws a mix per global batch of one epoch, so its views cannot be "
                                             f"reused by other epochs: it needs pool: epochs (pool is {self.pool})"))
        return self

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
