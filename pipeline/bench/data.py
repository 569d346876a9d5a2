"""``mkd-pipeline bench data``: our read + decode + view + render path against a hand-written loop.

Both loops do the same work on the same shard, one sample at a time in one process with one
torch thread: stream the tar, decode the image with PIL, random-resized-crop + flip, to tensor,
normalise. The baseline is the minimal loop a user would write (``tarfile`` + PIL +
torchvision transforms); ours is :func:`pipeline.data.shards.read_shard` +
:func:`maskedkd.views.sample_view` + :func:`maskedkd.views.render`, which additionally checks
keys and labels, guards against decompression bombs and makes every view reproducible.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import click
import numpy as np
from PIL import Image

from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import ShardWriter, read_shard, sample_key
from pipeline.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)


def make_imagenet_like_shard(path: Path, n: int, *, seed: int = 0) -> Path:
    """Write a shard of ``n`` ImageNet-sized JPEGs (500x375 and 375x500, quality 90, ~110 KB like ImageNet's average).

    The content is smooth random colour fields plus sensor-like noise, so the JPEGs cost about
    what photographs cost to decode (pure noise would be far larger, flat colour far smaller).
    """
    rng = np.random.default_rng(seed)
    with ShardWriter(path) as writer:
        for i in range(n):
            w, h = (500, 375) if i % 4 else (375, 500)
            coarse = Image.fromarray(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8))
            smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
            pixels = np.clip(smooth + rng.normal(0, 18, smooth.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            writer.write(sample_key("bench", i), {"jpg": buf.getvalue(), "cls": str(int(rng.integers(1000))).encode()})
    return path


def baseline_loop(path: Path, size: int, mean, std, limit: int) -> Callable[[], int]:
    """The minimal hand-written loop: tarfile, PIL decode, torchvision RRC + flip + ToTensor + Normalize."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from torchvision import transforms

    mode = "L" if len(mean) == 1 else "RGB"
    transform = transforms.Compose([
        transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])

    def run() -> int:
        done = 0
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                member_file = tar.extractfile(member)
                assert member_file is not None  # shards hold regular files only
                pending.setdefault(key, {})[ext] = member_file.read()
                sample = pending[key]
                image_ext = next((e for e in ("jpg", "png", "webp") if e in sample), None)
                if image_ext and "cls" in sample:
                    del pending[key]
                    image = Image.open(io.BytesIO(sample[image_ext])).convert(mode)
                    int(sample["cls"])
                    transform(image)
                    done += 1
                    if done == limit:
                        break
        return done

    return run


def ours_loop(path: Path, size: int, mean, std, limit: int) -> Callable[[], int]:
    """Our path: safe streaming reader, a pure view per sample, deterministic render."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from maskedkd.views import ViewSpec, render, sample_view

    spec = ViewSpec()
    epoch = [0]

    def run() -> int:
        done = 0
        epoch[0] += 1  # fresh views each run, as each epoch would have
        for sample in read_shard(path):
            view = sample_view(spec, 0, sample.key, epoch[0])
            render(sample.image, view, size, mean=mean, std=std)
            done += 1
            if done == limit:
                break
        return done

    return run


def bench_shard(path: Path, size: int, mean, std, limit: int, repeats: int) -> dict:
    """Samples per second of ours and of the baseline on one shard (interleaved medians)."""
    loops = {"ours": ours_loop(path, size, mean, std, limit), "baseline": baseline_loop(path, size, mean, std, limit)}
    counts = {name: fn() for name, fn in loops.items()}  # also the warm-up
    if counts["ours"] != counts["baseline"]:
        raise ConfigError(f"{path}: ours read {counts['ours']} samples, the baseline {counts['baseline']}")
    seconds = interleaved_medians(loops, warmup=0, repeats=repeats)
    ours, baseline = counts["ours"] / seconds["ours"], counts["baseline"] / seconds["baseline"]
    return {"samples": counts["ours"], "size": size, "ours": round(ours, 1), "baseline": round(baseline, 1),
            "ratio": round(ours / baseline, 3)}


def _dataset_case(directory: Path, split: str, size: int | None) -> tuple[str, Path, int, tuple, tuple]:
    manifest = load_manifest(directory)
    shard = manifest.shard_paths(split)[0]
    image = manifest.split(split)["image"]
    gray = set(image["modes"]) <= {"L", "1", "I;16"}
    if size is None:
        side = max(image["width"]["max"], image["height"]["max"])
        size = side if side <= 64 else 224
    mean, std = (GRAY_MEAN, GRAY_STD) if gray else (IMAGENET_MEAN, IMAGENET_STD)
    return manifest.name, shard, size, mean, std


def _table(results: dict) -> str:
    lines = [
        "| dataset | samples | size | ours (samples/s) | baseline (samples/s) | ours / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['samples']} | {r['size']} | {r['ours']:,.0f} | {r['baseline']:,.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


@click.command("data")
@click.argument("directory", metavar="[DIR]", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", default="train", show_default=True, help="Split of DIR whose first shard is read.")
@click.option("--limit", default=5000, show_default=True, type=click.IntRange(min=1), help="Samples per timed run.")
@click.option("--size", default=None, type=click.IntRange(min=1),
              help="Output size for DIR [default: the images' size if <= 64 px, else 224].")
@click.option("--imagenet-like", "imagenet_like", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also bench a temporary shard of this many ~500x375 JPEGs at 224 px.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed runs per loop.")
@click.option("--json", "as_json", is_flag=True, help='Print {"<dataset>": {"ours", "baseline", "ratio", ...}}.')
def bench_data(directory: Path | None, split: str, limit: int, size: int | None, imagenet_like: int, repeats: int,
               as_json: bool) -> None:
    """Read + decode + view + render throughput against a hand-written tarfile/PIL/torchvision loop.

    Example: mkd-pipeline bench data data/fashion-mnist --imagenet-like 500
    """
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    if directory is None and not imagenet_like:
        raise click.UsageError("give a dataset DIR, --imagenet-like N, or both")
    torch.set_num_threads(1)  # per-core numbers; both loops are single-process
    results = {}
    if directory is not None:
        name, shard, side, mean, std = _dataset_case(directory, split, size)
        results[name] = bench_shard(shard, side, mean, std, limit, repeats)
    if imagenet_like:
        with tempfile.TemporaryDirectory(prefix="mkd-bench-data-") as tmp:
            shard = make_imagenet_like_shard(Path(tmp) / "bench-000000.tar", imagenet_like)
            results["imagenet-like"] = bench_shard(shard, 224, IMAGENET_MEAN, IMAGENET_STD, imagenet_like, repeats)
    if as_json:
        click.echo(json.dumps(results))
        return
    click.echo(f"machine: {machine_line()}")
    click.echo(_table(results))
