"""``mkd-pipeline bench train --input``: the trainer's input pipeline per rank at world size 1 and 2.

ImageNet-like JPEG shards (``bench data``'s, 500x375, ~110 KB) with stored top-K labels of a tiny
teacher; each rank is a process in a gloo process group and streams one epoch of its batches
exactly as the trainer does (:meth:`pipeline.LabeledViews.plans` + ``render``: read and hash
the shard, check the headers and the partition, decode its own rows, crop, flip, render at
224 px), with one torch thread and no model. Reported per rank: rows rendered per second (wall,
and per CPU second of the rank's process: the fair measure on a loaded machine) and images
decoded. ``eager`` decodes every image of every shard a rank reads, as the trainer did
before decoding was lazy (every rank decoded every shard). ``torch`` is the lazy path with
``data.resize: torch`` (the crops resized by torch's uint8 kernels, not Pillow); it streams the
same stored labels (their content does not change the input pipeline's work).

:func:`input_counts` counts, rather than times, what each rank does in one epoch with DeiT's views
(RandAugment, erasing, mixup 0.8 / cutmix 1.0) at 224 px, ranks simulated in one process:
``renders_per_row`` (views rendered per row trained: a mixing partner rendered again counts) and
``shard_bytes_read_per_rank`` (bytes of shard files the rank reads, as a fraction of the
dataset's), for DeiT's views in lanes (``mix_mode`` ``batch``, 3 repeats: an epoch reads 1/3 of the
shards, each row trained 3 times), ``pair`` mixing in lanes without repeats, and ``window`` shard
after shard (before).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import maskedkd.rendering as rendering
from maskedkd.views import ViewSpec
from pipeline.bench.fixtures import IMAGENET_MEAN, IMAGENET_STD, make_imagenet_like_shard, write_teacher_labels
from pipeline.labels.contract import RenderSpec, ShardRef
from pipeline.models import create_model
from pipeline.train.labeled_views import LabeledViews

VARIANTS = ((True, "pil"), (False, "pil"), (False, "torch"))  # (eager decoding, data.resize)
TEACHER = {"img_size": 224, "patch_size": 32, "in_chans": 3, "num_classes": 1000, "embed_dim": 32, "depth": 1,
           "num_heads": 2}


def _rank(rank: int, world: int, init: str, job: dict, out) -> None:  # noqa: ANN001 - a multiprocessing queue
    """One rank: join the group, stream the epoch, report (decoded, rows, seconds) to ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ds = LabeledViews(job["shards"], spec=job["spec"], seed=0, render=job["render"], epoch=0,
                          batch_size=job["batch"], labels=job["labels"], view_pool=1, num_classes=1000)
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        shards: dict[str, Any] = {}
        rows = 0
        for plan in ds.plans():
            for shard, r in plan:
                if job["eager"] and shard.ref.name not in shards:
                    shard.images[:]  # the old trainer: every image of the shard, whoever's rows they are
                shards[shard.ref.name] = shard
                rows += len(r)
            ds.render(plan)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        dist.barrier()
        out.put({"rank": rank, "world": world, "eager": job["eager"], "resize": job["render"].resize, "rows": rows,
                 "seconds": seconds, "cpu": cpu,
                 "decoded": sum(s.images.decoded for s in shards.values())})
    finally:
        dist.destroy_process_group()


def _world(world: int, job: dict, tmp: Path) -> list[dict]:
    ctx = mp.get_context("spawn")  # a clean interpreter per rank, as torchrun gives
    out = ctx.Queue()
    init = "file://" + str(tmp / f"init-{world}-{int(job['eager'])}-{job['render'].resize}-{time.monotonic_ns()}")
    procs = [ctx.Process(target=_rank, args=(r, world, init, job, out)) for r in range(world)]
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"bench rank process exited with {p.exitcode}")
    return sorted(results, key=lambda r: r["rank"])


DEIT_VIEWS = ViewSpec(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0)
# (views.mix_mode, train.lanes, train.interleave, views.repeats): DeiT's (batch mixing, 3 repeats), pair
# mixing in lanes without repeats, and the first order (window partners, shard after shard)
COUNT_ORDERS = (("batch", 8, 2, 3), ("pair", 8, 2, 1), ("window", 1, 1, 1))


def _count_rank(ds: LabeledViews) -> dict[str, Any]:
    """One epoch of one rank: rows trained, views rendered, shard bytes read."""
    renders, read = [0], [0]
    render_pixels, load = rendering.render_pixels, ds.load

    def counting_render(*args: Any, **kwargs: Any) -> None:
        renders[0] += 1
        render_pixels(*args, **kwargs)

    def counting_load(ref: ShardRef):  # noqa: ANN202 - the shard's LoadedShards
        read[0] += os.path.getsize(ref.path)
        return load(ref)

    rendering.render_pixels, ds.load = counting_render, counting_load  # type: ignore[method-assign]
    try:
        rows = 0
        for plan in ds.plans():
            ds.render(plan)
            rows += sum(len(r) for _, r in plan)
    finally:
        rendering.render_pixels = render_pixels
    return {"rows": rows, "renders": renders[0], "bytes": read[0]}


def input_counts(samples: int = 64, shards: int = 16, batch: int = 32) -> dict[str, Any]:
    """Per rank, world size 1 and 2: ``renders_per_row`` and ``shard_bytes_read_per_rank`` (fraction
    of the dataset's bytes) for one epoch of DeiT's views at 224 px (see the module docstring)."""
    render = RenderSpec((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-counts-") as tmp:
        refs = []
        for i in range(shards):
            path = make_imagenet_like_shard(Path(tmp) / f"train-{i:06d}.tar", samples, seed=i)
            refs.append(ShardRef(path.name.removesuffix(".tar"), path, samples))
        total = sum(os.path.getsize(r.path) for r in refs)
        for mode, lanes, interleave, repeats in COUNT_ORDERS:
            spec = replace(DEIT_VIEWS, mix_mode=mode, repeats=repeats)
            for world in (1, 2):
                for rank in range(world):
                    ds = LabeledViews(refs, spec=spec, seed=0, render=render, epoch=0, batch_size=batch, num_classes=1000,
                                      rank=rank, world=world, lanes=lanes, interleave=interleave)
                    c = _count_rank(ds)
                    out.append({"mix_mode": mode, "lanes": lanes, "interleave": interleave, "repeats": repeats,
                                "world": world, "rank": rank,
                                "rows": c["rows"], "renders_per_row": c["renders"] / c["rows"],
                                "shard_bytes_read_per_rank": c["bytes"] / total})
    return {"samples": samples * shards, "shards": shards, "batch": batch, "counts": out}


def counts_table(result: dict) -> str:
    """Markdown: one line per (order, world size, rank)."""
    lines = [f"DeiT's views (rand-m9-mstd0.5-inc1, reprob 0.25, mixup 0.8, cutmix 1.0) at 224 px, "
             f"{result['samples']} ImageNet-like JPEGs in {result['shards']} shards, global batch {result['batch']}, "
             "one epoch, ranks simulated in one process", "",
             "| mix_mode | lanes | interleave | repeats | world size | rank | rows | renders_per_row | "
             "shard_bytes_read_per_rank |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in result["counts"]:
        lines.append(f"| {c['mix_mode']} | {c['lanes']} | {c['interleave']} | {c['repeats']} | {c['world']} | {c['rank']} | "
                     f"{c['rows']} | "
                     f"{c['renders_per_row']:.3f} | {c['shard_bytes_read_per_rank']:.3f} |")
    return "\n".join(lines)


def run_input_bench(samples: int = 256, shards: int = 2, batch: int = 64, repeats: int = 1) -> dict[str, Any]:
    """Rows/s and images decoded per rank, world size 1 and 2: eager (before), lazy (now), lazy with torch resizing."""
    spec = ViewSpec()  # RandomResizedCrop (0.08, 1) + flip: the DeiT recipe's geometry
    render = RenderSpec((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-input-") as tmp:
        tmp_path = Path(tmp)
        refs = []
        for i in range(shards):
            path = make_imagenet_like_shard(tmp_path / f"train-{i:06d}.tar", samples, seed=i)
            refs.append(ShardRef(path.name.removesuffix(".tar"), path, samples))
        teacher = create_model("vit_tiny_patch16_224", TEACHER, seed=1)
        labels = write_teacher_labels(tmp_path / "store", teacher, refs, spec=spec, seed=0, view_epochs=[0],
                                      render=render, batch_size=64)
        for _ in range(repeats):
            for eager, resize in VARIANTS:
                for world in (1, 2):
                    job = {"shards": refs, "spec": spec, "render": replace(render, resize=resize), "batch": batch,
                           "labels": labels, "eager": eager}
                    rows += _world(world, job, tmp_path)
    return {"samples": samples * shards, "shards": shards, "batch": batch, "rows": rows, "cpus": os.cpu_count()}


def input_table(result: dict) -> str:
    """Markdown: one line per (path, world size), medians over repeats and ranks."""
    lines = [f"{result['samples']} ImageNet-like JPEGs (500x375) in {result['shards']} shards, global batch "
             f"{result['batch']}, one epoch at 224 px; one process per rank (gloo), 1 torch thread each", "",
             "| decoding | world size | rows/s per rank | rows per CPU s per rank | images decoded per rank | rows per rank |",
             "|---|---|---|---|---|---|"]
    for eager, resize in VARIANTS:
        for world in (1, 2):
            rs = [r for r in result["rows"] if r["eager"] == eager and r["world"] == world
                  and r["resize"] == resize]
            rate = statistics.median(r["rows"] / r["seconds"] for r in rs)
            per_cpu = statistics.median(r["rows"] / r["cpu"] for r in rs)
            decoded = statistics.median(r["decoded"] for r in rs)
            per_rank = statistics.median(r["rows"] for r in rs)
            what = ("every image of every shard (before)" if eager else "own rows only (now)"
                    + (f", data.resize: {resize}" if resize != "pil" else ""))
            lines.append(f"| {what} | {world} | {rate:.1f} | {per_cpu:.1f} | {decoded:.0f} | {per_rank:.0f} |")
    return "\n".join(lines)
