"""The fidelity spot-check: what masks cost the teacher on a seeded sample of a segment's views.

Before a segment with ``masking.keep: auto`` is labelled, one task renders a seeded sample of
the segment's views (across shards and view epochs), runs the unmasked teacher and the masked
teacher at each rung of the keep ladder (:func:`maskedkd.fidelity_curve`), and returns the
curves. The runner picks the smallest keep within the budget (:func:`maskedkd.choose_keep`);
``mkd-pipeline probe`` shows the same curves for several policies (docs/design.md §2,
"Fidelity guard"). Like a partition task it runs on the Dask cluster and is a pure function of
its inputs, so the run lock can reuse its result.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from maskedkd import FORWARD_POLICIES, fidelity_curve, needs_saliency, teacher_macs
from maskedkd.digests import view_spec_fingerprint
from maskedkd.rendering import render_batch
from maskedkd.views import ViewSpec, shard_views
from pipeline._fingerprint import sha256_json
from pipeline.data.manifest import DatasetManifest
from pipeline.data.shards import Sample, read_shard
from pipeline.fingerprints import unless_default
from pipeline.labels.contract import RenderSpec, segment_view_epochs, shard_refs
from pipeline.precompute.spec import ModelSpec
from pipeline.precompute.task import autocast_for, load_model
from pipeline.precompute.worker import worker_device

PROBE_POLICIES = ("student", "random", "student_inverse")


def probe_policies() -> tuple[str, ...]:
    """What ``mkd-pipeline probe`` measures: :data:`PROBE_POLICIES` and every registered forward
    policy (``lowres``, ...), read when called so a policy registered later is measured too."""
    return PROBE_POLICIES + tuple(sorted(FORWARD_POLICIES))


@dataclass(frozen=True)
class ProbeRow:
    """One sampled view: row ``row`` of a shard (of its first ``rows`` used), at ``view_epoch``."""

    shard: str
    shard_path: str
    rows: int
    row: int
    view_epoch: int


@dataclass(frozen=True)
class ProbeTask:
    """Everything one spot-check needs; see :func:`run_probe`."""

    segment: int
    rows: tuple[ProbeRow, ...]
    view_spec: dict[str, Any]
    view_spec_fingerprint: str
    view_seed: int
    teacher: ModelSpec
    student: ModelSpec | None  # None when no policy reads saliency
    policies: tuple[str, ...]
    keeps: tuple[int | None, ...]
    num_classes: int
    batch_size: int = 64
    device: str = "auto"
    precision: str = "fp32"
    saliency_scale: float = 1.0  # masking.saliency_scale

    @property
    def fingerprint(self) -> str:
        """What the result is a pure function of (weights, sampled views, policies, keeps, precision)."""
        # empty for Pillow: probes recorded before `data.resize` keep their fingerprint (pipeline.fingerprints)
        resize = self.teacher.render.resize_record()
        return sha256_json({
            "teacher": self.teacher.fingerprint, "teacher_render": self.teacher.render.record(),
            "student": None if self.student is None else [self.student.fingerprint, self.student.render.record()],
            "rows": [[r.shard, r.rows, r.row, r.view_epoch] for r in self.rows],
            "view": [self.view_spec_fingerprint, self.view_seed, *([resize] if resize else [])],
            "policies": list(self.policies), "keeps": list(self.keeps), "precision": self.precision,
            **unless_default("saliency_scale", self.saliency_scale, 1.0),  # probes recorded before it stay fresh
        })

    @property
    def id(self) -> str:
        """A short stable identifier for logs and Dask keys."""
        return f"probe-s{self.segment}-{self.fingerprint[:10]}"


def sample_rows(manifest: DatasetManifest, split: str, subset: int | None, view_epochs: Sequence[int],
                n: int, seed: int) -> list[ProbeRow]:
    """A seeded sample of ``n`` views (without replacement) over every used row of every shard and
    every view epoch, in (shard, view epoch, row) order."""
    refs = shard_refs(manifest, split, subset)
    per_epoch = sum(r.rows for r in refs)
    total = per_epoch * len(view_epochs)
    rng = np.random.default_rng(int(sha256_json(["probe", seed, list(view_epochs)])[:16], 16))
    flat = np.sort(rng.choice(total, size=min(n, total), replace=False))
    starts = np.cumsum([0] + [r.rows for r in refs])
    out = []
    for f in flat:
        e, pos = divmod(int(f), per_epoch)
        i = int(np.searchsorted(starts, pos, side="right")) - 1
        ref = refs[i]
        out.append(ProbeRow(ref.name, str(ref.path), ref.rows, pos - int(starts[i]), int(view_epochs[e])))
    return sorted(out, key=lambda r: (r.shard, r.view_epoch, r.row))


def plan_probe(cfg, segment: int, *, manifest: DatasetManifest, teacher: ModelSpec, student: ModelSpec | None,
               keeps: Sequence[int | None], policies: Sequence[str], samples: int | None = None,
               device: str = "auto") -> ProbeTask:
    """The spot-check of segment ``segment``'s views for these policies and keeps.

    Args:
        student: the checkpoint whose saliency the student policies read (c_i, as for the labels).
        samples: views in the sample; default ``masking.probe_samples``.
    """
    spec = cfg.views.view_spec()
    view_epochs = segment_view_epochs(range(*cfg.schedule.segments()[segment]), cfg.views.pool_size, spec.repeats)
    rows = sample_rows(manifest, cfg.data.train, cfg.data.subset, view_epochs,
                       samples or cfg.masking.probe_samples, cfg.views.seed + 7919 * segment)
    saliency = any(needs_saliency(p) for p in policies)
    return ProbeTask(
        segment=segment, rows=tuple(rows), view_spec=spec.to_dict(), view_spec_fingerprint=view_spec_fingerprint(spec),
        view_seed=cfg.views.seed, teacher=teacher, student=student if saliency else None, policies=tuple(policies),
        keeps=tuple(keeps), num_classes=cfg.data.num_classes, batch_size=cfg.compute.batch_size, device=device,
        precision=cfg.compute.task_precision(), saliency_scale=cfg.masking.saliency_scale if saliency else 1.0,
    )


def _render_rows(t: ProbeTask) -> tuple[dict[str, torch.Tensor | None], torch.Tensor, list[int]]:
    """The sampled views rendered for the teacher and the student, their labels and view seeds."""
    spec = ViewSpec.from_dict(t.view_spec)
    by_shard: dict[str, list[ProbeRow]] = defaultdict(list)
    for r in t.rows:
        by_shard[r.shard_path].append(r)
    renders: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    labels: list[int] = []
    seeds: list[int] = []
    for path, rows in by_shard.items():
        samples: list[Sample] = []
        for s in read_shard(path, num_classes=t.num_classes):
            if len(samples) >= rows[0].rows:
                break
            samples.append(s)
        keys = [s.key for s in samples]
        # a sample of views for the teacher's fidelity: batch mixing's per-batch draws (which need the
        # epoch's order) are stood in for by per-pair draws, the same distribution of lambda and box
        like = replace(spec, mix_mode="pair") if spec.mix_mode == "batch" else spec
        for epoch in sorted({r.view_epoch for r in rows}):
            views = shard_views(like, t.view_seed, epoch, keys, shard=rows[0].shard)
            by_key = {s.key: (s.image, v) for s, v in zip(samples, views)}
            idx = [r.row for r in rows if r.view_epoch == epoch]
            for who in ("teacher", "student"):
                m = getattr(t, who)
                if m is None:
                    continue
                render: RenderSpec = m.render
                renders[who].append(render_batch([samples[i].image for i in idx], [views[i] for i in idx], render.size,
                                                 mean=render.mean, std=render.std, interpolation=render.interpolation,
                                                 partners=lambda k: by_key[k], resize=render.resize))  # noqa: B023 (called now)
            labels += [samples[i].label for i in idx]
            seeds += [views[i].seed for i in idx]
    images = {who: torch.cat(v) if v else None for who, v in renders.items()}
    return images, torch.tensor(labels, dtype=torch.long), seeds


def run_probe(item: dict) -> dict[str, Any]:
    """Dask task body: the fidelity curves of ``item["task"]``; returns a small JSON-able dict.

    ``curves[policy]`` lists one :class:`maskedkd.Rung` (as a dict) per keep; ``teacher_forwards``
    and ``teacher_macs`` are what the spot-check itself spent (the unmasked forward once, then
    each masked rung of each policy).
    """
    t: ProbeTask = item["task"]
    if t.device == "auto":
        t = replace(t, device=worker_device())
    images, labels, seeds = _render_rows(t)
    teacher = load_model(t.teacher, t.device)
    student = load_model(t.student, t.device) if t.student is not None else None
    curves: dict[str, list[dict[str, Any]]] = {}
    forwards, macs = 0, 0
    n = len(labels)
    assert images["teacher"] is not None  # rendered for every probe
    for policy in t.policies:
        with torch.inference_mode():
            curve = fidelity_curve(teacher, images["teacher"], labels, t.keeps, policy, seeds=seeds,
                                   student=student if needs_saliency(policy) else None,
                                   student_images=images["student"] if needs_saliency(policy) else None,
                                   batch_size=t.batch_size, autocast=autocast_for(t.device, t.precision),
                                   saliency_scale=t.saliency_scale)
        curves[policy] = [r.to_dict() for r in curve]
        masked = [r for r in curve if r.keep is not None]
        # the unmasked reference forward, then each masked rung
        forwards += n * (1 + len(masked))
        macs += n * (teacher_macs(teacher, None) + sum(r.macs for r in masked))
    unmasked_top1 = next((r["top1"] for c in curves.values() for r in c if r["keep"] is None), None)
    return {"id": t.id, "segment": t.segment, "samples": n, "curves": curves, "unmasked_top1": unmasked_top1,
            "teacher_forwards": forwards, "teacher_macs": macs}
