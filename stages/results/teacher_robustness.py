"""How well a teacher tolerates masks: test top-1 on the full view and on random-mask views, and how
often the masked prediction agrees with the teacher's own unmasked one.

The masked forward is maskedkd's (:func:`maskedkd.masked_forward`, the one precompute labels with),
the keep sets are the ``random`` policy's (:func:`maskedkd.keep_indices`, seeded per image), the
images the first N of the test split rendered as evaluation renders them (whole image, no flip), so
the numbers mean what the label store's masked labels mean.

Run:    python stages/results/teacher_robustness.py TEACHER [TEACHER ...] [--images 2000] [--keep 24]
        TEACHER: a weights file, or a stage file already run with ``--until teacher-finetune`` (its
        run lock names the fine-tuned teacher; ``teacher`` where it has no fine-tune).
        (--images 0: all 10,000 test images; --config: the stage file naming the model, its kwargs
        and the data, default stages/results/teacher-v2.yaml)
Prints: one row per weights file: unmasked top-1, masked top-1 at keep K of N, agreement.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import torch

from maskedkd import keep_indices, masked_forward
from maskedkd.rendering import render_batch
from pipeline._lock import LOCK_NAME, RunLock
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import Sample, read_shard
from pipeline.labels.contract import render_spec, shard_refs
from pipeline.models import create_model
from pipeline.train.stream import derive_seed

CONFIG = Path(__file__).resolve().parent / "teacher-v2.yaml"


def weights_of(teacher: str) -> str:
    """The weights file ``teacher`` names: itself, or the fine-tuned (else loaded) teacher in the run
    lock of the stage file ``teacher``."""
    if not teacher.endswith((".yaml", ".yml")):
        return teacher
    run_dir = load_config(teacher).run_dir
    assert run_dir is not None  # filled in by validation (runs/<name>)
    lock = RunLock(run_dir / LOCK_NAME)
    rec = lock.output("teacher-finetune", "weights") or lock.output("teacher", "weights")
    if rec is None:
        raise SystemExit(f"{teacher}: no teacher in its run lock; run `mkd-pipeline run {teacher} "
                         f"--until teacher-finetune` first")
    return str(rec["path"])


def batches(cfg, images: int | None, batch_size: int = 250) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` test images (None: all), rendered for the teacher, with their labels."""
    render = render_spec(cfg.data, cfg.teacher)
    chunk: list[Sample] = []
    refs = shard_refs(load_manifest(cfg.data.root), cfg.data.val, images)
    samples = (s for ref in refs for s in read_shard(ref.path, sha256=ref.sha256, limit=ref.rows))
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield _rendered(chunk, render)
            chunk = []
    if chunk:
        yield _rendered(chunk, render)


def _rendered(chunk: list[Sample], render) -> tuple[torch.Tensor, torch.Tensor]:
    views = [render.eval_view(s.key, *s.image.size) for s in chunk]
    images = render_batch([s.image for s in chunk], views, render.size, mean=render.mean, std=render.std,
                          interpolation=render.interpolation, resize=render.resize)
    return images, torch.tensor([s.label for s in chunk])


@torch.no_grad()
def measure(weights: str, cfg, *, images: int | None, keep: int, draws: int, seed: int) -> dict[str, float]:
    """``{"unmasked", "masked", "agreement", "images"}`` of the teacher in ``weights``: ``draws`` random
    keep sets of ``keep`` patches per image, drawn from ``(seed, image index, draw)``."""
    t = cfg.teacher
    model = create_model(t.model, t.kwargs, weights=weights).eval()
    grid = tuple(model.patch_embed.grid_size)  # type: ignore[union-attr, arg-type]
    full_ok = masked_ok = agree = n = 0
    for x, y in batches(cfg, images):
        full = masked_forward(model, x).argmax(1)
        full_ok += int((full == y).sum())
        for d in range(draws):
            seeds = [derive_seed("teacher-robustness", seed, n + i, d) for i in range(len(y))]
            idx = keep_indices("random", keep, grid=grid, seeds=seeds)
            masked = masked_forward(model, x, idx).argmax(1)
            masked_ok += int((masked == y).sum())
            agree += int((masked == full).sum())
        n += len(y)
    return {"images": n, "unmasked": full_ok / n, "masked": masked_ok / (n * draws), "agreement": agree / (n * draws)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teachers", nargs="+", help="weights files (.safetensors or a torch state dict) or stage files "
                                               "whose run lock names the (fine-tuned) teacher")
    p.add_argument("--config", default=str(CONFIG), help="stage file naming the teacher model and the data")
    p.add_argument("--images", type=int, default=2000, help="first N test images (0: all)")
    p.add_argument("--keep", type=int, default=24, help="patches kept of the teacher's grid")
    p.add_argument("--draws", type=int, default=1, help="random keep sets per image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    n = cfg.num_patches
    print(f"| teacher | images | unmasked top-1 | masked top-1 (keep {args.keep}/{n}, random) | agreement |")
    print("|---|---:|---:|---:|---:|")
    for teacher in args.teachers:
        r = measure(weights_of(teacher), cfg, images=args.images or None, keep=args.keep, draws=args.draws, seed=args.seed)
        print(f"| {teacher} | {r['images']} | {r['unmasked']:.4f} | {r['masked']:.4f} | {r['agreement']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
