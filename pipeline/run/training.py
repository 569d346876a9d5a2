"""Training as plain functions of the config: a student segment (the ``train-i`` stage) and the
teacher's training or fine-tune (``teacher``, ``teacher-finetune``), in this process or in each
torchrun process (:mod:`pipeline.run.train_worker`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from maskedkd import resolve_keep, teacher_macs
from pipeline.data.manifest import DatasetManifest
from pipeline.errors import NumericError
from pipeline.labels.contract import render_spec, shard_refs
from pipeline.models import create_model
from pipeline.placement import place_model
from pipeline.precompute.spec import ModelSpec
from pipeline.train.evaluate import evaluate
from pipeline.train.loop import OnlineTeacher, train_segment
from pipeline.train.threads import train_threads

# forward + backward of a training step, counted as 3 forwards (backward ~ 2x forward: the
# gradients of activations and of weights each cost about one forward's multiply-adds)
TRAIN_STEP_FORWARDS = 3


@contextlib.contextmanager
def naming_stage(stage: str) -> Iterator[None]:
    """Non-finite numbers say which stage met them (the task or trainer knows only shard or step)."""
    try:
        yield
    except NumericError as e:
        raise NumericError(f"[{stage}] {e}") from e


def evaluate_val(cfg, manifest: DatasetManifest, model, model_cfg, device: str) -> dict[str, Any]:
    """``{"val_top1", ...}`` of ``model`` (the teacher's or student's section ``model_cfg``) on the
    validation split; ``{}`` without one. Under torchrun every rank evaluates its share."""
    if cfg.data.val is None:
        return {}
    shards = shard_refs(manifest, cfg.data.val, cfg.data.val_subset)
    res = evaluate(model, shards, render_spec(cfg.data, model_cfg), batch_size=256, device=device,
                   split_ranks=True)
    return {f"val_{k}": v for k, v in res.items()}


def online_teacher(cfg, segment: int, teacher: ModelSpec, device: str) -> OnlineTeacher:
    """The teacher in the loop of an ``online: true`` segment, masked as the config says."""
    t = cfg.teacher
    model = place_model(create_model(t.model, t.kwargs, weights=teacher.weights).eval(), device, "the teacher")
    policy = cfg.masking.policy
    keep = resolve_keep(cfg.keep_for_segment(segment), cfg.num_patches, policy)
    return OnlineTeacher(model=model, render=render_spec(cfg.data, t), policy=policy, keep=keep)


def train_student(cfg, manifest: DatasetManifest, segment: int, start_ckpt: Path, labels, teacher: ModelSpec | None,
                  out: Path, *, name: str, run_dir: Path, device: str, progress: bool,
                  say: Callable[[str, str], None]) -> dict[str, Any]:
    """Train segment ``segment`` from ``start_ckpt`` into ``out`` in this process (or in each
    torchrun process) as stage ``name``; returns :func:`pipeline.train.train_segment`'s result."""
    s = cfg.student
    start, end = cfg.schedule.segments()[segment]
    model = create_model(s.model, s.kwargs, weights=start_ckpt)
    online = None
    if cfg.online:
        assert teacher is not None, "online: true trains with the teacher in the loop"
        online = online_teacher(cfg, segment, teacher, device)
    # one process trains: all its cores (train/threads.py); a NaN names the stage
    with train_threads(cfg.compute.train_threads), naming_stage(name):
        return train_segment(
            model, shards=shard_refs(manifest, cfg.data.train, cfg.data.subset), spec=cfg.views.view_spec(),
            seed=cfg.views.seed, epochs=range(start, end), cfg=cfg.train, total_epochs=cfg.schedule.epochs,
            render=render_spec(cfg.data, s), run_dir=run_dir / "train",
            labels=None if cfg.train.kd == "off" or online else labels, view_pool=cfg.views.pool_size, online=online,
            device=device, checkpoint_path=out, evaluate=lambda m, e: evaluate_val(cfg, manifest, m, s, device),
            log=lambda line: say(name, line), progress=name if progress else None,
        )


def train_teacher(cfg, manifest: DatasetManifest, start: Path | None, out: Path, *, name: str, run_dir: Path,
                  device: str, progress: bool, say: Callable[[str, str], None]) -> tuple[Any, dict[str, Any]]:
    """Train the teacher with ``teacher.train`` into ``out`` (cross-entropy; with the full-view options
    also on the untouched view and a consistency KL, :mod:`pipeline.train.full_view`) in this process (or in
    each torchrun process) as stage ``name``, from the plain checkpoint ``start`` (a fine-tune) or,
    when None, from the recipe's seeded initialisation.

    Returns:
        ``(model, result)``: the trained model and :func:`pipeline.train.train_segment`'s result.
    """
    t, recipe = cfg.teacher, cfg.teacher.train
    views = recipe.views or cfg.views
    kwargs = dropping_kwargs(t.kwargs, recipe.patch_drop_rate)
    model = create_model(t.model, kwargs, seed=recipe.seed) if start is None else create_model(t.model, kwargs,
                                                                                                weights=start)
    loss = f"cross-entropy and consistency KL x{recipe.consistency_weight}" if recipe.consistency_weight else \
        "cross-entropy only"
    say(name, f"training {t.model} for {recipe.epochs} epochs ({loss}"
              + (f", patch_drop_rate {recipe.patch_drop_rate}" if recipe.patch_drop_rate else "")
              + (f", full view x{recipe.full_view_weight}" if recipe.full_view_weight else "") + ")")
    with train_threads(cfg.compute.train_threads), naming_stage(name):  # one process trains: all its cores
        res = train_segment(
            model, shards=shard_refs(manifest, cfg.data.train, cfg.data.subset), spec=views.view_spec(),
            seed=views.seed, epochs=range(0, recipe.epochs), cfg=recipe, total_epochs=recipe.epochs,
            render=render_spec(cfg.data, t), run_dir=run_dir, view_pool=views.pool_size, device=device,
            checkpoint_path=out, log=lambda s: say(name, s),
            evaluate=lambda m, e: evaluate_val(cfg, manifest, m, t, device), progress=name if progress else None,
        )
    return model, res


def dropping_kwargs(kwargs, patch_drop_rate: float) -> dict[str, Any]:
    """The teacher's kwargs while it trains: token dropping shapes training only, so the saved weights
    load into the plain model."""
    return {**kwargs, "patch_drop_rate": patch_drop_rate} if patch_drop_rate else dict(kwargs)


def train_step_macs(cfg, images: int) -> int:
    """Multiply-adds of training the teacher on ``images`` image-steps: :data:`TRAIN_STEP_FORWARDS` x the
    forward of the token-dropped model (maskedkd's counter at timm's kept count, ``int(N * (1 - rate))``),
    plus the full view's where the recipe runs it (trained: 3 forwards; a consistency target only: 1)."""
    t, recipe = cfg.teacher, cfg.teacher.train
    rate, n = recipe.patch_drop_rate, cfg.num_patches
    keep = None if not rate or n is None else max(1, int(n * (1.0 - rate)))
    model = create_model(t.model, t.kwargs, seed=0).eval()
    per_image = TRAIN_STEP_FORWARDS * teacher_macs(model, keep)
    if recipe.trains_full_view:
        per_image += (TRAIN_STEP_FORWARDS if recipe.full_view_weight else 1) * teacher_macs(model, None)
    return per_image * images
