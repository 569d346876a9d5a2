"""Deterministic views: purity, timm semantics, lossless columns, byte-identical rendering."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import random
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import maskedkd.views as views_module
from maskedkd.views import (
    RA_OPS,
    View,
    ViewSpec,
    _digest_views,
    _signed_level,
    mix_target,
    render,
    render_batch,
    render_digest,
    sample_view,
    shard_views,
    view_columns_layout,
    views_from_columns,
    views_to_columns,
)

FULL = ViewSpec(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, mix_window=8)
KEYS = [f"train_{i:06d}" for i in range(37)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


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


def test_partner_is_in_the_same_shard_and_window():
    for epoch in range(5):
        views = shard_views(FULL, 1, epoch, KEYS)
        for pos, view in enumerate(views):
            assert view.partner in KEYS and view.partner != view.key
            assert KEYS.index(view.partner) // FULL.mix_window == pos // FULL.mix_window
    lonely = shard_views(FULL, 1, 0, KEYS[:33])[32]  # alone in block [32, 33)
    assert lonely.partner == "" and lonely.lam == 1.0 and lonely.mix_box == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="position= and shard_keys="):
        sample_view(FULL, 0, "k", 0)
    with pytest.raises(ValueError, match="unique"):
        shard_views(FULL, 0, 0, ["a", "b", "a"])


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


def test_spec_dict_and_fingerprint():
    assert ViewSpec.from_dict(FULL.to_dict()) == FULL
    assert FULL.fingerprint() == ViewSpec.from_dict(FULL.to_dict()).fingerprint()
    assert replace(FULL, reprob=0.3).fingerprint() != FULL.fingerprint()
    with pytest.raises(ValueError, match=r"unknown ViewSpec field\(s\) \['flip'\]"):
        ViewSpec.from_dict({"flip": 0.5})


@pytest.fixture
def fresh_digests():
    """Render digests computed anew inside the test and again after it (they are cached per process)."""
    render_digest.cache_clear()
    yield
    render_digest.cache_clear()


def test_render_digest_views_cover_what_the_spec_enables():
    views = _digest_views(FULL)
    assert any(v.flip for v in views) and not all(v.flip for v in views)
    assert any(v.erase != (0.0,) * 4 for v in views) and any(v.shift == (0, 0) for v in views)
    assert any(v.partner and v.mix_box == (0.0,) * 4 for v in views)  # mixup
    assert any(v.mix_box != (0.0,) * 4 for v in views)  # cutmix
    ops = {op for v in views for op in v.ra_op if op >= 0}
    assert {RA_OPS.index(n) for n in ("Rotate", "ShearX", "SolarizeIncreasing", "Equalize")} <= ops
    plain = _digest_views(ViewSpec(hflip=0.0, shift=3))
    assert not any(v.flip or v.partner or v.ra_op or v.erase != (0.0,) * 4 for v in plain)
    assert any(v.shift != (0, 0) for v in plain)


def test_an_upgrade_that_renders_the_same_keeps_the_fingerprint(monkeypatch, fresh_digests):
    before = {spec: spec.fingerprint() for spec in (FULL, ViewSpec())}
    render_digest.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "99.0")
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    assert {spec: spec.fingerprint() for spec in before} == before


def test_an_upgrade_that_renders_differently_changes_the_fingerprint(monkeypatch, fresh_digests):
    before, plain = FULL.fingerprint(), ViewSpec().fingerprint()
    # as if Pillow's bilinear filter changed: every spec renders with it
    render_digest.cache_clear()
    monkeypatch.setitem(views_module._INTERPOLATIONS, "bilinear", Image.Resampling.BICUBIC)
    assert FULL.fingerprint() != before
    # as if one RandAugment op changed, one that no random view of the digest draws (only its own view)
    assert RA_OPS.index("Invert") not in {op for v in _digest_views(FULL)[:8] for op in v.ra_op}
    render_digest.cache_clear()
    monkeypatch.undo()
    assert FULL.fingerprint() == before
    render_digest.cache_clear()
    original = views_module._apply_rand_augment
    monkeypatch.setattr(views_module, "_apply_rand_augment",
                        lambda img, op, *a: original(img, op, *a).point(lambda x: x // 2) if RA_OPS[op] == "Invert" else original(img, op, *a))
    assert FULL.fingerprint() != before
    assert ViewSpec().fingerprint() == plain  # a spec without RandAugment: unaffected


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=(0.5, 0.2)), "scale"), (dict(hflip=1.5), "hflip"), (dict(remode="noise"), "remode"),
    (dict(auto_augment="rand-m9-q3"), "auto_augment"), (dict(auto_augment="augmix-m5"), "RandAugment"),
    (dict(mixup=-1.0), "mixup"), (dict(mix_window=1), "mix_window"),
])
def test_bad_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewSpec(**kwargs)


@pytest.mark.parametrize("name", [n for n in RA_OPS if _signed_level(n, 5.0, 1.0) is not None])
def test_signed_levels_are_timms(name):
    from timm.data.auto_augment import LEVEL_TO_ARG

    random.seed(0)
    timm_values = {LEVEL_TO_ARG[name](7.3, {})[0] for _ in range(64)}  # timm draws the sign itself
    ours = {_signed_level(name, 7.3, 1.0)[0], _signed_level(name, 7.3, -1.0)[0]}
    assert {round(v, 12) for v in timm_values} == {round(v, 12) for v in ours}


@pytest.mark.parametrize("mode, mean", [("L", (0.5,)), ("RGB", MEAN)])
def test_every_rand_augment_op_renders_at_every_magnitude(mode, mean):
    img = image(4, 28, 28).convert(mode)
    std = (0.5,) * len(mean)
    plain = render(img, View("k", 0, 1), 28, mean=mean, std=std)
    changed = 0
    for op in range(len(RA_OPS)):
        for mag in (0.0, 4.5, -4.5, 10.0, -10.0):
            out = render(img, View("k", 0, 1, ra_op=(op,), ra_mag=(mag,)), 28, mean=mean, std=std)
            assert out.shape == (len(mean), 28, 28) and torch.isfinite(out).all()
            changed += not torch.equal(out, plain)
    assert changed > 3 * len(RA_OPS)
    black = render(img, View("k", 0, 1, ra_op=(RA_OPS.index("PosterizeIncreasing"),), ra_mag=(10.0,)), 28, mean=mean, std=std)
    expected = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / 0.5
    assert torch.allclose(black, expected.expand_as(black))  # 0 bits kept: black, as timm meant


def test_render_identity_flip_and_shift():
    gray = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    ident = View("k", 0, 1, crop=(1.0, 0.0, 0.5, 0.5))
    t = render(gray, ident, 28, mean=(0.5,), std=(0.5,), interpolation="bicubic")
    expected = (torch.from_numpy(np.array(gray)).float() / 255 - 0.5) / 0.5
    assert t.shape == (1, 28, 28) and torch.allclose(t[0], expected, atol=1e-6)
    flipped = render(gray, replace(ident, flip=True), 28, mean=(0.5,), std=(0.5,))
    assert torch.equal(flipped, t.flip(-1))
    shifted = render(gray, replace(ident, shift=(3, -2)), 28, mean=(0.5,), std=(0.5,))
    assert torch.allclose(shifted[0, 2:, :25], t[0, :26, 3:], atol=1e-6)
    assert torch.all(shifted[0, :, 25:] == -1.0) and torch.all(shifted[0, :2] == -1.0)  # zero padding
    rgb = render(gray, ident, (20, 30), mean=MEAN, std=STD)  # L converted to RGB, (height, width)
    assert rgb.shape == (3, 20, 30) and rgb.dtype == torch.float32


def test_crop_box_keeps_area_and_pixel_aspect():
    for v in shard_views(ViewSpec(), 0, 0, [f"k{i}" for i in range(300)]):
        x0, y0, x1, y1 = v.crop_box(500, 375)
        assert 0 <= x0 <= x1 <= 1 + 1e-9 and 0 <= y0 <= y1 <= 1 + 1e-9
        assert math.isclose((x1 - x0) * (y1 - y0), v.crop[0], rel_tol=1e-6)
        if x1 - x0 < 1 and y1 - y0 < 1:  # feasible draws keep timm's pixel aspect ratio
            assert math.isclose((x1 - x0) * 500 / ((y1 - y0) * 375), math.exp(v.crop[1]), rel_tol=1e-6)


def test_render_batch_matches_render_and_mixes():
    views = shard_views(FULL, 5, 2, KEYS[:8])
    images = [image(i) for i in range(8)]
    batch = render_batch(images, views, 32, mean=MEAN, std=STD)
    by_key = {v.key: (img, v) for img, v in zip(images, views)}
    for i, view in enumerate(views):
        p_img, p_view = by_key[view.partner]
        single = render(images[i], view, 32, mean=MEAN, std=STD, partner=p_img, partner_view=p_view)
        assert torch.equal(batch[i], single)
        own = render(images[i], view.unmixed(), 32, mean=MEAN, std=STD)
        other = render(p_img, p_view.unmixed(), 32, mean=MEAN, std=STD)  # the partner's own view, unmixed
        if view.mix_box == (0, 0, 0, 0):
            assert torch.allclose(single, own * view.lam + other * (1 - view.lam), atol=1e-5)
        else:
            x0, y0, x1, y1 = (round(c * 32) for c in view.mix_box)
            assert torch.equal(single[:, y0:y1, x0:x1], other[:, y0:y1, x0:x1])
    with pytest.raises(ValueError, match="partner"):
        render(images[0], views[0], 32, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="not in the batch"):
        render_batch(images[:1], views[:1], 32, mean=MEAN, std=STD)


def test_mix_target():
    view = View("a", 0, 0, partner="b", lam=0.75)
    target = mix_target(2, 5, view, 10, smoothing=0.1)
    assert target.dtype == torch.float32 and math.isclose(target.sum().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(target[2].item(), 0.75 * 0.91 + 0.25 * 0.01, rel_tol=1e-6)
    assert math.isclose(target[5].item(), 0.25 * 0.91 + 0.75 * 0.01, rel_tol=1e-6)
    plain = mix_target(3, None, View("a", 0, 0), 4)
    assert plain.tolist() == [0, 0, 0, 1]


_RENDER_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from PIL import Image
    from maskedkd.views import ViewSpec, render_batch, shard_views
    spec = ViewSpec(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5, mixup=0.8, cutmix=1.0, mix_window=8)
    keys = [f"train_{i:06d}" for i in range(16)]
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)) for i in range(16)]
    out = []
    for epoch in range(3):
        views = shard_views(spec, 11, epoch, keys)
        for size in (24, 40):
            batch = render_batch(images, views, size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
            out.append(hashlib.sha256(batch.numpy().tobytes()).hexdigest())
    print(" ".join(out))
""")


def test_render_bytes_are_identical_across_processes():
    other = subprocess.run([sys.executable, "-c", _RENDER_SCRIPT], capture_output=True, text=True, check=True).stdout
    here: dict = {}
    exec(compile(_RENDER_SCRIPT.replace("print(", "here['out'] = ("), "<render>", "exec"), {"here": here})
    assert other == here["out"] + "\n"
    assert len(set(other.split())) == 6
