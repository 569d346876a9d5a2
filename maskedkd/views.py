"""Deterministic training views: what the student trains on and the teacher labels (docs/design.md §2).

A :class:`View` is a pure function of ``(spec, seed, key, epoch)`` (and, for mixup/cutmix, the
sample's position among its shard's keys), drawn from a hash-derived RNG with no global state.
Precompute and trainer therefore derive the same view independently, the label store records
it, and either side can render it at its own resolution:

- the random-resized-crop is kept as its size-free draw (area fraction, log aspect ratio,
  position) and resolved against the source image's size by :meth:`View.crop_box`, so the crop
  follows timm's pixel-space semantics for any image aspect and any output size;
- flips, RandAugment draws (op, signed magnitude), the random-erasing box and the cutmix box
  are normalised or size-free too.

Semantics follow timm (``RandomResizedCropAndInterpolation``, ``rand-m9-mstd0.5-inc1``
RandAugment, ``RandomErasing``, ``Mixup`` in ``batch``, ``pair`` or ``elem`` mode). Deliberate differences, all
needed to make a view a pure function of its key:

- an infeasible crop draw (e.g. area 0.95 at ratio 4/3) is clamped to the image edge keeping
  its area, instead of being redrawn up to 10 times with a centre-crop fallback;
- the random-erasing and cutmix boxes are drawn in normalised output coordinates;
- mixing pairs (:func:`mix_pairs`) are drawn per (seed, view epoch, shard): a seeded perfect
  matching of the shard's rows, a new one every view epoch. The trainer's order keeps each pair
  adjacent in one global batch and one rank's slice of it (:mod:`pipeline.labels.order`), so the
  pair is mixed from the batch as timm's ``Mixup`` does (the partner's augmented, unmixed
  pixels), but the partner is a row of the same shard, not the flipped batch; with timm's
  default ``batch`` mode the draw is the pair's global batch's, which the caller names
  (:func:`shard_views`'s ``batches``, from the trainer's order). ``mix_mode: window`` keeps the first algorithm:
  partners drawn per row within blocks of ``mix_window`` shard positions.

This module holds the view types and their sampling (the RandAugment and erasing draws come from
:mod:`maskedkd.rand_augment` and :mod:`maskedkd.random_erasing`, the columns from
:mod:`maskedkd.view_columns`); :mod:`maskedkd.rendering` renders views, :mod:`maskedkd.mixing`
applies their mix, :mod:`maskedkd.digests` fingerprints what this machine makes of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, cast

import numpy as np

from maskedkd.rand_augment import draw_rand_augment, rand_augment_config
from maskedkd.random_erasing import REMODES, draw_erase_box
from maskedkd.view_columns import (
    FIELD_DEFAULTS,
    NO_BOX,
    VIEW_COLUMNS,
    columns_layout,
    float32_exact,
    from_row,
    to_arrays,
    to_row,
)

# Bump when the meaning of any draw changes: it is part of the spec fingerprint.
VIEWS_ALGORITHM = 1
# How mixing partners and draws are made (ViewSpec.mix_mode): "pair" one draw per pair (timm's
# Mixup(mode="pair")), "elem" one draw per row (mode="elem"), "batch" one draw per global batch
# (mode="batch", DeiT's), all with partners from mix_pairs; "window": per row, partner drawn within
# mix_window positions (the first algorithm).
MIX_MODES = ("pair", "elem", "window", "batch")
MAX_REPEATS = 64  # view epochs are int32 columns: v * repeats + r must fit


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation recipe; field names and meanings follow timm's train transform.

    Attributes:
        scale: random-resized-crop area range, as a fraction of the source image.
        ratio: random-resized-crop aspect-ratio range (width / height, in pixels).
        hflip: probability of a horizontal flip.
        shift: maximal random translation in source pixels, applied after the crop, zero-padded
            (``RandomCrop(size, padding=shift)``; with ``scale=ratio=(1, 1)`` the usual
            Fashion-MNIST/CIFAR "random shift").
        auto_augment: timm RandAugment config string, e.g. ``"rand-m9-mstd0.5-inc1"``, or None.
        reprob: random-erasing probability.
        remode: random-erasing fill: ``"pixel"`` (per-pixel normal), ``"rand"`` (per-channel
            normal) or ``"const"`` (zero).
        mixup: mixup Beta alpha (0 = off).
        cutmix: cutmix Beta alpha (0 = off).
        mix_prob: probability of mixing a sample when mixup or cutmix is on.
        switch_prob: probability of cutmix over mixup when both are on.
        mix_window: ``mix_mode: window`` only: partners are drawn within aligned blocks of this
            many shard positions.
        repeats: repeated augmentation (DeiT's ``repeats``, timm's ``RepeatAugSampler``): each epoch
            trains on 1/``repeats`` of the shards, every row ``repeats`` times, each repeat its own
            view. Repeat ``r`` of view epoch ``v`` is view epoch ``v * repeats + r``
            (:func:`repeat_view_epochs`); mixing pairs are drawn per ``v``, so a pair is the same in
            every repeat (only its lambda and box are drawn again) and the trainer's order keeps a
            row's repeats together.
        mix_mode: ``pair``: rows are paired (:func:`mix_pairs`) and both rows of a pair mix with
            each other with one draw of lambda and box (timm ``Mixup(mode="pair")``); ``elem``:
            the same pairs, one draw per row (``mode="elem"``); ``window``: the first algorithm,
            a partner per row within ``mix_window`` positions, rendered again (not from the batch);
            ``batch``: the pairs, with one draw per global batch of the trainer's order (timm
            ``mode="batch"``, DeiT's): views then depend on the order (:func:`shard_views`'s ``batches``).
            Normalised to ``pair`` when the spec does not mix.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    shift: int = 0
    auto_augment: str | None = None
    reprob: float = 0.0
    remode: str = "pixel"
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    mix_window: int = 64
    mix_mode: str = "pair"
    repeats: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        lo, hi = self.scale
        if len(self.scale) != 2 or not 0 < lo <= hi <= 1:
            raise ValueError(f"ViewSpec.scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ViewSpec.ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio}")
        for name in ("hflip", "reprob", "mix_prob", "switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ViewSpec.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"ViewSpec.{name} is a Beta alpha and must be >= 0, got {getattr(self, name)}")
        if self.remode not in REMODES:
            raise ValueError(f"ViewSpec.remode must be one of {REMODES}, got {self.remode!r}")
        if self.shift < 0 or self.shift > 32767:
            raise ValueError(f"ViewSpec.shift must be in [0, 32767] pixels, got {self.shift}")
        if self.mix_window < 2:
            raise ValueError(f"ViewSpec.mix_window must be >= 2, got {self.mix_window}")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise ValueError(f"ViewSpec.repeats must be in [1, {MAX_REPEATS}], got {self.repeats}")
        if self.mix_mode not in MIX_MODES:
            raise ValueError(f"ViewSpec.mix_mode must be one of {MIX_MODES}, got {self.mix_mode!r}")
        if not self.mixes:  # meaningless without mixing: one spec, one fingerprint
            object.__setattr__(self, "mix_mode", MIX_MODES[0])
        if self.auto_augment is not None:
            rand_augment_config(self.auto_augment)  # fails early on a bad string

    @property
    def mixes(self) -> bool:
        """Whether views of this spec can have a mixing partner."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def pairs(self) -> bool:
        """Whether mixing partners are the pairs of :func:`mix_pairs` (the trainer batches them together)."""
        return self.mixes and self.mix_mode != "window"

    @property
    def ra_layers(self) -> int:
        """How many RandAugment draws each view holds (0 without RandAugment)."""
        return rand_augment_config(self.auto_augment).num_layers if self.auto_augment else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists).

        ``mix_mode`` is left out where it reproduces what specs meant before it existed (no
        mixing, or ``window``), and ``repeats`` where it is 1, so their fingerprints and stored
        labels stay valid.
        """
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if not self.pairs:
            del d["mix_mode"]
        if self.repeats == 1:
            del d["repeats"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ViewSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them. A dict without
        ``mix_mode`` predates it: ``window``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ViewSpec field(s) {unknown}; known: {sorted(names)}")
        fields: dict[str, Any] = {"mix_mode": "window", **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}}
        return cls(**fields)


@dataclass(frozen=True)
class View:
    """One sample's augmentation for one view epoch. All floats are float32-exact.

    Attributes:
        key: the sample's key in its shard.
        epoch: the view epoch it was drawn for.
        seed: 63-bit seed of this view (also seeds the random-erasing noise).
        crop: random-resized-crop draw ``(area, log_ratio, x, y)``: area fraction, log of the
            pixel aspect ratio, and the crop's position in the free space (0..1 each);
            resolved against a source size by :meth:`crop_box`.
        shift: translation ``(dx, dy)`` in source pixels, applied after the crop.
        flip: horizontal flip.
        ra_op: RandAugment ops as indices into :data:`maskedkd.rand_augment.RA_OPS`, -1 where the layer was skipped.
        ra_mag: RandAugment magnitudes; a negative value means the op's argument is negated.
        erase: random-erasing box ``(x0, y0, x1, y1)`` in normalised output coordinates;
            all zero when not erased.
        erase_fill: how the erased box is filled: 0 per-pixel normal noise, 1 per-channel
            normal colour, 2 zero (timm ``remode`` pixel / rand / const), seeded by ``seed``.
        partner: the mixing partner's key, ``""`` when not mixed.
        lam: weight of this sample in the mix (1.0 when not mixed).
        mix_box: cutmix box ``(x0, y0, x1, y1)`` in normalised output coordinates where the
            partner is pasted; all zero for mixup or no mix.
    """

    key: str
    epoch: int
    seed: int
    crop: tuple[float, float, float, float] = FIELD_DEFAULTS["crop"]
    shift: tuple[int, int] = FIELD_DEFAULTS["shift"]
    flip: bool = FIELD_DEFAULTS["flip"]
    ra_op: tuple[int, ...] = FIELD_DEFAULTS["ra_op"]
    ra_mag: tuple[float, ...] = FIELD_DEFAULTS["ra_mag"]
    erase: tuple[float, float, float, float] = FIELD_DEFAULTS["erase"]
    erase_fill: int = FIELD_DEFAULTS["erase_fill"]
    partner: str = FIELD_DEFAULTS["partner"]
    lam: float = FIELD_DEFAULTS["lam"]
    mix_box: tuple[float, float, float, float] = FIELD_DEFAULTS["mix_box"]

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop as ``(x0, y0, x1, y1)`` in normalised coordinates of a ``width x height`` source.

        The box may extend past [0, 1] when ``shift`` is set (that part is zero-padded).
        """
        area, log_ratio, u, v = self.crop
        aspect = math.exp(log_ratio)
        w = math.sqrt(area * aspect * height / width)
        h = math.sqrt(area / aspect * width / height)
        if w > 1.0:  # infeasible draw: clamp to the edge, keep the area
            w, h = 1.0, area
        if h > 1.0:
            w, h = min(1.0, area), 1.0
        x0 = u * (1.0 - w) + self.shift[0] / width
        y0 = v * (1.0 - h) + self.shift[1] / height
        return (x0, y0, x0 + w, y0 + h)

    def unmixed(self) -> "View":
        """This view without its mixing: how it looks when it is someone else's partner."""
        return dataclasses.replace(self, **{f: FIELD_DEFAULTS[f] for f in ("partner", "lam", "mix_box")})

    def to_columns(self) -> dict[str, Any]:
        """Plain scalar / fixed-length-list columns (:data:`maskedkd.view_columns.VIEW_COLUMNS`)."""
        return to_row(self)

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> "View":
        """Inverse of :meth:`to_columns` (also accepts numpy scalars and arrays)."""
        return cls(**from_row(row))


def pixel_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """A normalised box of a view (``erase``, ``mix_box``) in whole pixels of a ``height x width`` render."""
    return (round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height))


def view_columns_layout(spec: ViewSpec) -> dict[str, tuple[str, int]]:
    """Column name -> (numpy dtype name, fixed list width; 0 = scalar) for views of ``spec``.

    ``key`` and ``view_partner`` are strings (``"str"``); everything else is fixed-width
    (:data:`maskedkd.view_columns.VIEW_COLUMNS`).
    """
    return columns_layout(spec.ra_layers)


def views_to_columns(views: Sequence[View], spec: ViewSpec | None = None) -> dict[str, np.ndarray]:
    """Column arrays for many views: strings as object arrays, lists as 2-D ``[N, width]`` arrays.

    Args:
        views: views to store, e.g. one shard's, in row order.
        spec: their spec; needed only to size the RandAugment columns when ``views`` is empty.
    """
    width = len(views[0].ra_op) if views else (spec.ra_layers if spec else 0)
    return to_arrays([v.to_columns() for v in views], width)


def views_from_columns(columns: Mapping[str, Any]) -> list[View]:
    """Inverse of :func:`views_to_columns` (also takes lists, e.g. ``pyarrow`` ``to_pylist()``)."""
    names = [c.name for c in VIEW_COLUMNS]
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"view columns missing: {missing}")
    n = len(columns["key"])
    return [View.from_columns({name: columns[name][i] for name in names}) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Sampling


def _view_seed(seed: int, key: str, epoch: int) -> int:
    digest = hashlib.blake2b(f"{int(seed)}\0{int(epoch)}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _mix_block(position: int, n: int, window: int) -> range:
    start = (position // window) * window
    return range(start, min(start + window, n))


def _draw_lam_box(spec: ViewSpec, rng: random.Random) -> tuple[bool, float, tuple[float, float, float, float]]:
    """``(mixed, lam, mix_box)``: one draw of timm's ``Mixup`` (mix or not, cutmix or mixup, lambda,
    box). Every draw is made, used or not, so e.g. ``mix_prob`` does not move the other draws."""
    use_mix = rng.random() < spec.mix_prob
    cutmix = spec.cutmix > 0 and (spec.mixup == 0 or rng.random() < spec.switch_prob)
    alpha = spec.cutmix if cutmix else spec.mixup
    lam = rng.betavariate(alpha, alpha)
    cx, cy = rng.random(), rng.random()
    if not use_mix:
        return False, 1.0, NO_BOX
    if not cutmix:
        return True, lam, NO_BOX
    cut = math.sqrt(1.0 - lam)
    x0, x1 = max(0.0, cx - cut / 2), min(1.0, cx + cut / 2)
    y0, y1 = max(0.0, cy - cut / 2), min(1.0, cy + cut / 2)
    box = (float32_exact(x0), float32_exact(y0), float32_exact(x1), float32_exact(y1))
    return True, 1.0 - (box[2] - box[0]) * (box[3] - box[1]), box


def _draw_mix(spec: ViewSpec, rng: random.Random, key: str, position: int | None,
              shard_keys: Sequence[str] | None) -> tuple[str, float, tuple[float, float, float, float]]:
    """``(partner, lam, mix_box)`` of a view of a ``window`` mixing spec: timm's ``Mixup`` draw, per element."""
    position, shard_keys = _checked_position(key, position, shard_keys)
    block = _mix_block(position, len(shard_keys), spec.mix_window)
    others = len(block) - 1
    slot = rng.randrange(others) if others else 0
    mixed, lam, box = _draw_lam_box(spec, rng)
    if not (others and mixed):
        return "", 1.0, NO_BOX
    return shard_keys[block[slot] if block[slot] < position else block[slot + 1]], lam, box


def _checked_position(key: str, position: int | None, shard_keys: Sequence[str] | None) -> tuple[int, Sequence[str]]:
    if position is None or shard_keys is None:
        raise ValueError("sample_view: a mixing spec needs position= and shard_keys=")
    if shard_keys[position] != key:
        raise ValueError(f"sample_view: shard_keys[{position}] is {shard_keys[position]!r}, not {key!r}")
    return position, shard_keys


def repeat_view_epochs(view_epoch: int, repeats: int) -> list[int]:
    """The view epochs of view epoch ``view_epoch``'s repeats: ``view_epoch * repeats + r``.

    With ``repeats == 1`` that is ``[view_epoch]``: a spec without repeats keeps its view epochs.
    """
    return [int(view_epoch) * int(repeats) + r for r in range(int(repeats))]


def pairs_epoch(spec: ViewSpec, epoch: int) -> int:
    """The view epoch whose :func:`mix_pairs` the views of view epoch ``epoch`` use: its repeats share them."""
    return int(epoch) // spec.repeats


def mix_pairs(seed: int, epoch: int, shard: str, rows: int) -> np.ndarray:
    """Each row's mixing partner (a row index, -1 for none) for ``pair`` / ``elem`` mixing.

    A seeded perfect matching of the shard's ``rows`` positions, drawn per ``(seed, view epoch,
    shard name)``: a pure function of positions, so the trainer's order can keep every pair
    together in one batch before it reads the shard. With an odd ``rows`` one row is left unpaired.
    """
    perm = np.random.default_rng(_view_seed(seed, f"\0pairs\0{shard}\0{int(rows)}", epoch)).permutation(int(rows))
    partner = np.full(int(rows), -1, dtype=np.int64)
    even = len(perm) - len(perm) % 2
    partner[perm[0:even:2]] = perm[1:even:2]
    partner[perm[1:even:2]] = perm[0:even:2]
    return partner


def sample_view(
    spec: ViewSpec,
    seed: int,
    key: str,
    epoch: int,
    *,
    position: int | None = None,
    shard_keys: Sequence[str] | None = None,
    shard: str = "",
) -> View:
    """Draw the view of sample ``key`` for view epoch ``epoch``: a pure function of its arguments.

    Args:
        spec: augmentation recipe.
        seed: the run's view seed.
        key: the sample's key.
        epoch: the view epoch (``epoch mod P`` with a view pool of P).
        position: the sample's index in ``shard_keys``; needed only when ``spec`` mixes.
        shard_keys: keys of the sample's shard in tar order (only the sample's block of
            ``spec.mix_window`` positions is read with ``mix_mode: window``); needed only when
            ``spec`` mixes.
        shard: the shard's name (seeds the pairs of ``pair`` / ``elem`` mixing, :func:`mix_pairs`).

    Returns:
        The view. With ``mix_mode: window`` mixing partners are chosen within the sample's
        aligned block ``[position // mix_window * mix_window, ... + mix_window)``; otherwise
        this is :func:`shard_views` ``[position]``.
    """
    if spec.pairs:
        if spec.mix_mode == "batch":
            raise ValueError("sample_view: a mix_mode batch view depends on its global batch: draw the shard's "
                             "views with shard_views(..., batches=EpochOrder.batch_of(shard))")
        position, shard_keys = _checked_position(key, position, shard_keys)
        return shard_views(spec, seed, epoch, shard_keys, shard=shard)[position]
    view, rng = _draw_view(spec, seed, key, epoch)
    if not spec.mixes:
        return view
    partner, lam, mix_box = _draw_mix(spec, rng, key, position, shard_keys)
    return dataclasses.replace(view, partner=partner, lam=float32_exact(lam), mix_box=mix_box)


def _draw_view(spec: ViewSpec, seed: int, key: str, epoch: int) -> tuple[View, random.Random]:
    """The view's own draws, unmixed, and its RNG where the mix draw of ``window`` / ``elem`` continues."""
    vseed = _view_seed(seed, key, epoch)
    rng = random.Random(vseed)
    # Draw order is fixed and every component draws even when disabled where that is cheap,
    # so e.g. turning flips on does not move the crops.
    area = rng.uniform(*spec.scale)
    log_ratio = rng.uniform(math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    u, v = rng.random(), rng.random()
    shift = (rng.randint(-spec.shift, spec.shift), rng.randint(-spec.shift, spec.shift))
    flip = rng.random() < spec.hflip
    ra_op: tuple[int, ...] = ()
    ra_mag: tuple[float, ...] = ()
    if spec.auto_augment:
        ra_op, ra_mag = draw_rand_augment(rand_augment_config(spec.auto_augment), rng)
    erase = draw_erase_box(rng) if spec.reprob > 0 and rng.random() < spec.reprob else NO_BOX
    view = View(
        key=key,
        epoch=int(epoch),
        seed=vseed,
        crop=(float32_exact(area), float32_exact(log_ratio), float32_exact(u), float32_exact(v)),
        shift=shift,
        flip=flip,
        ra_op=ra_op,
        ra_mag=ra_mag,
        erase=erase,
        erase_fill=REMODES.index(spec.remode),
    )
    return view, rng


def shard_views(spec: ViewSpec, seed: int, epoch: int, keys: Sequence[str], *, shard: str = "",
                batches: Sequence[int] | np.ndarray | None = None) -> list[View]:
    """The views of all samples of one shard, in tar order (what precompute and trainer call).

    ``shard`` (the shard's name) seeds the pairs of ``pair`` / ``elem`` / ``batch`` mixing
    (:func:`mix_pairs`): with ``pair`` both rows of a pair take one draw (seeded by the pair's first
    row in tar order), with ``elem`` each row its own, continuing its view's RNG as ``window`` does,
    with ``batch`` every pair of a global batch the same one, seeded by the batch's index
    ``batches[row]`` in the training epoch (``pipeline.labels.order.EpochOrder.batch_of``; ``-1``: the
    row is not trained, it is not mixed) and the view epoch of which ``epoch`` is a repeat.
    """
    if not spec.mixes:
        return [_draw_view(spec, seed, k, epoch)[0] for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError("shard_views: keys must be unique within a shard")
    if not spec.pairs:
        return [sample_view(spec, seed, k, epoch, position=i, shard_keys=keys) for i, k in enumerate(keys)]
    if spec.mix_mode == "batch" and (batches is None or len(batches) != len(keys)):
        raise ValueError("shard_views: mix_mode batch needs batches=, each row's global batch (EpochOrder.batch_of)")
    in_batch = cast(Sequence[int], batches)  # read with mix_mode batch only
    drawn = [_draw_view(spec, seed, k, epoch) for k in keys]
    views = [view for view, _ in drawn]
    both = spec.mix_mode != "elem"  # one draw for both rows of a pair
    paired = pairs_epoch(spec, epoch)
    for i, j in enumerate(mix_pairs(seed, paired, shard, len(keys))):
        if j < 0 or (both and j < i):
            continue
        if spec.mix_mode == "elem":
            rng = drawn[i][1]
        elif spec.mix_mode == "batch":
            b = int(in_batch[i])
            if b < 0 or int(in_batch[j]) != b:  # not trained (a pair shares its batch)
                continue
            rng = random.Random(_view_seed(seed, f"\0batch\0{b}", paired))
        else:
            rng = random.Random(_view_seed(seed, f"\0pair\0{keys[i]}", epoch))
        mixed, lam, box = _draw_lam_box(spec, rng)
        if not mixed:
            continue
        lam = float32_exact(lam)
        views[i] = dataclasses.replace(views[i], partner=keys[j], lam=lam, mix_box=box)
        if both:
            views[j] = dataclasses.replace(views[j], partner=keys[i], lam=lam, mix_box=box)
    return views
