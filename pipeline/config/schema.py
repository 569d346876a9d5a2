"""The stage config's schema: :class:`StageConfig`, the whole file, and the checks across its sections.

One pydantic model per YAML section (see :mod:`pipeline.config`), each in the module of its job:
``data_views`` (data, views), ``model_sections`` (teacher, student), ``recipe`` (train,
teacher.train), ``labelling`` (schedule, masking, labels), ``compute`` (compute and its TLS);
``validation`` holds what they share. Every section forbids unknown keys; validators raise
``FieldProblems`` naming the dotted field, which :mod:`pipeline.config.loader` turns into
``file: field: message`` lines (exit code 2).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from maskedkd import resolve_keep
from maskedkd.resize import TORCH_INTERPOLATIONS
from pipeline.config.compute import ComputeConfig
from pipeline.config.data_views import DataConfig, ViewsConfig
from pipeline.config.labelling import LabelsConfig, MaskingConfig, ScheduleConfig
from pipeline.config.model_sections import ModelConfig, StudentConfig, TeacherConfig
from pipeline.config.recipe import TrainConfig
from pipeline.config.validation import FieldProblems, Section, abspath

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _keep_in_range(keep: int, num_patches: int) -> bool:
    """maskedkd's keep rule (:func:`maskedkd.resolve_keep`), as a yes/no for the config's own messages."""
    try:
        resolve_keep(keep, num_patches)
    except ValueError:
        return False
    return True


class StageConfig(Section):
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

    @field_validator("run_dir", mode="before")
    @classmethod
    def _local_run_dir(cls, v: object) -> object:
        if isinstance(v, str) and "://" in v:  # docs/design.md §6: the run folder stays on the client
            raise ValueError(f"must be a local folder, got the URI {v!r}: the run lock and the resume records need a "
                             f"local filesystem; with labels.store in an object store, the checkpoints workers load "
                             f"are published there (<store>/checkpoints/)")
        return v

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
        self.run_dir = abspath(self.run_dir)
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
        if m.reads_saliency:
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
        if self.online and m.saliency_scale != 1:
            p.append(("masking.saliency_scale", "makes the offline saliency pass cheaper; the online baseline "
                                                "(online: true) reads the student's view as rendered: leave it at 1"))
        if (tr.kd == "kl" and not self.online and self.labels.topk != "all"
                and tr.tau not in self.labels.temperatures):
            p.append(("train.tau", f"{tr.tau} is not in labels.temperatures {self.labels.temperatures}; "
                                   "add it there (the store keeps the log-sum-exp per temperature)"))
        if p:
            raise FieldProblems(*p)
        return self

    def _check_model_fits(self, who: str, mc: ModelConfig) -> list[tuple[str, str]]:
        """The model's classes and channels fit the data; a frozen pretrained teacher keeps its head."""
        mi, nc, p = mc.info(), self.data.num_classes, []
        head = mi.pretrained.num_classes
        if who == "teacher" and mc.pretrained and self.teacher.frozen and head is not None and head != nc:
            p.append(("teacher.pretrained", f"{mc.model}'s pretrained classifier has {head} classes but data.num_classes "
                                            f"is {nc}: a frozen teacher must predict the dataset's classes; fine-tune it "
                                            f"with a teacher.train block (and kwargs.num_classes: {nc}; the head is "
                                            "re-initialised), e.g. train: {epochs: 2, lr: 1.0e-4, warmup_epochs: 0, patch_drop_rate: 0.5}"))
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
