"""Every stage's inputs, and the rules that keep stores and run locks written before a change fresh.

A stage is fresh when the inputs the run lock recorded for it equal the inputs computed now
(:meth:`pipeline._lock.RunLock.check`); a label partition is reused when the path derived from its
task's fingerprints exists. Every value entering an input or a fingerprint is therefore part of the
format of every store and run lock already written: change one and they all go stale.

Adding a config field (or any other input)
------------------------------------------
1. If it changes what a stage computes, add it to that stage's inputs here (``teacher_inputs``,
   ``teacher_finetune_inputs``, ``init_inputs``, ``probe_inputs``, ``precompute_inputs``, ``train_inputs``) and, when the
   stage's own records depend on it, to the fingerprint they are addressed by:
   :func:`pipeline.precompute.spec.task_fingerprints` (label partitions),
   :attr:`pipeline.precompute.probe.ProbeTask.fingerprint` (spot-checks),
   :func:`pipeline.train.loop.segment_fingerprint` (resume records).
2. Add it through :func:`unless_default` (or drop it from a dumped record with
   :func:`without_defaults`): it enters only when it differs from the value that computes what was
   computed before the field existed. Stores and locks written earlier stay fresh; a run that sets
   it is stale and ``status`` names it (``input 'x' changed``).
3. A field that cannot change a result (worker counts, checkpoint cadence, progress bars) stays
   out; the trainer lists its own in ``pipeline.train.loop.NOT_IN_FINGERPRINT``.
4. Add a case to ``tests/pipeline/test_fingerprints.py``: the pinned inputs of configs that do not
   set the field must stay as they are.

The rules in force (each an instance of 2.)
-------------------------------------------
- ``order_seed`` (train and teacher stages): only where ``train.seed`` differs from ``views.seed``
  (before 0.2 the data order was seeded with the view seed): :func:`order_seed_entry`.
- ``patch_drop_rate``, ``full_view_weight``, ``consistency_weight`` (the trained teacher's recipe): only
  when not 0: :data:`TEACHER_RECIPE_ADDED`; the latter two in a training segment's fingerprint only
  when not 0 too (:data:`SEGMENT_RECIPE_ADDED`).
- ``model_ema``, ``model_ema_decay``, ``model_ema_warmup``, ``grad_accum_steps``, ``compile``, ``compile_mode``,
  ``channels_last`` (any training recipe): each only when not its default (:data:`TRAIN_RECIPE_ADDED`), in the
  train and teacher stages' recipes and in a training segment's fingerprint. compile and channels_last enter
  too: they change the float rounding of a step, so a checkpoint is no longer the same bytes.
- ``train.lanes``, ``train.interleave`` (the epoch order, issue 26): only when not 1, in the train and
  teacher recipes and a training segment's fingerprint: :data:`ORDER_ADDED` (part of :data:`TRAIN_RECIPE_ADDED`).
- ``views.mix_mode``: only where the views mix and it is not ``window`` (the first algorithm, which
  mixing views followed before the field existed): :func:`views_record`; the same rule in a
  partition's view fingerprint (:meth:`maskedkd.views.ViewSpec.to_dict`).
- ``data.resize``: only when not ``pil``: ``resize`` in ``precompute_inputs``; ``render`` in the
  train and teacher inputs (:func:`render_entry`); the resizer in the view fingerprint of
  partitions, probes and training segments (:meth:`pipeline.labels.contract.RenderSpec.resize_record`,
  empty for Pillow).
- each model's own preprocessing (its ``mean``/``std``/``interpolation`` fields or its
  ``pretrained_cfg``): ``preprocess`` in the train and teacher inputs only when it differs from the
  data section's (:func:`render_entry`); partitions already record the render they used.
- ``pretrained`` (teacher and student): named only when true; the file it loads is hashed as
  ``weights`` / ``init`` like a weights file (:func:`weights_file`).
- a teacher that is loaded *and* trained (a fine-tune): no rule needed, the configs are new; its
  ``teacher`` stage records a frozen teacher's inputs (plus ``head`` for a pretrained one) and
  ``teacher-finetune`` the start's fingerprint + :func:`trained_teacher_inputs`.
- ``masking.tolerance``: in a partition's mask fingerprint only when not 0.
- ``masking.saliency_scale``: in a partition's mask fingerprint, a probe's fingerprint and the
  precompute inputs only when not 1 and a student's saliency picks the masks.
- ``compute.decode``: in a partition's view fingerprint only when not ``pil``.
- TF32 matmuls: in a partition's label fingerprint only when fp32 runs on CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from maskedkd.digests import render_digest
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline.labels.contract import render_spec, shard_refs
from pipeline.models import weights_file as resolve_weights_file
from pipeline.paths import base_name

# Fields of every training recipe (`train` and `teacher.train`) added after stages and segments had recorded
# their recipes in full, with the value that trains as before: DeiT's extras (EMA, accumulation, compile).
TRAIN_RECIPE_ADDED = {"model_ema": False, "model_ema_decay": 0.99996, "model_ema_warmup": False, "grad_accum_steps": 1,
                      "compile": False, "compile_mode": None, "channels_last": False}
# Fields of `teacher.train` added after teachers had been trained, with the value that trains as before.
# Fields of the training recipe added with the epoch order's lanes (issue 26); 1 orders shard after shard.
ORDER_ADDED = {"lanes": 1, "interleave": 1}
# Fields of every training recipe (`train` and `teacher.train`) added after stages and segments had recorded
# their recipes in full, with the value that trains as before: DeiT's extras (EMA, accumulation, compile) and
# the epoch order's lanes.
TRAIN_RECIPE_ADDED = {"model_ema": False, "model_ema_decay": 0.99996, "model_ema_warmup": False, "grad_accum_steps": 1,
                      "compile": False, "compile_mode": None, "channels_last": False, **ORDER_ADDED}
# Fields of `teacher.train` added after teachers had been trained, with the value that trains as before.
TEACHER_RECIPE_ADDED = {"patch_drop_rate": 0.0, "full_view_weight": 0.0, "consistency_weight": 0.0,
                        **TRAIN_RECIPE_ADDED}
# Fields of a training recipe added after training segments recorded theirs in full (their resume records'
# fingerprint, :func:`pipeline.train.loop.segment_fingerprint`; ``patch_drop_rate`` was there from the start).
SEGMENT_RECIPE_ADDED = {"full_view_weight": 0.0, "consistency_weight": 0.0, **TRAIN_RECIPE_ADDED}


def unless_default(name: str, value: Any, default: Any) -> dict[str, Any]:
    """``{name: value}``, or ``{}`` when ``value`` is ``default``: the one rule for a new input.

    ``default`` is the value that reproduces what was computed before the input existed, so records
    written then (which lack ``name``) keep matching. Merge the result into an inputs dict
    (``{**inputs, **unless_default(...)}``) or a fingerprint record.
    """
    return {} if value == default else {name: value}


def without_defaults(record: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without the fields of ``added`` whose value is their default there (see :func:`unless_default`)."""
    return {k: v for k, v in record.items() if not (k in added and v == added[k])}


def views_record(views: Mapping[str, Any]) -> dict[str, Any]:
    """A ``views`` section's dump as fingerprinted: ``mix_mode`` only where the views mix and it is
    not ``window`` (what mixing meant before the field existed), ``repeats`` only when not 1."""
    record = without_defaults(views, {"repeats": 1})
    mixes = views.get("mixup", 0) > 0 or views.get("cutmix", 0) > 0
    if mixes and views.get("mix_mode", "window") != "window":
        return record
    return {k: v for k, v in record.items() if k != "mix_mode"}


def order_seed_entry(train_seed: int, views_seed: int) -> dict[str, Any]:
    """``order_seed`` where the data-order seed differs from the view seed.

    Before 0.2 the trainer seeded the data order with ``views.seed`` too; a stage trained where the
    two differ is stale (``input 'order_seed' changed``), one where they agree keeps its record.
    """
    return unless_default("order_seed", train_seed, views_seed)


def render_entry(data, model) -> dict[str, str]:
    """``render`` when views are resized by torch (other pixels to train on, whatever the labels);
    ``preprocess`` when the model normalises or resamples otherwise than the data section (its own
    fields, or its pretrained_cfg). Neither for a model that renders as before, so teachers and
    students trained before ``data.resize`` and per-model preprocessing stay fresh."""
    render = render_spec(data, model)
    resize = render.resize_record()
    own = model.preprocessing(data) != (tuple(data.mean), tuple(data.std), data.interpolation)
    return {**unless_default("render", sha256_json(resize) if resize else None, None),
            **unless_default("preprocess", sha256_json(render.record()) if own else None, None)}


def weights_file(model) -> Path | None:
    """The file a ``teacher`` / ``student`` section's weights load from (its ``weights``, or the file
    its ``pretrained: true`` resolves to through timm): the one hashed. None: random init."""
    return resolve_weights_file(model.model, model.kwargs, pretrained=model.pretrained, weights=model.weights)


def fmt_keep(keep: int | None, num_patches: int | None) -> str:
    """``kept/of`` (``None``: all patches); also the text of an auto keep in the precompute inputs."""
    return f"{num_patches if keep is None else keep}/{num_patches}"


# ---------------------------------------------------------------------------- the stages' inputs


def data_inputs(cfg, manifest) -> dict[str, Any]:
    """Fingerprint of the training data the run sees (shard bytes + subset)."""
    shards = [(base_name(r.path), r.sha256, r.limit) for r in shard_refs(manifest, cfg.data.train, cfg.data.subset)]
    return {"train": sha256_json(shards)}


def teacher_inputs(cfg, manifest) -> dict[str, Any]:
    """The ``teacher`` stage: its weights file (a frozen teacher, or where a fine-tune starts), or
    what training it from scratch reads (recipe, views, data)."""
    t = cfg.teacher
    file = weights_file(t)
    if file is None:
        return trained_teacher_inputs(cfg, manifest)
    inputs = {"model": t.model, "kwargs": sha256_json(t.kwargs), "weights": sha256_file(file),
              **unless_default("pretrained", t.pretrained, False)}
    if t.fine_tuned and t.pretrained:  # the start of a fine-tune: the head re-initialised, seeded
        inputs["head"] = {"num_classes": cfg.data.num_classes, "seed": t.train.seed}
    return inputs


def trained_teacher_inputs(cfg, manifest) -> dict[str, Any]:
    """What training the teacher reads: its recipe (``teacher.train``), views, data and rendering."""
    t = cfg.teacher
    views = views_record((t.train.views or cfg.views).model_dump(mode="json"))
    recipe = without_defaults(t.train.model_dump(mode="json"), TEACHER_RECIPE_ADDED)
    inputs = {"model": t.model, "kwargs": sha256_json(t.kwargs), "recipe": sha256_json(recipe),
              "views": sha256_json(views), "data": sha256_json(data_inputs(cfg, manifest)),
              "val": sha256_json([cfg.data.val, cfg.data.val_subset]), **render_entry(cfg.data, t)}
    return {**inputs, **order_seed_entry(t.train.seed, views["seed"])}


def teacher_finetune_inputs(cfg, manifest, start) -> dict[str, Any]:
    """The ``teacher-finetune`` stage: the weights it starts from (the ``teacher`` stage's
    :class:`ModelSpec`, by fingerprint) and what training reads (:func:`trained_teacher_inputs`)."""
    return {"start": start.fingerprint, **trained_teacher_inputs(cfg, manifest)}


def init_inputs(cfg) -> dict[str, Any]:
    """The ``init`` stage (c_0): the student at its seeded initialisation or from its weights file."""
    s = cfg.student
    file = weights_file(s)
    inputs = {"model": s.model, "kwargs": sha256_json(s.kwargs),
              "init": sha256_file(file) if file else f"seed:{s.init_seed}"}
    # the seed of a re-initialised head matters only with pretrained weights
    return {**inputs, "pretrained": True, "init_seed": s.init_seed} if s.pretrained else inputs


def probe_inputs(task) -> dict[str, Any]:
    """A ``probe-i`` spot-check (a :class:`pipeline.precompute.probe.ProbeTask`): its fingerprint,
    plus the readable parts of it that `status` names."""
    return {"probe": task.fingerprint, "teacher": task.teacher.fingerprint,
            "student": task.student.fingerprint if task.student else None,
            "samples": len(task.rows), "keeps": list(task.keeps)}


def precompute_inputs(cfg, segment: int, tasks: Sequence) -> dict[str, Any]:
    """A ``precompute-i`` stage: its planned tasks' fingerprints, plus the readable parts of them.

    ``render`` is the render digest inside the view fingerprint: when an upgrade of Pillow, timm,
    torch, numpy or Python renders views differently, `status` says ``input 'render' changed``
    rather than only that the tasks did.
    """
    t = tasks[0] if tasks else None
    keep = cfg.keep_for_segment(segment)
    policy = cfg.masking.policy
    if keep == "auto" and t is not None:
        keep = f"auto: {fmt_keep(t.keep, cfg.num_patches)}"  # so `status` names the choice that changed
    if policy == "auto" and t is not None:
        policy = f"auto: {t.policy}"
    return {"tasks": sha256_json([t.fingerprints for t in tasks]),
            "render": render_digest(cfg.views.view_spec()),
            "teacher": t.teacher.fingerprint if t else None,
            "student": t.student.fingerprint if t and t.student else None,
            "policy": policy, "keep": keep, "tolerance": cfg.masking.tolerance,
            **unless_default("resize", cfg.data.resize, "pil"),
            **unless_default("saliency_scale", cfg.masking.saliency_scale if t and t.student else 1.0, 1.0)}


def online_inputs(cfg, segment: int, teacher) -> dict[str, Any] | None:
    """The teacher in the loop of an ``online: true`` train stage (None otherwise)."""
    if not cfg.online:
        return None
    return {"teacher": teacher.fingerprint, "policy": cfg.masking.policy, "keep": cfg.keep_for_segment(segment)}


def train_inputs(cfg, manifest, segment: int, start_ckpt: Path, labels, teacher) -> dict[str, Any]:
    """A ``train-i`` stage: its start checkpoint, labels, recipe, epochs, views, data and online teacher."""
    start, end = cfg.schedule.segments()[segment]
    label_fp = None if labels is None else sha256_json(sorted([list(k), v.sha256] for k, v in labels.items()))
    inputs = {"start": sha256_file(start_ckpt), "labels": label_fp,
              "recipe": sha256_json(without_defaults(cfg.train.model_dump(mode="json"), TRAIN_RECIPE_ADDED)),
              "epochs": [start, end, cfg.schedule.epochs], "views": sha256_json(views_record(cfg.views.model_dump(mode="json"))),
              "data": sha256_json(data_inputs(cfg, manifest)), "online": online_inputs(cfg, segment, teacher),
              **render_entry(cfg.data, cfg.student)}
    return {**inputs, **order_seed_entry(cfg.train.seed, cfg.views.seed)}
