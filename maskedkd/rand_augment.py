"""RandAugment as a view holds it: timm's config string parsed by timm, the per-view draw, one op applied.

timm draws RandAugment's ops, magnitudes and signs at render time from the global RNG; here
:func:`draw_rand_augment` draws them once per view from the view's own RNG (stored as op
indices into :data:`RA_OPS` and signed magnitudes), and :func:`apply_rand_augment` renders one
drawn op with timm's own op functions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image
from timm.data import auto_augment as aa
from timm.data.auto_augment import rand_augment_transform

from maskedkd.view_columns import float32_exact

# Stable op numbering for the stored RandAugment draw: never reorder, only append.
RA_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing",
    "PosterizeOriginal", "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color",
    "ColorIncreasing", "Contrast", "ContrastIncreasing", "Brightness", "BrightnessIncreasing",
    "Sharpness", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateX", "TranslateY",
    "TranslateXRel", "TranslateYRel", "Desaturate", "GaussianBlur",
)


@dataclass(frozen=True)
class RandAugmentConfig:
    """What the draws need of a timm RandAugment string."""

    ops: tuple[int, ...]  # indices into RA_OPS
    weights: tuple[float, ...] | None  # None = uniform with replacement (timm semantics)
    num_layers: int
    prob: float
    magnitude: float
    magnitude_std: float
    magnitude_max: float


@lru_cache(maxsize=32)
def rand_augment_config(config: str) -> RandAugmentConfig:
    """Parse a timm RandAugment string (``"rand-m9-mstd0.5-inc1"``) with timm itself.

    Raises:
        ValueError: not a RandAugment string, or one with ops that draw at render time.
    """
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
    return RandAugmentConfig(
        ops=tuple(RA_OPS.index(op.name) for op in ra.ops),
        weights=weights,
        num_layers=int(ra.num_layers),
        prob=float(first.prob),
        magnitude=float(first.magnitude),
        magnitude_std=float(first.magnitude_std),
        magnitude_max=float(first.magnitude_max or 10.0),
    )


def draw_rand_augment(cfg: RandAugmentConfig, rng: random.Random) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """One view's RandAugment: ``(ops, magnitudes)``, an op -1 where its layer is skipped.

    A negative magnitude means the op's argument is negated (timm's ``_randomly_negate``).
    """
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
        mags.append(float32_exact(-m if negate else m))
    return tuple(ops), tuple(mags)


def signed_level(name: str, magnitude: float, sign: float) -> tuple | None:
    """Level args of the timm ops whose sign timm draws from the global RNG (``_randomly_negate``).

    Same formulas as timm's ``_*_level_to_arg``; the sign comes from the view instead. None for
    the other ops.
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


def apply_rand_augment(img: Image.Image, op: int, mag: float, fill: Any, resample: int,
                       size: tuple[int, int]) -> Image.Image:
    """``img`` with the drawn op ``op`` (index into :data:`RA_OPS`) at signed magnitude ``mag``.

    Args:
        fill: colour of the area geometric ops uncover (the normalisation mean).
        resample: Pillow filter of the geometric ops.
        size: the output's (height, width): TranslateX/Y move by 45% of its short side.
    """
    name = RA_OPS[op]
    sign = -1.0 if math.copysign(1.0, mag) < 0 else 1.0
    m = abs(mag)
    if name in ("TranslateX", "TranslateY"):  # timm: translate_const = 45% of the output's short side
        args: tuple | None = (sign * m / 10.0 * int(min(size) * 0.45),)
    else:
        args = signed_level(name, m, sign)
    if args is None:
        level_fn = aa.LEVEL_TO_ARG[name]
        args = level_fn(m, {}) if level_fn is not None else ()
    if name.startswith("Posterize") and args[0] <= 0:
        # timm asks for 0 bits at the magnitude extremes; Pillow >= 11 refuses, older Pillow
        # (what timm was written against) returned black: keep that meaning
        return Image.new(img.mode, img.size, 0)
    apply_op: Any = aa.NAME_TO_OP[name]  # timm types the table as plain `function`
    return apply_op(img, *args, fillcolor=fill, resample=resample)
