"""RandAugment as views hold it: timm's signed levels, and every op rendering at every magnitude."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from timm.data import auto_augment as aa

from maskedkd.rand_augment import RA_OPS, apply_rand_augment, draw_rand_augment, rand_augment_config, signed_level
from maskedkd.rendering import render
from maskedkd.views import View
from tests.maskedkd.helpers import MEAN, chi2_critical, chi2_homogeneity, image, ks_critical, ks_distance


@pytest.mark.parametrize("name", [n for n in RA_OPS if signed_level(n, 5.0, 1.0) is not None])
def test_signed_levels_are_timms(name):
    from timm.data.auto_augment import LEVEL_TO_ARG

    random.seed(0)
    timm_values = {LEVEL_TO_ARG[name](7.3, {})[0] for _ in range(64)}  # timm draws the sign itself
    ours = {signed_level(name, 7.3, 1.0)[0], signed_level(name, 7.3, -1.0)[0]}
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


def test_draws_match_timms_rand_augment_transform(monkeypatch):
    """timm as the oracle (issue 26 item 4): ``rand-m9-mstd0.5-inc1`` drawn per view and applied
    gives the ops and op arguments timm's ``rand_augment_transform`` gives, in distribution.

    Each op's function is swapped for a recorder in timm's table, so both sides record which op
    ran with which arguments (magnitude and sign as the op sees them) without rendering.
    Tolerances, each at level 1e-3 for fixed seeds: a chi-square of the op frequencies (skipped
    layers a category of their own); per op, a two-sample KS of its first argument.
    """
    calls, layers = 12000, 2
    blank = image(0, 4, 4)
    seen: list[tuple[str, tuple]] = []

    def recorder(name):
        def op(img, *args, **kwargs):
            seen.append((name, args))
            return blank
        return op

    for name in list(aa.NAME_TO_OP):
        monkeypatch.setitem(aa.NAME_TO_OP, name, recorder(name))
    config = "rand-m9-mstd0.5-inc1"
    timm_ra = aa.rand_augment_transform(config, {"translate_const": 100, "img_mean": (124, 116, 104)})
    random.seed(0)
    np.random.seed(0)
    for _ in range(calls):
        timm_ra(blank)
    theirs, seen[:] = list(seen), []

    cfg, rng = rand_augment_config(config), random.Random(1)
    for _ in range(calls):
        for op, mag in zip(*draw_rand_augment(cfg, rng)):
            if op >= 0 and apply_rand_augment(blank, op, mag, (124, 116, 104), 3, (224, 224)) is not blank:
                seen.append((RA_OPS[op], (0,)))  # Posterize at 0 bits: black without calling timm's op
    ours = list(seen)

    names = sorted({RA_OPS[i] for i in cfg.ops})
    assert len(names) == 15 and {n for n, _ in theirs} == {n for n, _ in ours} == set(names)
    counts = [[sum(n == name for n, _ in side) for name in names] + [calls * layers - len(side)]
              for side in (theirs, ours)]
    stat, dof = chi2_homogeneity(*counts)
    assert stat < chi2_critical(dof), f"op frequencies differ: chi2 {stat:.1f} on {dof} dof; {counts}"
    for name in names:
        a = [args[0] for n, args in theirs if n == name and args]
        b = [args[0] for n, args in ours if n == name and args]
        if a or b:
            d = ks_distance(np.array(a), np.array(b))
            assert d < ks_critical(len(a), len(b)), f"{name}: arguments differ (KS {d:.3f}, {len(a)} vs {len(b)})"
