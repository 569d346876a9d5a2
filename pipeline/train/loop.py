"""The student trainer: one segment of epochs, resumable, single-process or DDP (docs/design.md §2, §6).

``train_segment`` trains epochs ``[start, end)`` of a run whose LR schedule spans
``total_epochs``, with the validated ``train`` section of the stage config as its recipe. The
runner calls it once per curriculum segment with that segment's label partitions;
``kd="off"`` (plain cross-entropy) is the same loop, used for the no-KD baseline and for
training the teacher (whose recipe, ``teacher.train``, always has ``kd: off``); ``online=`` runs
the paper's baseline (teacher in the loop, masked by the current student at every step).

Determinism: the views are pure functions of ``(views.seed, key, view epoch)`` and the data order
of ``(train.seed, epoch)`` (see :mod:`pipeline.train.stream`), the LR is a pure function of the
global update count, and the torch RNG (dropout, drop-path) is reseeded before every update from
``(train.seed, epoch, position, rank)``. A killed run therefore resumes from its last record and, on CPU, ends with the same
checkpoint bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.nn.parallel import DistributedDataParallel as DDP

from maskedkd import (
    SoftTarget,
    distill_loss,
    keep_indices,
    needs_saliency,
    resolve_keep,
    teacher_forward,
    teacher_macs,
)
from maskedkd.digests import view_spec_fingerprint
from maskedkd.views import ViewSpec
from pipeline._console import progress_bar
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, NumericError, PipelineError
from pipeline.fingerprints import SEGMENT_RECIPE_ADDED, without_defaults
from pipeline.labels.contract import LabelRef, RenderSpec, ShardRef
from pipeline.labels.order import check_order, checked_steps
from pipeline.models import save_checkpoint, state_dict_fingerprint
from pipeline.placement import pin, place_model, sync_debug_mode, to_device, to_host
from pipeline.train import dist as tdist
from pipeline.train.accumulate import Accumulation, no_sync_unless
from pipeline.train.ema import create_ema, ema_metrics
from pipeline.train.full_view import full_view_logits, full_view_loss, full_view_weights
from pipeline.train.labeled_views import LabeledViews, LoaderWorkers
from pipeline.train.speedups import batch_format, to_channels_last, training_forward
from pipeline.train.state import ResumeRecord, ResumeStore
from pipeline.train.stream import Batch, derive_seed

log_ = logging.getLogger(__name__)  # `log` is train_segment's line callback

LabelMap = Mapping[tuple[str, int], "str | LabelRef"]
# Recipe fields that do not change what a segment computes (resuming under other values is fine).
NOT_IN_FINGERPRINT = {"checkpoint_every", "num_workers"}
_BAR_EVERY_S = 1.0  # seconds between progress-bar loss readouts (each one waits for the device)


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
    render: RenderSpec
    policy: str = "student"
    keep: int | None = None


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, total_epochs: int):
    """timm optimizer and per-update scheduler (``step_on_epochs=False``) for a whole run of ``total_epochs``."""
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    step: dict[str, Any] = {"decay_epochs": cfg.decay_epochs, "decay_rate": cfg.decay_rate} if cfg.sched == "step" else {}
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=total_epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch, **step,
    )
    return optimizer, scheduler



def _render_record(r: RenderSpec) -> list:
    """A render's part of the segment fingerprint: size, mean, std, interpolation, and the resizer
    only where it is not Pillow (so segments recorded before `data.resize` keep theirs: the rule of
    :mod:`pipeline.fingerprints`)."""
    return [r.size, r.mean, r.std, r.interpolation, *r.resize_record().values()]


def segment_fingerprint(*, init: str, shards: Sequence[ShardRef], spec: ViewSpec, seed: int, epochs: range,
                        cfg: TrainConfig, total_epochs: int, render: RenderSpec, labels: LabelMap | None,
                        view_pool: int | None, online: OnlineTeacher | None) -> str:
    """What a segment's result is a pure function of; a resume record is used only when it matches."""
    return sha256_json({
        "init": init,
        "shards": [[s.name, s.rows] for s in shards],
        "view": view_spec_fingerprint(spec),
        "seed": seed,
        "epochs": [epochs.start, epochs.stop],
        "train": {**without_defaults(cfg.model_dump(mode="json", exclude=NOT_IN_FINGERPRINT), SEGMENT_RECIPE_ADDED),
                  "epochs": total_epochs},
        "render": _render_record(render),
        "labels": sorted([k[0], k[1], LabelRef.of(v).path.rsplit("/", 1)[-1], LabelRef.of(v).sha256]
                         for k, v in (labels or {}).items()),
        "view_pool": view_pool,
        "online": None if online is None else {
            "teacher": state_dict_fingerprint(online.model.state_dict()), "policy": online.policy, "keep": online.keep,
            "render": _render_record(online.render),
        },
    })


class _Online:
    """The teacher in the loop: saliency of the current student, masked teacher forward, MAC count."""

    def __init__(self, online: OnlineTeacher, device: torch.device, autocast) -> None:
        self.cfg, self.autocast = online, autocast
        self.teacher = place_model(online.model, device, "the online teacher").eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        patch_embed: Any = self.teacher.patch_embed  # a timm ViT's, reached by name
        n = patch_embed.num_patches
        try:
            self.keep = resolve_keep(online.keep, n, online.policy)
        except ValueError:
            raise ConfigError(f"masking.keep: must be between 1 and {n}, got {online.keep}") from None
        self.grid = tuple(patch_embed.grid_size)
        self.saliency = self.keep is not None and needs_saliency(online.policy)
        self.macs_per_image = teacher_macs(self.teacher, self.keep, online.policy)
        self.device = device

    @torch.no_grad()
    def keep_idx(self, student: nn.Module, batch: Batch, images: torch.Tensor) -> torch.Tensor | None:
        """The batch's keep sets, chosen as precompute chooses them (None: all patches)."""
        seeds = batch.seeds
        if not self.saliency:
            return keep_indices(self.cfg.policy, self.keep, grid=self.grid, seeds=seeds)
        was = student.training
        student.eval()
        try:
            return keep_indices(self.cfg.policy, self.keep, grid=self.grid, seeds=seeds, student=student, images=images,
                                host=lambda s: to_host(s)[0])  # the step's one transfer
        finally:
            student.train(was)

    @torch.no_grad()
    def __call__(self, student: nn.Module, batch: Batch, images: torch.Tensor) -> torch.Tensor:
        keep_idx = self.keep_idx(student, batch, images)
        assert batch.teacher_images is not None  # rendered for the online teacher
        timgs = batch.teacher_images.to(self.device, non_blocking=True)
        if keep_idx is not None:
            keep_idx = to_device(pin(keep_idx, self.device), self.device)
        with self.autocast():
            return teacher_forward(self.teacher, timgs, self.cfg.policy, self.keep, keep_idx).float()


def _update(model: nn.Module, student: nn.Module, optimizer, images: torch.Tensor, batch: Batch, target,
            cfg: TrainConfig, device: torch.device, autocast, *, group: tuple[bool, bool, int],
            ddp: DDP | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's forward and backward on ``images`` (``batch`` on the device), and the optimiser's
    step when the batch ends its accumulation ``group`` (``(first, last, size)``, see
    :mod:`pipeline.train.accumulate`); returns (loss, correct predictions) as tensors on the device,
    so the step does not wait for the device."""
    first, last, size = group
    full_weight, consistency_weight = full_view_weights(cfg)
    targets = batch.targets.to(device, non_blocking=True)
    if first:
        optimizer.zero_grad(set_to_none=True)
    with no_sync_unless(last, ddp):
        with autocast():
            logits = model(images)  # the dropped view first: its token masks draw the step's RNG as before
            full = full_view_logits(model, student, images, full_weight) if full_weight or consistency_weight else None
        loss = distill_loss(logits.float(), targets, target, lam=cfg.lam, tau=cfg.tau,
                            kind=cfg.kd if cfg.kd != "off" else "kl", ce_weight=cfg.ce_weight)
        if full is not None:
            loss = loss + full_view_loss(logits, full, targets, full_weight, consistency_weight)
        (loss / size if size > 1 else loss).backward()
    if last:
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
        optimizer.step()
    correct = (logits.detach().argmax(1) == batch.labels.to(device, non_blocking=True)).sum()
    return loss.detach(), correct


class _Tally:
    """The epoch's loss sum, correct predictions and samples, kept on the device: reading them
    (a host sync) happens only at resume records, the progress bar's refresh and the epoch's end.
    Also remembers the first update whose loss was not finite."""

    def __init__(self, start: list[float], device: torch.device) -> None:
        self.sums = torch.tensor(start, dtype=torch.float64, device=device)
        self.bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite step, or -1
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int, step: int) -> None:
        loss = loss.double()
        # full_like fills on the device (new_tensor would be a blocking copy up, a sync per step)
        self.sums += torch.stack([loss * n, correct.double(), torch.full_like(loss, float(n))])
        first = (self.bad < 0) & ~torch.isfinite(loss)
        self.bad = torch.where(first, torch.full_like(self.bad, step), self.bad)
        self.bad_loss = torch.where(first, loss, self.bad_loss)

    def read(self) -> list[float]:
        """``[loss_sum, correct, samples]`` on the host (a sync)."""
        return to_host(self.sums)[0].tolist()

    def first_bad(self) -> tuple[int, float] | None:
        """The first update (global step) whose loss was not finite and that loss, or None (a sync)."""
        bad, bad_loss = to_host(self.bad, self.bad_loss)
        return None if int(bad) < 0 else (int(bad), float(bad_loss))


def _unwrapped(batches: Iterator[Batch]) -> Iterator[Batch]:
    """``batches``, with a pipeline error raised in a loader worker process re-raised as itself
    (``DataLoader`` wraps it in "Caught DataError in DataLoader worker process 0 ... Original
    Traceback ...": the exit code survives, the message would not read as ours)."""
    try:
        yield from batches
    except PipelineError as e:
        text = str(e)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        raise type(e)(last.split(": ", 1)[1] if ": " in last else last) from None


def _close(batches: Iterator[Batch]) -> None:
    """Stop a batch iterator now: a generator's shard reads, a DataLoader's worker processes."""
    if hasattr(batches, "_shutdown_workers"):  # torch's multiprocessing iterator; no public close
        batches._shutdown_workers()
    elif hasattr(batches, "close"):
        batches.close()


def train_segment(student: nn.Module, *, shards: Sequence[ShardRef], spec: ViewSpec, seed: int, epochs: range,
                  cfg: TrainConfig, total_epochs: int, render: RenderSpec, run_dir: str | Path,
                  labels: LabelMap | None = None, view_pool: int | None = None, online: OnlineTeacher | None = None,
                  device: str | torch.device = "cpu", checkpoint_path: str | Path | None = None,
                  evaluate: Callable[[nn.Module, int], Mapping[str, Any]] | None = None,
                  log: Callable[[str], None] | None = None, progress: str | None = None) -> dict[str, Any]:
    """Train ``student`` in place for ``epochs`` (a ``range(start, end)``), resuming if a record says so.

    Args:
        student: the student at the segment's start (checkpoint c_i), a timm ViT; trained in place.
        shards: the training shards and the rows used of each (:func:`pipeline.labels.contract.shard_refs`).
        spec, seed: the view recipe and seed (``views.seed``, the same that precompute used); the data
            order and the torch RNG (dropout, drop-path) are seeded by ``cfg.seed`` (``train.seed``).
        epochs: this segment's epochs, within ``range(total_epochs)``.
        cfg: the validated recipe (``train``, or ``teacher.train``): optimiser, schedule, loss
            (``cfg.kd``), checkpointing, render threads, evaluation interval.
        total_epochs: epochs of the whole run (the length of the LR schedule, of which the segment trains a part).
        render: the student's input size and normalisation.
        run_dir: the training run's folder (shared by its segments): resume records and state.
        labels: ``{(shard name, view epoch): partition path or LabelRef}`` for every shard and
            view epoch of the segment; required with ``kd != "off"`` unless ``online`` is given.
        view_pool: ``views.pool`` (view epoch = epoch mod pool); None = a fresh view every epoch.
        online: the teacher in the loop instead of stored labels (the paper's baseline).
        device: ``cpu`` or ``cuda``; under ``torchrun`` each rank takes ``cuda:LOCAL_RANK``.
        checkpoint_path: where the final plain timm state_dict goes (default ``run_dir/student-e<end>.pth``).
        evaluate: ``fn(model, epoch) -> metrics`` called on every rank (under DDP each evaluates its
            share) after every ``cfg.eval_every``-th epoch of the run and after the segment's last;
            merged into that epoch's metrics and kept in the resume record.
        log: progress lines (rank 0): one summary line per epoch.
        progress: the label of a per-step progress bar on stderr (rank 0; e.g. ``"train-0"``), shown
            only when stderr is a terminal and not ``-q`` (:mod:`pipeline._console`); None: no bar.

    Returns:
        ``{"checkpoint", "sha256", "epochs": [per-epoch metrics], "global_step", "steps_per_epoch",
        "batches_per_epoch", "batches_trained", "teacher_forwards", "teacher_macs", "resumed": {"epoch",
        "position"} | None, "seconds"}``: ``global_step`` and ``steps_per_epoch`` count optimizer steps,
        ``position`` and the ``batches_*`` count batches (more than steps with ``train.grad_accum_steps``);
        ``batches_trained`` only those of this call. With ``train.model_ema`` the evaluated epochs' metrics
        also hold the EMA's (``ema_val_top1``, ...).

    Raises:
        ConfigError: inconsistent arguments (no labels for KD, batch size vs world size, ...).
        StoreError: a label partition is missing or does not match its shard / views.
        DataError: a shard is unreadable or shorter than expected.
    """
    t_start = time.perf_counter()
    info, device = tdist.setup(device)
    labels, steps_per_epoch = _checked(cfg, epochs, total_epochs, shards, labels, online, info.world, spec)
    log_.debug("segment epochs %d..%d of %d: %d steps/epoch, batch %d, world %d, device %s, torch threads %d",
               epochs.start, epochs.stop - 1, total_epochs, steps_per_epoch, cfg.batch_size, info.world, device,
               torch.get_num_threads())
    run_dir = Path(run_dir)
    checkpoint_path = Path(checkpoint_path or run_dir / f"student-e{epochs.stop:04d}.pth")
    init = state_dict_fingerprint(student.state_dict())
    segment = segment_fingerprint(init=init, shards=shards, spec=spec, seed=seed, epochs=epochs, cfg=cfg,
                                  total_epochs=total_epochs, render=render, labels=labels, view_pool=view_pool,
                                  online=online)
    place_model(student, device, "the student")
    to_channels_last(student, cfg)
    sync_debug_mode(device)  # MKD_SYNC_DEBUG: the step loop's syncs warn (its reads of the tally are exempt)
    run = _Run(student, cfg, info, device, online, Accumulation(cfg.grad_accum_steps, steps_per_epoch), total_epochs,
               ResumeStore(run_dir), say=log if (log is not None and info.is_main) else (lambda _m: None), progress=progress)
    resumed = run.resume(segment, init, epochs)
    record = run.record
    if record.done and checkpoint_path.is_file() and sha256_file(checkpoint_path) == record.checkpoint_sha256:
        return _result(record, run, resumed, t_start)
    run.begin()
    partial = dict(record.partial) if info.is_main else {}
    for epoch in range(record.epoch, epochs.stop):
        # the public dataset's own path (pipeline.LabeledViews): pairing, checks, order, rank slices
        stream = LabeledViews(shards, spec=spec, seed=seed, render=render, epoch=epoch, batch_size=cfg.batch_size,
                              order_seed=cfg.seed, labels=labels, view_pool=view_pool,
                              tau=cfg.tau if cfg.kd == "kl" else 1.0, num_classes=int(student.num_classes),  # type: ignore[arg-type]
                              smoothing=cfg.smoothing, rank=info.rank, world=info.world,
                              teacher_render=online.render if online else None, lanes=cfg.lanes,
                              interleave=cfg.interleave)
        run.epoch(stream, epoch, epochs.stop, partial, evaluate)
        partial = {}
    run.finish(epochs.stop, checkpoint_path)
    return _result(record, run, resumed, t_start)


def _checked(cfg: TrainConfig, epochs: range, total_epochs: int, shards: Sequence[ShardRef], labels: LabelMap | None,
             online: OnlineTeacher | None, world: int, spec: ViewSpec) -> tuple[LabelMap | None, int]:
    """The labels the segment reads (none for ``kd: off``) and its steps per epoch, after refusing
    inconsistent arguments with a :class:`ConfigError`."""
    start, end = epochs.start, epochs.stop
    if total_epochs < 1:
        raise ConfigError(f"the run's epochs must be >= 1, got {total_epochs}")
    if epochs.step != 1 or not 0 <= start <= end <= total_epochs:
        raise ConfigError(f"epochs {epochs} must be a range within 0..{total_epochs} (the run's epochs)")
    if cfg.kd == "off":
        if online is not None:
            raise ConfigError("online: true needs train.kd 'kl' or 'hard', got 'off'")
        labels = None
    elif online is None and labels is None:
        raise ConfigError(f"train.kd is {cfg.kd!r} but no label partitions (and no online teacher) were given")
    elif online is not None and labels is not None:
        raise ConfigError("give either stored labels or an online teacher, not both")
    if cfg.batch_size % world:
        raise ConfigError(f"train.batch_size {cfg.batch_size} must be divisible by the world size {world}")
    check_order(cfg.batch_size, cfg.lanes, world, spec.pairs)
    return labels, checked_steps(shards, cfg.batch_size, cfg.lanes, spec.pairs, spec.repeats)


class _Run:
    """What a segment's epochs share: the student (DDP-wrapped under torchrun, compiled with
    ``train.compile``), its optimiser and schedule (per optimizer step: ``accum.updates`` an epoch),
    its EMA, the online teacher, and the resume record they advance."""

    def __init__(self, student: nn.Module, cfg: TrainConfig, info: tdist.DistInfo, device: torch.device,
                 online: OnlineTeacher | None, accum: Accumulation, total_epochs: int, store: ResumeStore, *,
                 say: Callable[[str], None], progress: str | None) -> None:
        self.student, self.cfg, self.info, self.device, self.store = student, cfg, info, device, store
        self.accum, self.steps_per_epoch, self.say, self.progress = accum, accum.updates, say, progress
        self.optimizer, self.scheduler = build_optimizer(student, cfg, accum.updates, total_epochs)
        self.ema = create_ema(student, cfg)  # of the unwrapped student, before DDP (as timm's train.py)
        self.ema_module = None if self.ema is None else self.ema.module
        self.batches_trained = 0  # by this call (not before a resume)
        self.ddp: DDP | None = None
        amp = cfg.amp and device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        self.online = online
        self.model: nn.Module = student
        self.teacher: _Online | None = None
        self.workers = LoaderWorkers(cfg.num_workers, pin_memory=device.type == "cuda")  # kept across the epochs
        self.record: ResumeRecord

    def begin(self) -> None:
        """Wrap the student for DDP (under torchrun) and load the online teacher: the segment trains."""
        if self.info.world > 1:
            self.model = self.ddp = DDP(self.student,
                                        device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = training_forward(self.model, self.cfg)  # torch.compile after DDP, as timm's train.py
        if self.online is not None:
            self.teacher = _Online(self.online, self.device, self.autocast)

    def resume(self, segment: str, init: str, epochs: range) -> dict | None:
        """Load the segment's resume record (or start one, with the optimiser state of the boundary
        it starts at); returns where it resumed, or None."""
        record = self.store.load(segment)
        if record is not None:
            self.store.restore(record, self.student, self.optimizer, self.ema_module)
            self.record = record
            self.say(f"resuming at epoch {record.epoch}, batch {record.position} ({record.global_step} updates)")
            return {"epoch": record.epoch, "position": record.position}
        start = epochs.start
        boundary = self.store.load_boundary(start, init) if start > 0 else None
        log_.debug("no resume record for this segment in %s; optimizer state from the boundary: %s", self.store.dir,
                   boundary is not None)
        if boundary is not None:
            self.optimizer.load_state_dict(boundary)
        if self.ema_module is not None and start > 0:  # else the EMA starts from the student, as timm's does
            self.store.load_boundary_ema(start, init, self.ema_module)
        self.record = ResumeRecord(segment=segment, epochs=(start, epochs.stop), epoch=start, position=0,
                                   global_step=start * self.steps_per_epoch,
                                   counters={"teacher_forwards": 0, "teacher_macs": 0})
        return None

    def synced(self, tally: _Tally, epoch: int) -> list[float]:
        """The tally over all ranks, after checking that no rank had a non-finite loss so far
        (every rank raises, before rank 0 could save weights DDP averaged a NaN into)."""
        bad = tally.first_bad()
        *totals, ranks_bad = tdist.all_sum([*tally.read(), float(bad is not None)], self.info, self.device)
        if ranks_bad:
            if bad is None:
                raise NumericError(f"the training loss is not finite on another rank (epoch {epoch}): training "
                                   f"diverged or a label is broken; that rank's error names the step")
            e, b = divmod(bad[0] - 1, self.accum.batches)
            raise NumericError(
                f"the training loss is {bad[1]} at epoch {e}, batch {b} (step {bad[0]}): training diverged or a "
                f"label is broken; the checkpoints and resume records written before it are intact (lower "
                f"train.lr, or check the labels with `labels verify`)")
        return totals

    def epoch(self, stream: LabeledViews, epoch: int, end: int, partial: dict[str, float],
              evaluate: Callable[[nn.Module, int], Mapping[str, Any]] | None) -> None:
        """Train epoch ``epoch`` (from the record's position when it is the one resumed), evaluate
        when due, print its line and advance the record."""
        record, cfg = self.record, self.cfg
        position = record.position if epoch == record.epoch else 0
        tally = _Tally([partial.get("loss_sum", 0.0), partial.get("correct", 0.0), partial.get("samples", 0.0)],
                       self.device)
        carried = partial.get("samples", 0.0)
        self.model.train()
        t_epoch = time.perf_counter()
        self.steps(stream, epoch, position, tally)
        loss_sum, correct, samples = self.synced(tally, epoch)
        metrics: dict[str, Any] = {
            "epoch": epoch, "loss": loss_sum / max(samples, 1), "top1": correct / max(samples, 1),
            "lr": self.optimizer.param_groups[0]["lr"], "steps": stream.steps, "samples": int(samples),
            "samples_per_s": (samples - carried) / max(time.perf_counter() - t_epoch, 1e-9),
        }
        if evaluate is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == end):
            # every rank evaluates its share of the split (pipeline.train.evaluate splits by rank)
            self.student.eval()
            metrics.update(evaluate(self.student, epoch))
            if self.ema_module is not None:  # timm's train.py evaluates its EMA after the model, each epoch
                metrics.update(ema_metrics(evaluate(self.ema_module, epoch)))
            self.student.train()
        self.say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        record.history.append(metrics)
        record.epoch, record.position, record.partial = epoch + 1, 0, {}
        if self.info.is_main and record.global_step % cfg.checkpoint_every == 0 and epoch + 1 < end:
            self.store.save(record, self.student, self.optimizer, self.ema_module)

    def steps(self, stream: LabeledViews, epoch: int, position: int, tally: _Tally) -> None:
        """The epoch's updates from batch ``position`` on, with resume records every ``checkpoint_every`` updates."""
        record, cfg, info = self.record, self.cfg, self.info
        # decoding and rendering in cfg.num_workers loader processes; pinned batches on CUDA
        batches = stream.batch_loader(position, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                      workers=self.workers)
        bar = progress_bar(total=stream.steps, initial=position, desc=f"{self.progress} epoch {epoch}", unit="step",
                           enabled=self.progress is not None and info.is_main, leave=False)
        bar_read = -math.inf
        batch_iter = iter(batches)
        try:
            for position, batch in enumerate(_unwrapped(batch_iter), start=position):  # noqa: B020 - resumes mid-epoch
                stepped = self.update(batch, epoch, position, tally)
                bar.update(1)
                done_in_epoch = position + 1
                if not bar.disable and time.perf_counter() - bar_read >= _BAR_EVERY_S:
                    bar_loss, _, bar_samples = tally.read()
                    bar.set_postfix_str(f"loss {bar_loss / max(bar_samples, 1):.4f}")
                    bar_read = time.perf_counter()
                if stepped and record.global_step % cfg.checkpoint_every == 0 and done_in_epoch < stream.steps:
                    totals = self.synced(tally, epoch)
                    if info.is_main:
                        record.epoch, record.position = epoch, done_in_epoch
                        record.partial = {"loss_sum": totals[0], "correct": totals[1], "samples": totals[2]}
                        self.store.save(record, self.student, self.optimizer, self.ema_module)
        finally:
            bar.close()  # before the epoch's summary line, which stays
            _close(batch_iter)

    def update(self, batch: Batch, epoch: int, position: int, tally: _Tally) -> bool:
        """Train on ``batch`` (the online teacher's targets first, when there is one): one optimiser
        update, or a share of one with ``train.grad_accum_steps``; returns whether the optimiser stepped."""
        record, info, device, accum = self.record, self.info, self.device, self.accum
        self.scheduler.step_update(num_updates=record.global_step)
        torch.manual_seed(derive_seed("step", self.cfg.seed, epoch, position, info.rank))
        # uint8 from loader workers: normalised, erased and mixed on the device
        images = batch_format(batch.images_on(device), self.cfg)
        target: SoftTarget | torch.Tensor | None = None if batch.teacher is None else batch.teacher.to(device, non_blocking=True)
        if self.teacher is not None:
            target = self.teacher(self.student, batch, images)
            record.counters["teacher_forwards"] += len(batch) * info.world
            record.counters["teacher_macs"] += self.teacher.macs_per_image * len(batch) * info.world
        last = accum.last(position)
        loss, correct = _update(self.model, self.student, self.optimizer, images, batch, target, self.cfg, device,
                                self.autocast, group=(accum.first(position), last, accum.group_size(position)),
                                ddp=self.ddp)
        if last:
            record.global_step += 1
            if self.ema is not None:
                self.ema.update(self.student, step=record.global_step)
        self.batches_trained += 1
        tally.add(loss, correct, len(batch), epoch * accum.batches + position + 1)
        return last

    def finish(self, end: int, checkpoint_path: Path) -> None:
        """Rank 0 saves the checkpoint, the boundary's optimiser state and the finished record; all ranks meet."""
        self.workers.close()
        record = self.record
        if self.info.is_main:
            record.checkpoint = str(checkpoint_path)
            record.checkpoint_sha256 = save_checkpoint(self.student, checkpoint_path)
            self.store.save_boundary(end, state_dict_fingerprint(self.student.state_dict()), record.global_step,
                                     self.optimizer, self.ema_module)
            record.done = True
            self.store.save(record, self.student, self.optimizer, self.ema_module)
        if self.info.world > 1:
            dist.barrier()


def _result(record: ResumeRecord, run: _Run, resumed: dict | None, t_start: float) -> dict[str, Any]:
    return {
        "checkpoint": record.checkpoint,
        "sha256": record.checkpoint_sha256,
        "epochs": list(record.history),
        "global_step": record.global_step,
        "steps_per_epoch": run.steps_per_epoch,
        "batches_per_epoch": run.accum.batches,
        "batches_trained": run.batches_trained,
        "teacher_forwards": record.counters.get("teacher_forwards", 0),
        "teacher_macs": record.counters.get("teacher_macs", 0),
        "resumed": resumed,
        "seconds": time.perf_counter() - t_start,
    }
