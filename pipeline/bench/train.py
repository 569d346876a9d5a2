"""``mkd-pipeline bench train``: student steps/s streaming stored labels vs ``kd: off`` vs online MaskedKD.

All three run the same trainer (:func:`pipeline.train.train_segment`) for one epoch on the same
Fashion-MNIST shards, timed round-robin in one process:

- ``stored``: KD from stored top-K label partitions streamed in lockstep with the shards;
- ``off``: plain cross-entropy, no labels read (docs/design.md §7 target: stored >= 0.95 x off);
- ``online``: the teacher in the loop, masked by the current student (MaskedKD 50%).

``--trainer-workers N`` adds ``stored-wN``: ``stored`` with ``train.num_workers: N``, decoding and
rendering in N ``DataLoader`` worker processes. It is opt-in because the mode timed after it
pays for its forks (the training process's pages, shared copy-on-write with the exited workers,
fault once more on their next write: ~0.1 s here).

With ``--loader`` (the default) two more rows time the public dataset: the same stored labels
through :class:`pipeline.LabeledViews` and a ``DataLoader`` with 1 and 2 worker processes
(``dataset-w1``, ``dataset-w2``), feeding a plain loop (the trainer's optimizer and loss, no
resume records): what a user's own loop gets (README "Use the labels in your own training loop").
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from pipeline._fingerprint import sha256_file, sha256_json
from pipeline.bench.hashing import (
    hash_cost_record,
    hash_cost_table,
    train_shards_hashed,
)
from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.data.importers import FASHION_MNIST_SRC, _fashion_mnist_split, png_gray8
from pipeline.data.shards import sample_key, write_shards

GRAY = ((0.2860,), (0.3530,))  # Fashion-MNIST mean / std
STUDENT = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 64, "depth": 4, "num_heads": 2}
TEACHER = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 128, "depth": 6, "num_heads": 4}
VIT = "vit_tiny_patch16_224"


def fashion_mnist_shards(out: str | Path, samples: int, shard_size: int, *, split: str = "train", offset: int = 0):
    """Write ``samples`` real Fashion-MNIST images (from ``offset``) as WebDataset shards; return ShardRefs."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from pipeline.labels.contract import ShardRef

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = _fashion_mnist_split(FASHION_MNIST_SRC, "train" if split == "train" else "test")
    items = ((sample_key(split, i), {"png": png_gray8(images[i]), "cls": str(int(labels[i])).encode()})
             for i in range(offset, offset + samples))
    written = write_shards(items, out, split, shard_size)
    return [ShardRef(name.removesuffix(".tar"), out / name, n) for name, n in written]


def write_teacher_labels(
    store: str | Path,
    teacher,
    shards: Sequence,
    *,
    spec,
    seed: int,
    view_epochs: Sequence[int],
    render,
    k: int | str = 5,
    taus: Sequence[float] = (),
    batch_size: int = 256,
) -> dict[tuple[str, int], str]:
    """A minimal precompute: the *unmasked* teacher's labels on every shard's views.

    Real fingerprints (teacher weights, shard bytes, view spec + seed) go into each partition's
    metadata; the mask fingerprint says "none". Returns ``{(shard, view_epoch): path}``.
    """
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    from maskedkd import from_logits, logsumexp_at
    from maskedkd.views import render_batch
    from pipeline.labels import partition_path, write_partition
    from pipeline.labels.contract import store_view_columns
    from pipeline.models import model_fingerprint
    from pipeline.train.stream import load_shard

    teacher = teacher.eval()
    fps = {"teacher": model_fingerprint(teacher, VIT), "view": sha256_json({"spec": spec.fingerprint(), "seed": seed}),
           "mask": sha256_json({"policy": "none"}), "label": sha256_json({"k": k, "taus": list(taus)})}
    out: dict[tuple[str, int], str] = {}
    for ref in shards:
        shard_fp = sha256_file(ref.path)
        for ve in view_epochs:
            sh = load_shard(ref, spec=spec, seed=seed, view_epoch=ve)
            chunks: list[torch.Tensor] = []
            with torch.no_grad():
                for i in range(0, len(sh.keys), batch_size):
                    images = render_batch(sh.images[i:i + batch_size], sh.views[i:i + batch_size], render.size,
                                          mean=render.mean, std=render.std, interpolation=render.interpolation,
                                          partners=sh.partner, resize=render.resize)
                    chunks.append(teacher(images).float())
            logits = torch.cat(chunks)
            fingerprints = dict(fps, shard=shard_fp)
            path = partition_path(str(store), shard=ref.name, view_epoch=ve, fingerprints=fingerprints)
            metadata = {"shard": ref.name, "view_epoch": ve, "fingerprints": fingerprints,
                        "counters": {"rows_computed": len(sh.keys), "rows_reused": 0, "teacher_macs": 0}}
            write_partition(path, keys=sh.keys, labels=sh.labels.numpy(), keep=np.ones((len(sh.keys), teacher.patch_embed.num_patches), bool),
                            target=from_logits(logits, k), metadata=metadata, view_columns=store_view_columns(sh.views, spec),
                            num_classes=logits.shape[1], extra_lse=logsumexp_at(logits, taus) if k != "all" else None)
            out[(ref.name, ve)] = path
    return out


TRAINER_MODES = ("stored", "off", "online")
HASH_MODES = {"stored+hash": "stored"}  # a trainer mode again, each shard hashed while streamed (as runs do)
LOADER_MODES = {"dataset-w1": 1, "dataset-w2": 2}  # mode -> DataLoader worker processes


def own_loop_epoch(data, student, cfg, workers: int, device: str = "cpu") -> int:
    """One epoch of a plain loop over ``data`` (a :class:`pipeline.LabeledViews`) through a
    ``DataLoader`` with ``workers`` processes; returns the steps taken. On CUDA the batches are
    pinned and copied without blocking, and the forward runs under bf16 autocast (``cfg.amp``)."""
    import contextlib

    import torch

    from maskedkd import distill_loss
    from pipeline.train.loop import build_optimizer

    cuda = device.startswith("cuda")
    student = student.to(device)
    optimizer, _ = build_optimizer(student, cfg, data.steps, 1)
    student.train()
    steps = 0
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and cfg.amp else contextlib.nullcontext
    for images, target, labels, _keys in data.loader(num_workers=workers, pin_memory=cuda):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast():
            logits = student(images)
        loss = distill_loss(logits.float(), labels, target, lam=cfg.lam, tau=cfg.tau, ce_weight=cfg.ce_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    if cuda:
        torch.cuda.synchronize()  # the epoch's time includes its last kernels
    return steps


def run_bench(samples: int, shard_size: int, batch: int, keep: int, repeats: int, threads: int,
              modes: Sequence[str] = TRAINER_MODES + tuple(LOADER_MODES), device: str = "cpu") -> dict[str, Any]:
    """Time one epoch of each mode, round-robin; steps/s and ratios (``vs_off`` needs mode ``off``).

    ``device``: where the student (and the online teacher) train; the stored labels are written
    on the CPU beforehand either way.
    """
    known = list(TRAINER_MODES) + list(LOADER_MODES) + list(HASH_MODES)
    unknown = [m for m in modes if m not in known and not (m.startswith("stored-w") and m[len("stored-w"):].isdigit())]
    if unknown:
        raise ValueError(f"unknown bench train modes {unknown}; known: {known}")
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    from maskedkd.views import ViewSpec
    from pipeline.config import TrainConfig
    from pipeline.labels.contract import RenderSpec
    from pipeline.models import create_model
    from pipeline.train import OnlineTeacher, train_segment
    from pipeline.train.labeled_views import LabeledViews

    torch.set_num_threads(threads)
    spec = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), shift=2, hflip=0.5)
    render = RenderSpec((28, 28), *GRAY)
    teacher = create_model(VIT, TEACHER, seed=1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        shards = fashion_mnist_shards(Path(tmp) / "data", samples, shard_size)
        labels = write_teacher_labels(Path(tmp) / "store", teacher, shards, spec=spec, seed=0, view_epochs=[0], render=render)
        online = OnlineTeacher(teacher, render, policy="student", keep=keep)
        recipe = dict(batch_size=batch, lr=1e-3, warmup_epochs=0, checkpoint_every=10**9)
        cases: dict[str, dict[str, Any]] = {"stored": dict(cfg=TrainConfig(kd="kl", **recipe), labels=labels),
                 "off": dict(cfg=TrainConfig(kd="off", **recipe)),
                 "online": dict(cfg=TrainConfig(kd="kl", **recipe), online=online)}
        for name in modes:
            if name.startswith("stored-w"):
                cases[name] = dict(cfg=TrainConfig(kd="kl", num_workers=int(name[len("stored-w"):]), **recipe),
                                   labels=labels)
        runs = {name: 0 for name in cases}
        results: dict[str, dict] = {}

        def case(name: str):
            refs = train_shards_hashed(shards) if name in HASH_MODES else shards

            def fn() -> None:
                runs[name] = runs.get(name, 0) + 1
                student = create_model(VIT, STUDENT, seed=0)
                results[name] = train_segment(student, shards=refs, spec=spec, seed=0, epochs=range(0, 1),
                                              total_epochs=1, render=render, run_dir=Path(tmp) / f"run-{name}-{runs[name]}",
                                              view_pool=1, device=device, **cases[HASH_MODES.get(name, name)])
            return fn

        def loader_case(name: str):
            cfg = TrainConfig(kd="kl", **recipe)
            data = LabeledViews(shards, spec=spec, seed=0, render=render, epoch=0, batch_size=batch, order_seed=cfg.seed,
                                labels=labels, view_pool=1, tau=cfg.tau, num_classes=STUDENT["num_classes"], rank=0, world=1)

            def fn() -> None:
                steps = own_loop_epoch(data, create_model(VIT, STUDENT, seed=0), cfg, LOADER_MODES[name], device)
                results[name] = {"steps_per_epoch": steps, "teacher_forwards": 0, "teacher_macs": 0}
            return fn

        timed = {name: case(name) if name in cases or name in HASH_MODES else loader_case(name) for name in modes}
        seconds = interleaved_medians(timed, warmup=1, repeats=repeats)
        hashing = {name: hash_cost_record(seconds[name], seconds[base], rows=results[name]["steps_per_epoch"],
                                          unit="steps", shards=[r.path for r in shards])
                   for name, base in HASH_MODES.items() if name in seconds and base in seconds}
    steps = results[modes[0]]["steps_per_epoch"]
    rows = [{"mode": name, "steps_per_s": steps / seconds[name], "seconds": seconds[name],
             "steps": results[name]["steps_per_epoch"],
             "vs_off": seconds["off"] / seconds[name] if "off" in seconds else None,
             "teacher_forwards": results[name]["teacher_forwards"],
             "teacher_gmacs": results[name]["teacher_macs"] / 1e9,
             "loader_workers": LOADER_MODES.get(name)} for name in modes]
    patch_embed: Any = teacher.patch_embed  # a timm ViT's
    out = {"samples": steps * batch, "batch": batch, "steps": steps, "keep": keep,
           "patches": patch_embed.num_patches, "threads": threads, "repeats": repeats, "device": device,
           "student": STUDENT, "teacher": TEACHER, "machine": machine_line(), "rows": rows}
    out.update(("hash_cost", h) for h in hashing.values())
    return out


def _table(result: dict) -> str:
    lines = [f"{result['steps']} steps of batch {result['batch']} (one epoch), median of {result['repeats']}, "
             f"{result['threads']} torch thread(s), {result.get('device', 'cpu')}; {result['machine']}", "",
             "| mode | steps/s | vs kd: off | teacher forwards | teacher GMACs |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        vs_off = "-" if r["vs_off"] is None else f"{r['vs_off']:.3f}"
        lines.append(f"| {r['mode']} | {r['steps_per_s']:.2f} | {vs_off} | {r['teacher_forwards']} | {r['teacher_gmacs']:.3f} |")
    if "hash_cost" in result:
        lines.append(hash_cost_table(result["hash_cost"], "stored labels, one epoch"))
    return "\n".join(lines)


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
                   "JPEG shards at 224 px, decoding own rows (now) vs every image (before); --samples per shard.")
@click.option("--trainer-workers", default=0, show_default=True, type=click.IntRange(0),
              help="Also time our trainer with train.num_workers N loader processes (stored-wN), last.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ... (CUDA: bf16 autocast, train.amp).")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [{"mode", "steps_per_s", "vs_off", ...}]}.')
def bench_train(samples: int, shard_size: int, batch: int, keep: int, repeats: int, threads: int, loader: bool,
                hash_cost: bool, input_only: bool, trainer_workers: int, device: str, as_json: bool) -> None:
    """Student steps/s: stored labels vs kd: off (target >= 0.95) vs online MaskedKD, and the
    public dataset through a DataLoader, one run. With --input: the input pipeline per rank."""
    if input_only:
        from pipeline.bench.train_input import input_table, run_input_bench

        result = run_input_bench(samples=samples, batch=batch, repeats=repeats)
        click.echo(json.dumps(result, indent=1) if as_json else input_table(result))
        return
    modes = (TRAINER_MODES + (tuple(LOADER_MODES) if loader else ()) + (tuple(HASH_MODES) if hash_cost else ())
             + ((f"stored-w{trainer_workers}",) if trainer_workers else ()))
    result = run_bench(samples, shard_size, batch, keep, repeats, threads, modes, device)
    click.echo(json.dumps(result, indent=1) if as_json else _table(result))
