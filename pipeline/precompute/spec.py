"""The inputs of one precompute task, as plain picklable values, and their fingerprints.

A task is a pure function of these values; its output partition's path is derived from the
fingerprints, so the same inputs always land on (and are served from) the same path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline._fingerprint import sha256_file, sha256_json
from pipeline._gpu import uses_tf32
from pipeline._version import __version__
from pipeline.config import StageConfig
from pipeline.fingerprints import unless_default
from pipeline.labels.contract import RenderSpec, render_spec
from pipeline.models import create_model, model_fingerprint
from pipeline.paths import file_size, is_uri, join, local_root, write_bytes

CHECKPOINTS = "checkpoints"  # under a remote store: the weights files workers load


@dataclass(frozen=True)
class ModelSpec:
    """A model loadable on any worker: timm name + kwargs + weights file, and its fingerprint."""

    name: str
    kwargs: dict[str, Any]
    weights: str
    fingerprint: str
    render: RenderSpec


def model_spec(cfg: StageConfig, who: str, weights: str | Path, fingerprint: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of the stage's ``teacher`` or ``student`` with the weights file ``weights``.

    Args:
        fingerprint: the weights' fingerprint when already known (e.g. from the run lock);
            otherwise the model is loaded once to compute it.
    """
    m = getattr(cfg, who)
    if fingerprint is None:
        fingerprint = model_fingerprint(create_model(m.model, m.kwargs, weights=weights), m.model)
    return ModelSpec(m.model, dict(m.kwargs), weights_for_workers(cfg.labels.store, weights), fingerprint,
                     render_spec(cfg.data, m))


def weights_for_workers(store: str, weights: str | Path) -> str:
    """Where workers load the weights file ``weights`` from (docs/design.md §6, "Where checkpoints live").

    With a local (or ``file://``) store the workers share the client's filesystem, and load the
    file where it is. With the store in an object store they may share nothing else: a local
    file is published, content-addressed, as ``<store>/checkpoints/<stem>-<sha256[:16]><suffix>``
    (uploaded once; the same bytes always get the same name) and that URI is returned.
    """
    if local_root(store) is not None or is_uri(weights):
        return str(weights)
    local = Path(weights)
    stat = local.stat()
    target = join(store, CHECKPOINTS, f"{local.stem}-{_sha256(str(local.absolute()), stat.st_size, stat.st_mtime_ns)[:16]}"
                                      f"{local.suffix}")
    if file_size(target) != stat.st_size:  # else published by an earlier stage or run
        write_bytes(target, local.read_bytes())
    return target


@functools.lru_cache(maxsize=32)
def _sha256(path: str, _size: int, _mtime_ns: int) -> str:
    """sha256 of a file version (several stages publish the same teacher; its hash takes seconds)."""
    return sha256_file(path)


@dataclass(frozen=True)
class PartitionTask:
    """Everything one (shard, view epoch) partition needs; :func:`pipeline.precompute.task.run_shard`
    computes a shard's partitions of several view epochs in one Dask task."""

    shard: str  # name without .tar, e.g. train-000000
    shard_path: str
    shard_sha256: str
    limit: int | None  # use only the first `limit` samples of the shard (data.subset)
    view_epoch: int
    view_spec: dict[str, Any]
    view_spec_fingerprint: str
    view_seed: int
    teacher: ModelSpec
    student: ModelSpec | None  # None when the policy reads no saliency
    policy: str
    keep: int | None  # None: all patches (policy none, or keep = the teacher's patch count)
    tolerance: int
    spot_check: int
    topk: int | str
    temperatures: tuple[float, ...]
    num_classes: int
    store: str
    batch_size: int = 64
    device: str = "auto"  # "auto": the worker's device (pipeline.precompute.worker.worker_device)
    precision: str = "fp32"
    feed_workers: int | None = None  # decode/render threads (None: the worker's threads)
    decode: str = "pil"  # JPEG decoder: pil, or cuda (nvJPEG: other pixels, part of the view fingerprint)
    saliency_scale: float = 1.0  # the student's saliency on a downscaled view (masking.saliency_scale)
    # views.mix_mode batch: each row's global batch in the training epoch (EpochOrder.batch_of), whose draw mixes it
    mix_batches: tuple[int, ...] | None = None
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    path: str = ""

    @property
    def id(self) -> str:
        """A short stable identifier: shard, view epoch and a digest of all inputs."""
        return f"{self.shard}-e{self.view_epoch:04d}-{sha256_json(self.fingerprints)[:10]}"


def task_fingerprints(t: PartitionTask) -> dict[str, str | None]:
    """The fingerprint record of a task's output (docs/design.md §5)."""
    teacher = sha256_json({"weights": t.teacher.fingerprint, "render": t.teacher.render.record()})
    student = None
    if t.student is not None:
        student = sha256_json({"weights": t.student.fingerprint, "render": t.student.render.record()})
    # the conditional entries follow pipeline.fingerprints' rule: present only when not the default
    mask = {"policy": t.policy, "keep": t.keep, "student": student, **unless_default("tolerance", t.tolerance, 0),
            **unless_default("saliency_scale", t.saliency_scale, 1.0)}
    return {
        "teacher": teacher,
        "student": student,
        "shard": sha256_json({"sha256": t.shard_sha256, "limit": t.limit}),
        # nvJPEG decodes, and torch resizes, to other pixels than Pillow: recorded only when used, so
        # Pillow-rendered stores keep their paths
        "view": sha256_json({"spec": t.view_spec_fingerprint, "seed": t.view_seed,
                             **unless_default("decode", t.decode, "pil"), **t.teacher.render.resize_record(),
                             # batch mixing: the mixes depend on the epoch's order, recorded as its outcome
                             **({} if t.mix_batches is None else {"mix_batches": sha256_json(list(t.mix_batches))})}),
        "mask": sha256_json(mask),
        # TF32 matmuls give other logits than IEEE fp32: recorded only on CUDA, so CPU stores keep their paths
        "label": sha256_json({"topk": t.topk, "temperatures": sorted(t.temperatures), "dtype": "float16",
                              "precision": t.precision,
                              **unless_default("matmul", "tf32" if uses_tf32(t.precision, t.device) else None, None)}),
    }


REUSE_FINGERPRINTS = ("teacher", "shard", "view", "label")


def reuse_expect(fingerprints: dict[str, str | None]) -> dict[str, Any]:
    """What a stored partition must match for its rows to be reusable by a task with these
    fingerprints (``open_partition(path, expect=...)``): same teacher, shard, views and label
    spec; only the mask (student checkpoint, policy, keep) may differ."""
    return {"fingerprints": {k: fingerprints[k] for k in REUSE_FINGERPRINTS}}


def specs_record(t: PartitionTask) -> dict[str, Any]:
    """Human-readable specs behind the fingerprints, stored in the partition's metadata."""
    return {
        "teacher": {"model": t.teacher.name, "kwargs": t.teacher.kwargs,
                    # as partitions have always recorded it, plus the resizer where it is not Pillow
                    "render": {**t.teacher.render.record(), **t.teacher.render.resize_record()}},
        "student": None if t.student is None else {"model": t.student.name, "weights": t.student.weights},
        "view": {"spec": t.view_spec, "seed": t.view_seed},
        "mask": {"policy": t.policy, "keep": t.keep, "tolerance": t.tolerance},
        "label": {"topk": t.topk, "temperatures": list(t.temperatures)},
        "package_version": __version__,
    }
