"""What this machine makes of views: digests that stand in for library versions in fingerprints.

:func:`render_digest` hashes fixed views drawn and rendered by the installed Python, Pillow,
timm, torch and numpy; :func:`view_spec_fingerprint` (a spec's fingerprint) holds it, so an
upgrade that draws or renders any view differently changes it and one that does not keeps every
stored label valid. :func:`resize_digest` does the same for torch's resize kernels
(docs/design.md §5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache

import numpy as np
from PIL import Image

from maskedkd.rand_augment import rand_augment_config
from maskedkd.rendering import INTERPOLATIONS, render_batch
from maskedkd.resize import check_resize, pixel_array, torch_resized_crop
from maskedkd.view_columns import float32_exact
from maskedkd.views import (
    VIEWS_ALGORITHM,
    View,
    ViewSpec,
    shard_views,
    views_to_columns,
)

_DIGEST_KEYS = tuple(f"digest_{i}" for i in range(8))
_DIGEST_SIZE = (20, 24)  # (height, width): not square, so a swapped axis shows


def _digest_images() -> list[tuple[Image.Image, tuple[float, ...], tuple[float, ...]]]:
    """Two fixed synthetic images (RGB 37x29, L 28x28) with the mean/std they are rendered with.

    Smooth gradients plus a hard-edged pattern, so resampling filters, flips, RandAugment's
    colour and geometry ops all move bytes.
    """
    y, x = np.mgrid[0:29, 0:37].astype(np.float64)
    rgb = np.stack([x * 7.0, y * 8.5, 127.5 + 120.0 * np.sin(x / 3.0) * np.cos(y / 4.0)], axis=-1)
    rgb[(x.astype(int) // 5 + y.astype(int) // 5) % 2 == 0] *= 0.5
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    gray = np.where((x - 14) ** 2 + (y - 12) ** 2 < 64, 230.0, 20.0 + 3.0 * x)
    return [
        (Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        (Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L"), (0.2860,), (0.3530,)),
    ]


def _digest_spec(spec: ViewSpec) -> ViewSpec:
    """``spec`` with each part it enables made likely, so 8 views exercise all of them.

    Flip, erasing and mixing fire about every other view (every pair mixes with ``pair`` /
    ``elem`` mixing: 4 pairs of 8 views), and both mixup and cutmix occur when both are on; a
    part the spec leaves off stays off, so its code can change freely.
    """
    both = spec.mixup > 0 and spec.cutmix > 0
    return dataclasses.replace(
        spec,
        hflip=0.5 if spec.hflip > 0 else 0.0,
        reprob=0.5 if spec.reprob > 0 else 0.0,
        mix_prob=(1.0 if spec.pairs else 0.5) if spec.mix_prob > 0 else 0.0,
        switch_prob=0.5 if both else spec.switch_prob,
        mix_window=len(_DIGEST_KEYS),
        # a batch-mode mix renders as a pair's: only the draw's seed differs (it needs an epoch order)
        mix_mode="pair" if spec.mix_mode == "batch" else spec.mix_mode,
    )


def _digest_views(spec: ViewSpec) -> list[View]:
    """8 views drawn from :func:`_digest_spec`, plus one per RandAugment op the spec can draw.

    Random draws cover a few ops only; the extra views apply each op once at the configured
    magnitude (alternating sign), so a change in any op's rendering shows.
    """
    views = shard_views(_digest_spec(spec), 0, 0, _DIGEST_KEYS)
    if spec.auto_augment:
        cfg = rand_augment_config(spec.auto_augment)
        pad = cfg.num_layers - 1
        for i, op in enumerate(sorted(set(cfg.ops))):
            mag = float32_exact(cfg.magnitude if i % 2 else -cfg.magnitude)
            views.append(View(key=f"digest_op_{op}", epoch=0, seed=op, crop=(0.75, 0.125, 0.25, 0.5),
                              ra_op=(op,) + (-1,) * pad, ra_mag=(mag,) + (0.0,) * pad))
    return views


@lru_cache(maxsize=None)
def render_digest(spec: ViewSpec) -> str:
    """sha256 of views of ``spec`` drawn and rendered by the libraries installed here.

    Takes :func:`_digest_views` (fixed keys, seed 0, view epoch 0), renders them with
    :func:`render_batch` onto two fixed synthetic images (RGB and L) at every interpolation the
    spec can render with, and hashes the drawn view columns and the rendered float32 bytes.
    Cached per spec: 5 to 50 ms (RandAugment on) once per process.
    """
    views = _digest_views(spec)
    h = hashlib.sha256()
    for name, column in views_to_columns(views, spec).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(column).tobytes() if column.dtype != object else "\0".join(column).encode())
    # Pillow's geometric transforms (RandAugment's rotate/shear/translate) refuse lanczos, so no
    # spec with RandAugment can render with it
    interpolations = [i for i in INTERPOLATIONS if not (spec.auto_augment and i == "lanczos")]
    for image, mean, std in _digest_images():
        for interpolation in interpolations:
            out = render_batch([image] * len(views), views, _DIGEST_SIZE, mean=mean, std=std, interpolation=interpolation)
            h.update(out.numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def resize_digest(resize: str, interpolation: str) -> str:
    """sha256 of what this machine's ``resize`` makes of fixed crops of the digest images; "" for ``pil``.

    Pillow's resampling is covered by :func:`render_digest` already; torch's is not, so a torch
    whose uint8 kernels give other bytes changes every fingerprint that holds this digest.
    """
    if resize == "pil":
        return ""
    check_resize(resize, interpolation)
    h = hashlib.sha256(f"{resize}\0{interpolation}".encode())
    for image, _, _ in _digest_images():
        pixels = pixel_array(image, image.mode)
        for box, hw, flip in (((0.0, 0.0, 28.0, 28.0), (20, 24), False),  # shrink, not square
                              ((3.4, 2.6, 17.2, 12.9), (20, 24), True),  # enlarge a fractional box
                              ((-4.0, 5.0, 30.0, 33.0), (16, 16), False)):  # past the edges: zero-padded
            h.update(torch_resized_crop(pixels, box, hw, interpolation, flip).numpy().tobytes())
    return h.hexdigest()


def view_spec_fingerprint(spec: ViewSpec) -> str:
    """sha256 over the spec, the view algorithm version and :func:`render_digest` of the spec.

    The digest stands in for the versions of Python, Pillow, timm, torch and numpy: an
    upgrade that draws or renders any view differently changes it, one that does not keeps
    every stored label valid.
    """
    record = {"spec": spec.to_dict(), "algorithm": VIEWS_ALGORITHM, "render": render_digest(spec)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
