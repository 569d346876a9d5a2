"""Mixing applied to labels: timm's mixup_target with label smoothing."""

from __future__ import annotations

import math

import torch

from maskedkd.mixing import mix_target
from maskedkd.views import View


def test_mix_target():
    view = View("a", 0, 0, partner="b", lam=0.75)
    target = mix_target(2, 5, view, 10, smoothing=0.1)
    assert target.dtype == torch.float32 and math.isclose(target.sum().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(target[2].item(), 0.75 * 0.91 + 0.25 * 0.01, rel_tol=1e-6)
    assert math.isclose(target[5].item(), 0.25 * 0.91 + 0.75 * 0.01, rel_tol=1e-6)
    plain = mix_target(3, None, View("a", 0, 0), 4)
    assert plain.tolist() == [0, 0, 0, 1]
