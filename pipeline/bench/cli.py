"""The ``mkd-pipeline bench`` commands: options, argument checks and printing only.

Each command imports its harness (the module that builds inputs and times them) inside its body,
the one function-local import per command: ``mkd-pipeline bench --help`` imports this module to
list the commands, and the harnesses import torch, timm and Dask at the top (2-4 s).
Results go to BENCHMARKS.md; each harness's docstring says what it measures.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.errors import ConfigError


def _echo(result: dict, as_json: bool, table: str) -> None:
    click.echo(json.dumps(result, indent=1) if as_json else table)


def _parse_keep(value: str) -> list[int]:
    try:
        keeps = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not keeps:
        raise click.BadParameter("give at least one keep count")
    return keeps


@click.command("teacher")
@click.option("--model", "model_name", default="deit_small_patch16_224", show_default=True, help="timm model name (random weights).")
@click.option("--keep", "keep", default="196,147,98,49", show_default=True, help="Comma-separated patch counts to keep.")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Timed repeats (median reported).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--policy", default="student", show_default=True,
              help="A masking policy: keep-set policies run masked_forward on a random keep set; lowres its own forward.")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [{"keep", "img_per_s", "speedup", "gmacs"}, ...]}.')
def bench_teacher(model_name: str, keep: str, batch: int, repeats: int, device: str, dtype: str, policy: str,
                  as_json: bool) -> None:
    """Masked teacher throughput at each keep count, speedup over the full teacher, GMACs/image.

    GMACs are multiply-accumulates counted by torch's FlopCounterMode (the unit the DeiT and
    MaskedKD papers call "GFLOPs").
    """
    keeps = _parse_keep(keep)
    from pipeline.bench import teacher  # lazy: the harness imports torch + timm (see the module doc)

    result = teacher.run_bench(model_name, keeps, batch, repeats, device, dtype, policy)
    click.echo(json.dumps(result) if as_json else teacher.teacher_table(result))


@click.command("store")
@click.option("--rows", default=100_000, show_default=True, type=click.IntRange(1))
@click.option("--classes", default=1000, show_default=True, type=click.IntRange(2))
@click.option("--k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--patches", default=196, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Timed repeats (median reported).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"bytes_per_row", "write_rows_per_s", "read_rows_per_s", ..., "all": {...}}.')
def bench_store(rows: int, classes: int, k: int, patches: int, repeats: int, as_json: bool) -> None:
    """Label partition bytes per row on disk, write rows/s and read rows/s into torch tensors,
    for top-K labels and for all logits (``topk: all``), on synthetic teacher outputs, one thread.

    "read" streams every column (keys, label, keep unpacked to bool, TopK); "read (trainer)"
    only what a student trainer needs (keys, TopK). Writes include encoding, sha256, fsync and
    the atomic rename.
    """
    if k > classes:
        raise click.BadParameter(f"--k {k} is more than --classes {classes}")
    from pipeline.bench import store  # lazy: the harness imports torch (see the module doc)

    result = store.run_bench(rows, classes, k, patches, repeats)
    click.echo(json.dumps(result, indent=2) if as_json else store.store_table(result))


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
    if directory is None and not imagenet_like:
        raise click.UsageError("give a dataset DIR, --imagenet-like N, or both")
    from pipeline.bench import data  # lazy: the harness imports torch + torchvision (see the module doc)

    results = data.run_data_bench(directory, split, limit, size, imagenet_like, repeats)
    click.echo(json.dumps(results) if as_json else data.data_table(results))


@click.command("train")
@click.option("--samples", default=1024, show_default=True, type=click.IntRange(1), help="Fashion-MNIST training images.")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1))
@click.option("--keep", default=25, show_default=True, type=click.IntRange(1), help="Patches the online teacher keeps (of 49).")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch threads.")
@click.option("--loader/--no-loader", default=True, show_default=True,
              help="Also time pipeline.LabeledViews through a DataLoader with 1 and 2 workers (dataset-w1, dataset-w2).")
@click.option("--hash-cost", is_flag=True, help="Also time stored with each shard hashed while streamed (stored+hash, "
              "as runs do) and print the ratio to stored.")
@click.option("--input", "input_only", is_flag=True,
              help="Instead: the input pipeline alone per rank at world size 1 and 2 (gloo) on ImageNet-like "
                   "JPEG shards at 224 px, decoding own rows (now) vs every image (before); --samples per shard. "
                   "First counts renders_per_row and shard_bytes_read_per_rank with DeiT's views (input_counts).")
@click.option("--timing/--no-timing", default=True, show_default=True,
              help="With --input: also time the ranks (gloo processes); --no-timing: the counts only.")
@click.option("--trainer-workers", default=0, show_default=True, type=click.IntRange(0),
              help="Also time our trainer with train.num_workers N loader processes (stored-wN), last.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ... (CUDA: bf16 autocast, train.amp).")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [{"mode", "steps_per_s", "vs_off", ...}]}.')
def bench_train(samples: int, shard_size: int, batch: int, keep: int, repeats: int, threads: int, loader: bool,
                hash_cost: bool, input_only: bool, timing: bool, trainer_workers: int, device: str, as_json: bool) -> None:
    """Student steps/s: stored labels vs kd: off (target >= 0.95) vs online MaskedKD, and the
    public dataset through a DataLoader, one run. With --input: the input pipeline per rank."""
    from pipeline.bench import train, train_input  # lazy: the harnesses import torch + timm (see the module doc)

    if input_only:
        counts = train_input.input_counts()  # its own shards: a rank's batch slice well under a shard, as on ImageNet
        result = train_input.run_input_bench(samples=samples, batch=batch, repeats=repeats) if timing else {}
        table = train_input.counts_table(counts) + ("\n\n" + train_input.input_table(result) if timing else "")
        _echo({**result, "input_counts": counts}, as_json, table)
        return
    modes = (train.TRAINER_MODES + (tuple(train.LOADER_MODES) if loader else ())
             + (tuple(train.HASH_MODES) if hash_cost else ()) + ((f"stored-w{trainer_workers}",) if trainer_workers else ()))
    result = train.run_bench(samples, shard_size, batch, keep, repeats, threads, modes, device)
    _echo(result, as_json, train.train_table(result))


@click.command("precompute")
@click.option("--samples", default=1024, show_default=True, type=click.IntRange(2), help="Fashion-MNIST training rows.")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1), help="Rows per shard (2+ shards).")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1), help="Teacher / student batch size.")
@click.option("--img-size", default="56", show_default=True, type=click.Choice(["28", "56"]), help="Input size (4x4 patches).")
@click.option("--keep", default=None, type=click.IntRange(1), help="Patches kept [default: half of them].")
@click.option("--perturb", default=0.01, show_default=True, type=click.FloatRange(0), help="Student update size (last block noise).")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1), help="Interleaved rounds (median).")
@click.option("--feed", "feed_only", is_flag=True, help="Instead: labels/s of the task's data path alone (no forward), before "
              "and after issue 17, on ImageNet-like JPEGs at 224 px.")
@click.option("--feed-images", default=256, show_default=True, type=click.IntRange(1), help="--feed: JPEGs in the shard.")
@click.option("--feed-epochs", default=2, show_default=True, type=click.IntRange(1), help="--feed: view epochs per segment.")
@click.option("--feed-resize", default="pil,torch", show_default=True,
              help="--feed: the data.resize values to time the after path with, comma-separated.")
@click.option("--feed-auto-augment", default=None, metavar="STR",
              help="--feed: views with this RandAugment (e.g. rand-m9-mstd0.5-inc1, DeiT's) [default: crop + flip].")
@click.option("--hash-cost", is_flag=True, help="Also time first runs with and without shard hashing (interleaved) "
              "and print the ratio.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Worker device: cuda runs one GPU worker per GPU at compute.precision auto (bf16).")
@click.option("--json", "as_json", is_flag=True, help='Print {"efficiency", "scaling_2w", "repeat_fraction", ...}.')
def bench_precompute(samples: int, shard_size: int, batch: int, img_size: str, keep: int | None, perturb: float,
                     repeats: int, feed_only: bool, feed_images: int, feed_epochs: int, feed_resize: str,
                     feed_auto_augment: str | None, hash_cost: bool, device: str, as_json: bool) -> None:
    """Precompute end to end on a LocalCluster: efficiency, 2-worker scaling, repeat, incremental.

    With --feed: the data path alone (read, hash, decode, render student + teacher views, collate,
    normalise), today's against the pre-issue-17 path, per core and with 1 and 2 render threads.
    """
    if not feed_only and samples <= shard_size:
        raise ConfigError("--samples must exceed --shard-size: two workers need two shards or more")
    from pipeline.bench import feed, hashing, precompute  # lazy: the harnesses import torch + Dask (see the module doc)

    if feed_only:
        resizes = tuple(r.strip() for r in feed_resize.split(",") if r.strip())
        feed.check_feed_options(resizes, feed_auto_augment)
        result = feed.run_feed_bench(feed_images, feed_epochs, min(batch, 64), repeats=repeats, resizes=resizes,
                                     auto_augment=feed_auto_augment)
        _echo(result, as_json, feed.feed_table(result))
        return
    result = precompute.run_bench(samples, shard_size, batch, int(img_size), keep, perturb, repeats, device)
    table = precompute.precompute_table(result)
    if hash_cost:
        result["hash_cost"] = hashing.precompute_hash_cost(samples, shard_size, batch, int(img_size), keep, repeats)
        table += hashing.hash_cost_table(result["hash_cost"], "first run, 1 worker")
    _echo(result, as_json, table)


@click.command("lock")
@click.option("--shards", default=1281, show_default=True, type=click.IntRange(1))
@click.option("--view-epochs", default=300, show_default=True, type=click.IntRange(1))
@click.option("--segments", default=30, show_default=True, type=click.IntRange(1),
              help="Precompute stages (milestone segments) the view epochs are cut into.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Timed status repeats (median).")
@click.option("--one-file/--no-one-file", default=True, show_default=True,
              help="Also write the whole lock as one JSON file (lock_version 1's rewrite per stage), for comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_lock(shards: int, view_epochs: int, segments: int, repeats: int, one_file: bool, as_json: bool) -> None:
    """Time the run lock at ImageNet scale: status, one segment's commit, bytes on disk."""
    if segments > view_epochs:
        raise click.BadParameter(f"--segments {segments} is more than --view-epochs {view_epochs}")
    from pipeline.bench.lock import bench_lock_run, lock_table

    r = bench_lock_run(shards, view_epochs, segments, repeats, one_file)
    _echo(r, as_json, lock_table(r))


@click.command("saliency")
@click.option("--teacher", default="deit_base_patch16_224", show_default=True, help="timm model name of the teacher.")
@click.option("--student", "students", multiple=True, default=("deit_small_patch16_224", "deit_tiny_patch16_224"),
              show_default=True, help="timm model name of a student (repeat for several).")
@click.option("--stages", "stage_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A stage config whose student and teacher (with their kwargs) to count instead (repeatable).")
@click.option("--keep", default=None, help="Comma-separated teacher patch counts (default: half and a quarter, rounded up).")
@click.option("--scale", "scales", default="1,0.5", show_default=True,
              help="Comma-separated saliency scales (masking.saliency_scale): the student's view downscaled by each.")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [{"pair", "scale", "saliency_macs", "keeps", ...}]}.')
def bench_saliency(teacher: str, students: tuple[str, ...], stage_files: tuple[Path, ...], keep: str | None,
                   scales: str, as_json: bool) -> None:
    """The offline saliency pass counted (no timing): the student's saliency MACs per view, its
    share of the full teacher, and each keep's net cost (teacher + saliency) against full-teacher KD."""
    try:
        scale_list = [float(s) for s in scales.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"--scale: expected comma-separated numbers, got {scales!r}") from None
    if not scale_list or any(not 0 < s <= 1 for s in scale_list):
        raise click.BadParameter(f"--scale: each scale must be in (0, 1], got {scales!r}")
    from pipeline.bench import saliency  # lazy: the harness imports torch + timm (see the module doc)
    from pipeline.config import load_config

    if stage_files:
        cfgs = [load_config(p, check_files=False) for p in stage_files]
        pairs = [saliency.Pair(c.student.model, c.teacher.model, dict(c.student.kwargs or {}), dict(c.teacher.kwargs or {}),
                               f"{c.name}: student -> teacher") for c in cfgs]
    else:
        pairs = [saliency.Pair(s, teacher, {}, {}, f"{s} -> {teacher}") for s in students]
    r = saliency.run_bench(pairs, _parse_keep(keep) if keep else None, scale_list)
    _echo(r, as_json, saliency.saliency_table(r))


@click.command("reuse")
@click.option("--policy", "policies", multiple=True,
              help="A masking policy to measure (repeat for several) [default: every registered one].")
@click.option("--samples", default=1024, show_default=True, type=click.IntRange(1), help="Fashion-MNIST training images.")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--test-samples", default=500, show_default=True, type=click.IntRange(1), help="Test images (val top-1).")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1), help="Student epochs.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1), help="Epochs between milestones.")
@click.option("--keep", default=25, show_default=True, type=click.IntRange(1), help="Patches kept (of 49).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="Dask workers.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Also write reuse.json and reuse.md (the table) into this folder.")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [{"policy", "variant", "served_share", ...}]}.')
def bench_reuse(policies: tuple[str, ...], samples: int, shard_size: int, test_samples: int, epochs: int, every: int,
                keep: int, workers: int, out: Path | None, as_json: bool) -> None:
    """Per policy, the share of a second student run's labels served from the store: a first run,
    then on its store one with another student.init_seed and one with another train.lr."""
    from maskedkd import policy_names

    unknown = [p for p in policies if p not in policy_names()]
    if unknown:
        raise click.BadParameter(f"unknown policy {', '.join(unknown)}; known: {', '.join(policy_names())}")
    from pipeline.bench import reuse  # lazy: the harness imports torch, timm and Dask (see the module doc)

    result = reuse.run_bench(samples=samples, shard_size=shard_size, test_samples=test_samples, epochs=epochs,
                             every=every, keep=keep, policies=policies, workers=workers)
    table = reuse.reuse_table(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "reuse.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "reuse.md").write_text(table)
    _echo(result, as_json, table)
