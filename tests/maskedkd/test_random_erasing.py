"""Random erasing as views draw it, with timm's ``RandomErasing`` as the oracle (issue 26 item 4)."""

from __future__ import annotations

import random

import numpy as np
import torch
from timm.data.random_erasing import RandomErasing

from maskedkd.view_columns import NO_BOX
from maskedkd.views import ViewSpec, pixel_box, sample_view
from tests.maskedkd.helpers import ks_critical, ks_distance

SIZE = 224


def _box_stats(boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Area share, log aspect (height / width) and centre of ``[N, 4]`` pixel boxes ``(x0, y0, x1, y1)``."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return {"area": w * h / SIZE**2, "log_aspect": np.log(h / w),
            "centre_x": (boxes[:, 0] + boxes[:, 2]) / 2, "centre_y": (boxes[:, 1] + boxes[:, 3]) / 2}


class _Recorder:
    """Stands in for a ``[1, SIZE, SIZE]`` image: records the box timm's ``RandomErasing`` writes."""

    dtype = torch.float32

    def __init__(self) -> None:
        self.box: tuple[int, int, int, int] | None = None

    def size(self) -> tuple[int, int, int]:
        return (1, SIZE, SIZE)

    def __setitem__(self, key: tuple[slice, slice, slice], value: object) -> None:
        rows, cols = key[1], key[2]
        self.box = (cols.start, rows.start, cols.stop, rows.stop)


def _timm_boxes(n: int, prob: float) -> list[tuple[int, int, int, int] | None]:
    """The box timm's ``RandomErasing`` erases in each of ``n`` images (None: none)."""
    erase = RandomErasing(probability=prob, mode="const", device="cpu")
    random.seed(0)
    boxes = []
    for _ in range(n):
        image = _Recorder()
        erase(image)
        boxes.append(image.box)
    return boxes


def test_erasing_draws_match_timms_random_erasing():
    """Erasing probability (two-proportion z-test, |z| < 3.29: level 1e-3) and the erased box's
    area share, aspect and centre (two-sample KS, level 1e-3 each) at 224 px, fixed seeds.

    Both draw the area (2-33%) and log aspect (0.3-3.3) up to 10 times until the box fits, then a
    uniform position; timm in whole pixels, a view in normalised coordinates rounded at render.
    """
    n, prob = 20000, 0.25
    theirs = _timm_boxes(n, prob)
    views = [sample_view(ViewSpec(reprob=prob), 0, f"k{k}", 0) for k in range(n)]
    ours = [pixel_box(v.erase, SIZE, SIZE) for v in views if v.erase != NO_BOX]
    a = np.array([b for b in theirs if b is not None], dtype=np.float64)
    b = np.array(ours, dtype=np.float64)
    pooled = (len(a) + len(b)) / (2 * n)
    z = (len(a) - len(b)) / n / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert abs(z) < 3.29, f"erased {len(a)} (timm) vs {len(b)} (ours) of {n}"
    ta, tb = _box_stats(a), _box_stats(b)
    for name in ta:
        d = ks_distance(ta[name], tb[name])
        assert d < ks_critical(len(a), len(b)), f"{name}: KS {d:.4f} ({len(a)} vs {len(b)} boxes)"
