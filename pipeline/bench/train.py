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

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from maskedkd import distill_loss
from maskedkd.views import ViewSpec
from pipeline.bench.fixtures import GRAY, VIT, fashion_mnist_shards, write_teacher_labels
from pipeline.bench.hashing import hash_cost_record, hash_cost_table, train_shards_hashed
from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.config import TrainConfig
from pipeline.labels.contract import RenderSpec
from pipeline.models import create_model
from pipeline.train import OnlineTeacher, train_segment
from pipeline.train.labeled_views import LabeledViews
from pipeline.train.loop import build_optimizer

# the trainer's own student and teacher (not the precompute bench's: see fixtures.vit_kwargs)
STUDENT = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 64, "depth": 4, "num_heads": 2}
TEACHER = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 128, "depth": 6, "num_heads": 4}


TRAINER_MODES = ("stored", "off", "online")
HASH_MODES = {"stored+hash": "stored"}  # a trainer mode again, each shard hashed while streamed (as runs do)
LOADER_MODES = {"dataset-w1": 1, "dataset-w2": 2}  # mode -> DataLoader worker processes


def own_loop_epoch(data, student, cfg, workers: int, device: str = "cpu") -> int:
    """One epoch of a plain loop over ``data`` (a :class:`pipeline.LabeledViews`) through a
    ``DataLoader`` with ``workers`` processes; returns the steps taken. On CUDA the batches are
    pinned and copied without blocking, and the forward runs under bf16 autocast (``cfg.amp``)."""
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


def train_table(result: dict) -> str:
    """Markdown of :func:`run_bench`'s record: one line per mode."""
    lines = [f"{result['steps']} steps of batch {result['batch']} (one epoch), median of {result['repeats']}, "
             f"{result['threads']} torch thread(s), {result.get('device', 'cpu')}; {result['machine']}", "",
             "| mode | steps/s | vs kd: off | teacher forwards | teacher GMACs |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        vs_off = "-" if r["vs_off"] is None else f"{r['vs_off']:.3f}"
        lines.append(f"| {r['mode']} | {r['steps_per_s']:.2f} | {vs_off} | {r['teacher_forwards']} | {r['teacher_gmacs']:.3f} |")
    if "hash_cost" in result:
        lines.append(hash_cost_table(result["hash_cost"], "stored labels, one epoch"))
    return "\n".join(lines)
