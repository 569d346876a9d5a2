"""The public dataset: a run's training views paired with their stored labels, for any loop
(docs/design.md §6; README "Use the labels in your own training loop").

:class:`LabeledViews` is a torch ``IterableDataset`` of one epoch. It yields
:class:`LabeledView` items: the student's rendered view, the teacher's stored soft target (a
one-row :class:`maskedkd.SoftTarget`, dense or top-K, ready for :func:`maskedkd.kd_loss`), the
hard label (or the mixed / smoothed label vector) and the key. :func:`collate` batches them.

The order is the trainer's (:mod:`pipeline.labels.order`): global batches of ``batch_size``
rows drawn from ``lanes`` lanes of interleaved shards, a pure function of ``(order_seed, epoch)``.
The unit of work is one rank's slice of one global batch:

- under DDP, rank ``r`` of ``W`` yields its contiguous ``batch_size / W`` rows of every global
  batch (whole lanes when ``W`` divides ``lanes``: it reads only those lanes' shards), so the
  global batch sequence does not depend on the world size;
- with ``DataLoader(num_workers=K)``, worker ``k`` renders batches ``k, k + K, ...``; the
  DataLoader takes one batch from each worker in turn, so a loader made by :meth:`loader` (or
  with ``batch_size=local_batch_size`` and :func:`collate`) yields exactly the batches of
  ``num_workers=0``. A worker (and a rank) reads only the shards its batches use, and decodes
  only its own rows of them (and their mixing partners), so K workers (or W ranks) share the
  decoding; in a DataLoader worker the next shard is read (and hashed) in a background thread
  while the current one is rendered. The trainer's :meth:`LabeledViews.batch_loader` splits a
  rank's *lanes* across its workers instead when ``K`` divides them (each worker renders its
  lanes' part of every batch, the parts are concatenated in order), so each shard is read by
  one worker only.

Our trainer (:func:`pipeline.train.train_segment`) streams through :meth:`LabeledViews.batch_loader`
(``train.num_workers`` loader processes): the same pairing, checks and order as this dataset's iterator.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, cast

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskedkd.targets import SoftTarget
from maskedkd.views import ViewSpec, repeat_view_epochs
from pipeline.errors import ConfigError, StoreError
from pipeline.labels.contract import LabelRef, RenderSpec, ShardRef, epoch_shards, view_epoch_of
from pipeline.labels.order import EpochOrder, PlanSegment, check_order, checked_steps, epoch_order, rank_slice, split_repeats
from pipeline.train.stream import Batch, LoadedShard, Segment, ShardPrefetcher, load_repeats, make_batch

if TYPE_CHECKING:  # annotations only
    from pipeline.config.schema import StageConfig

LabelMap = Mapping[tuple[str, int], "str | LabelRef"]


class LabeledView(NamedTuple):
    """One row (or, after :func:`collate`, one batch) of :class:`LabeledViews`.

    Attributes:
        image: float32 [C, H, W] (batched: [B, C, H, W]), the student's view, normalised.
        target: the teacher's stored soft target, one row (batched: B rows); None without labels.
        label: int64 class (batched: [B]), or float32 [classes] (batched: [B, classes]) when the
            views mix (mixup/cutmix) or labels are smoothed.
        key: the sample's key in its shard (batched: a list).
    """

    image: torch.Tensor
    target: SoftTarget | None
    label: torch.Tensor
    key: Any


def collate(items: Sequence[LabeledView]) -> LabeledView:
    """Batch :class:`LabeledView` rows (the ``collate_fn`` for a ``DataLoader``): top-K or dense
    targets are concatenated with :meth:`maskedkd.SoftTarget.cat`."""
    target = None if items[0].target is None else SoftTarget.cat([cast(SoftTarget, it.target) for it in items])
    return LabeledView(torch.stack([it.image for it in items]), target, torch.stack([it.label for it in items]),
                       [it.key for it in items])



def _loader_worker() -> tuple[int, int]:
    """``(worker, workers)`` of the calling DataLoader worker process; ``(0, 1)`` outside one."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _placement(rank: int | None, world: int | None) -> tuple[int, int]:
    """``(rank, world)``: as given, else the initialised process group's, else torchrun's env, else (0, 1)."""
    if rank is not None and world is not None:
        return int(rank), int(world)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class LabeledViews(IterableDataset):
    """One epoch of a run's training views with their stored teacher labels.

    Build it from a stage config with :meth:`from_config`, or from its parts (what the trainer
    does). Missing or mismatched partitions raise :class:`pipeline.errors.StoreError` (exit code
    4), naming the shard or the partition file and the first mismatching key or view column.

    Args:
        shards: the training shards and the rows used of each (:func:`pipeline.labels.contract.shard_refs`).
        spec, seed: the view recipe and ``views.seed`` (those precompute used).
        render: the student's input size and normalisation.
        epoch: the training epoch (its view epoch is ``epoch mod view_pool``).
        batch_size: the *global* batch size (``train.batch_size``); the epoch has
            ``rows // batch_size`` batches, the last incomplete one is dropped.
        order_seed: seeds the shard and row order (``train.seed``); default ``seed``.
        labels: ``{(shard name, view epoch): partition path or LabelRef}``; None: no targets
            (``target`` is None).
        view_pool: ``views.pool`` as a size; None: a fresh view every epoch.
        tau: the temperature the targets are read at (top-K partitions store the logsumexp at each
            of ``labels.temperatures``).
        num_classes: the classes (labels outside are skipped by the shard reader; needed for mixing).
        smoothing: label smoothing of the hard label (makes ``label`` a vector).
        rank, world: this process's place under DDP; default: the process group's, else 0 of 1.
        teacher_render: also render each batch for an online teacher (the trainer's baseline).
        lanes, interleave: ``train.lanes`` and ``train.interleave`` (:mod:`pipeline.labels.order`).
    """

    def __init__(self, shards: Sequence[ShardRef], *, spec: ViewSpec, seed: int, render: RenderSpec, epoch: int,
                 batch_size: int, order_seed: int | None = None, labels: LabelMap | None = None,
                 view_pool: int | None = None, tau: float = 1.0, num_classes: int | None = None,
                 smoothing: float = 0.0, rank: int | None = None, world: int | None = None,
                 teacher_render: RenderSpec | None = None, lanes: int = 1, interleave: int = 1) -> None:
        super().__init__()
        self._args: dict[str, Any] = dict(shards=shards, spec=spec, seed=seed, render=render, batch_size=batch_size, order_seed=order_seed,
                          labels=labels, view_pool=view_pool, tau=tau, num_classes=num_classes, smoothing=smoothing,
                          rank=rank, world=world, teacher_render=teacher_render, lanes=lanes, interleave=interleave)
        self.shards = list(shards)
        self.spec, self.seed, self.render_spec = spec, int(seed), render
        self.epoch, self.batch_size = int(epoch), int(batch_size)
        self.order_seed = self.seed if order_seed is None else int(order_seed)
        self.view_epoch = view_epoch_of(self.epoch, view_pool)
        # with repeated augmentation (views.repeats) each row is trained once per repeat view epoch
        self.view_epochs = repeat_view_epochs(self.view_epoch, spec.repeats)
        self.tau, self.num_classes, self.smoothing = float(tau), num_classes, float(smoothing)
        self.teacher_render = teacher_render
        self.rank, self.world = _placement(rank, world)
        self.soft = spec.mixes or self.smoothing > 0
        if self.soft and num_classes is None:
            raise ConfigError("mixed or smoothed labels need num_classes")
        if self.batch_size % self.world:
            raise ConfigError(f"train.batch_size {self.batch_size} must be divisible by the world size {self.world}")
        self.lanes, self.interleave = int(lanes), int(interleave)
        check_order(self.batch_size, self.lanes, self.world, spec.pairs)
        if spec.mixes and spec.mix_mode == "batch" and view_pool is not None:
            raise ConfigError(f"views.mix_mode batch draws a mix per global batch of one epoch: it needs views.pool: "
                              f"epochs, not {view_pool}")
        self._order: EpochOrder | None = None  # built when first needed, not sent to loader workers
        self.steps = checked_steps(self.shards, self.batch_size, self.lanes, spec.pairs, spec.repeats)
        self.labels: dict[str, list[LabelRef]] | None = None
        if labels is not None:
            refs = {k: LabelRef.of(v) for k, v in labels.items()}
            used = epoch_shards(self.shards, self.order_seed, self.epoch, spec.repeats)
            missing = [(s.name, v) for s in used for v in self.view_epochs if (s.name, v) not in refs]
            if missing:
                raise StoreError(f"no label partition given for shard {missing[0][0]!r}, view epoch {missing[0][1]}"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            self.labels = {s.name: [refs[(s.name, v)] for v in self.view_epochs] for s in used}
        self.config: StageConfig | None = None

    @classmethod
    def from_config(cls, stages: str | Path | StageConfig, epoch: int, *, overrides: Sequence[str] = (),
                    rank: int | None = None, world: int | None = None,
                    batch_size: int | None = None) -> "LabeledViews":
        """Epoch ``epoch`` of a run, with the labels its run lock records for that epoch's segment.

        Args:
            stages: a stage YAML (or a finished run's ``runs/<name>/config.yaml``), or a loaded
                :class:`pipeline.config.StageConfig`. The run lock is ``<run_dir>/run.lock.json``.
            epoch: a training epoch of the run (``0 .. schedule.epochs - 1``).
            overrides: ``--set``-style overrides, as the run was given them.
            batch_size: the global batch size; default ``train.batch_size`` (with ``views.mix_mode: batch``
                the stored mixes are those of ``train.batch_size``'s batches: another size is refused).

        The result's ``config`` attribute holds the stage config (model names, ``train.lam`` ...).

        Raises:
            ConfigError: a bad stage file, an epoch outside the run, an online run (it stores no labels).
            StoreError: no run lock, or no labels recorded for the epoch's segment yet, or a
                recorded partition unreadable.
        """
        # lazy: config parsing pulls in pydantic and timm's model registry, which the trainer path never needs
        from pipeline._lock import LOCK_NAME, RunLock, stage_name
        from pipeline.config import load_config
        from pipeline.data.manifest import load_manifest
        from pipeline.labels import open_partition
        from pipeline.labels.contract import render_spec, shard_refs

        cfg = load_config(stages, overrides=overrides) if isinstance(stages, (str, Path)) else stages
        where = str(stages) if isinstance(stages, (str, Path)) else cfg.name
        segments = cfg.schedule.segments()
        segment = next((i for i, (a, b) in enumerate(segments) if a <= epoch < b), None)
        if segment is None:
            raise ConfigError(f"{where}: epoch {epoch} is not an epoch of the run (0..{cfg.schedule.epochs - 1})")
        labels = None
        if cfg.train.kd != "off":
            if cfg.online:
                raise ConfigError(f"{where}: online: true: this run keeps no stored labels to stream")
            run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name
            lock_path = run_dir / LOCK_NAME
            name = stage_name("precompute", segment)
            if not lock_path.is_file():
                raise StoreError(f"{lock_path}: no run lock: run `mkd-pipeline run {where} --until {name}` first")
            stage = RunLock(lock_path, store=cfg.labels.store).stages.get(name)
            if stage is None:
                a, b = segments[segment]
                raise StoreError(f"{lock_path}: no labels recorded for epochs {a}..{b - 1} (stage {name}): "
                                 f"run `mkd-pipeline run {where} --until {name}` first")
            labels = {}
            for p in stage["partitions"]:
                expect = {"fingerprints": p["inputs"]}
                with open_partition(p["path"], expect=expect) as part:  # the footer: which shard and view epoch
                    where_to = (str(part.metadata["shard"]), int(part.metadata["view_epoch"]))
                labels[where_to] = LabelRef(p["path"], p["sha256"], expect)
        ds = cls(shard_refs(load_manifest(cfg.data.root), cfg.data.train, cfg.data.subset), spec=cfg.views.view_spec(),
                 seed=cfg.views.seed, render=render_spec(cfg.data, cfg.student), epoch=epoch,
                 batch_size=batch_size or cfg.train.batch_size, order_seed=cfg.train.seed, labels=labels,
                 view_pool=cfg.views.pool_size, tau=cfg.train.tau if cfg.train.kd == "kl" else 1.0,
                 num_classes=cfg.data.num_classes, smoothing=cfg.train.smoothing, rank=rank, world=world,
                 lanes=cfg.train.lanes, interleave=cfg.train.interleave)
        ds.config = cfg
        return ds

    def for_epoch(self, epoch: int) -> "LabeledViews":
        """The same run's dataset for another epoch."""
        other = type(self)(**self._args, epoch=epoch)
        other.config = self.config
        return other

    def same_run(self, other: "LabeledViews") -> bool:
        """Whether ``other`` differs from this dataset in its epoch at most."""
        return self._args == other._args

    # ------------------------------------------------------------------ sizes

    @property
    def local_batch_size(self) -> int:
        """Rows per batch on this rank: ``batch_size / world``."""
        return self.batch_size // self.world

    def __len__(self) -> int:
        """Rows this rank yields in the epoch (all DataLoader workers together)."""
        return self.steps * self.local_batch_size

    # ------------------------------------------------------------------ batches

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_order": None}  # a loader worker builds its own (index arithmetic)

    def load(self, ref: ShardRef) -> list[LoadedShard]:
        """One shard with its label partitions, keys and views checked, one :class:`LoadedShard` per
        repeat view epoch (one without repeats; :func:`pipeline.train.stream.load_repeats`)."""
        labels = [None] * len(self.view_epochs) if self.labels is None else self.labels[ref.name]
        batches = None
        if self.spec.mixes and self.spec.mix_mode == "batch":  # a pair's mix is its global batch's
            every = self.order().batch_of(ref.name)
            batches = [every[r * ref.rows:(r + 1) * ref.rows] for r in range(self.spec.repeats)]
        return load_repeats(ref, spec=self.spec, seed=self.seed, view_epochs=self.view_epochs, labels=labels,
                            tau=self.tau, num_classes=self.num_classes, batches=batches)

    def order(self) -> EpochOrder:
        """The epoch's global batches as index plans (:class:`pipeline.labels.order.EpochOrder`)."""
        if self._order is None:
            self._order = epoch_order(self.shards, seed=self.order_seed, epoch=self.epoch, batch_size=self.batch_size,
                                      lanes=self.lanes, interleave=self.interleave, spec=self.spec, view_seed=self.seed,
                                      view_epoch=self.view_epoch)
        return self._order

    def splits_lanes(self, workers: int) -> bool:
        """Whether ``workers`` loader workers split this rank's lanes (each renders its lanes' part of
        every batch) rather than take whole batches in turn: when they divide the rank's lanes."""
        return workers > 1 and self.lanes % self.world == 0 and (self.lanes // self.world) % workers == 0

    def plans(self, start: int = 0, *, worker: int = 0, workers: int = 1, read_ahead: bool | None = None,
              split_lanes: bool = False) -> Iterator[list[Segment]]:
        """This rank's rows of global batches ``start, start + 1, ...`` (every ``workers``-th from
        ``start + worker``; with ``split_lanes``, worker ``worker``'s lanes of every one), their
        shards loaded; nothing rendered yet (see :meth:`render`).

        Only the shards a yielded batch uses are read, each once: a shard is held from the first
        to the last of this process's batches that use it.
        ``read_ahead``: read the next of them in a background thread; default: in a DataLoader
        worker process only (:class:`pipeline.train.stream.ShardPrefetcher`).
        """
        mine: list[list[PlanSegment]] = []
        for n, segments in enumerate(self.order().batches(start)):
            if split_lanes:
                mine.append(rank_slice(rank_slice(segments, self.rank, self.world), worker, workers))
            elif n % workers == worker:
                mine.append(rank_slice(segments, self.rank, self.world))
        last = {ref.name: n for n, plan in enumerate(mine) for ref, _ in plan}

        # read ahead in DataLoader worker processes only: in the training process the read's Python
        # work (tar members, image headers) would take the GIL from the step (8-20% of steps/s measured
        # on 28 px images with 2 torch threads)
        if read_ahead is None:
            read_ahead = get_worker_info() is not None
        reader: contextlib.AbstractContextManager[Callable[[ShardRef], list[LoadedShard]]] = contextlib.nullcontext(self.load)
        if read_ahead:
            # the shards this process will load, in order (index arithmetic only): what to read ahead
            order = list({ref.name: ref for plan in mine for ref, _ in plan}.values())
            reader = ShardPrefetcher(self.load, order)
        held: dict[str, list[LoadedShard]] = {}
        repeats = self.spec.repeats
        with reader as load:
            for n, plan in enumerate(mine):
                for ref, _ in plan:
                    if ref.name not in held:
                        held[ref.name] = load(ref)
                yield [(held[ref.name][r], part) for ref, rows in plan for r, part in split_repeats(rows, ref.rows, repeats)]
                held = {name: shard for name, shard in held.items() if last[name] > n}

    def render(self, segments: Sequence[Segment], uint8: bool = False) -> Batch:
        """Render a plan from :meth:`plans` into a :class:`pipeline.train.stream.Batch` (``uint8``: its
        images left as uint8 renders, finished by :meth:`~pipeline.train.stream.Batch.images_on`)."""
        return make_batch(segments, self.render_spec, num_classes=self.num_classes or 0, soft=self.soft,
                          smoothing=self.smoothing, teacher_render=self.teacher_render, uint8=uint8)

    def batches(self, start: int = 0, *, worker: int = 0, workers: int = 1, split_lanes: bool = False,
                uint8: bool = False) -> Iterator[Batch]:
        """:meth:`plans` rendered, one after the other."""
        # a row is rendered once an epoch; with window mixing it may still be a later row's partner
        release = not self.spec.mixes or self.spec.pairs
        for segments in self.plans(start, worker=worker, workers=workers, split_lanes=split_lanes):
            batch = self.render(segments, uint8)
            if release:
                for shard, rows in segments:
                    shard.images.release(rows)
            yield batch

    def __iter__(self) -> Iterator[LabeledView]:
        worker, workers = _loader_worker()
        for batch in self.batches(worker=worker, workers=workers):
            images = batch.images_on("cpu")
            for j, key in enumerate(keys_of(batch)):
                target = None if batch.teacher is None else batch.teacher[j:j + 1]
                yield LabeledView(images[j], target, batch.targets[j], key)

    def batch_loader(self, start: int = 0, *, num_workers: int = 0, pin_memory: bool = False,
                     workers: "LoaderWorkers | None" = None) -> Iterable[Batch]:
        """This rank's rendered batches from global batch ``start`` on, in order: what the trainer
        iterates (take the images with :meth:`~pipeline.train.stream.Batch.images_on`). With
        ``num_workers > 0`` they are decoded and rendered in that many ``DataLoader`` worker
        processes (each decoding only its own batches' rows) and arrive
        :meth:`~pipeline.train.stream.Batch.detached`, their images as uint8 renders that
        ``images_on`` normalises, erases and mixes on the device; ``pin_memory`` pins them for
        non-blocking copies to a GPU. ``workers``: take them from these worker processes, kept
        across epochs (then ``num_workers`` and ``pin_memory`` are theirs)."""
        if workers is not None and workers.num_workers > 0:
            return workers.batches(self, start)
        if num_workers == 0 and not pin_memory:
            return self.batches(start)
        split = self.splits_lanes(num_workers)
        loader = DataLoader(_BatchDataset(self, start, split), batch_size=None, num_workers=num_workers,
                            pin_memory=pin_memory)
        return _Joined(loader, num_workers) if split else loader

    def loader(self, num_workers: int = 0, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` of this rank's batches in the trainer's order (any ``num_workers``);
        ``kwargs`` go to ``DataLoader`` (e.g. ``pin_memory=True``)."""
        return DataLoader(self, batch_size=self.local_batch_size, num_workers=num_workers, collate_fn=collate, **kwargs)

    collate = staticmethod(collate)


class _BatchDataset(IterableDataset):
    """One rank's rendered batches from ``start`` on, split across DataLoader workers like :class:`LabeledViews`.

    With ``where`` (a shared ``[epoch, start]`` tensor) the epoch and start are read from it at
    each iteration: persistent workers serve every epoch of a segment.
    """

    def __init__(self, views: LabeledViews, start: int, split_lanes: bool = False,
                 where: torch.Tensor | None = None) -> None:
        super().__init__()
        self.views, self.start, self.split_lanes, self.where = views, start, split_lanes, where

    def __iter__(self) -> Iterator[Batch]:
        views, start = self.views, self.start
        if self.where is not None:
            epoch, start = (int(v) for v in self.where)
            views = views if epoch == views.epoch else views.for_epoch(epoch)
        worker, workers = _loader_worker()
        elsewhere = get_worker_info() is not None  # to another process: uint8, a quarter of float32's bytes
        for batch in views.batches(start, worker=worker, workers=workers, split_lanes=self.split_lanes, uint8=elsewhere):
            yield batch.detached() if elsewhere else batch


def _whole(parts: Iterator[Batch], workers: int) -> Iterator[Batch]:
    """Workers' lane parts as whole batches: the loader takes one item from each worker in turn,
    so ``workers`` consecutive items are the parts of one batch, in lane order."""
    for first in parts:
        yield Batch.cat([first] + [next(parts) for _ in range(workers - 1)])


class _Joined:
    """A DataLoader of workers' lane parts, as whole batches (:func:`_whole`); its workers end with the epoch."""

    def __init__(self, loader: DataLoader, workers: int) -> None:
        self.loader, self.workers = loader, workers

    def __iter__(self) -> Iterator[Batch]:
        parts = iter(self.loader)
        try:
            yield from _whole(parts, self.workers)
        finally:
            _shutdown(parts)


def _shutdown(iterator: object) -> None:
    if hasattr(iterator, "_shutdown_workers"):  # torch's multiprocessing iterator; no public close
        iterator._shutdown_workers()


class LoaderWorkers:
    """DataLoader worker processes kept across the epochs of a segment (``persistent_workers``).

    Started by the first epoch's :meth:`LabeledViews.batch_loader` ``(workers=...)``, they read
    each later epoch and start batch from shared memory when the epoch is iterated, so no epoch
    pays for starting processes again. A dataset of another run (other than in its epoch) starts
    new ones. :meth:`close` (or leaving the ``with`` block) ends them.
    """

    def __init__(self, num_workers: int, pin_memory: bool = False) -> None:
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.where = torch.zeros(2, dtype=torch.int64).share_memory_()  # (epoch, start), read by the workers
        self.views: LabeledViews | None = None
        self.loader: DataLoader | None = None

    def batches(self, views: LabeledViews, start: int) -> Iterator[Batch]:
        """``views``' batches from ``start`` on, from the kept workers."""
        if self.loader is None or self.views is None or not self.views.same_run(views):
            self.close()
            split = views.splits_lanes(self.num_workers)
            self.loader = DataLoader(_BatchDataset(views, 0, split, self.where), batch_size=None,
                                     num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=True)
            self.views = views
        self.where[0], self.where[1] = views.epoch, start
        parts = iter(self.loader)
        split = cast(_BatchDataset, self.loader.dataset).split_lanes
        return _whole(parts, self.num_workers) if split else (batch for batch in parts)

    def close(self) -> None:
        """End the worker processes."""
        if self.loader is not None:
            _shutdown(getattr(self.loader, "_iterator", None))  # the persistent iterator the loader keeps
        self.loader = self.views = None

    def __enter__(self) -> "LoaderWorkers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def keys_of(batch: Batch) -> list[str]:
    """The keys of a rendered batch's rows, in order."""
    return list(batch.keys)


__all__ = ["LabeledView", "LabeledViews", "LoaderWorkers", "collate", "keys_of"]
