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
  saliency) and the fraction of rows the precompute ran the teacher on (they must be equal);
- ``macs``: what the first run's labels cost, counted as the run lock counts them
  (:func:`pipeline.precompute.costs.net_cost_fields`): the masked teacher's MACs, the student's
  saliency forwards, spot-checks (none here: no ``keep: auto``, tolerance 0), net, and the net
  ratio against full-teacher KD (every row through the unmasked teacher).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskedkd import cls_attention, is_forward_policy, select_keep, teacher_forward
from maskedkd.rendering import render_batch
from maskedkd.views import ViewSpec, shard_views
from pipeline.bench.fixtures import (
    VIT,
    fashion_mnist_dataset,
    fresh_tasks,
    plan,
    save_vit,
    stage_doc,
    timed_run,
    vit_kwargs,
    warm_workers,
    write_stage,
)
from pipeline.bench.timing import machine_line
from pipeline.data.shards import read_shard
from pipeline.errors import ConfigError
from pipeline.models import create_model
from pipeline.precompute.cluster import open_cluster
from pipeline.precompute.costs import net_cost_fields
from pipeline.precompute.task import autocast_for


def rendered_batches(tasks: Sequence, who: str, batch: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``(task, images)`` per batch: each task's views rendered as the task renders them for its
    ``who`` ("student" or "teacher"), in tar order and batches of ``batch`` (default: the task's),
    computed here (read shard, views, render) independently of :mod:`pipeline.precompute.task`."""
    for t in tasks:
        samples = list(read_shard(t.shard_path))[: t.limit]
        views = shard_views(ViewSpec.from_dict(t.view_spec), t.view_seed, t.view_epoch, [s.key for s in samples],
                            shard=t.shard, batches=t.mix_batches)
        r, size = getattr(t, who).render, batch or t.batch_size
        for i in range(0, len(samples), size):
            yield t, render_batch([s.image for s in samples[i:i + size]], views[i:i + size], r.size,
                                  mean=r.mean, std=r.std, interpolation=r.interpolation, resize=r.resize)


def student_keep_sets(student, tasks: Sequence):
    """bool [rows, patches]: the keep sets of ``student`` on the views of ``tasks``, computed
    here (the student's own rendering, ``cls_attention`` + ``select_keep``, in the tasks' batch
    size), independently of :mod:`pipeline.precompute.task`."""
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
        self.batches = []
        for _, images in rendered_batches(tasks, "teacher", batch):
            if self.rows >= rows:
                break
            self.batches.append(images)
        n = teacher.patch_embed.num_patches
        gen = torch.Generator().manual_seed(0)
        self.policy, self.keep = tasks[0].policy, keep
        self.idx = [None if is_forward_policy(self.policy) else
                    torch.rand(len(b), n, generator=gen).argsort(1)[:, :keep].sort(1).values for b in self.batches]
        self.device, self.precision = device, precision
        if device.startswith("cuda"):  # the tasks' copies: pinned host memory, copied without blocking
            self.batches = [b.pin_memory().to(device, non_blocking=True) for b in self.batches]
            self.idx = [None if i is None else i.to(device) for i in self.idx]
        self.teacher = teacher.eval().to(device)
        self.run()  # warm-up

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)

    def run(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one pass."""
        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            for b, k in zip(self.batches, self.idx):
                teacher_forward(self.teacher, b, self.policy, self.keep, k)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.thread_time() - c0


@dataclass
class _Setup:
    """What every timed run of one benchmark shares: configs, planned tasks, the bare baseline."""

    manifest: Any
    cfg1: Any  # one worker
    cfg2: Any  # two workers
    tasks: list
    changed_tasks: list  # the same rows planned with the updated student
    changed: int  # rows whose keep set the update changed, computed here
    bare: _Bare


def _check_device(device: str) -> int:
    """GPUs the benchmark can use (0 on the CPU); raises ConfigError when ``device`` cannot run."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: cpu or cuda, got {device!r} (GPU workers each take their own GPU)")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda: torch sees no CUDA device")
    return gpus


def _setup(root: Path, samples: int, shard_size: int, batch: int, img_size: int, keep: int, perturb: float,
           device: str) -> _Setup:
    """Dataset, checkpoints (c1: c0 after a small update), configs, tasks and the bare baseline under ``root``."""
    teacher, student = vit_kwargs(img_size)
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
    bare = _Bare(create_model(VIT, teacher, weights=t_path), tasks, keep, batch, rows=2 * batch,
                 device=device, precision=cfg1.compute.task_precision())
    return _Setup(manifest, cfg1, cfg2, tasks, changed_tasks, int((keep0 != keep1).any(axis=1).sum()), bare)


def _time_runs(s: _Setup, root: Path, repeats: int, two_workers: bool, device: str) -> dict[str, Any]:
    """The timed precompute runs: ``repeats`` interleaved rounds of first runs (1 and 2 workers,
    the bare baseline), then an identical rerun and a rerun after the student's update."""
    kw: dict[str, Any] = dict(threads_per_worker=1, device=device, dashboard=False, announce=None)
    with contextlib.ExitStack() as stack:
        c1 = stack.enter_context(open_cluster(workers=1, **kw))
        c2 = stack.enter_context(open_cluster(workers=2, **kw)) if two_workers else None
        warm_workers(c1, s.cfg1, s.tasks, root / "warm", "warm1")
        if c2 is not None:
            warm_workers(c2, s.cfg2, s.tasks, root / "warm", "warm2")
        rounds = []
        for r in range(repeats):
            one = timed_run(fresh_tasks(s.tasks, root / f"one-{r}"), c1, s.cfg1, f"first1-{r}")
            two = timed_run(fresh_tasks(s.tasks, root / f"two-{r}"), c2, s.cfg2, f"first2-{r}") if c2 else None
            rounds.append((one, two, s.bare.run()))
        last = fresh_tasks(s.tasks, root / f"one-{repeats - 1}")
        wall_repeat, _, repeat = timed_run(last, c1, s.cfg1, "repeat")
        changed = fresh_tasks(s.changed_tasks, root / f"one-{repeats - 1}")
        wall_changed, _, update = timed_run(changed, c1, s.cfg1, "changed")
    return {"rounds": rounds, "wall_repeat": wall_repeat, "repeat": repeat, "wall_changed": wall_changed,
            "update": update}


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
    gpus = _check_device(device)
    patches = (img_size // 4) ** 2
    keep = keep or (patches + 1) // 2
    if not 1 <= keep <= patches:
        raise ConfigError(f"--keep: {keep} is not between 1 and {patches} (patches at {img_size}x{img_size})")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as tmp:
        root = Path(tmp)
        s = _setup(root, samples, shard_size, batch, img_size, keep, perturb, device)
        timings = _time_runs(s, root, repeats, device == "cpu" or gpus >= 2, device)
    return _result(s, timings, batch=batch, keep=keep, img_size=img_size, repeats=repeats, device=device)


def _result(s: _Setup, timings: dict[str, Any], *, batch: int, keep: int, img_size: int, repeats: int,
            device: str) -> dict[str, Any]:
    """The benchmark's record: medians over the rounds, ratios, counters."""
    rounds, repeat, update = timings["rounds"], timings["repeat"], timings["update"]
    wall_repeat = timings["wall_repeat"]
    rows = rounds[0][0][2]["rows"]
    bare = s.bare

    def med(values):  # None (the two-worker numbers of a one-GPU run) when a round has none
        values = list(values)
        return None if any(v is None for v in values) else statistics.median(values)

    def two(fn):
        return med(None if t is None else fn(o, t) for o, t, _ in rounds)

    wall1, wall2 = med(o[0] for o, _, _ in rounds), two(lambda o, t: t[0])
    bare_wall, bare_cpu = med(b[0] for *_, b in rounds), med(b[1] for *_, b in rounds)
    first = rounds[-1][0][2]
    teacher, student = vit_kwargs(img_size)
    return {
        "macs": label_macs(s.cfg1, first),
        "efficiency": med((rows / o[0]) / (bare.rows / b[0]) for o, _, b in rounds),
        "scaling_2w": two(lambda o, t: o[0] / t[0]),
        "repeat_fraction": wall_repeat / rounds[-1][0][0],
        "changed_fraction": s.changed / rows,
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
        "shards": len(s.manifest.shards("train")),
        "batch": batch,
        "keep": keep,
        "img_size": img_size,
        "patches": (img_size // 4) ** 2,
        "repeats": repeats,
        "seconds": {"first_1w": [o[0] for o, _, _ in rounds], "first_2w": [t[0] for _, t, _ in rounds if t],
                    "bare": [b[0] for *_, b in rounds], "repeat_1w": wall_repeat, "changed_1w": timings["wall_changed"]},
        "phase_seconds_1w": first["task_seconds"],
        "changed_rows": s.changed,
        "changed_teacher_forwards": update["teacher_forwards"],
        "changed_rows_reused": update["rows_reused"],
        "repeat_cached": repeat["cached"],
        "repeat_teacher_forwards": repeat["teacher_forwards"],
        "repeat_student_forwards": repeat["student_forwards"],
        "teacher": teacher,
        "student": student,
        "device": device,
        "precision": s.cfg1.compute.task_precision(),
        "machine": machine_line(),
    }


def label_macs(cfg, summary: dict[str, Any]) -> dict[str, Any]:
    """A first run's label MACs as the run lock records them, per label and in total: teacher-only,
    saliency, spot-checks, net, the full teacher's, and the two ratios against full-teacher KD."""
    fields = net_cost_fields(cfg, summary, None)
    teacher, full = int(summary["teacher_macs"]), fields["full_teacher_macs"]
    spot = int(fields.get("spot_check_macs", 0))
    return {"teacher": teacher, "saliency": fields["saliency_macs"], "spot_checks": spot, "net": fields["net_macs"],
            "full_teacher": full, "rows": int(summary["rows"]), "teacher_ratio": teacher / full,
            "net_ratio": fields["net_macs"] / full}


def macs_line(m: dict[str, Any]) -> str:
    """A table row of :func:`label_macs`: per-label MACs and the net ratio against full-teacher KD."""
    per = {k: m[k] / max(1, m["rows"]) / 1e6 for k in ("teacher", "saliency", "spot_checks", "net", "full_teacher")}
    return (f"| MMACs per label: teacher / saliency / spot-checks / net (full teacher {per['full_teacher']:.3f}) | "
            f"{per['teacher']:.3f} / {per['saliency']:.3f} / {per['spot_checks']:.3f} / {per['net']:.3f} "
            f"(teacher-only {m['teacher_ratio']:.3f}x, net {m['net_ratio']:.3f}x full-teacher KD) | net < 1x |")


def precompute_table(r: dict) -> str:
    """Markdown of :func:`run_bench`'s record: the measures against their targets."""
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
        f"| scaling_2w (2 workers / 1 worker) | {dash_or(r['scaling_2w'], '.2f')}x ({dash_or(r['labels_per_s_2w'], '.1f')} labels/s) | >= 1.7x |",
        f"| cores the workers got (CPU s / wall s), 1 worker / 2 workers | {r['cores_used_1w']:.2f} / {dash_or(r['cores_used_2w'], '.2f')} "
        f"| 1 / 2 |",
        f"| labels per CPU second, 1 worker / 2 workers | {r['labels_per_cpu_s_1w']:.1f} / {dash_or(r['labels_per_cpu_s_2w'], '.1f')} "
        f"| equal |",
        f"| repeat_fraction (identical rerun wall / first) | {r['repeat_fraction']:.4f} "
        f"({r['seconds']['repeat_1w']:.3f} s / {r['seconds']['first_1w'][-1]:.2f} s) | <= 0.02 |",
        f"| student update: keep sets changed / teacher forwards | {r['changed_fraction']:.4f} / "
        f"{r['teacher_forward_fraction']:.4f} ({r['changed_rows']} / {r['changed_teacher_forwards']} rows) | equal |",
        *([macs_line(r["macs"])] if "macs" in r else []),  # records written before it have none
        "",
        f"median of {r['repeats']} interleaved rounds; wall seconds: 1 worker {_list(r['seconds']['first_1w'])}, "
        f"2 workers {_list(r['seconds']['first_2w'])}, bare ({r['bare_rows']} rows) {_list(r['seconds']['bare'])}",
        "task seconds per phase (1 worker, last first run): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()),
    ]
    return "\n".join(lines)


def dash_or(value: float | None, fmt: str) -> str:
    """``value`` formatted, ``-`` when it was not measured (two workers on a one-GPU machine)."""
    return "-" if value is None else format(value, fmt)


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)
