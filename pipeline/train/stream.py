"""The trainer's data stream: shards and label partitions in lockstep, views, batches (docs/design.md §2, §6).

Which rows make up each global batch, and which rank takes which, is :mod:`pipeline.labels.order`
(a pure function of ``(seed, epoch)``, the shard list and ``train.lanes`` / ``train.interleave``).
This module reads and renders what an order names:

1. each shard is read with :func:`pipeline.data.shards.read_shard` (its first ``ShardRef.rows``
   samples) and, when KD labels are streamed, its label partition beside it: the partition's
   rows must be the shard's samples in tar order (checked key by key as the samples arrive) and
   its view columns must equal the Views the trainer derives itself with
   :func:`maskedkd.views.shard_views` (:func:`pipeline.labels.contract.check_views`; otherwise
   the labels were computed on other views);
2. a batch's rows are rendered shard by shard; a mixing partner is a row of the same shard (with
   ``pair`` / ``elem`` mixing, the adjacent row of the same batch, rendered once for both).

Views depend on the *view epoch* (``epoch mod views.pool``,
:func:`pipeline.labels.contract.view_epoch_of`), the order on the epoch itself.

A shard's images are decoded lazily (:class:`LazyImages`): a process decodes only the rows it
renders and their mixing partners, so decoding, the costly part, is split across ranks (and
across a ``DataLoader``'s workers) like rendering and the model.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Generic, Sequence, TypeVar, cast

import numpy as np
import torch
from PIL import Image

from maskedkd.mixing import mix_target
from maskedkd.rendering import PixelSpec, finish_views, render_batch, render_batch_pixels, view_erase_fill
from maskedkd.targets import SoftTarget
from maskedkd.views import View, ViewSpec, shard_views
from pipeline.data.shards import Sample, decode_image, read_shard
from pipeline.errors import DataError, StoreError
from pipeline.labels import open_partition
from pipeline.labels.contract import LabelRef, RenderSpec, ShardRef, check_views
from pipeline.labels.order import derive_seed  # noqa: F401  (public here too: the step seeds of loop.py and tests)

Segment = tuple["LoadedShard", np.ndarray]


def decode_row(where: str | object, key: str, data: bytes) -> Image.Image:
    """Decode one sample's image whose header :func:`pipeline.data.shards.read_shard` checked.

    Raises:
        DataError: the pixels do not decode (names the shard ``where`` and the key).
    """
    try:
        return decode_image(data)
    except ValueError as e:
        raise DataError(f"shard {where}: sample {key!r}: {e} (its header reads, its pixels do not; "
                        f"`mkd-pipeline data verify --decode` lists every such sample)") from None


class LazyImages(Sequence[Image.Image]):
    """A shard's images, each decoded from its bytes the first time it is indexed, then kept.

    ``decoded`` counts the decodes (what a rank or a loader worker actually paid for).
    """

    def __init__(self, where: str | object, keys: Sequence[str], encoded: Sequence[bytes], uses: int = 1) -> None:
        self.where, self.keys = str(where), list(keys)
        self._encoded: list[bytes | None] = list(encoded)
        self._images: list[Image.Image | None] = [None] * len(self._encoded)
        self._left = [int(uses)] * len(self._encoded)  # renders of each row still to come this epoch
        self.decoded = 0

    def __len__(self) -> int:
        return len(self._images)

    def release(self, rows: Sequence[int] | np.ndarray) -> None:
        """Count one render of each row, and forget a row's image after its last (``uses``: its
        repeats): rows rendered once per epoch (and mixed only within their own batch) are not
        kept while the shard stays open for its other rows (interleaved shards stay open for many
        batches). A row whose other repeats another process renders (a lane's chunk or a rank's
        slice cut between them) is kept until the shard is closed: at most a unit per cut."""
        for i in rows:
            self._left[i] -= 1
            if self._left[i] <= 0:
                self._images[i] = self._encoded[i] = None

    def _get(self, i: int) -> Image.Image:
        image = self._images[i]
        if image is None and self._encoded[i] is None:
            raise RuntimeError(f"shard {self.where}: row {i} ({self.keys[i]!r}) was released after its render")
        if image is None:
            image = decode_row(self.where, self.keys[i], self._encoded[i])  # type: ignore[arg-type]  # None once decoded only
            self._images[i], self._encoded[i] = image, None
            self.decoded += 1
        return image

    def __getitem__(self, i):  # int or slice, as a list does
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        return self._get(range(len(self))[i])


@dataclass
class LoadedShard:
    """One shard's rows for one epoch: images (decoded on first use), labels, views, teacher targets."""

    ref: ShardRef
    view_epoch: int
    keys: list[str]
    images: LazyImages
    labels: torch.Tensor  # int64 [n]
    views: list[View]
    target: SoftTarget | None = None  # [n] rows, at the loss temperature
    _index: dict[str, int] | None = field(default=None, repr=False)

    def index(self, key: str) -> int:
        """Row of ``key`` in this shard."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        return self._index[key]

    def partner(self, key: str) -> tuple[Image.Image, View]:
        """Image and view of a mixing partner (for :func:`maskedkd.rendering.render_batch`)."""
        i = self.index(key)
        return self.images[i], self.views[i]


def _open_labels(ref: ShardRef, label: LabelRef, view_epoch: int):
    expect = dict(label.expect or {})
    expect.update({"shard": ref.name, "view_epoch": int(view_epoch)})
    partition = open_partition(label.path, expect=expect, sha256=label.sha256)
    if partition.num_rows != ref.rows:
        partition.close()
        raise StoreError(
            f"{label.path}: partition has {partition.num_rows} rows, the trainer uses the first {ref.rows} "
            f"samples of shard {ref.name!r}: it was computed for another subset"
        )
    return partition


def load_shard(
    ref: ShardRef,
    *,
    spec: ViewSpec,
    seed: int,
    view_epoch: int,
    label: LabelRef | None = None,
    tau: float = 1.0,
    num_classes: int | None = None,
    batches: np.ndarray | None = None,
) -> LoadedShard:
    """Read one shard (and its label partition, in lockstep) for one view epoch: :func:`load_repeats` of
    one (``batches``: its rows' global batches, for ``mix_mode: batch``)."""
    return load_repeats(ref, spec=spec, seed=seed, view_epochs=[view_epoch], labels=[label], tau=tau,
                        num_classes=num_classes, batches=None if batches is None else [batches])[0]


def load_repeats(
    ref: ShardRef,
    *,
    spec: ViewSpec,
    seed: int,
    view_epochs: Sequence[int],
    labels: Sequence[LabelRef | None],
    tau: float = 1.0,
    num_classes: int | None = None,
    batches: Sequence[np.ndarray] | None = None,
) -> list[LoadedShard]:
    """Read one shard once (and its label partitions, in lockstep) for several view epochs (a view
    epoch's repeats, :func:`maskedkd.views.repeat_view_epochs`): one :class:`LoadedShard` each,
    sharing the images (decoded once, released after their last repeat's render). ``batches``: with
    ``mix_mode: batch``, each view epoch's rows' global batches (:func:`maskedkd.views.shard_views`).

    Samples :func:`read_shard` cannot use (and, with ``num_classes``, labels outside the classes)
    are skipped; a shard left with fewer than ``ref.rows`` samples is refused, naming them.

    Raises:
        DataError: the shard is unreadable or has fewer usable samples than ``ref.rows``.
        StoreError: the partition is for another shard, view epoch or subset, its rows are not
            the shard's samples in tar order (names the file and the first mismatching key), or
            its views differ from the derived ones.
    """
    partitions: list = []
    try:
        for label, view_epoch in zip(labels, view_epochs, strict=True):
            partitions.append(_open_labels(ref, label, view_epoch) if label is not None else None)
        stored = [p.read_all(columns=("keys", "target", "view")) if p is not None else None for p in partitions]
        # every partition's rows must be the shard's samples in tar order, checked as they arrive
        checked = [(cast(LabelRef, label), batch.keys) for label, batch in zip(labels, stored) if batch is not None]
        keys: list[str] = []
        encoded: list[bytes] = []
        classes: list[int] = []
        skipped: list = []
        # hashed as streamed (a shard changed since its manifest raises before any step uses it);
        # only headers are checked here: each row is decoded where it is rendered (LazyImages)
        for i, sample in enumerate(read_shard(ref.path, report=skipped, num_classes=num_classes, sha256=ref.sha256,
                                              limit=ref.rows, decode=False)):
            for label, part_keys in checked:
                if part_keys[i] != sample.key:
                    _explain_mismatch(ref, label, i, part_keys[i], sample)
            keys.append(sample.key)
            encoded.append(sample.image)
            classes.append(sample.label)
        if len(keys) < ref.rows:
            why = "; ".join(f"{k}: {r}" for k, r in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
            raise DataError(f"shard {ref.path}: {len(keys)} usable samples, expected at least {ref.rows} (manifest)"
                            + (f"; skipped {why}" if skipped else ""))
        images = LazyImages(ref.path, keys, encoded, uses=len(view_epochs))
        truth = torch.tensor(classes, dtype=torch.int64)
        out = []
        for n, (view_epoch, label, batch) in enumerate(zip(view_epochs, labels, stored)):
            views = shard_views(spec, seed, view_epoch, keys, shard=ref.name,
                                batches=None if batches is None else batches[n])
            target = None
            if batch is not None:
                assert label is not None  # batch comes from its partition
                check_views(label.path, batch.view, views, spec, seed)
                try:
                    target = batch.target_at(tau)
                except ValueError as e:
                    raise StoreError(f"{label.path}: {e}") from None
            out.append(LoadedShard(ref, view_epoch, keys, images, truth, views, target))
    finally:
        for p in partitions:
            if p is not None:
                p.close()
    return out


def _explain_mismatch(ref: ShardRef, label: LabelRef, row: int, expected: str, sample: Sample) -> None:
    """Raise for a partition row whose key is not the shard's sample there."""
    # precompute decodes every image and skips those that fail; the trainer only read the header
    decode_row(ref.path, sample.key, sample.image)
    raise StoreError(
        f"{label.path}: row {row} is key {expected!r}, but shard {ref.path} has {sample.key!r} there: "
        f"the partition's rows are not this shard's samples in tar order"
    )


@dataclass
class Pixels:
    """One segment's uint8 renders, normalised, erased and mixed where they are used (:meth:`finish`):
    what a loader worker sends instead of float32 images, a quarter of the bytes.

    Attributes:
        pixels: uint8 [R, C, H, W]: the segment's rows, then their partners from outside them.
        views: the R views.
        rows: how many leading renders are the segment's rows.
        mean, std: the normalisation.
        fills: random-erasing fills by position (:func:`maskedkd.rendering.view_erase_fill`), drawn
            in the worker.
    """

    pixels: torch.Tensor
    views: list[View]
    rows: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fills: dict[int, torch.Tensor]

    def finish(self, device: torch.device | str) -> torch.Tensor:
        """float32 [rows, C, H, W] on ``device``: bit-identical on CPU to :func:`render_segments`."""
        fills = {i: f.to(device, non_blocking=True) for i, f in self.fills.items()}
        return finish_views(self.pixels.to(device, non_blocking=True), self.views, mean=self.mean, std=self.std,
                            rows=self.rows, fills=fills)

    def pin_memory(self) -> "Pixels":
        return replace(self, pixels=self.pixels.pin_memory(), fills={i: f.pin_memory() for i, f in self.fills.items()})


def segment_pixels(segments: Sequence[Segment], render: RenderSpec) -> list[Pixels]:
    """:func:`render_segments` up to the uint8 renders, one :class:`Pixels` per segment."""
    out = []
    for shard, rows in segments:
        spec = PixelSpec.create(render.size, render.mean, render.std, render.interpolation, render.resize)
        pixels, views = render_batch_pixels([shard.images[i] for i in rows], [shard.views[i] for i in rows], spec,
                                            partners=shard.partner)
        hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        fills = {i: f for i, v in enumerate(views) if (f := view_erase_fill(v, int(pixels.shape[1]), hw)) is not None}
        out.append(Pixels(pixels, views, len(rows), tuple(render.mean), tuple(render.std), fills))
    return out


def render_segments(segments: Sequence[Segment], render: RenderSpec) -> torch.Tensor:
    """Render the rows' views (mixing partners from their own shard) into ``[B, C, H, W]``."""
    parts = [
        render_batch([shard.images[i] for i in rows], [shard.views[i] for i in rows], render.size,
                     mean=render.mean, std=render.std, interpolation=render.interpolation, partners=shard.partner,
                     resize=render.resize)
        for shard, rows in segments
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class Batch:
    """One rank's part of a global batch, rendered.

    Attributes:
        images: float32 [b, C, H, W] at the student's size; None when ``pixels`` holds them.
        labels: int64 [b], each row's own ground-truth class (for accuracy).
        targets: what cross-entropy is taken against: ``labels``, or soft targets [b, classes]
            with mixing or label smoothing (:func:`maskedkd.mixing.mix_target`).
        teacher: the stored teacher target of the rows, or None.
        segments: the rows (for rendering other views of them); empty once :meth:`detached`.
        teacher_images: the same views rendered for the online teacher, or None.
        keys: the rows' sample keys.
        seeds: the rows' view seeds (the random masking policy's keep sets derive from them).
        pixels: the images as uint8 renders still to be finished (:meth:`images_on`), or None.
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    targets: torch.Tensor
    teacher: SoftTarget | None
    segments: list[Segment]
    teacher_images: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    pixels: list[Pixels] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def images_on(self, device: torch.device | str) -> torch.Tensor:
        """The student's float32 images on ``device`` (uint8 renders are normalised, erased and mixed there)."""
        if self.pixels is None:
            return cast(torch.Tensor, self.images).to(device, non_blocking=True)
        parts = [p.finish(device) for p in self.pixels]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @classmethod
    def cat(cls, parts: Sequence["Batch"]) -> "Batch":
        """One batch of ``parts``' rows in order (a rank's batch from its loader workers' lanes)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        teacher = None if first.teacher is None else SoftTarget.cat([cast(SoftTarget, p.teacher) for p in parts])
        teacher_images = None if first.teacher_images is None else torch.cat([cast(torch.Tensor, p.teacher_images)
                                                                               for p in parts])
        images = None if first.images is None else torch.cat([cast(torch.Tensor, p.images) for p in parts])
        pixels = None if first.pixels is None else [x for p in parts for x in cast(list, p.pixels)]
        return cls(images, torch.cat([p.labels for p in parts]),
                   torch.cat([p.targets for p in parts]), teacher, [s for p in parts for s in p.segments],
                   teacher_images, [k for p in parts for k in p.keys], [x for p in parts for x in p.seeds], pixels)

    def detached(self) -> "Batch":
        """The batch without its segments (which hold whole shards): what a loader worker
        process sends to the training process."""
        return replace(self, segments=[])

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (``DataLoader(pin_memory=True)`` calls this), so that
        copies to the GPU with ``non_blocking=True`` overlap the step."""
        teacher = None if self.teacher is None else self.teacher.pin_memory()
        return replace(self, images=None if self.images is None else self.images.pin_memory(),
                       pixels=None if self.pixels is None else [p.pin_memory() for p in self.pixels],
                       labels=self.labels.pin_memory(),
                       targets=self.targets.pin_memory(), teacher=teacher,
                       teacher_images=None if self.teacher_images is None else self.teacher_images.pin_memory())


def make_batch(segments: Sequence[Segment], render: RenderSpec, *, num_classes: int, soft: bool,
               smoothing: float = 0.0, teacher_render: RenderSpec | None = None, uint8: bool = False) -> Batch:
    """Render a list of segments (also for the online teacher with ``teacher_render``) and gather
    their labels and teacher targets; ``uint8``: the student's images as :class:`Pixels` to finish
    where they are used (:meth:`Batch.images_on`)."""
    pixels = segment_pixels(segments, render) if uint8 else None
    images = None if uint8 else render_segments(segments, render)
    labels = torch.cat([shard.labels[torch.from_numpy(rows)] for shard, rows in segments])
    if soft:
        targets = torch.stack([
            mix_target(int(shard.labels[i]), int(shard.labels[shard.index(shard.views[i].partner)]) if shard.views[i].partner else None,
                       shard.views[i], num_classes, smoothing)
            for shard, rows in segments for i in rows
        ])
    else:
        targets = labels
    teacher = None
    if segments and segments[0][0].target is not None:
        # every shard of a run has a target when the first has
        teacher = SoftTarget.cat([cast(SoftTarget, shard.target)[torch.from_numpy(rows)] for shard, rows in segments])
    teacher_images = render_segments(segments, teacher_render) if teacher_render is not None else None
    keys = [shard.keys[i] for shard, rows in segments for i in rows]
    seeds = [shard.views[i].seed for shard, rows in segments for i in rows]
    return Batch(images, labels, targets, teacher, list(segments), teacher_images, keys, seeds, pixels)


T = TypeVar("T")


class ShardPrefetcher(Generic[T]):
    """``load(ref)`` with the next shard of ``order`` read in a background thread meanwhile.

    ``order`` is the sequence in which this process will ask for shards (its own: a loader worker
    or a rank may skip shards that only others' batches use), so what is read ahead is used next.
    Reading a shard (its bytes, their hash, the image headers, its label partition) then overlaps
    rendering the current one. A context manager: leaving it drops what was read ahead.
    """

    def __init__(self, load: Callable[[ShardRef], T], order: Sequence[ShardRef]) -> None:
        self.load = load
        self.after = {a.name: b for a, b in itertools.pairwise(order)}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shard-read")
        self.ahead: tuple[str, Future] | None = None  # the one shard being read ahead

    def _drop(self) -> Future | None:
        ahead, self.ahead = self.ahead, None
        return None if ahead is None else ahead[1]

    def __call__(self, ref: ShardRef) -> T:
        hit = self.ahead is not None and self.ahead[0] == ref.name
        future = self._drop()
        if future is not None and not hit:  # asked out of order: what was read ahead is not needed
            future.cancel()
            future = None
        nxt = self.after.get(ref.name)
        if nxt is not None:
            self.ahead = (nxt.name, self.pool.submit(self.load, nxt))
        return future.result() if future is not None else self.load(ref)

    def __enter__(self) -> "ShardPrefetcher[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        future = self._drop()
        if future is not None:
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
