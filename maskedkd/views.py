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
RandAugment, ``RandomErasing``, ``Mixup`` in per-element mode). Deliberate differences, all
needed to make a view a pure function of its key:

- an infeasible crop draw (e.g. area 0.95 at ratio 4/3) is clamped to the image edge keeping
  its area, instead of being redrawn up to 10 times with a centre-crop fallback;
- the random-erasing and cutmix boxes are drawn in normalised output coordinates;
- the mixing partner is another sample of the same block of ``mix_window`` shard positions
  (not the flipped batch), and it is rendered with its own view, as timm mixes augmented images.

No file I/O here: images come in as decoded PIL images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as aa
from timm.data.auto_augment import rand_augment_transform

from maskedkd.resize import check_resize, pixel_array, torch_resized_crop

# Bump when the meaning of any draw changes: it is part of the spec fingerprint.
VIEWS_ALGORITHM = 1

_REMODES = ("pixel", "rand", "const")
_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# Stable op numbering for the stored RandAugment draw: never reorder, only append.
RA_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing",
    "PosterizeOriginal", "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color",
    "ColorIncreasing", "Contrast", "ContrastIncreasing", "Brightness", "BrightnessIncreasing",
    "Sharpness", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateX", "TranslateY",
    "TranslateXRel", "TranslateYRel", "Desaturate", "GaussianBlur",
)
_ERASE_AREA = (0.02, 1 / 3)  # timm RandomErasing defaults
_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
_NO_BOX = (0.0, 0.0, 0.0, 0.0)


def _f32(x: float) -> float:
    """Round to the nearest float32, so a view survives float32 columns unchanged."""
    return float(np.float32(x))


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
        mix_window: partners are drawn within aligned blocks of this many shard positions,
            so a streaming reader needs to hold at most one block.
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
        if self.remode not in _REMODES:
            raise ValueError(f"ViewSpec.remode must be one of {_REMODES}, got {self.remode!r}")
        if self.shift < 0 or self.shift > 32767:
            raise ValueError(f"ViewSpec.shift must be in [0, 32767] pixels, got {self.shift}")
        if self.mix_window < 2:
            raise ValueError(f"ViewSpec.mix_window must be >= 2, got {self.mix_window}")
        if self.auto_augment is not None:
            _rand_augment_config(self.auto_augment)  # fails early on a bad string

    @property
    def mixes(self) -> bool:
        """Whether views of this spec can have a mixing partner."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def ra_layers(self) -> int:
        """How many RandAugment draws each view holds (0 without RandAugment)."""
        return _rand_augment_config(self.auto_augment).num_layers if self.auto_augment else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ViewSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ViewSpec field(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def fingerprint(self) -> str:
        """sha256 over the spec, the view algorithm version and :func:`render_digest` of the spec.

        The digest stands in for the versions of Python, Pillow, timm, torch and numpy: an
        upgrade that draws or renders any view differently changes it, one that does not keeps
        every stored label valid.
        """
        record = {"spec": self.to_dict(), "algorithm": VIEWS_ALGORITHM, "render": render_digest(self)}
        return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
        ra_op: RandAugment ops as indices into :data:`RA_OPS`, -1 where the layer was skipped.
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
    crop: tuple[float, float, float, float] = (1.0, 0.0, 0.5, 0.5)
    shift: tuple[int, int] = (0, 0)
    flip: bool = False
    ra_op: tuple[int, ...] = ()
    ra_mag: tuple[float, ...] = ()
    erase: tuple[float, float, float, float] = _NO_BOX
    erase_fill: int = 0
    partner: str = ""
    lam: float = 1.0
    mix_box: tuple[float, float, float, float] = field(default=_NO_BOX)

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
        return dataclasses.replace(self, partner="", lam=1.0, mix_box=_NO_BOX)

    def to_columns(self) -> dict[str, Any]:
        """Plain scalar / fixed-length-list columns (see :func:`view_columns_layout`)."""
        return {
            "key": self.key,
            "view_epoch": self.epoch,
            "view_seed": self.seed,
            "view_crop": list(self.crop),
            "view_shift": list(self.shift),
            "view_flip": self.flip,
            "view_ra_op": list(self.ra_op),
            "view_ra_mag": list(self.ra_mag),
            "view_erase": list(self.erase),
            "view_erase_fill": self.erase_fill,
            "view_partner": self.partner,
            "view_lam": self.lam,
            "view_mix_box": list(self.mix_box),
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> "View":
        """Inverse of :meth:`to_columns` (also accepts numpy scalars and arrays)."""
        return cls(
            key=str(row["key"]),
            epoch=int(row["view_epoch"]),
            seed=int(row["view_seed"]),
            crop=tuple(_f32(v) for v in row["view_crop"]),
            shift=tuple(int(v) for v in row["view_shift"]),
            flip=bool(row["view_flip"]),
            ra_op=tuple(int(v) for v in row["view_ra_op"]),
            ra_mag=tuple(_f32(v) for v in row["view_ra_mag"]),
            erase=tuple(_f32(v) for v in row["view_erase"]),
            erase_fill=int(row["view_erase_fill"]),
            partner=str(row["view_partner"]),
            lam=_f32(row["view_lam"]),
            mix_box=tuple(_f32(v) for v in row["view_mix_box"]),
        )


def view_columns_layout(spec: ViewSpec) -> dict[str, tuple[str, int]]:
    """Column name -> (numpy dtype name, fixed list width; 0 = scalar) for views of ``spec``.

    ``key`` and ``view_partner`` are strings (``"str"``); everything else is fixed-width.
    """
    return {
        "key": ("str", 0),
        "view_epoch": ("int32", 0),
        "view_seed": ("int64", 0),
        "view_crop": ("float32", 4),
        "view_shift": ("int16", 2),
        "view_flip": ("bool", 0),
        "view_ra_op": ("int8", spec.ra_layers),
        "view_ra_mag": ("float32", spec.ra_layers),
        "view_erase": ("float32", 4),
        "view_erase_fill": ("int8", 0),
        "view_partner": ("str", 0),
        "view_lam": ("float32", 0),
        "view_mix_box": ("float32", 4),
    }


def views_to_columns(views: Sequence[View], spec: ViewSpec | None = None) -> dict[str, np.ndarray]:
    """Column arrays for many views: strings as object arrays, lists as 2-D ``[N, width]`` arrays.

    Args:
        views: views to store, e.g. one shard's, in row order.
        spec: their spec; needed only to size the RandAugment columns when ``views`` is empty.
    """
    width = len(views[0].ra_op) if views else (spec.ra_layers if spec else 0)
    layout = view_columns_layout(ViewSpec()) | {"view_ra_op": ("int8", width), "view_ra_mag": ("float32", width)}
    rows = [v.to_columns() for v in views]
    out: dict[str, np.ndarray] = {}
    for name, (dtype, w) in layout.items():
        values = [r[name] for r in rows]
        if dtype == "str":
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
        elif w:
            arr = np.asarray(values, dtype=dtype).reshape(len(values), w)
        else:
            arr = np.asarray(values, dtype=dtype)
        out[name] = arr
    return out


def views_from_columns(columns: Mapping[str, Any]) -> list[View]:
    """Inverse of :func:`views_to_columns` (also takes lists, e.g. ``pyarrow`` ``to_pylist()``)."""
    names = list(view_columns_layout(ViewSpec()))
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


@dataclass(frozen=True)
class _RAConfig:
    ops: tuple[int, ...]  # indices into RA_OPS
    weights: tuple[float, ...] | None  # None = uniform with replacement (timm semantics)
    num_layers: int
    prob: float
    magnitude: float
    magnitude_std: float
    magnitude_max: float


@lru_cache(maxsize=32)
def _rand_augment_config(config: str) -> _RAConfig:
    """Parse a timm RandAugment string with timm itself and keep what the draws need."""
    if not config.startswith("rand"):
        raise ValueError(f"auto_augment {config!r}: only timm RandAugment strings ('rand-...') are supported")
    try:
        ra = rand_augment_transform(config, {"translate_const": 100, "img_mean": (128, 128, 128)})
    except (AssertionError, ValueError, KeyError) as e:
        raise ValueError(f"auto_augment {config!r} is not a valid timm RandAugment string: {e}") from e
    unsupported = sorted({op.name for op in ra.ops} - set(RA_OPS))
    if unsupported:
        raise ValueError(f"auto_augment {config!r}: ops {unsupported} draw randomness at render time; not supported")
    first = ra.ops[0]
    weights = None if ra.choice_weights is None else tuple(float(w) for w in ra.choice_weights)
    return _RAConfig(
        ops=tuple(RA_OPS.index(op.name) for op in ra.ops),
        weights=weights,
        num_layers=int(ra.num_layers),
        prob=float(first.prob),
        magnitude=float(first.magnitude),
        magnitude_std=float(first.magnitude_std),
        magnitude_max=float(first.magnitude_max or 10.0),
    )


def _draw_rand_augment(cfg: _RAConfig, rng: random.Random) -> tuple[tuple[int, ...], tuple[float, ...]]:
    pool = list(range(len(cfg.ops)))
    weights = list(cfg.weights) if cfg.weights is not None else None
    ops, mags = [], []
    for _ in range(cfg.num_layers):
        if weights is None:
            slot = rng.randrange(len(pool))
        else:  # weighted choice without replacement, as numpy's choice(replace=False, p=...)
            r, slot = rng.random() * sum(weights), 0
            while slot < len(weights) - 1 and r >= weights[slot]:
                r -= weights[slot]
                slot += 1
            weights.pop(slot)
        op = cfg.ops[pool.pop(slot) if cfg.weights is not None else pool[slot]]
        applied = cfg.prob >= 1.0 or rng.random() <= cfg.prob
        m = cfg.magnitude
        if cfg.magnitude_std == math.inf:
            m = rng.uniform(0.0, m)
        elif cfg.magnitude_std > 0:
            m = rng.gauss(m, cfg.magnitude_std)
        m = max(0.0, min(m, cfg.magnitude_max))
        negate = rng.random() > 0.5
        ops.append(op if applied else -1)
        mags.append(_f32(-m if negate else m))
    return tuple(ops), tuple(mags)


def _draw_erase(rng: random.Random) -> tuple[float, float, float, float]:
    for _ in range(10):
        area = rng.uniform(*_ERASE_AREA)
        aspect = math.exp(rng.uniform(*_ERASE_LOG_ASPECT))
        h, w = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w < 1.0 and h < 1.0:
            top, left = rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w)
            return (_f32(left), _f32(top), _f32(left + w), _f32(top + h))
    return _NO_BOX


def _mix_block(position: int, n: int, window: int) -> range:
    start = (position // window) * window
    return range(start, min(start + window, n))


def sample_view(
    spec: ViewSpec,
    seed: int,
    key: str,
    epoch: int,
    *,
    position: int | None = None,
    shard_keys: Sequence[str] | None = None,
) -> View:
    """Draw the view of sample ``key`` for view epoch ``epoch``: a pure function of its arguments.

    Args:
        spec: augmentation recipe.
        seed: the run's view seed.
        key: the sample's key.
        epoch: the view epoch (``epoch mod P`` with a view pool of P).
        position: the sample's index in ``shard_keys``; needed only when ``spec`` mixes.
        shard_keys: keys of the sample's shard in tar order (only the sample's block of
            ``spec.mix_window`` positions is read); needed only when ``spec`` mixes.

    Returns:
        The view. Mixing partners are chosen within the sample's aligned block
        ``[position // mix_window * mix_window, ... + mix_window)``.
    """
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
        ra_op, ra_mag = _draw_rand_augment(_rand_augment_config(spec.auto_augment), rng)
    erase = _draw_erase(rng) if spec.reprob > 0 and rng.random() < spec.reprob else _NO_BOX
    partner, lam, mix_box = "", 1.0, _NO_BOX
    if spec.mixes:
        if position is None or shard_keys is None:
            raise ValueError("sample_view: a mixing spec needs position= and shard_keys=")
        if shard_keys[position] != key:
            raise ValueError(f"sample_view: shard_keys[{position}] is {shard_keys[position]!r}, not {key!r}")
        block = _mix_block(position, len(shard_keys), spec.mix_window)
        others = len(block) - 1
        slot = rng.randrange(others) if others else 0
        use_mix = rng.random() < spec.mix_prob
        cutmix = spec.cutmix > 0 and (spec.mixup == 0 or rng.random() < spec.switch_prob)
        alpha = spec.cutmix if cutmix else spec.mixup
        lam = rng.betavariate(alpha, alpha)
        cx, cy = rng.random(), rng.random()
        if others and use_mix:
            partner_pos = block[slot] if block[slot] < position else block[slot + 1]
            partner = shard_keys[partner_pos]
            if cutmix:
                cut = math.sqrt(1.0 - lam)
                x0, x1 = max(0.0, cx - cut / 2), min(1.0, cx + cut / 2)
                y0, y1 = max(0.0, cy - cut / 2), min(1.0, cy + cut / 2)
                mix_box = (_f32(x0), _f32(y0), _f32(x1), _f32(y1))
                lam = 1.0 - (mix_box[2] - mix_box[0]) * (mix_box[3] - mix_box[1])
        else:
            lam = 1.0
    return View(
        key=key,
        epoch=int(epoch),
        seed=vseed,
        crop=(_f32(area), _f32(log_ratio), _f32(u), _f32(v)),
        shift=shift,
        flip=flip,
        ra_op=ra_op,
        ra_mag=ra_mag,
        erase=erase,
        erase_fill=_REMODES.index(spec.remode),
        partner=partner,
        lam=_f32(lam),
        mix_box=mix_box,
    )


def shard_views(spec: ViewSpec, seed: int, epoch: int, keys: Sequence[str]) -> list[View]:
    """The views of all samples of one shard, in tar order (what precompute and trainer call)."""
    if not spec.mixes:
        return [sample_view(spec, seed, k, epoch) for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError("shard_views: keys must be unique within a shard")
    return [sample_view(spec, seed, k, epoch, position=i, shard_keys=keys) for i, k in enumerate(keys)]


# ---------------------------------------------------------------------------------------------
# Rendering


def _signed_level(name: str, magnitude: float, sign: float) -> tuple | None:
    """Level args of the timm ops whose sign timm draws from the global RNG (``_randomly_negate``).

    Same formulas as timm's ``_*_level_to_arg``; the sign comes from the view instead.
    """
    level = magnitude / 10.0
    if name == "Rotate":
        return (sign * level * 30.0,)
    if name in ("ShearX", "ShearY"):
        return (sign * level * 0.3,)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (sign * level * 0.45,)
    if name.endswith("Increasing") and name[: -len("Increasing")] in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (max(0.1, 1.0 + sign * level * 0.9),)
    return None


def _apply_rand_augment(img: Image.Image, op: int, mag: float, fill: Any, resample: int, size: tuple[int, int]) -> Image.Image:
    name = RA_OPS[op]
    sign = -1.0 if math.copysign(1.0, mag) < 0 else 1.0
    m = abs(mag)
    if name in ("TranslateX", "TranslateY"):  # timm: translate_const = 45% of the output's short side
        args: tuple | None = (sign * m / 10.0 * int(min(size) * 0.45),)
    else:
        args = _signed_level(name, m, sign)
    if args is None:
        level_fn = aa.LEVEL_TO_ARG[name]
        args = level_fn(m, {}) if level_fn is not None else ()
    if name.startswith("Posterize") and args[0] <= 0:
        # timm asks for 0 bits at the magnitude extremes; Pillow >= 11 refuses, older Pillow
        # (what timm was written against) returned black: keep that meaning
        return Image.new(img.mode, img.size, 0)
    return aa.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=resample)


@dataclass(frozen=True)
class _Normalise:
    """``(x / 255 - mean) / std`` as one multiply and one add per pixel, channel-first."""

    mean: tuple[float, ...]
    scale: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def create(cls, mean: Sequence[float], std: Sequence[float]) -> "_Normalise":
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean/std must both have 1 (L) or 3 (RGB) values, got {len(mean)} and {len(std)}")
        std64 = np.asarray(std, dtype=np.float64)
        scale = torch.from_numpy((1.0 / (255.0 * std64)).astype(np.float32)).view(-1, 1, 1)
        offset = torch.from_numpy((-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)).view(-1, 1, 1)
        return cls(tuple(float(m) for m in mean), scale, offset)

    @property
    def mode(self) -> str:
        return "L" if len(self.mean) == 1 else "RGB"

    @property
    def fill(self) -> int | tuple[int, ...]:
        """RandAugment's fill colour: the mean, as timm's ``img_mean`` hparam."""
        fill = tuple(int(round(255 * m)) for m in self.mean)
        return fill[0] if len(fill) == 1 else fill


_RESAMPLE_NAMES = ", ".join(_INTERPOLATIONS)


def _resample(interpolation: str) -> int:
    try:
        return _INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"interpolation {interpolation!r}: use one of {_RESAMPLE_NAMES}") from None


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _pixel_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    return (round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height))


def _erase_fill(view: View, shape: tuple[int, int, int]) -> torch.Tensor:
    if view.erase_fill == 2:
        return torch.zeros(shape[0], 1, 1)
    gen = torch.Generator().manual_seed(view.seed)
    if view.erase_fill == 1:
        return torch.empty(shape[0], 1, 1).normal_(generator=gen)
    return torch.empty(shape).normal_(generator=gen)


def erase_fill(view: View, channels: int, hw: tuple[int, int]) -> torch.Tensor | None:
    """What random erasing writes into ``view``'s box at output size ``hw``: float32 [C, h, w] drawn
    on the CPU from the view's seed (None: nothing erased). :func:`finish_views` writes it."""
    if view.erase == _NO_BOX:
        return None
    ex0, ey0, ex1, ey1 = _pixel_box(view.erase, *hw)
    if ex1 <= ex0 or ey1 <= ey0:
        return None
    return _erase_fill(view, (channels, ey1 - ey0, ex1 - ex0))


def _render_pixels(image: Image.Image | np.ndarray, view: View, hw: tuple[int, int], mode: str, fill: Any,
                   interpolation: str, resize: str, out: torch.Tensor) -> None:
    """Crop, flip, RandAugment (timm's per-sample train transform up to ``ToTensor``) into uint8 ``out`` [C, H, W]."""
    resample = _resample(interpolation)
    h, w = hw
    if resize == "torch":
        pixels = pixel_array(image, mode)
        height, width = pixels.shape[:2]
        x0, y0, x1, y1 = view.crop_box(width, height)
        small = torch_resized_crop(pixels, (x0 * width, y0 * height, x1 * width, y1 * height), hw, interpolation,
                                   flip=view.flip)
        if not any(op >= 0 for op in view.ra_op):
            out.copy_(small)
            return
        img = Image.fromarray(small.permute(1, 2, 0).squeeze(-1).contiguous().numpy())
    else:
        img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        img = img if img.mode == mode else img.convert(mode)
        width, height = img.size
        x0, y0, x1, y1 = view.crop_box(width, height)
        px = (x0 * width, y0 * height, x1 * width, y1 * height)
        if px[0] >= 0 and px[1] >= 0 and px[2] <= width and px[3] <= height:
            img = img.resize((w, h), resample, box=px)
        else:  # shifted past the edge: zero-pad first, as RandomCrop(padding=...) does
            left, top = math.floor(px[0]), math.floor(px[1])
            padded = img.crop((left, top, math.ceil(px[2]), math.ceil(px[3])))
            img = padded.resize((w, h), resample, box=(px[0] - left, px[1] - top, px[2] - left, px[3] - top))
        if view.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for op, mag in zip(view.ra_op, view.ra_mag):
        if op >= 0:
            img = _apply_rand_augment(img, op, mag, fill, resample, hw)
    out.copy_(torch.from_numpy(np.array(img, dtype=np.uint8)).view(h, w, -1).permute(2, 0, 1))


@dataclass(frozen=True)
class PixelSpec:
    """What a view's uint8 pixels depend on: output size, colour mode, resampling, RandAugment's fill.

    Two render specs with equal pixel specs (e.g. student and teacher at one size with other
    normalisations) share their uint8 renders: only :func:`finish_views` differs.
    """

    size: tuple[int, int]
    mode: str
    interpolation: str
    fill: int | tuple[int, ...]
    resize: str = "pil"

    @classmethod
    def create(cls, size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float],
               interpolation: str = "bicubic", resize: str = "pil") -> "PixelSpec":
        """The pixel spec of a render at ``size`` with ``mean``/``std``, ``interpolation`` and
        ``resize`` (:mod:`maskedkd.resize`)."""
        norm = _Normalise.create(mean, std)
        _resample(interpolation)  # fails early on a bad name
        check_resize(resize, interpolation)
        return cls(_hw(size), norm.mode, interpolation, norm.fill, resize)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def render_pixels(image: Image.Image | np.ndarray, view: View, spec: PixelSpec, out: torch.Tensor) -> None:
    """Render ``view`` of ``image`` to uint8 ``out`` [C, H, W]: all of :func:`render` but the float
    steps (normalise, erase, mix), which :func:`finish_views` applies to a batch on any device.

    ``image`` is a decoded PIL image or, as :func:`maskedkd.resize.pixel_array` makes it once for
    many views, its uint8 ``[H, W(, C)]`` array in the spec's colour mode.
    """
    _render_pixels(image, view, spec.size, spec.mode, spec.fill, spec.interpolation, spec.resize, out)


def finish_views(pixels: torch.Tensor, views: Sequence[View], *, mean: Sequence[float], std: Sequence[float],
                 rows: int | None = None, fills: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Normalise, erase and mix uint8 renders into what :func:`render_batch` returns, on ``pixels``' device.

    Args:
        pixels: uint8 [R, C, H, W], :func:`render_pixels` of ``views`` (any device).
        views: the R views; the first ``rows`` are the batch, the rest may be mixing partners.
        rows: how many leading views to return (default all); each mixes with its partner,
            which must be among ``views``.
        fills: :func:`erase_fill` of each erased view by position, drawn ahead (e.g. already on
            the device); default: drawn here.

    Returns:
        float32 [rows, C, H, W]: bit-identical on CPU to :func:`render_batch` of the same views
        (elementwise IEEE ops only, in the same order).
    """
    norm = _Normalise.create(mean, std)
    device = pixels.device
    base = pixels.float()
    # two separate IEEE ops (no fused multiply-add), so every machine gives the same bytes
    # non_blocking: a blocking host-to-device copy would drain the device's queue first (CPU: no copy)
    base.mul_(norm.scale.to(device, non_blocking=True)).add_(norm.offset.to(device, non_blocking=True))
    h, w = base.shape[-2:]
    for i, view in enumerate(views):
        fill = erase_fill(view, base.shape[1], (h, w)) if fills is None else fills.get(i)
        if fill is not None:
            ex0, ey0, ex1, ey1 = _pixel_box(view.erase, h, w)
            base[i, :, ey0:ey1, ex0:ex1] = fill.to(device)
    n = len(views) if rows is None else rows
    if not any(v.partner for v in views[:n]):
        return base if n == len(views) else base[:n]
    index = {v.key: i for i, v in enumerate(views[:n])}
    for i in range(n, len(views)):  # partners outside the batch: batch rows win on a repeated key
        index.setdefault(views[i].key, i)
    out = base[:n].clone()
    for i, view in enumerate(views[:n]):
        if view.partner:
            if view.partner not in index:
                raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}, which is not among the views")
            _mix_into(out[i], base[index[view.partner]], view)
    return out


def _mix_into(out: torch.Tensor, partner: torch.Tensor, view: View) -> None:
    if view.mix_box == _NO_BOX:  # mixup
        out.mul_(view.lam).add_(partner * (1.0 - view.lam))
        return
    h, w = out.shape[-2:]
    x0, y0, x1, y1 = _pixel_box(view.mix_box, h, w)
    out[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]


def render(
    image: Image.Image,
    view: View,
    size: int | tuple[int, int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    partner: Image.Image | None = None,
    partner_view: View | None = None,
    resize: str = "pil",
) -> torch.Tensor:
    """Render one view of ``image``: deterministic, the same bytes in every process.

    Args:
        image: the decoded source image (converted to L or RGB to match ``mean``).
        view: the view from :func:`sample_view`.
        size: output size, an int or ``(height, width)``.
        mean: per-channel mean; its length sets the channel count (1 = L, 3 = RGB).
        std: per-channel std.
        interpolation: ``nearest``, ``bilinear``, ``bicubic`` or ``lanczos`` (resize and RandAugment).
        partner: the mixing partner's image, required when ``view.partner`` is set.
        partner_view: the partner's own view of the same epoch; the partner is rendered with it
            (minus its own mixing, as timm mixes augmented images), then mixed in.
        resize: who resizes the crop, ``pil`` or ``torch`` (:mod:`maskedkd.resize`).

    Returns:
        float32 tensor ``[C, H, W]``.
    """
    if view.partner and (partner is None or partner_view is None or partner_view.key != view.partner):
        raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}: pass its image and view as partner=, partner_view=")
    images, views = ([image, partner], [view, partner_view]) if view.partner else ([image], [view])
    return _render_views(images, views, size, mean, std, interpolation, resize, rows=1)[0]


def render_batch(
    images: Sequence[Image.Image],
    views: Sequence[View],
    size: int | tuple[int, int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    partners: Mapping[str, tuple[Image.Image, View]] | Callable[[str], tuple[Image.Image, View]] | None = None,
    resize: str = "pil",
) -> torch.Tensor:
    """Render many views into one ``[N, C, H, W]`` tensor, each exactly as :func:`render` would.

    A partner inside the batch (the usual case when the batch is a block of
    ``spec.mix_window`` samples) is rendered once and reused; others come from ``partners``,
    a mapping or callable ``key -> (image, view)``.
    """
    if len(images) != len(views):
        raise ValueError(f"render_batch: {len(images)} images but {len(views)} views")
    batch = len(views)
    images, views = list(images), list(views)
    inside = {v.key for v in views}
    for view in list(views):
        if view.partner and view.partner not in inside:
            if partners is None:
                raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}, which is not in the batch: pass partners=")
            p_image, p_view = partners(view.partner) if callable(partners) else partners[view.partner]
            images.append(p_image)
            views.append(p_view)
            inside.add(view.partner)
    return _render_views(images, views, size, mean, std, interpolation, resize, rows=batch)


def _render_views(images: Sequence[Image.Image], views: Sequence[View], size: int | tuple[int, int],
                  mean: Sequence[float], std: Sequence[float], interpolation: str, resize: str,
                  rows: int) -> torch.Tensor:
    """:func:`render_pixels` of every view, then :func:`finish_views` of the first ``rows``."""
    spec = PixelSpec.create(size, mean, std, interpolation, resize)
    pixels = torch.empty(len(views), spec.channels, *spec.size, dtype=torch.uint8)
    for i, (image, view) in enumerate(zip(images, views)):
        render_pixels(image, view, spec, pixels[i])
    return finish_views(pixels, views, mean=mean, std=std, rows=rows)


# ---------------------------------------------------------------------------------------------
# Render digest: what the installed libraries make of a fixed set of views (docs/design.md §5)

_DIGEST_KEYS = tuple(f"digest_{i}" for i in range(8))
_DIGEST_SIZE = (20, 24)  # (height, width): not square, so a swapped axis shows


def _digest_images() -> list[tuple[Image.Image, tuple[float, ...], tuple[float, ...]]]:
    """Two fixed synthetic images (RGB 37x29, L 28x28) with the mean/std they are rendered with.

    Smooth gradients plus a hard-edged pattern, so resampling filters, flips, RandAugment's
    colour and geometry ops all move bytes.
    """
    y, x = np.mgrid[0:29, 0:37].astype(np.float64)
    rgb = np.stack([x * 7.0, y * 8.5, 127.5 + 120.0 * np.sin(x / 3.0) * np.cos(y / 4.0)], axis=-1)
    rgb[(x.astype(int) // 5 + y.astype(int) // 5) % 2 == 0] *= 0.5
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    gray = np.where((x - 14) ** 2 + (y - 12) ** 2 < 64, 230.0, 20.0 + 3.0 * x)
    return [
        (Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        (Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L"), (0.2860,), (0.3530,)),
    ]


def _digest_spec(spec: ViewSpec) -> ViewSpec:
    """``spec`` with each part it enables made likely, so 8 views exercise all of them.

    Flip, erasing and mixing fire about every other view, and both mixup and cutmix occur when
    both are on; a part the spec leaves off stays off, so its code can change freely.
    """
    both = spec.mixup > 0 and spec.cutmix > 0
    return dataclasses.replace(
        spec,
        hflip=0.5 if spec.hflip > 0 else 0.0,
        reprob=0.5 if spec.reprob > 0 else 0.0,
        mix_prob=0.5 if spec.mix_prob > 0 else 0.0,
        switch_prob=0.5 if both else spec.switch_prob,
        mix_window=len(_DIGEST_KEYS),
    )


def _digest_views(spec: ViewSpec) -> list[View]:
    """8 views drawn from :func:`_digest_spec`, plus one per RandAugment op the spec can draw.

    Random draws cover a few ops only; the extra views apply each op once at the configured
    magnitude (alternating sign), so a change in any op's rendering shows.
    """
    views = shard_views(_digest_spec(spec), 0, 0, _DIGEST_KEYS)
    if spec.auto_augment:
        cfg = _rand_augment_config(spec.auto_augment)
        pad = cfg.num_layers - 1
        for i, op in enumerate(sorted(set(cfg.ops))):
            mag = _f32(cfg.magnitude if i % 2 else -cfg.magnitude)
            views.append(View(key=f"digest_op_{op}", epoch=0, seed=op, crop=(0.75, 0.125, 0.25, 0.5),
                              ra_op=(op,) + (-1,) * pad, ra_mag=(mag,) + (0.0,) * pad))
    return views


@lru_cache(maxsize=None)
def render_digest(spec: ViewSpec) -> str:
    """sha256 of views of ``spec`` drawn and rendered by the libraries installed here.

    Takes :func:`_digest_views` (fixed keys, seed 0, view epoch 0), renders them with
    :func:`render_batch` onto two fixed synthetic images (RGB and L) at every interpolation the
    spec can render with, and hashes the drawn view columns and the rendered float32 bytes.
    Cached per spec: 5 to 50 ms (RandAugment on) once per process.
    """
    views = _digest_views(spec)
    h = hashlib.sha256()
    for name, column in views_to_columns(views, spec).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(column).tobytes() if column.dtype != object else "\0".join(column).encode())
    # Pillow's geometric transforms (RandAugment's rotate/shear/translate) refuse lanczos, so no
    # spec with RandAugment can render with it
    interpolations = [i for i in _INTERPOLATIONS if not (spec.auto_augment and i == "lanczos")]
    for image, mean, std in _digest_images():
        for interpolation in interpolations:
            out = render_batch([image] * len(views), views, _DIGEST_SIZE, mean=mean, std=std, interpolation=interpolation)
            h.update(out.numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def resize_digest(resize: str, interpolation: str) -> str:
    """sha256 of what this machine's ``resize`` makes of fixed crops of the digest images; "" for ``pil``.

    Pillow's resampling is covered by :func:`render_digest` already; torch's is not, so a torch
    whose uint8 kernels give other bytes changes every fingerprint that holds this digest.
    """
    if resize == "pil":
        return ""
    check_resize(resize, interpolation)
    h = hashlib.sha256(f"{resize}\0{interpolation}".encode())
    for image, _, _ in _digest_images():
        pixels = pixel_array(image, image.mode)
        for box, hw, flip in (((0.0, 0.0, 28.0, 28.0), (20, 24), False),  # shrink, not square
                              ((3.4, 2.6, 17.2, 12.9), (20, 24), True),  # enlarge a fractional box
                              ((-4.0, 5.0, 30.0, 33.0), (16, 16), False)):  # past the edges: zero-padded
            h.update(torch_resized_crop(pixels, box, hw, interpolation, flip).numpy().tobytes())
    return h.hexdigest()


def mix_target(label: int, partner_label: int | None, view: View, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """The soft ground-truth target of a (possibly mixed) view, as timm's ``mixup_target``.

    Returns:
        float32 tensor ``[num_classes]``: ``lam * smooth(label) + (1 - lam) * smooth(partner_label)``.
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    target = torch.full((num_classes,), off, dtype=torch.float32)
    target[label] = on
    if not view.partner:
        return target
    if partner_label is None:
        raise ValueError(f"view of {view.key!r} mixes with {view.partner!r}: pass partner_label")
    other = torch.full((num_classes,), off, dtype=torch.float32)
    other[partner_label] = on
    return target * view.lam + other * (1.0 - view.lam)
