"""``mkd-pipeline bench precompute``: the precompute path end to end on a real Dask LocalCluster.

One run, on real Fashion-MNIST shards, with a random-weight ViT teacher whose masked forward
costs 7x (56x56 inputs, the default) to 10x (28x28) the student's full forward in MACs, so the
teacher dominates as it does in practice:

- ``efficiency``: labels/s of a first (from-scratch) run on one worker (one thread), against the
  bare :func:`maskedkd.masked_forward` on pre-rendered tensors of the same teacher, keep count and
  batch size in one thread (docs/design.md §7 target >= 0.8);
- ``scaling_2w``: the same first run on two workers (one thread each) against one (target >= 1.7x);
- ``repeat_fraction``: an identical second run's wall time over the first's (target <= 0.02);
- ``changed_fraction`` / ``teacher_forward_fraction``: after a small update of the student, the
  fraction of rows whose keep set changed (computed here, independently, from the student's
  saliency) and the fraction of rows the precompute ran the teacher on (they must be equal).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import numpy as np
import yaml

from pipeline.bench.timing import machine_line
from pipeline.data.importers import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SRC,
    SourceImage,
    _fashion_mnist_split,
    _write_split,
    png_gray8,
)
from pipeline.data.manifest import DatasetManifest, load_manifest
from pipeline.data.shards import read_shard
from pipeline.errors import ConfigError

VIT = "vit_tiny_patch16_224"
GRAY = ((0.2860,), (0.3530,))  # Fashion-MNIST mean / std


def vit_kwargs(img_size: int = 28) -> tuple[dict, dict]:
    """(teacher, student) timm kwargs on ``img_size`` inputs with 4x4 patches (28: 49 patches,
    56: 196 like ViT-B/16 at 224). At keep 50% the teacher's masked forward costs 9.7x (28) and
    7.1x (56) the student's full forward in MACs (31.8 vs 3.3 and 132 vs 18.5 MMACs)."""
    base = {"img_size": img_size, "patch_size": 4, "in_chans": 1, "num_classes": 10}
    return dict(base, embed_dim=128, depth=6, num_heads=4), dict(base, embed_dim=48, depth=2, num_heads=3)


TEACHER, STUDENT = vit_kwargs(28)


# ---------------------------------------------------------------------------------------------
# Inputs: dataset, checkpoints, stage config, tasks


def fashion_mnist_dataset(out: str | Path, samples: int, shard_size: int, *, offset: int = 0):
    """A dataset folder (shards + ``manifest.json``) of ``samples`` real Fashion-MNIST training
    images starting at ``offset``, as split ``train``; returns its :class:`DatasetManifest`."""
    out = Path(out)
    images, labels = _fashion_mnist_split(FASHION_MNIST_SRC, "train")
    items = (SourceImage(png_gray8(images[i]), "png", int(labels[i]), f"train[{i}]")
             for i in range(offset, offset + samples))
    skipped: list[dict] = []
    split = _write_split(out, "train", items, samples, shard_size, skipped)
    manifest = DatasetManifest(name="fashion-mnist-subset", classes=list(FASHION_MNIST_CLASSES), splits={"train": split},
                               source={"kind": "fashion-mnist", "offset": offset, "samples": samples}, skipped=skipped)
    manifest.save(out)
    return manifest


def save_vit(kwargs: dict, path: str | Path, *, seed: int, perturb: float = 0.0, perturb_seed: int = 0) -> Path:
    """Save a random-weight ViT checkpoint; ``perturb`` adds N(0, perturb * std) noise to every
    weight of the last block (a small "student update" that changes some keep sets)."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    from pipeline.models import create_model, save_checkpoint

    model = create_model(VIT, kwargs, seed=seed)
    if perturb:
        g = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            blocks: Any = model.blocks  # a timm ViT's
            for p in blocks[-1].parameters():
                p.add_(torch.randn(p.shape, generator=g) * perturb * float(p.std() if p.numel() > 1 else 1.0))
    save_checkpoint(model, path)
    return Path(path)


def stage_doc(*, name: str, data_root: str | Path, store: str | Path, teacher_weights: str | Path,
              teacher: dict = TEACHER, student: dict = STUDENT, policy: str = "student", keep: int | None = 25,
              tolerance: int = 0, spot_check: int = 64, topk: int | str = 10, batch_size: int = 256,
              subset: int | None = None,
              workers: int = 2, retries: int = 1, timeout_s: float = 600, view_pool: int | str = "epochs",
              epochs: int = 1, every: int | None = None, run_dir: str | Path | None = None,
              device: str = "cpu") -> dict[str, Any]:
    """A stage config (the YAML document) for a precompute on the dataset at ``data_root``."""
    doc: dict[str, Any] = {
        "name": name,
        "data": {"root": str(data_root), "train": "train", "val": None, "subset": subset, "num_classes": 10,
                 "mean": list(GRAY[0]), "std": list(GRAY[1]), "interpolation": "bilinear"},
        "teacher": {"model": VIT, "kwargs": dict(teacher), "weights": str(teacher_weights)},
        "student": {"model": VIT, "kwargs": dict(student), "init_seed": 0},
        "schedule": {"epochs": epochs, **({"every": every} if every else {})},
        "masking": {"policy": policy, "tolerance": tolerance, "spot_check": spot_check,
                    **({"keep": keep} if policy != "none" else {})},
        "views": {"seed": 0, "pool": view_pool, "scale": [0.6, 1.0], "hflip": 0.5},
        "labels": {"store": str(store), "topk": topk, "temperatures": [1.0]},
        "compute": {"workers": workers, "threads_per_worker": 1, "batch_size": batch_size, "device": device,
                    "timeout_s": timeout_s, "retries": retries},
        "train": {"lr": 1e-3, "warmup_epochs": 0},
    }
    if run_dir is not None:
        doc["run_dir"] = str(run_dir)
    return doc


def write_stage(path: str | Path, doc: dict[str, Any]):
    """Write ``doc`` as a stage YAML at ``path`` and load it with :func:`pipeline.config.load_config`."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from pipeline.config import load_config

    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def plan(cfg, teacher_weights: str | Path, student_weights: str | Path | None, segment: int = 0):
    """``plan_segment`` of ``cfg`` with these checkpoints (what the runner does for a segment)."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from pipeline.precompute.plan import plan_segment
    from pipeline.precompute.spec import model_spec

    student = model_spec(cfg, "student", student_weights) if student_weights is not None else None
    return plan_segment(cfg, segment, manifest=load_manifest(cfg.data.root), teacher=model_spec(cfg, "teacher", teacher_weights),
                        student=student, device="auto", num_classes=cfg.data.num_classes)


def rendered_batches(tasks: Sequence, who: str, batch: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``(task, images)`` per batch: each task's views rendered as the task renders them for its
    ``who`` ("student" or "teacher"), in tar order and batches of ``batch`` (default: the task's),
    computed here (read shard, views, render) independently of :mod:`pipeline.precompute.task`."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from maskedkd.views import ViewSpec, render_batch, shard_views

    for t in tasks:
        samples = list(read_shard(t.shard_path))[: t.limit]
        views = shard_views(ViewSpec.from_dict(t.view_spec), t.view_seed, t.view_epoch, [s.key for s in samples])
        r, size = getattr(t, who).render, batch or t.batch_size
        for i in range(0, len(samples), size):
            yield t, render_batch([s.image for s in samples[i:i + size]], views[i:i + size], r.size,
                                  mean=r.mean, std=r.std, interpolation=r.interpolation, resize=r.resize)


def student_keep_sets(student, tasks: Sequence):
    """bool [rows, patches]: the keep sets of ``student`` on the views of ``tasks``, computed
    here (the student's own rendering, ``cls_attention`` + ``select_keep``, in the tasks' batch
    size), independently of :mod:`pipeline.precompute.task`."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    from maskedkd import cls_attention, select_keep

    out = []
    student = student.eval()
    for t, images in rendered_batches(tasks, "student"):
        with torch.inference_mode():
            idx = select_keep(cls_attention(student, images), t.keep, t.policy)
        keep = np.zeros((len(idx), student.patch_embed.num_patches), dtype=bool)
        np.put_along_axis(keep, idx.numpy(), True, axis=1)
        out.append(keep)
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# The benchmark


class _Bare:
    """``masked_forward`` alone on ``rows`` rows of ``tasks``, rendered beforehand, in this
    process with one torch thread: the baseline of ``efficiency``."""

    def __init__(self, teacher, tasks: Sequence, keep: int, batch: int, rows: int, device: str = "cpu",
                 precision: str = "fp32") -> None:
        # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
        import torch

        self.batches = []
        for _, images in rendered_batches(tasks, "teacher", batch):
            if self.rows >= rows:
                break
            self.batches.append(images)
        n = teacher.patch_embed.num_patches
        gen = torch.Generator().manual_seed(0)
        self.idx = [torch.rand(len(b), n, generator=gen).argsort(1)[:, :keep].sort(1).values for b in self.batches]
        self.device, self.precision = device, precision
        if device.startswith("cuda"):  # the tasks' copies: pinned host memory, copied without blocking
            self.batches = [b.pin_memory().to(device, non_blocking=True) for b in self.batches]
            self.idx = [i.to(device) for i in self.idx]
        self.teacher = teacher.eval().to(device)
        self.run()  # warm-up

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)

    def run(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one pass."""
        # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
        import torch

        from maskedkd import masked_forward
        from pipeline.precompute.task import autocast_for

        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            for b, k in zip(self.batches, self.idx):
                masked_forward(self.teacher, b, k)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.thread_time() - c0


def _cpu_seconds(cluster) -> float:
    """CPU seconds used so far by all worker processes of ``cluster``."""
    return sum(cluster.client.run(time.process_time).values())


def _timed_run(tasks, cluster, cfg, key: str) -> tuple[float, float, dict]:
    """(wall seconds, workers' CPU seconds, summary) of one ``run_precompute``."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from pipeline.precompute.run import run_precompute

    c0 = _cpu_seconds(cluster)
    t0 = time.perf_counter()
    summary = run_precompute(tasks, cluster, cfg=cfg, key_prefix=key, progress=False)
    wall = time.perf_counter() - t0
    return wall, _cpu_seconds(cluster) - c0, summary


def _fresh(tasks, store: Path) -> list:
    """The same tasks writing into another (empty) store: a first run again."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    from pipeline.labels.paths import partition_path

    return [replace(t, store=str(store), path=partition_path(str(store), shard=t.shard, view_epoch=t.view_epoch,
                                                             fingerprints=t.fingerprints)) for t in tasks]


def _warm(cluster, cfg, tasks, scratch: Path, key: str) -> None:
    """Start every worker's torch and model cache on a few rows into a scratch store."""
    warm = [replace(t, limit=32) for t in _fresh(tasks, scratch)[: len(cluster.workers())]]
    _timed_run(warm, cluster, cfg, key)


def run_bench(samples: int = 1024, shard_size: int = 256, batch: int = 256, img_size: int = 56, keep: int | None = None,
              perturb: float = 0.01, repeats: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Run every measurement of the benchmark; returns the numbers (see the module doc).

    ``device="cuda"``: one GPU worker per GPU (``compute.precision: auto``, i.e. bf16), the bare
    baseline on the first GPU; with a single GPU the two-worker run is skipped (``scaling_2w``
    and the other two-worker numbers are None).

    The first runs on one and two workers and the bare baseline are repeated ``repeats`` times,
    interleaved (both clusters stay open), so that load from other processes on a shared
    machine hits them alike; ratios are medians over the rounds. ``keep`` defaults to half the
    patches (98 of 196 at 56x56, 25 of 49 at 28x28).
    """
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    from pipeline.models import create_model
    from pipeline.precompute.cluster import open_cluster

    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: cpu or cuda, got {device!r} (GPU workers each take their own GPU)")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda: torch sees no CUDA device")
    teacher, student = vit_kwargs(img_size)
    patches = (img_size // 4) ** 2
    keep = keep or (patches + 1) // 2
    if not 1 <= keep <= patches:
        raise ConfigError(f"--keep: {keep} is not between 1 and {patches} (patches at {img_size}x{img_size})")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as tmp:
        root = Path(tmp)
        manifest = fashion_mnist_dataset(root / "data", samples, shard_size)
        t_path = save_vit(teacher, root / "teacher.pth", seed=1)
        s0 = save_vit(student, root / "c0.pth", seed=0)
        s1 = save_vit(student, root / "c1.pth", seed=0, perturb=perturb)

        def cfg_for(name: str, workers: int):
            doc = stage_doc(name=name, data_root=root / "data", store=root / name, teacher_weights=t_path,
                            teacher=teacher, student=student, keep=keep, batch_size=batch, workers=workers,
                            device=device)
            return write_stage(root / f"{name}.yaml", doc)

        cfg1, cfg2 = cfg_for("one", 1), cfg_for("two", 2)
        tasks, changed_tasks = plan(cfg1, t_path, s0), plan(cfg1, t_path, s1)
        keep0 = student_keep_sets(create_model(VIT, student, weights=s0), tasks)
        keep1 = student_keep_sets(create_model(VIT, student, weights=s1), changed_tasks)
        changed = int((keep0 != keep1).any(axis=1).sum())
        bare = _Bare(create_model(VIT, teacher, weights=t_path), tasks, keep, batch, rows=2 * batch,
                      device=device, precision=cfg1.compute.task_precision())

        kw: dict[str, Any] = dict(threads_per_worker=1, device=device, dashboard=False, announce=None)
        two_workers = device == "cpu" or gpus >= 2
        with contextlib.ExitStack() as stack:
            c1 = stack.enter_context(open_cluster(workers=1, **kw))
            c2 = stack.enter_context(open_cluster(workers=2, **kw)) if two_workers else None
            _warm(c1, cfg1, tasks, root / "warm", "warm1")
            if c2 is not None:
                _warm(c2, cfg2, tasks, root / "warm", "warm2")
            rounds = []
            for r in range(repeats):
                one = _timed_run(_fresh(tasks, root / f"one-{r}"), c1, cfg1, f"first1-{r}")
                second = _timed_run(_fresh(tasks, root / f"two-{r}"), c2, cfg2, f"first2-{r}") if c2 else None
                rounds.append((one, second, bare.run()))
            last = _fresh(tasks, root / f"one-{repeats - 1}")
            wall_repeat, _, repeat = _timed_run(last, c1, cfg1, "repeat")
            wall_changed, _, update = _timed_run(_fresh(changed_tasks, root / f"one-{repeats - 1}"), c1, cfg1, "changed")

    rows = rounds[0][0][2]["rows"]

    def med(values):  # None (the two-worker numbers of a one-GPU run) when a round has none
        values = list(values)
        return None if any(v is None for v in values) else statistics.median(values)

    def two(fn):
        return med(None if t is None else fn(o, t) for o, t, _ in rounds)

    wall1, wall2 = med(o[0] for o, _, _ in rounds), two(lambda o, t: t[0])
    bare_wall, bare_cpu = med(b[0] for *_, b in rounds), med(b[1] for *_, b in rounds)
    first = rounds[-1][0][2]
    return {
        "efficiency": med((rows / o[0]) / (bare.rows / b[0]) for o, _, b in rounds),
        "scaling_2w": two(lambda o, t: o[0] / t[0]),
        "repeat_fraction": wall_repeat / rounds[-1][0][0],
        "changed_fraction": changed / rows,
        "teacher_forward_fraction": update["teacher_forwards"] / rows,
        "efficiency_cpu": med((rows / o[1]) / (bare.rows / b[1]) for o, _, b in rounds),
        "labels_per_s_1w": rows / wall1,
        "labels_per_s_2w": None if wall2 is None else rows / wall2,
        "labels_per_s_bare": bare.rows / bare_wall,
        "labels_per_cpu_s_1w": med(rows / o[1] for o, _, _ in rounds),
        "labels_per_cpu_s_bare": bare.rows / bare_cpu,
        # what the OS gave the workers: CPU seconds per wall second (a busy shared machine gives
        # a session's processes one share however many they are: see BENCHMARKS.md)
        "cores_used_1w": med(o[1] / o[0] for o, _, _ in rounds),
        "cores_used_2w": two(lambda o, t: t[1] / t[0]),
        "labels_per_cpu_s_2w": two(lambda o, t: rows / t[1]),
        "rows": rows,
        "bare_rows": bare.rows,
        "shards": len(manifest.shards("train")),
        "batch": batch,
        "keep": keep,
        "img_size": img_size,
        "patches": patches,
        "repeats": repeats,
        "seconds": {"first_1w": [o[0] for o, _, _ in rounds], "first_2w": [t[0] for _, t, _ in rounds if t],
                    "bare": [b[0] for *_, b in rounds], "repeat_1w": wall_repeat, "changed_1w": wall_changed},
        "phase_seconds_1w": first["task_seconds"],
        "changed_rows": changed,
        "changed_teacher_forwards": update["teacher_forwards"],
        "changed_rows_reused": update["rows_reused"],
        "repeat_cached": repeat["cached"],
        "repeat_teacher_forwards": repeat["teacher_forwards"],
        "repeat_student_forwards": repeat["student_forwards"],
        "teacher": teacher,
        "student": student,
        "device": device,
        "precision": cfg1.compute.task_precision(),
        "machine": machine_line(),
    }


def _table(r: dict) -> str:
    ph = r["phase_seconds_1w"]
    lines = [
        f"{r['rows']} Fashion-MNIST rows in {r['shards']} shards at {r['img_size']}x{r['img_size']}, batch {r['batch']}, "
        f"keep {r['keep']} of {r['patches']}; "
        f"teacher {r['teacher']['embed_dim']}d x {r['teacher']['depth']}, student {r['student']['embed_dim']}d x "
        f"{r['student']['depth']}; {r.get('device', 'cpu')} {r.get('precision', 'fp32')}; {r['machine']}",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| efficiency (1 worker labels/s / bare masked_forward labels/s) | {r['efficiency']:.3f} "
        f"({r['labels_per_s_1w']:.1f} / {r['labels_per_s_bare']:.1f}) | >= 0.8 |",
        f"| efficiency per CPU second (worker process vs bare loop) | {r['efficiency_cpu']:.3f} "
        f"({r['labels_per_cpu_s_1w']:.1f} / {r['labels_per_cpu_s_bare']:.1f}) | |",
        f"| scaling_2w (2 workers / 1 worker) | {_f(r['scaling_2w'], '.2f')}x ({_f(r['labels_per_s_2w'], '.1f')} labels/s) | >= 1.7x |",
        f"| cores the workers got (CPU s / wall s), 1 worker / 2 workers | {r['cores_used_1w']:.2f} / {_f(r['cores_used_2w'], '.2f')} "
        f"| 1 / 2 |",
        f"| labels per CPU second, 1 worker / 2 workers | {r['labels_per_cpu_s_1w']:.1f} / {_f(r['labels_per_cpu_s_2w'], '.1f')} "
        f"| equal |",
        f"| repeat_fraction (identical rerun wall / first) | {r['repeat_fraction']:.4f} "
        f"({r['seconds']['repeat_1w']:.3f} s / {r['seconds']['first_1w'][-1]:.2f} s) | <= 0.02 |",
        f"| student update: keep sets changed / teacher forwards | {r['changed_fraction']:.4f} / "
        f"{r['teacher_forward_fraction']:.4f} ({r['changed_rows']} / {r['changed_teacher_forwards']} rows) | equal |",
        "",
        f"median of {r['repeats']} interleaved rounds; wall seconds: 1 worker {_list(r['seconds']['first_1w'])}, "
        f"2 workers {_list(r['seconds']['first_2w'])}, bare ({r['bare_rows']} rows) {_list(r['seconds']['bare'])}",
        "task seconds per phase (1 worker, last first run): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()),
    ]
    return "\n".join(lines)


def _f(value: float | None, fmt: str) -> str:
    """``value`` formatted, ``-`` when it was not measured (two workers on a one-GPU machine)."""
    return "-" if value is None else format(value, fmt)


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


@click.command("precompute")
@click.option("--samples", default=1024, show_default=True, type=click.IntRange(2), help="Fashion-MNIST training rows.")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1), help="Rows per shard (2+ shards).")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1), help="Teacher / student batch size.")
@click.option("--img-size", default="56", show_default=True, type=click.Choice(["28", "56"]), help="Input size (4x4 patches).")
@click.option("--keep", default=None, type=click.IntRange(1), help="Patches kept [default: half of them].")
@click.option("--perturb", default=0.01, show_default=True, type=click.FloatRange(0), help="Student update size (last block noise).")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1), help="Interleaved rounds (median).")
@click.option("--feed", is_flag=True, help="Instead: labels/s of the task's data path alone (no forward), before "
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
                     repeats: int, feed: bool, feed_images: int, feed_epochs: int, feed_resize: str,
                     feed_auto_augment: str | None, hash_cost: bool, device: str, as_json: bool) -> None:
    """Precompute end to end on a LocalCluster: efficiency, 2-worker scaling, repeat, incremental.

    With --feed: the data path alone (read, hash, decode, render student + teacher views, collate,
    normalise), today's against the pre-issue-17 path, per core and with 1 and 2 render threads.
    """
    if feed:
        from pipeline.bench.feed import feed_table, run_feed_bench

        resizes = tuple(r.strip() for r in feed_resize.split(",") if r.strip())
        bad = sorted(set(resizes) - {"pil", "torch"})
        if bad or not resizes:
            raise ConfigError(f"--feed-resize: {','.join(bad) or '(empty)'} is not pil or torch")
        if feed_auto_augment:
            from maskedkd.views import ViewSpec

            try:
                ViewSpec(auto_augment=feed_auto_augment)
            except ValueError as e:
                raise ConfigError(f"--feed-auto-augment: {e}") from None
        result = run_feed_bench(feed_images, feed_epochs, min(batch, 64), repeats=repeats, resizes=resizes,
                                auto_augment=feed_auto_augment)
        click.echo(json.dumps(result, indent=1) if as_json else feed_table(result))
        return
    from pipeline.bench.hashing import hash_cost_table, precompute_hash_cost

    if samples <= shard_size:
        raise ConfigError("--samples must exceed --shard-size: two workers need two shards or more")
    result = run_bench(samples, shard_size, batch, int(img_size), keep, perturb, repeats, device)
    if hash_cost:
        result["hash_cost"] = precompute_hash_cost(samples, shard_size, batch, int(img_size), keep, repeats)
    table = _table(result) + (hash_cost_table(result["hash_cost"], "first run, 1 worker") if hash_cost else "")
    click.echo(json.dumps(result, indent=1) if as_json else table)
