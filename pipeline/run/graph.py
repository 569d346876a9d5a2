"""The run as one declared graph: every stage kind declared once, expanded for a config.

``run``, ``status``, ``run --dry-run``, ``--until`` and the run's report all walk
:func:`expand`'s list; nothing else spells out the stage order or formats a stage name.

For a config the graph is ``teacher``, ``teacher-finetune`` (only when the teacher is loaded *and*
has a ``train`` block: a fine-tune from the loaded weights), ``init``, then per segment i: ``probe-i`` (only with
``masking.keep: auto``), ``precompute-i`` (only when the student learns from stored labels) and
``train-i``. ``schedule.lag`` decides which checkpoint masks a segment's labels: c_i (lag 0) or
c_{i-1} (lag 1). With lag 1 the labels of segment i+1 depend only on stages that are done before
``train-i`` starts, and their kinds are declared ``overlaps="train"``: the runner computes them
in the background while segment i trains.

A kind's functions live in :mod:`pipeline.run.stages` (plan: current inputs; cached: the output a
fresh stage recorded; run: do it and record it); its inputs in :mod:`pipeline.fingerprints`.
To add a kind, see docs/architecture.md, "Add a stage".
"""

from __future__ import annotations

from pipeline._lock import stage_name
from pipeline.report.run_report import finetune_fields, precompute_fields, teacher_fields, train_fields
from pipeline.run import stages as st
from pipeline.run.stage import Stage, StageKind

# The fine-tune of a loaded teacher (issue 24): "teacher-" so it sorts and reads with the stage it
# changes, "finetune" because that is what the README, the schema and `probe` call it.
FINETUNE = "teacher-finetune"


def needs_labels(cfg) -> bool:
    """Whether the student learns from stored labels (not online, not cross-entropy only)."""
    return not cfg.online and cfg.train.kd != "off"


def teacher_source(cfg) -> str:
    """The stage whose output is the teacher every later stage uses.

    A stage that changes the teacher (e.g. a fine-tune after ``teacher``) is declared after it and
    named here for the configs that have it; the stages below read the teacher only through this.
    """
    return FINETUNE if cfg.teacher.fine_tuned else "teacher"


def checkpoint_maker(i: int) -> str:
    """The stage that writes checkpoint c_i: ``init`` for c_0, else ``train-(i-1)``."""
    return "init" if i == 0 else stage_name("train", i - 1)


def mask_source(cfg, i: int) -> str:
    """The stage whose checkpoint masks segment i's labels (``schedule.lag`` segments back)."""
    return checkpoint_maker(max(0, i - cfg.schedule.lag))


def _probe_deps(cfg, i: int) -> dict[str, str]:
    return {"teacher": teacher_source(cfg), "source": mask_source(cfg, i)}


def _precompute_deps(cfg, i: int) -> dict[str, str]:
    probe = {"probe": stage_name("probe", i)} if cfg.masking.auto else {}
    return {"teacher": teacher_source(cfg), "source": mask_source(cfg, i), **probe}


def _train_deps(cfg, i: int) -> dict[str, str]:
    labels = {"labels": stage_name("precompute", i)} if needs_labels(cfg) else {}
    teacher = {"teacher": teacher_source(cfg)} if cfg.online else {}
    return {"start": checkpoint_maker(i), **labels, **teacher}


KINDS: tuple[StageKind, ...] = (
    StageKind("teacher", per_segment=False, present=lambda cfg: True, deps=lambda cfg, i: {},
              plan=st.plan_teacher, cached=st.cached_teacher, run=st.run_teacher,
              cached_note=lambda teacher: f"cached ({teacher.weights})", report=teacher_fields),
    StageKind(FINETUNE, per_segment=False, present=lambda cfg: cfg.teacher.fine_tuned,
              deps=lambda cfg, i: {"teacher": "teacher"}, plan=st.plan_teacher_finetune, cached=st.cached_teacher,
              run=st.run_teacher_finetune, cached_note=lambda teacher: f"cached ({teacher.weights})",
              report=finetune_fields),
    StageKind("init", per_segment=False, present=lambda cfg: True, deps=lambda cfg, i: {},
              plan=st.plan_init, cached=st.cached_checkpoint, run=st.run_init),
    StageKind("probe", per_segment=True, present=lambda cfg: needs_labels(cfg) and cfg.masking.auto,
              deps=_probe_deps, plan=st.plan_probe_stage, cached=st.cached_probe, run=st.run_probe_stage,
              overlaps="train"),
    StageKind("precompute", per_segment=True, present=needs_labels, deps=_precompute_deps,
              plan=st.plan_precompute_stage, cached=st.cached_precompute, run=st.run_precompute_stage,
              cached_note=lambda labels: f"cached ({len(labels)} partitions)", overlaps="train",
              report=precompute_fields, heal=st.heal_precompute),
    StageKind("train", per_segment=True, present=lambda cfg: True, deps=_train_deps,
              plan=st.plan_train, cached=st.cached_checkpoint, run=st.run_train,
              cached_note=lambda ckpt: f"cached ({ckpt})", report=train_fields),
)


def expand(cfg) -> list[Stage]:
    """The config's stages in run order: the per-run kinds, then each segment's kinds in turn."""
    kinds = [k for k in KINDS if k.present(cfg)]
    out = [Stage(k, None, k.deps(cfg, None)) for k in kinds if not k.per_segment]
    for i, _ in enumerate(cfg.schedule.segments()):
        out += [Stage(k, i, k.deps(cfg, i)) for k in kinds if k.per_segment]
    return out
