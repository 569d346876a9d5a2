"""Render digests and spec fingerprints: what this machine makes of views, standing in for versions."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import replace

import pytest
from PIL import Image

import maskedkd.rendering as rendering
from maskedkd.digests import _digest_views, render_digest, view_spec_fingerprint
from maskedkd.rand_augment import RA_OPS
from maskedkd.views import ViewSpec
from tests.maskedkd.helpers import FULL


def test_spec_fingerprint_follows_the_spec():
    assert view_spec_fingerprint(FULL) == view_spec_fingerprint(ViewSpec.from_dict(FULL.to_dict()))
    assert view_spec_fingerprint(replace(FULL, reprob=0.3)) != view_spec_fingerprint(FULL)


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
    before = {spec: view_spec_fingerprint(spec) for spec in (FULL, ViewSpec())}
    render_digest.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "99.0")
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    assert {spec: view_spec_fingerprint(spec) for spec in before} == before


def test_an_upgrade_that_renders_differently_changes_the_fingerprint(monkeypatch, fresh_digests):
    before, plain = view_spec_fingerprint(FULL), view_spec_fingerprint(ViewSpec())
    # as if Pillow's bilinear filter changed: every spec renders with it
    render_digest.cache_clear()
    monkeypatch.setitem(rendering.INTERPOLATIONS, "bilinear", Image.Resampling.BICUBIC)
    assert view_spec_fingerprint(FULL) != before
    # as if one RandAugment op changed, one that no random view of the digest draws (only its own view)
    assert RA_OPS.index("Invert") not in {op for v in _digest_views(FULL)[:8] for op in v.ra_op}
    render_digest.cache_clear()
    monkeypatch.undo()
    assert view_spec_fingerprint(FULL) == before
    render_digest.cache_clear()
    original = rendering.apply_rand_augment
    monkeypatch.setattr(rendering, "apply_rand_augment",
                        lambda img, op, *a: original(img, op, *a).point(lambda x: x // 2) if RA_OPS[op] == "Invert" else original(img, op, *a))
    assert view_spec_fingerprint(FULL) != before
    assert view_spec_fingerprint(ViewSpec()) == plain  # a spec without RandAugment: unaffected
