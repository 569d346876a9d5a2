"""``mkd-pipeline bench precompute --feed``: labels/s of the precompute task's data path alone.

Everything a precompute task does for a label but the teacher's (and student's) forward: read
and hash the shard, decode the JPEGs, render the student's and the teacher's views, collate,
normalise. On a temporary shard of ImageNet-like JPEGs (``bench data --imagenet-like``) at
224 px, for a segment of ``epochs`` view epochs:

- ``before``: today's path until issue 17, kept here as :func:`before_path`: each view epoch is
  its own task that reads and decodes the whole shard, then renders every view twice (student,
  then teacher: ImageNet-sized shards overflow the task's render cache) to float32, one thread;
- ``after``: :mod:`pipeline.precompute.feed` as the task runs it: the shard decoded once on a
  pool of ``w`` threads, each view rendered once to uint8 ahead of the consumer, normalised per
  model (on the CPU here: the device is the CPU);
- ``after, host part``: the same without the normalisation, i.e. what a GPU worker's CPUs do
  (there it runs on the GPU);
- ``after-torch``, ``after-torch-host``: the same with ``data.resize: torch`` (the crops resized
  by torch's uint8 antialiased kernels from arrays converted once per segment, not by Pillow:
  other pixels, a separate view fingerprint).

Per core = labels per CPU second of the whole process (all its threads); the machine is shared,
so CPU seconds are the fair measure, wall seconds are shown too.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskedkd.rendering import render_batch
from maskedkd.views import ViewSpec, shard_views
from pipeline._fingerprint import sha256_file
from pipeline.bench.fixtures import IMAGENET_MEAN, IMAGENET_STD, make_imagenet_like_shard
from pipeline.bench.timing import machine_line
from pipeline.data.shards import read_shard
from pipeline.errors import ConfigError
from pipeline.labels.contract import RenderSpec
from pipeline.precompute.feed import EpochPixels, decode_shard, render_pool, with_pixel_arrays

# the paper's teacher throughput at keep 50% (images/s on one GPU), which the data path must feed
TEACHER_RATES = {"DeiT-B": 1536.0, "DeiT-S": 3702.0}


def check_feed_options(resizes: tuple[str, ...], auto_augment: str | None) -> None:
    """Raise ConfigError naming the option when ``--feed-resize`` or ``--feed-auto-augment`` is not usable."""
    bad = sorted(set(resizes) - {"pil", "torch"})
    if bad or not resizes:
        raise ConfigError(f"--feed-resize: {','.join(bad) or '(empty)'} is not pil or torch")
    if auto_augment:
        try:
            ViewSpec(auto_augment=auto_augment)
        except ValueError as e:
            raise ConfigError(f"--feed-auto-augment: {e}") from None


def _setup(size: int, resize: str = "pil", auto_augment: str | None = None):
    r = RenderSpec((size, size), IMAGENET_MEAN, IMAGENET_STD, "bicubic", resize)
    return ViewSpec(auto_augment=auto_augment), r, r  # DeiT's student and teacher see the same 224 px views


def before_path(shard: Path, sha256: str, epochs: range, batch: int, size: int = 224,
                auto_augment: str | None = None) -> int:
    """Today's per-view-epoch task (before issue 17), data path only: rows labelled."""
    spec, student, teacher = _setup(size, auto_augment=auto_augment)
    rows = 0
    for epoch in epochs:  # one task per (shard, view epoch): the shard decoded every time
        samples = list(read_shard(shard, report=[], sha256=sha256))
        views = shard_views(spec, 0, epoch, [s.key for s in samples])
        partners = {s.key: (s.image, v) for s, v in zip(samples, views)}.__getitem__
        for start in range(0, len(samples), batch):
            idx = range(start, min(len(samples), start + batch))
            for r in (student, teacher):  # rendered twice: the render cache is over its limit
                render_batch([samples[i].image for i in idx], [views[i] for i in idx], r.size, mean=r.mean,
                             std=r.std, interpolation=r.interpolation, partners=partners)
            rows += len(idx)
    return rows


def after_path(shard: Path, sha256: str, epochs: range, batch: int, workers: int, *, normalise: bool = True,
               size: int = 224, resize: str = "pil", auto_augment: str | None = None) -> int:
    """The task's data path now (:mod:`pipeline.precompute.feed`): rows labelled."""
    spec, student, teacher = _setup(size, resize, auto_augment)
    rows = 0
    pool = render_pool(workers)
    try:
        samples = decode_shard(str(shard), pool=pool, report=[], sha256=sha256)
        samples = with_pixel_arrays(samples, [teacher, student], pool)
        images = [s.image for s in samples]
        for epoch in epochs:
            views = shard_views(spec, 0, epoch, [s.key for s in samples])
            pixels = EpochPixels(images, views, [teacher, student], pool, ahead=2 * batch)
            for start in range(0, len(samples), batch):
                idx = np.arange(start, min(len(samples), start + batch))
                if normalise:
                    for r in (student, teacher):
                        pixels.batch(idx, r, "cpu")
                else:  # uint8 rows ready in the (pinned) buffer: the device would take them from here
                    pixels.wait(int(idx[-1]) + 1)
                rows += len(idx)
    finally:
        pool.shutdown(wait=True)
    return rows


def _measure(fn: Callable[[], int]) -> tuple[int, float, float]:
    """(rows, wall seconds, CPU seconds of the whole process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    rows = fn()
    return rows, time.perf_counter() - t0, time.process_time() - c0


def run_feed_bench(images: int = 256, epochs: int = 2, batch: int = 64, workers: tuple[int, ...] = (1, 2),
                   repeats: int = 3, resizes: tuple[str, ...] = ("pil", "torch"),
                   auto_augment: str | None = None) -> dict[str, Any]:
    """Labels/s (wall and per CPU second) of ``before`` and ``after`` (per resizer and worker count),
    interleaved rounds."""
    torch.set_num_threads(1)  # the render threads are the parallelism measured; torch ops stay single-threaded
    with tempfile.TemporaryDirectory(prefix="mkd-bench-feed-") as tmp:
        shard = make_imagenet_like_shard(Path(tmp) / "bench-000000.tar", images)
        sha = sha256_file(shard)
        views = range(epochs)
        aa = auto_augment
        cases: dict[str, Callable[[], int]] = {"before": lambda: before_path(shard, sha, views, batch, auto_augment=aa)}
        for resize in resizes:
            name = "after" if resize == "pil" else f"after-{resize}"
            for w in workers:
                cases[f"{name}-w{w}"] = functools.partial(after_path, shard, sha, views, batch, w, resize=resize,
                                                          auto_augment=aa)
                cases[f"{name}-host-w{w}"] = functools.partial(after_path, shard, sha, views, batch, w,
                                                               normalise=False, resize=resize, auto_augment=aa)
            after_path(shard, sha, range(1), batch, 1, resize=resize, auto_augment=aa)  # warm-up: first calls
        runs: dict[str, list] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                runs[name].append(_measure(fn))
    out: dict[str, Any] = {"images": images, "epochs": epochs, "batch": batch, "repeats": repeats, "size": 224,
                           "auto_augment": auto_augment,
                           "machine": machine_line(), "cases": {}}
    for name, rs in runs.items():
        rows = rs[0][0]
        out["cases"][name] = {"rows": rows, "labels_per_s": rows / statistics.median(r[1] for r in rs),
                              "labels_per_cpu_s": rows / statistics.median(r[2] for r in rs),
                              "cores_used": statistics.median(r[2] / r[1] for r in rs)}
    base = out["cases"]["before"]["labels_per_cpu_s"]
    for c in out["cases"].values():
        c["per_core_vs_before"] = c["labels_per_cpu_s"] / base
        c["cores_per_gpu"] = {model: rate / c["labels_per_cpu_s"] for model, rate in TEACHER_RATES.items()}
    return out


def feed_table(r: dict) -> str:
    """Markdown table of :func:`run_feed_bench`'s result."""
    views = f"random-resized crop + flip + RandAugment {r['auto_augment']}" if r.get("auto_augment") else \
        "random-resized crop + flip"
    lines = [(f"{r['images']} ImageNet-like JPEGs (500x375) at {r['size']} px, {views}, {r['epochs']}-view-epoch segment, "
              f"batch {r['batch']}, median of {r['repeats']} interleaved rounds; {r['machine']}"), "",
             ("| path | labels/s (wall) | labels per CPU s (per core) | x before, per core | cores used "
              "| cores per GPU, DeiT-B keep 50% (1,536/s) | DeiT-S (3,702/s) |"),
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in r["cases"].items():
        g = c["cores_per_gpu"]
        lines.append(f"| {name} | {c['labels_per_s']:.1f} | {c['labels_per_cpu_s']:.1f} | {c['per_core_vs_before']:.2f}x "
                     f"| {c['cores_used']:.2f} | {g['DeiT-B']:.1f} | {g['DeiT-S']:.1f} |")
    return "\n".join(lines)
