"""A student segment's training as plain functions of the config: what the ``train-i`` stage runs in
this process, and what each torchrun process runs (:mod:`pipeline.run.train_worker`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from maskedkd import resolve_keep
from pipeline.data.manifest import DatasetManifest
from pipeline.errors import NumericError
from pipeline.labels.contract import render_spec, shard_refs
from pipeline.models import create_model
from pipeline.placement import place_model
from pipeline.precompute.spec import ModelSpec
from pipeline.train.evaluate import evaluate
from pipeline.train.loop import OnlineTeacher, train_segment
from pipeline.train.threads import train_threads


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
