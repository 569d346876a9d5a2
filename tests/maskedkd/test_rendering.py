"""Rendering views: identity, flip and shift, batches equal to single renders, bytes equal across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from maskedkd.rendering import render, render_batch
from maskedkd.views import View, shard_views
from tests.maskedkd.helpers import FULL, KEYS, MEAN, STD, image


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


_RENDER_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from PIL import Image
    from maskedkd.rendering import render_batch
    from maskedkd.views import ViewSpec, shard_views
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
