"""RandAugment as views hold it: timm's signed levels, and every op rendering at every magnitude."""

from __future__ import annotations

import random

import pytest
import torch

from maskedkd.rand_augment import RA_OPS, signed_level
from maskedkd.rendering import render
from maskedkd.views import View
from tests.maskedkd.helpers import MEAN, image


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
