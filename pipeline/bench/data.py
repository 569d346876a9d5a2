"""``mkd-pipeline bench data``: our read + decode + view + render path against a hand-written loop.

Both loops do the same work on the same shard, one sample at a time in one process with one
torch thread: stream the tar, decode the image with PIL, random-resized-crop + flip, to tensor,
normalise. The baseline is the minimal loop a user would write (``tarfile`` + PIL +
torchvision transforms); ours is :func:`pipeline.data.shards.read_shard` +
:func:`maskedkd.views.sample_view` + :func:`maskedkd.rendering.render`, which additionally checks
keys and labels, guards against decompression bombs and makes every view reproducible.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from maskedkd.rendering import render
from maskedkd.views import ViewSpec, sample_view
from pipeline.bench.fixtures import IMAGENET_MEAN, IMAGENET_STD, make_imagenet_like_shard
from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import read_shard
from pipeline.errors import ConfigError

# make_imagenet_like_shard lives in fixtures.py; it stays importable from here (scripts/gpu_check.py uses it)
__all__ = ["baseline_loop", "bench_shard", "data_table", "make_imagenet_like_shard", "ours_loop", "run_data_bench"]

GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)


def baseline_loop(path: Path, size: int, mean, std, limit: int) -> Callable[[], int]:
    """The minimal hand-written loop: tarfile, PIL decode, torchvision RRC + flip + ToTensor + Normalize."""
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
    shard = Path(manifest.shard_paths(split)[0])  # the bench reads a local dataset folder
    image = manifest.split(split)["image"]
    gray = set(image["modes"]) <= {"L", "1", "I;16"}
    if size is None:
        side = max(image["width"]["max"], image["height"]["max"])
        size = side if side <= 64 else 224
    mean, std = (GRAY_MEAN, GRAY_STD) if gray else (IMAGENET_MEAN, IMAGENET_STD)
    return manifest.name, shard, size, mean, std


def run_data_bench(directory: Path | None, split: str, limit: int, size: int | None, imagenet_like: int,
                   repeats: int) -> dict[str, dict]:
    """``{dataset: bench_shard record}`` for the first shard of ``directory``'s ``split`` and, with
    ``imagenet_like`` > 0, a temporary shard of that many ImageNet-like JPEGs at 224 px."""
    torch.set_num_threads(1)  # per-core numbers; both loops are single-process
    results = {}
    if directory is not None:
        name, shard, side, mean, std = _dataset_case(directory, split, size)
        results[name] = bench_shard(shard, side, mean, std, limit, repeats)
    if imagenet_like:
        with tempfile.TemporaryDirectory(prefix="mkd-bench-data-") as tmp:
            shard = make_imagenet_like_shard(Path(tmp) / "bench-000000.tar", imagenet_like)
            results["imagenet-like"] = bench_shard(shard, 224, IMAGENET_MEAN, IMAGENET_STD, imagenet_like, repeats)
    return results


def data_table(results: dict) -> str:
    """This machine, then markdown of :func:`run_data_bench`'s record: one line per dataset."""
    lines = [
        f"machine: {machine_line()}",
        "| dataset | samples | size | ours (samples/s) | baseline (samples/s) | ours / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['samples']} | {r['size']} | {r['ours']:,.0f} | {r['baseline']:,.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines)
