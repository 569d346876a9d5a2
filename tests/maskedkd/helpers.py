"""Shared view recipes and images for the tests of maskedkd's view modules."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from maskedkd.views import ViewSpec

FULL = ViewSpec(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, mix_window=8)
KEYS = [f"train_{i:06d}" for i in range(37)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def photo(w: int, h: int, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> bytes:
    """Encoded image bytes with photograph-like texture (waves plus noise), so a half-pixel shift
    of a crop moves most pixels by several levels: ``mode`` L, RGB, RGBA (PNG) or CMYK (JPEG)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    waves = np.stack([128 + 100 * np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) for c in range(3)], -1)
    pixels = np.clip(waves + rng.normal(0, 25, waves.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    img = img if mode == "RGB" else img.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


# Statistics of the timm-oracle tests (no scipy here): each test states its level.
def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the samples' CDFs."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """The KS distance two samples of one distribution exceed with probability ``alpha`` (asymptotic)."""
    return float(np.sqrt(-np.log(alpha / 2) / 2) * np.sqrt((n + m) / (n * m)))


def chi2_homogeneity(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson's chi-square of two count vectors over the same categories: ``(statistic, dof)``."""
    table = np.stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """The chi-square quantile at normal quantile ``z`` (3.09: level 1e-3), Wilson-Hilferty's approximation."""
    return float(dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3)
