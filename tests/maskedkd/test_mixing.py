"""Mixing applied to pixels and labels, with timm's ``Mixup`` as the oracle (issue 26 item 4)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch

from maskedkd.mixing import mix_target
from maskedkd.rendering import finish_views
from maskedkd.view_columns import NO_BOX
from maskedkd.views import View, ViewSpec, shard_views
from tests.maskedkd.helpers import MEAN, STD, ks_critical, ks_distance


def test_mix_target():
    view = View("a", 0, 0, partner="b", lam=0.75)
    target = mix_target(2, 5, view, 10, smoothing=0.1)
    assert target.dtype == torch.float32 and math.isclose(target.sum().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(target[2].item(), 0.75 * 0.91 + 0.25 * 0.01, rel_tol=1e-6)
    assert math.isclose(target[5].item(), 0.25 * 0.91 + 0.75 * 0.01, rel_tol=1e-6)
    plain = mix_target(3, None, View("a", 0, 0), 4)
    assert plain.tolist() == [0, 0, 0, 1]


def _timm_mixup(monkeypatch, x: torch.Tensor, labels: torch.Tensor, seed: int, mode: str = "elem"):
    """timm's ``Mixup`` in ``mode`` ``elem``, ``pair`` or ``batch`` (DeiT's alphas, smoothing 0.1) of
    ``x``: mixed pixels, targets, and each row's (``pair``: each first row's; ``batch``: the batch's
    one) ``(lam, cutmix box (yl, yh, xl, xh) or None)`` as timm drew them."""
    boxes: list[tuple[int, int, int, int]] = []
    draw = timm_mixup.cutmix_bbox_and_lam

    def recording(*args, **kwargs):
        box, lam = draw(*args, **kwargs)
        boxes.append(box)
        return box, lam

    monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", recording)
    mixup = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=10)
    np.random.seed(seed)
    mixed, target = mixup(x.clone(), labels)
    np.random.seed(seed)
    if mode == "batch":
        lam, cut = mixup._params_per_batch()  # the same draw again
        return mixed, target, [(lam, boxes[0] if cut else None)]
    lams, cutmix = mixup._params_per_elem(len(x) if mode == "elem" else len(x) // 2)  # the same draws again
    rows = iter(boxes)
    return mixed, target, [(lam, next(rows) if cut and lam != 1 else None) for lam, cut in zip(lams, cutmix)]


@pytest.mark.parametrize("mode", ["elem", "pair", "batch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_pixels_and_targets_equal_timms_mixup(monkeypatch, seed, mode):
    """Given timm's lambda and box per row (``pair``: per pair, both rows alike; ``batch``: one for
    all rows) and its pairs (row i
    with row B-1-i), our mix of the normalised renders and our mixed, smoothed targets equal what
    timm's ``Mixup`` returns."""
    batch, h, w = 8, 32, 24
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    plain = [View(f"k{i}", 0, i) for i in range(batch)]
    x = finish_views(pixels, plain, mean=MEAN, std=STD)
    mixed, target, draws = _timm_mixup(monkeypatch, x, labels, seed, mode)
    if mode == "pair":  # row B-1-i takes row i's draw
        draws = draws + draws[::-1]
    if mode == "batch":  # every row takes the batch's draw
        draws = draws * batch
    views = []
    for i, (lam, box) in enumerate(draws):
        if box is None:
            mixbox, lam = NO_BOX, float(lam)
        else:
            yl, yh, xl, xh = box
            mixbox, lam = (xl / w, yl / h, xh / w, yh / h), 1.0 - (yh - yl) * (xh - xl) / (h * w)
        lam = float(np.float32(lam))  # a view's lam is float32, as timm's
        views.append(dataclasses.replace(plain[i], partner=plain[batch - 1 - i].key, lam=lam, mix_box=mixbox))
    if mode == "elem":
        assert {v.mix_box == NO_BOX for v in views} == {True, False}, "this seed should draw both mixup and cutmix"
    ours = finish_views(pixels, views, mean=MEAN, std=STD)
    torch.testing.assert_close(ours, mixed, rtol=0, atol=1e-6)
    our_targets = torch.stack([mix_target(int(labels[i]), int(labels[batch - 1 - i]), v, 10, smoothing=0.1)
                               for i, v in enumerate(views)])
    torch.testing.assert_close(our_targets, target, rtol=0, atol=1e-7)


def test_mix_draws_match_timms_per_element_draws():
    """The mix draw itself (DeiT's: mixup 0.8, cutmix 1.0, switch 0.5) against timm's ``Mixup``
    in ``elem`` mode at 224 px: the share of cutmix rows (two-proportion z-test, |z| < 3.29) and
    the final, box-corrected lambda of mixup and of cutmix rows (two-sample KS), level 1e-3 each.
    What differs by design is who the partner is (issue 26 item 2), not these draws."""
    n, size = 20000, 224
    spec = ViewSpec(mixup=0.8, cutmix=1.0, mix_window=64)
    ours = shard_views(spec, 0, 0, [f"k{i}" for i in range(n)])
    our_cut = np.array([v.lam for v in ours if v.mix_box != NO_BOX])
    our_mix = np.array([v.lam for v in ours if v.mix_box == NO_BOX])
    mixup = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10)
    np.random.seed(0)
    lams, cutmix = mixup._params_per_elem(n)
    their_cut = np.array([timm_mixup.cutmix_bbox_and_lam((3, size, size), lam)[1] for lam in lams[cutmix]])
    their_mix = lams[~cutmix].astype(np.float64)
    pooled = (len(our_cut) + len(their_cut)) / (2 * n)
    z = (len(our_cut) - len(their_cut)) / n / math.sqrt(2 * pooled * (1 - pooled) / n)
    assert abs(z) < 3.29, f"cutmix rows: {len(our_cut)} (ours) vs {len(their_cut)} (timm) of {n}"
    for name, a, b in (("mixup", their_mix, our_mix), ("cutmix", their_cut, our_cut)):
        d = ks_distance(a, b)
        assert d < ks_critical(len(a), len(b)), f"{name} lambda: KS {d:.4f}"
