"""What precompute (the writer) and the trainer (the reader) of the label store must agree on
(docs/design.md §2, §5).

A label partition is only usable if both sides derive the same things independently:

- which rows of which shard (:func:`shard_refs`: the first ``data.subset`` samples of the split,
  in shard order; :attr:`ShardRef.limit` is what the shard fingerprint records);
- which view epoch a training epoch uses (:func:`view_epoch_of`, :func:`segment_view_epochs`) and,
  with repeated augmentation, which shards and repeat view epochs (:func:`epoch_shards`,
  :func:`epoch_partitions`, :func:`segment_partitions`);
- which view columns a partition stores and the trainer compares (:func:`store_view_columns`,
  :func:`check_views`);
- how a model renders a view (:class:`RenderSpec`, :func:`render_spec`);
- what a partition's ``keep`` column holds, by its mask spec (:func:`reused_mask`,
  :func:`stored_mask`: a keep set, or an empty one for a forward policy).

Both sides import these rules from here; neither imports the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch.nn as nn

from maskedkd import POLICIES
from maskedkd.centre_crop import centre_crop
from maskedkd.digests import resize_digest
from maskedkd.resize import check_resize
from maskedkd.views import View, ViewSpec, repeat_view_epochs, views_to_columns
from pipeline.data.manifest import DatasetManifest
from pipeline.errors import ConfigError, StoreError
from pipeline.paths import base_name

if TYPE_CHECKING:  # annotations only: the store's rules do not depend on config parsing (pydantic, timm)
    from pipeline.config.data_views import DataConfig
    from pipeline.config.model_sections import StudentConfig, TeacherConfig


@dataclass(frozen=True)
class ShardRef:
    """One shard and the rows of it a run uses.

    Attributes:
        name: the shard's name, its file name without ``.tar`` (what label partitions record).
        path: the tar file (a :class:`Path`, or a URI string for a shard in an object store).
        rows: how many samples of the shard are used: the first ``rows`` that
            :func:`pipeline.data.shards.read_shard` yields (all of them unless a subset is
            used, see :func:`subset_rows`).
        samples: the shard's sample count per the dataset manifest; None: ``rows`` is the whole shard.
        sha256: the shard file's sha256 per the dataset manifest (None when not from a manifest).
    """

    name: str
    path: Path | str
    rows: int
    samples: int | None = None
    sha256: str | None = None

    @property
    def limit(self) -> int | None:
        """``rows`` when only the first rows of the shard are used, else None (the whole shard)."""
        return None if self.samples is None or self.rows >= self.samples else self.rows


@dataclass(frozen=True)
class LabelRef:
    """A label partition to stream beside a shard.

    Attributes:
        path: the partition file (local path or ``pyarrow.fs`` URI).
        sha256: the file's sha256 as the run lock records it (checked on open when given).
        expect: metadata the partition must have, e.g. ``{"fingerprints": {...}}``
            (see :func:`pipeline.labels.open_partition`); ``shard`` and ``view_epoch`` are
            always checked.
    """

    path: str
    sha256: str | None = None
    expect: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, value: "str | LabelRef") -> "LabelRef":
        """``value`` itself, or a bare partition path as a LabelRef (nothing more to check)."""
        return value if isinstance(value, LabelRef) else cls(str(value))


def subset_rows(counts: Sequence[int], subset: int | None) -> list[int]:
    """Rows used per shard when training on ``subset`` samples: the first ``subset`` of the split in shard order.

    Precompute must label exactly these rows (the first ``rows[i]`` samples of shard ``i``).

    Args:
        counts: the split's shard sample counts, in shard order.
        subset: how many samples to use; ``None`` = all.

    Returns:
        Rows per shard (0 for shards past the subset).
    """
    if subset is None:
        return [int(c) for c in counts]
    if subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")
    out, left = [], int(subset)
    for c in counts:
        take = min(int(c), left)
        out.append(take)
        left -= take
    return out


def shard_refs(manifest: DatasetManifest, split: str, subset: int | None = None) -> list[ShardRef]:
    """The shards of ``split`` of a dataset manifest loaded from its folder, and the rows used of each.

    Shards past ``subset`` are left out.
    """
    entries = manifest.shards(split)
    paths = manifest.shard_paths(split)
    rows = subset_rows([e.samples for e in entries], subset)
    return [ShardRef(base_name(p).removesuffix(".tar"), p, n, e.samples, e.sha256)
            for e, p, n in zip(entries, paths, rows) if n > 0]


def view_epoch_of(epoch: int, pool: int | None) -> int:
    """The view epoch of a training epoch: ``epoch mod pool`` with a view pool, else the epoch.

    Args:
        epoch: the training epoch.
        pool: ``views.pool`` as a size (:attr:`pipeline.config.ViewsConfig.pool_size`); None = a
            fresh view every epoch.
    """
    if pool is None:
        return int(epoch)
    if pool < 1:
        raise ValueError(f"views.pool must be >= 1, got {pool}")
    return int(epoch) % int(pool)


def segment_view_epochs(epochs: range, pool: int | None, repeats: int = 1) -> list[int]:
    """The distinct view epochs that ``epochs`` (one segment's) train on, ascending (with ``repeats``,
    each view epoch's repeats: :func:`maskedkd.views.repeat_view_epochs`)."""
    return sorted({v for e in epochs for v in repeat_view_epochs(view_epoch_of(e, pool), repeats)})


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b("\0".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def repeat_parts(shards: Sequence[ShardRef], repeats: int, tiebreak: Sequence[int] | None = None) -> list[list[int]]:
    """The shards (indices) of each of a cycle's ``repeats`` parts, balanced by rows: the shards, largest
    first (equal ones in ``tiebreak`` order: each one's rank, default their own order), each go to
    the part with the fewest rows so far (the lowest part on a tie). The parts' row counts do not
    depend on ``tiebreak`` (only which of equal shards goes where), so neither does an epoch's
    length (:func:`pipeline.labels.order.epoch_rows`); they differ by at most one shard's rows.

    Raises:
        ConfigError: fewer shards than repeats.
    """
    if len(shards) < repeats:
        raise ConfigError(f"views.repeats {repeats} needs at least {repeats} training shards, there are {len(shards)}: "
                          f"an epoch trains on 1/repeats of the shards")
    rank = list(range(len(shards))) if tiebreak is None else [int(r) for r in tiebreak]
    parts: list[list[int]] = [[] for _ in range(repeats)]
    rows = [0] * repeats
    for i in sorted(range(len(shards)), key=lambda i: (-shards[i].rows, rank[i])):
        k = min(range(repeats), key=lambda p: (rows[p], p))
        parts[k].append(i)
        rows[k] += shards[i].rows
    return parts


def epoch_shards(shards: Sequence[ShardRef], seed: int, epoch: int, repeats: int = 1) -> list[ShardRef]:
    """The shards training epoch ``epoch`` reads: all of them, or with ``repeats`` R (repeated
    augmentation) one R-th of them, each of whose rows it trains on R times.

    DeiT's ``RASampler`` keeps an epoch at the dataset's size by training on a random third of the
    images, three times each. Here the third is a set of whole shards, so an epoch reads 1/R of
    the data and precompute labels only the shards an epoch uses: every R consecutive epochs
    (``epoch // R``, a cycle) split the shards into R parts of about equal rows
    (:func:`repeat_parts`, equal shards shuffled by ``(seed, cycle)``), and epoch ``epoch`` takes
    part ``epoch % R``; a cycle visits every shard once. An epoch trains on R times the smallest
    part's rows, the same every epoch: a larger part's last rows in the epoch's order sit it out
    (at most one shard's rows, R times).

    Args:
        seed: the order seed (``train.seed``).

    Raises:
        ConfigError: fewer shards than repeats.
    """
    if repeats == 1:
        return list(shards)
    perm = np.random.default_rng(derive_seed("repeat-shards", seed, int(epoch) // repeats)).permutation(len(shards))
    rank = np.empty(len(shards), dtype=np.int64)
    rank[perm] = np.arange(len(shards))
    return [shards[i] for i in sorted(repeat_parts(shards, repeats, rank.tolist())[int(epoch) % repeats])]


def epoch_partitions(shards: Sequence[ShardRef], epoch: int, *, pool: int | None, spec: ViewSpec,
                     seed: int) -> list[tuple[ShardRef, int]]:
    """``(shard, view epoch)`` of every label partition training epoch ``epoch`` reads: each of its
    :func:`epoch_shards` at each repeat view epoch of its view epoch (:func:`maskedkd.views.repeat_view_epochs`)."""
    view_epochs = repeat_view_epochs(view_epoch_of(epoch, pool), spec.repeats)
    return [(ref, v) for ref in epoch_shards(shards, seed, epoch, spec.repeats) for v in view_epochs]


def segment_partitions(shards: Sequence[ShardRef], epochs: range, *, pool: int | None, spec: ViewSpec,
                       seed: int) -> list[tuple[ShardRef, int]]:
    """The distinct ``(shard, view epoch)`` partitions one segment's ``epochs`` read, in shard order
    then view epoch: what precompute labels for it. Without repeats every shard at each of
    :func:`segment_view_epochs`."""
    wanted = {(ref.name, v) for e in epochs for ref, v in epoch_partitions(shards, e, pool=pool, spec=spec, seed=seed)}
    view_epochs = segment_view_epochs(epochs, pool, spec.repeats)
    return [(ref, v) for ref in shards for v in view_epochs if (ref.name, v) in wanted]


def reused_mask(policy: str, keep: int | None) -> tuple[str, int] | None:
    """What a partition's rows are comparable by: ``None`` for keep sets (any keep-set policy, and
    every policy with all patches: rows match when their stored keep sets do), ``(policy, keep)``
    for a forward policy below all patches, whose rows store no keep set and serve exactly that
    policy at that keep. A name this process does not know as a keep-set policy counts as a
    forward one, so labels of a policy registered elsewhere are never taken for keep sets."""
    if keep is None or policy in POLICIES:
        return None
    return policy, int(keep)


def stored_mask(metadata: dict[str, Any]) -> tuple[str, int] | None:
    """:func:`reused_mask` of a stored partition, from its metadata's mask spec (partitions without
    one predate forward policies: keep sets)."""
    mask = (metadata.get("specs") or {}).get("mask") or {}
    return reused_mask(mask.get("policy", "student"), mask.get("keep"))


def store_view_columns(views: Sequence[View], spec: ViewSpec) -> dict[str, np.ndarray]:
    """The View columns a label partition stores (``write_partition(view_columns=...)``).

    :func:`maskedkd.views.views_to_columns` without ``key`` (the store's own column) and
    without zero-width lists (e.g. RandAugment draws when RandAugment is off), which Parquet
    cannot hold. The trainer compares exactly these columns with the Views it derives.
    """
    cols = views_to_columns(views, spec)
    cols.pop("key")
    return {k: a for k, a in cols.items() if not (a.ndim == 2 and a.shape[1] == 0)}


def _first_mismatch(got: np.ndarray, want: np.ndarray) -> int:
    if got.shape != want.shape:
        return 0
    diff = got != want
    return int(np.nonzero(diff.reshape(len(diff), -1).any(axis=1))[0][0])


def check_views(path: str, stored: Mapping[str, np.ndarray], views: Sequence[View], spec: ViewSpec, seed: int) -> None:
    """Raise :class:`StoreError` unless a partition's view columns equal the derived ``views``."""
    for name, want in store_view_columns(views, spec).items():
        got = stored.get(name)
        if got is None:
            raise StoreError(f"{path}: no view column {name!r}: cannot check that the labels were computed on the trainer's views")
        got = np.asarray(got)
        if got.shape == want.shape and np.array_equal(got, want):
            continue
        row = _first_mismatch(got, want)
        shown = got[row] if row < len(got) else "<missing>"
        hint = ""
        if spec.mixes and spec.mix_mode == "batch" and name in ("view_partner", "view_lam", "view_mix_box"):
            hint = (" (views.mix_mode batch: a mix is its global batch's, so precompute and trainer must order the "
                    "epoch alike: train.seed, train.batch_size, train.lanes, train.interleave as the labels were planned with)")
        raise StoreError(
            f"{path}: row {row} (key {views[row].key!r}): stored {name} = {shown!r}, but the trainer derives "
            f"{want[row]!r} (view seed {seed}, view epoch {views[row].epoch}): the labels were computed on other views"
            + hint
        )


@dataclass(frozen=True)
class RenderSpec:
    """How a model sees a view: output (height, width), normalisation, interpolation, resizer.

    :meth:`record` is part of the teacher's and student's fingerprints in precompute, so its
    fields and their order are part of the store's format. ``resize`` is not in it: who resizes
    is the same for both models and recorded once, in the view fingerprint
    (:func:`pipeline.precompute.spec.task_fingerprints`).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize: str = "pil"
    crop_pct: float | None = None  # evaluation only (:meth:`eval_view`): not in the record, labels never see it

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else self.size
        object.__setattr__(self, "size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        check_resize(self.resize, self.interpolation)

    def record(self) -> dict[str, Any]:
        """The model's part of a fingerprint: size, mean, std, interpolation (as stores have always held it)."""
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    def resize_record(self) -> dict[str, str]:
        """The resizer's part of a view fingerprint: empty for ``pil`` (so Pillow-rendered stores keep
        their fingerprints), else its name and :func:`maskedkd.digests.resize_digest` on this machine."""
        if self.resize == "pil":
            return {}
        return {"resize": self.resize, "resize_digest": resize_digest(self.resize, self.interpolation)}

    def eval_view(self, key: str, width: int, height: int) -> View:
        """The evaluation view of a ``width x height`` image: the whole image, or with ``crop_pct``
        timm's centre crop to the pixel (``Resize(size / crop_pct)`` + ``CenterCrop(size)``,
        :func:`maskedkd.centre_crop.centre_crop`)."""
        if self.crop_pct is None:
            return View(key=key, epoch=0, seed=0)
        return View(key=key, epoch=0, seed=0, crop=centre_crop(width, height, self.size, self.crop_pct))

    @property
    def eval_resize(self) -> str:
        """Who resizes evaluation views: Pillow under a ``crop_pct`` (timm's eval transform is Pillow's,
        and ``torch``'s kernels are levels away from it), else ``resize`` (whole-image views as before)."""
        return "pil" if self.crop_pct is not None else self.resize

    @classmethod
    def for_model(cls, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                  interpolation: str = "bicubic") -> "RenderSpec":
        """Render at the model's own input size (``patch_embed.img_size`` of a timm ViT)."""
        patch_embed: Any = model.patch_embed
        return cls(size=tuple(patch_embed.img_size), mean=tuple(mean), std=tuple(std), interpolation=interpolation)


def render_spec(data: DataConfig, model: "TeacherConfig | StudentConfig") -> RenderSpec:
    """How a model of a stage renders views: its input size and its own preprocessing.

    The view (crop, flip, augmentation) is shared; normalisation, interpolation and the
    evaluation crop (``crop_pct``) are the model's (:meth:`pipeline.config.model_sections.TeacherConfig.preprocessing`: its own fields, its
    ``pretrained_cfg`` when pretrained, else the data section's). They are in
    :meth:`RenderSpec.record`, so a model that renders as before keeps its fingerprints.

    Args:
        data: the stage config's ``data`` section (the shared defaults, and the resizer).
        model: the stage's ``teacher`` or ``student`` section.
    """
    mean, std, interpolation = model.preprocessing(data)
    size = model.info().img_size
    assert size is not None, "a maskable model's ModelInfo has its img_size"
    return RenderSpec(size=(size[0], size[1]), mean=mean, std=std, interpolation=interpolation,
                      resize=data.resize, crop_pct=model.eval_crop_pct())
