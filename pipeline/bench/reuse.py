"""``mkd-pipeline bench reuse``: the share of a second student run's labels served from the store, per policy.

For each masking policy (every registered one by default), on a store of its own: a first run
(the teacher trained from scratch, c_0, then per milestone: precompute, train), then on the same
store two runs that each differ from the first in one student input only, ``student.init_seed``
and ``train.lr``, each in a run folder of its own. A policy that reads no student saliency
(``maskedkd.needs_saliency`` false: random, none) labels without the student, so both later runs
should be served every label from the store; a student-guided policy's masks come from the
student's checkpoints c_i, so another init_seed recomputes them all and another lr every segment
but the first (c_0 does not depend on the learning rate).

Counts come from each run's lock (its ``precompute-i`` stages): rows needed, rows computed (one
teacher forward each), and served = needed - computed (rows of partitions found cached plus
rows reused from partitions with matching keep sets). "teacher trained" says whether the run
wrote the teacher's content-addressed weights under ``<store>/teachers`` (the first run does).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from maskedkd import needs_saliency, policy_names
from pipeline._lock import LOCK_NAME, RunLock
from pipeline.bench.fixtures import GRAY, STUDENT, TEACHER, VIT, fashion_mnist_dataset, write_stage
from pipeline.bench.timing import machine_line
from pipeline.config import set_fields
from pipeline.run.runner import Runner

LR = 2e-3
# The later runs: each changes one student input of the first run.
VARIANTS: dict[str, dict[str, Any]] = {"first": {}, "init_seed": {"student.init_seed": 1}, "lr": {"train.lr": 2 * LR}}


def bench_doc(root: Path, data: Path, store: Path, *, policy: str, keep: int, epochs: int, every: int,
              workers: int) -> dict[str, Any]:
    """The stage config of one bench run: a teacher trained 1 epoch, the student ``epochs`` epochs
    with a milestone every ``every`` epochs, labels in ``store``, the run folder under ``root``."""
    return {
        "name": f"bench-reuse-{policy}",
        "run_dir": str(root / "run"),
        "data": {"root": str(data), "train": "train", "val": "test", "num_classes": 10,
                 "mean": list(GRAY[0]), "std": list(GRAY[1]), "interpolation": "bilinear"},
        "teacher": {"model": VIT, "kwargs": dict(TEACHER),
                    "train": {"epochs": 1, "lr": LR, "warmup_epochs": 0, "batch_size": 64, "seed": 0}},
        "student": {"model": VIT, "kwargs": dict(STUDENT), "init_seed": 0},
        "schedule": {"epochs": epochs, "every": every, "lag": 0},
        "masking": {"policy": policy, "tolerance": 0, **({"keep": keep} if policy != "none" else {})},
        "views": {"seed": 0, "scale": [0.6, 1.0], "hflip": 0.5},
        "labels": {"store": str(store), "topk": 10, "temperatures": [1.0]},
        "compute": {"workers": workers, "threads_per_worker": 1, "train_threads": 1, "batch_size": 256,
                    "device": "cpu", "timeout_s": 600},
        "train": {"lr": LR, "warmup_epochs": 0, "batch_size": 64, "eval_every": 1},
    }


def label_counts(lock: RunLock) -> dict[str, int]:
    """Rows needed, computed (teacher forwards) and served from the store, over a run's precompute stages."""
    infos = [lock.info(name) for name in lock.stages if name.startswith("precompute-")]
    needed = sum(int(i["rows"]) for i in infos)
    computed = sum(int(i["rows_computed"]) for i in infos)
    return {"rows": needed, "rows_computed": computed, "rows_served": needed - computed,
            "partitions": sum(int(i["partitions"]) for i in infos), "cached": sum(int(i["cached"]) for i in infos),
            "teacher_forwards": sum(int(i["teacher_forwards"]) for i in infos),
            "student_forwards": sum(int(i["student_forwards"]) for i in infos)}


def served_share(counts: dict[str, int]) -> float:
    """Rows served from the store / rows needed (1.0 when none were needed)."""
    return counts["rows_served"] / counts["rows"] if counts["rows"] else 1.0


def _teacher_files(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "teachers").glob("*.pth")}


def run_variant(root: Path, data: Path, store: Path, *, policy: str, variant: str, keep: int, epochs: int, every: int,
                workers: int) -> dict[str, Any]:
    """One run of ``policy`` with the changes of ``VARIANTS[variant]`` on ``store``; its counts and wall time."""
    doc = set_fields(copy.deepcopy(bench_doc(root / variant, data, store, policy=policy, keep=keep, epochs=epochs,
                                             every=every, workers=workers)), VARIANTS[variant])
    (root / variant).mkdir(parents=True, exist_ok=True)
    cfg = write_stage(root / variant / "stage.yaml", doc)
    before = _teacher_files(store)
    t0 = time.perf_counter()
    outcome = Runner(cfg, progress=False, echo=lambda _line: None, workers=workers).run()
    seconds = time.perf_counter() - t0
    counts = label_counts(RunLock(Path(cfg.run_dir) / LOCK_NAME))
    return {"policy": policy, "needs_saliency": needs_saliency(policy), "variant": variant,
            "changes": VARIANTS[variant], **counts, "served_share": served_share(counts),
            "teacher_trained": _teacher_files(store) != before, "val_top1": outcome.final_accuracy,
            "seconds": seconds}


def run_bench(*, samples: int, shard_size: int, test_samples: int, epochs: int, every: int, keep: int,
              policies: Sequence[str] | None, workers: int) -> dict[str, Any]:
    """Every policy's three runs (first, another init_seed, another lr) on a store of its own."""
    policies = list(policies or policy_names())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        root = Path(tmp)
        fashion_mnist_dataset(root / "data", samples, shard_size, test_samples=test_samples)
        for policy in policies:
            for variant in VARIANTS:
                rows.append(run_variant(root / policy, root / "data", root / policy / "store", policy=policy,
                                        variant=variant, keep=keep, epochs=epochs, every=every, workers=workers))
    return {"machine": machine_line(), "samples": samples, "shard_size": shard_size, "test_samples": test_samples,
            "epochs": epochs, "every": every, "keep": keep, "workers": workers, "rows": rows}


def reuse_table(result: dict[str, Any]) -> str:
    """Markdown: per policy and run, rows needed / served from the store / computed, and more."""
    lines = [f"Label reuse across student runs: {result['samples']} Fashion-MNIST images in shards of "
             f"{result['shard_size']}, {result['epochs']} student epochs, a milestone every {result['every']}, "
             f"keep {result['keep']} of 49, {result['workers']} Dask workers; {result['machine']}",
             "",
             "| policy | reads saliency | run | rows needed | served from store | share served | teacher forwards "
             "| student forwards | partitions cached | teacher trained | val top-1 | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in result["rows"]:
        run = "first" if not r["changes"] else ", ".join(f"{k}={v:g}" for k, v in r["changes"].items())
        top1 = "-" if r["val_top1"] is None else f"{r['val_top1']:.4f}"
        lines.append(f"| {r['policy']} | {'yes' if r['needs_saliency'] else 'no'} | {run} | {r['rows']} | "
                     f"{r['rows_served']} | {r['served_share']:.0%} | {r['teacher_forwards']} | {r['student_forwards']} "
                     f"| {r['cached']}/{r['partitions']} | {'yes' if r['teacher_trained'] else 'no'} | {top1} "
                     f"| {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"
