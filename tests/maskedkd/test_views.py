"""Deterministic views: purity, timm semantics of the draws, lossless columns, spec validation."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from maskedkd.rand_augment import RA_OPS
from maskedkd.views import (
    View,
    ViewSpec,
    mix_pairs,
    sample_view,
    shard_views,
    view_columns_layout,
    views_from_columns,
    views_to_columns,
)
from tests.maskedkd.helpers import FULL, KEYS, ks_critical, ks_distance


def test_sample_view_is_pure():
    a = shard_views(FULL, 7, 3, KEYS)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)  # global RNGs play no part
    assert shard_views(FULL, 7, 3, KEYS) == a
    assert sample_view(FULL, 7, KEYS[5], 3, position=5, shard_keys=KEYS) == a[5]
    for other in (shard_views(FULL, 7, 4, KEYS), shard_views(FULL, 8, 3, KEYS)):
        assert all(x.crop != y.crop and x.seed != y.seed for x, y in zip(a, other))
    assert sample_view(FULL, 7, "other", 3, position=0, shard_keys=["other"]).crop != a[0].crop


def test_views_follow_the_spec():
    plain = sample_view(ViewSpec(scale=(1, 1), ratio=(1, 1), hflip=0.0), 0, "k", 0)
    assert plain.crop[:2] == (1.0, 0.0) and not plain.flip and plain.ra_op == () and plain.erase == (0, 0, 0, 0)
    views = shard_views(FULL, 0, 0, [f"k{i}" for i in range(2000)])
    areas = np.array([v.crop[0] for v in views])
    ratios = np.exp([v.crop[1] for v in views])
    assert areas.min() >= 0.08 and areas.max() <= 1 and ratios.min() >= 3 / 4 - 1e-6 and ratios.max() <= 4 / 3 + 1e-6
    assert 0.45 < np.mean([v.flip for v in views]) < 0.55
    assert 0.2 < np.mean([v.erase != (0, 0, 0, 0) for v in views]) < 0.3
    assert all(len(v.ra_op) == 2 and all(-1 <= op < len(RA_OPS) for op in v.ra_op) for v in views)
    applied = [op for v in views for op in v.ra_op]
    assert 0.45 < np.mean([op >= 0 for op in applied]) < 0.55  # timm's per-op probability 0.5
    names = {RA_OPS[op] for op in applied if op >= 0}
    assert "SolarizeIncreasing" in names and "Solarize" not in names  # inc1: the increasing set
    mags = np.abs([m for v in views for m in v.ra_mag])
    assert 8.5 < mags.mean() < 9.5 and mags.max() <= 10  # m9, mstd0.5, clipped to 10
    mixed = [v for v in views if v.partner]
    cut = [v for v in mixed if v.mix_box != (0, 0, 0, 0)]
    assert len(mixed) > 0.99 * len(views) and 0.4 < len(cut) / len(mixed) < 0.6
    for v in cut:  # timm's correct_lam: lam is 1 - the pasted area
        x0, y0, x1, y1 = v.mix_box
        assert math.isclose(v.lam, 1 - (x1 - x0) * (y1 - y0), abs_tol=1e-6)


def test_window_partner_is_in_the_same_shard_and_window():
    window = dataclasses.replace(FULL, mix_mode="window")
    for epoch in range(5):
        views = shard_views(window, 1, epoch, KEYS)
        for pos, view in enumerate(views):
            assert view.partner in KEYS and view.partner != view.key
            assert KEYS.index(view.partner) // FULL.mix_window == pos // FULL.mix_window
    lonely = shard_views(window, 1, 0, KEYS[:33])[32]  # alone in block [32, 33)
    assert lonely.partner == "" and lonely.lam == 1.0 and lonely.mix_box == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="position= and shard_keys="):
        sample_view(FULL, 0, "k", 0)
    with pytest.raises(ValueError, match="unique"):
        shard_views(FULL, 0, 0, ["a", "b", "a"])


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_pairs_are_a_matching_drawn_per_view_epoch_and_shard(mode):
    """Pairs are mutual, new every view epoch and shard; ``pair`` shares one draw per pair (timm's
    ``Mixup(mode="pair")``), ``elem`` draws per row; an odd shard leaves one row alone."""
    spec = dataclasses.replace(FULL, mix_mode=mode)
    keys = KEYS[:33]
    views = shard_views(spec, 1, 0, keys, shard="s0")
    partner = mix_pairs(1, 0, "s0", 33)
    assert sorted(partner.tolist()).count(-1) == 1 and all(partner[j] == i for i, j in enumerate(partner) if j >= 0)
    for i, view in enumerate(views):
        assert view.partner == (keys[partner[i]] if partner[i] >= 0 else "")  # mix_prob 1
        if view.partner and mode == "pair":
            other = views[partner[i]]
            assert (other.lam, other.mix_box) == (view.lam, view.mix_box)
    lams = {v.lam for v in views if v.partner}
    assert len(lams) == (16 if mode == "pair" else 32)
    assert sample_view(spec, 1, keys[5], 0, position=5, shard_keys=keys, shard="s0") == views[5]
    assert not np.array_equal(mix_pairs(1, 1, "s0", 33), partner) and not np.array_equal(mix_pairs(1, 0, "s1", 33), partner)
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    assert "mix_mode" not in dataclasses.replace(FULL, mix_mode="window").to_dict()  # old fingerprints hold
    assert ViewSpec(mix_mode="elem").to_dict() == ViewSpec().to_dict()  # no mixing: no mode


def test_columns_round_trip_losslessly():
    views = shard_views(FULL, 3, 1, KEYS)
    assert all(View.from_columns(v.to_columns()) == v for v in views)
    columns = views_to_columns(views)
    layout = view_columns_layout(FULL)
    assert set(columns) == set(layout)
    for name, (dtype, width) in layout.items():
        assert columns[name].dtype == (object if dtype == "str" else np.dtype(dtype)), name
        assert columns[name].shape == ((len(views), width) if width else (len(views),)), name
    assert views_from_columns(columns) == views
    # through Arrow, as the label store keeps them
    import pyarrow as pa

    table = pa.table({n: pa.FixedSizeListArray.from_arrays(c.ravel(), c.shape[1]) if c.ndim == 2 else c
                      for n, c in columns.items()})
    assert views_from_columns(table.to_pydict()) == views
    empty = views_to_columns([], FULL)
    assert empty["view_ra_op"].shape == (0, 2) and views_from_columns(empty) == []


def test_spec_dict_round_trip():
    assert ViewSpec.from_dict(FULL.to_dict()) == FULL
    with pytest.raises(ValueError, match=r"unknown ViewSpec field\(s\) \['flip'\]"):
        ViewSpec.from_dict({"flip": 0.5})


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=(0.5, 0.2)), "scale"), (dict(hflip=1.5), "hflip"), (dict(remode="noise"), "remode"),
    (dict(auto_augment="rand-m9-q3"), "auto_augment"), (dict(auto_augment="augmix-m5"), "RandAugment"),
    (dict(mixup=-1.0), "mixup"), (dict(mix_window=1), "mix_window"),
])
def test_bad_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewSpec(**kwargs)


def test_crop_box_keeps_area_and_pixel_aspect():
    for v in shard_views(ViewSpec(), 0, 0, [f"k{i}" for i in range(300)]):
        x0, y0, x1, y1 = v.crop_box(500, 375)
        assert 0 <= x0 <= x1 <= 1 + 1e-9 and 0 <= y0 <= y1 <= 1 + 1e-9
        assert math.isclose((x1 - x0) * (y1 - y0), v.crop[0], rel_tol=1e-6)
        if x1 - x0 < 1 and y1 - y0 < 1:  # feasible draws keep timm's pixel aspect ratio
            assert math.isclose((x1 - x0) * 500 / ((y1 - y0) * 375), math.exp(v.crop[1]), rel_tol=1e-6)


def _crop_stats(boxes: np.ndarray, width: int, height: int, roomy: bool = False) -> dict[str, np.ndarray]:
    """Area share, log pixel aspect and centre of ``[N, 4]`` normalised crop boxes.

    ``roomy``: the centres of crops at most 0.9 of the image's side only. timm's offsets are whole
    pixels, so a crop within a few pixels of the side has one or two positions: lumps a KS test
    sees at these sample sizes, not a difference of the draw.
    """
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    if roomy:
        return {"centre_x": cx[w < 0.9], "centre_y": cy[h < 0.9]}
    return {"area": w * h, "log_aspect": np.log(w * width / (h * height))}


@pytest.mark.parametrize("width,height", [(500, 375), (375, 500)])
def test_crops_match_timms_random_resized_crop(width, height):
    """timm as the oracle (issue 26 item 4): the random-resized-crop (scale 0.08-1, ratio 3/4-4/3)
    against ``RandomResizedCropAndInterpolation.get_params`` on the same image size.

    timm redraws an infeasible draw (a crop wider or taller than the image) up to 10 times; a view
    is a pure function of its key and clamps it to the image edge keeping its area instead
    (module docstring of maskedkd/views.py). So: our feasible draws match timm's crops in area
    share, log aspect and centre (two-sample KS, level 1e-3 each, fixed seeds), and the
    difference is pinned where it shows: at 4:3 about 26% of our draws are clamped, so timm's
    areas lean small (it rejects big areas at extreme aspects: mean area share 0.43) where ours
    stay uniform over the scale range (0.54).
    """
    n = 20000
    img = Image.new("RGB", (width, height))
    random.seed(0)
    params = [RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]
    i, j, h, w = np.array(params, dtype=np.float64).T
    theirs = np.stack([j / width, i / height, (j + w) / width, (i + h) / height], 1)
    views = [sample_view(ViewSpec(), 0, f"k{k}", 0) for k in range(n)]
    ours = np.array([v.crop_box(width, height) for v in views])
    drawn_aspect = np.array([v.crop[1] for v in views])
    feasible = np.abs(_crop_stats(ours, width, height)["log_aspect"] - drawn_aspect) < 1e-6
    for roomy in (False, True):
        a, b = _crop_stats(theirs, width, height, roomy), _crop_stats(ours[feasible], width, height, roomy)
        for name in a:
            d = ks_distance(a[name], b[name])
            assert d < ks_critical(len(a[name]), len(b[name])), f"{name}: KS {d:.4f}"
    # by design: about a quarter of our draws are clamped, and timm's mean area is below ours
    assert 0.2 < 1 - feasible.mean() < 0.32
    theirs_area, ours_area = _crop_stats(theirs, width, height)["area"], _crop_stats(ours, width, height)["area"]
    assert ours_area.mean() - theirs_area.mean() > 0.05
    assert ks_distance(ours_area, np.random.default_rng(0).uniform(0.08, 1.0, n)) < ks_critical(n, n)


def test_repeats_are_view_epochs_of_their_own_sharing_the_pairs_of_their_view_epoch():
    from maskedkd.views import repeat_view_epochs

    spec = ViewSpec(mixup=0.8, cutmix=1.0, repeats=3)
    assert "repeats" not in ViewSpec(mixup=0.8).to_dict(), "repeats 1 keeps the fingerprints of specs before it"
    assert ViewSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["repeats"] == 3
    assert repeat_view_epochs(2, 3) == [6, 7, 8] and repeat_view_epochs(2, 1) == [2]
    keys = [f"k{i:03d}" for i in range(40)]
    views = [shard_views(spec, 0, e, keys, shard="s") for e in repeat_view_epochs(2, 3)]
    partners = [[v.partner for v in vs] for vs in views]
    assert all(partners[0]) and partners[0] == partners[1] == partners[2], "one pairing for the 3 repeats"
    assert [v.lam for v in views[0]] != [v.lam for v in views[1]], "lambda and box drawn per repeat"
    assert len({(v.seed, v.crop) for vs in views for v in vs}) == 3 * len(keys), "each repeat its own draws"
    # without repeats, view epochs 6, 7 and 8 pair anew every epoch
    plain = ViewSpec(mixup=0.8, cutmix=1.0)
    assert shard_views(plain, 0, 6, keys, shard="s") != shard_views(plain, 0, 7, keys, shard="s")
    with pytest.raises(ValueError, match="repeats"):
        ViewSpec(repeats=0)


def test_batch_mode_draws_one_mix_per_global_batch():
    """timm's Mixup(mode="batch"), DeiT's: every pair of a global batch mixes with one lambda and box;
    the batch index comes from the trainer's order (here given), -1 (not trained) leaves a row unmixed."""
    spec = ViewSpec(mixup=0.8, cutmix=1.0, mix_mode="batch")
    keys = [f"k{i:03d}" for i in range(64)]
    pairs = mix_pairs(0, 5, "s", len(keys))
    batches = np.full(len(keys), -1)
    for n, i in enumerate(i for i in range(len(keys)) if pairs[i] > i):
        batches[i] = batches[pairs[i]] = n % 4 if n < 28 else -1  # 4 batches of 7 pairs, the rest not trained
    views = shard_views(spec, 0, 5, keys, shard="s", batches=batches)
    by_batch: dict[int, set] = {}
    for v, b in zip(views, batches):
        if b < 0:
            assert not v.partner and v.lam == 1.0
        else:
            by_batch.setdefault(int(b), set()).add((v.lam, v.mix_box))
    assert sorted(by_batch) == [0, 1, 2, 3] and all(len(d) == 1 for d in by_batch.values())
    assert len({next(iter(d)) for d in by_batch.values()}) == 4, "each batch its own draw"
    assert [v.partner for v, b in zip(views, batches) if b >= 0] == [keys[pairs[i]] for i in range(64) if batches[i] >= 0]
    # the same batch index in another shard draws the same mix: the draw is the batch's
    other = shard_views(spec, 0, 5, keys, shard="t", batches=np.zeros(64, dtype=int))
    assert {(v.lam, v.mix_box) for v in other} == by_batch[0]
    with pytest.raises(ValueError, match="batches="):
        shard_views(spec, 0, 5, keys, shard="s")
