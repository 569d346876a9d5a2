"""One precompute task: the labels of one shard for every view epoch of its segment (docs/design.md §2).

Decode the shard once (:mod:`pipeline.precompute.feed`), then per view epoch, one partition each:
derive each sample's View -> the milestone student's saliency on its own rendering of the view
-> keep set -> reuse stored teacher outputs whose keep set matches (or is within ``tolerance``)
-> run the masked teacher on the rest -> write the partition atomically. Views are rendered to
uint8 once (student and teacher share them) by a thread pool ahead of the device, which
normalises them and reduces the teacher's logits to top-K and logsumexp.
Pure and idempotent: a partition that already exists for exactly these inputs is left alone,
so a retried task computes only the partitions it had not written yet.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskedkd import (
    SoftTarget,
    from_logits,
    is_forward_policy,
    keep_indices,
    logsumexp_at,
    needs_saliency,
    teacher_forward,
    teacher_macs,
)
from maskedkd.views import ViewSpec, shard_views
from pipeline._fingerprint import sha256_json
from pipeline._version import __version__
from pipeline.data.shards import Sample
from pipeline.errors import DataError, NumericError, StoreError
from pipeline.labels import paths
from pipeline.labels.contract import RenderSpec, reused_mask, store_view_columns, stored_mask
from pipeline.labels.heal import partition_problem, quarantine
from pipeline.labels.reader import open_partition
from pipeline.labels.writer import write_partition
from pipeline.models import create_model, model_fingerprint
from pipeline.placement import pin, place_model, sync_debug, to_device, to_host
from pipeline.precompute.feed import (
    EpochPixels,
    decode_shard,
    feed_threads,
    render_pool,
    with_pixel_arrays,
)
from pipeline.precompute.spec import (
    ModelSpec,
    PartitionTask,
    reuse_expect,
    specs_record,
)
from pipeline.precompute.worker import get_cached, worker_device


def load_model(spec: ModelSpec, device: str) -> torch.nn.Module:
    """The model of ``spec`` in eval mode, loaded once per worker process (cached by fingerprint).

    Raises:
        DataError: the weights file no longer holds the weights ``spec.fingerprint`` names (it
            was replaced after the client fingerprinted it); the message names the file.
    """
    def factory() -> torch.nn.Module:
        model = create_model(spec.name, spec.kwargs, weights=spec.weights)
        # the cache key and every partition's path trust the client's fingerprint: check it here
        found = model_fingerprint(model, spec.name)
        if found != spec.fingerprint:
            raise DataError(f"{spec.weights}: these {spec.name} weights have fingerprint {found[:12]}, but the run "
                            f"planned its labels for {spec.fingerprint[:12]}: the file was replaced after the run "
                            f"read it; run again so every stage sees the new file")
        return place_model(model.eval(), device, spec.name)

    return get_cached(f"model:{spec.fingerprint}:{device}", factory)


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=lambda: {
        "read": 0.0, "render": 0.0, "student": 0.0, "reuse": 0.0, "teacher": 0.0, "write": 0.0})

    def add(self, phase: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] += now - t0
        return now

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time a block as ``name``, less the rendering done inside it (that counts as ``render``)."""
        t0, rendered = time.perf_counter(), self.seconds["render"]
        yield
        self.seconds[name] += time.perf_counter() - t0 - (self.seconds["render"] - rendered)


def autocast_for(device: str, precision: str):
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``, else none (the tasks' forwards; reusable)."""
    if precision != "bf16":
        return contextlib.nullcontext()  # also where autocast knows no such device (meta, in tests)
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


class _Renders:
    """One view epoch's views, rendered once to uint8 by the feed and finished on the device per model."""

    def __init__(self, pixels: EpochPixels, t: PartitionTask, timer: _Timer) -> None:
        self.pixels, self.t, self.timer, self.views = pixels, t, timer, pixels.views

    def _images(self, idx: np.ndarray, r: RenderSpec) -> torch.Tensor:
        t0 = time.perf_counter()  # waiting for the feed, and finishing on the device, count as render
        images = self.pixels.batch(idx, r, self.t.device)
        self.timer.add("render", t0)
        return images

    def student(self, idx: np.ndarray) -> torch.Tensor:
        assert self.t.student is not None  # asked for by policies that need saliency, which have a student
        return self._images(idx, self.t.student.render)

    def teacher(self, idx: np.ndarray) -> torch.Tensor:
        return self._images(idx, self.t.teacher.render)


def _keep_sets(t: PartitionTask, renders: _Renders, n_patches: int, grid: tuple[int, int]) -> tuple[np.ndarray, int]:
    """bool [N, P] keep sets over the teacher's patch grid, and the student forwards spent.

    A forward policy below all patches (``lowres``) has no keep set: its rows store an empty one
    (the teacher saw the whole view, cheapened inside its forward; the partition's mask spec says
    how), which no keep-set policy ever stores, and :func:`pipeline.labels.contract.reused_mask`
    keeps its rows apart from those of keep sets.
    """
    views = renders.views
    n = len(views)
    if t.keep is None:
        return np.ones((n, n_patches), dtype=bool), 0
    if is_forward_policy(t.policy):
        return np.zeros((n, n_patches), dtype=bool), 0
    keep = np.zeros((n, n_patches), dtype=bool)
    forwards = 0
    student = load_model(t.student, t.device) if t.student is not None and needs_saliency(t.policy) else None
    batches = [np.arange(start, min(n, start + t.batch_size)) for start in range(0, n, t.batch_size)]
    staged: dict[int, torch.Tensor] = {}  # the next batch's images, staged while the device runs this one

    def host(scores: torch.Tensor, b: int) -> torch.Tensor:
        # called with the saliency pass queued on the device and before its one transfer: the host
        # prepares batch b+1 (render wait, pinned gather, queued copy) meanwhile
        if b + 1 < len(batches):
            with torch.inference_mode(False):  # its buffers outlive this batch's inference mode
                staged[b + 1] = renders.student(batches[b + 1])
        return to_host(scores)[0]

    with sync_debug(t.device):
        for b, idx in enumerate(batches):
            images = None
            if student is not None:
                images = staged.pop(b) if b in staged else renders.student(idx)
                forwards += len(idx)
            with torch.inference_mode(), autocast_for(t.device, t.precision):
                # the saliency's one transfer per batch (keep sets are chosen on the host, device-independent)
                kidx = keep_indices(t.policy, t.keep, grid=grid, seeds=[views[i].seed for i in idx],
                                    student=student, images=images, host=functools.partial(host, b=b),
                                    saliency_scale=t.saliency_scale)
            assert kidx is not None  # t.keep is not None
            rows = keep[idx]
            np.put_along_axis(rows, kidx.numpy(), True, axis=1)
            keep[idx] = rows
    return keep, forwards


def _kept(t: PartitionTask, keep: np.ndarray) -> torch.Tensor | None:
    """LongTensor[rows, k] of the True columns of bool keep sets, its copy to the task's device
    queued (None: all patches, or a forward policy, which has no keep set)."""
    if t.keep is None or is_forward_policy(t.policy):
        return None
    return to_device(pin(torch.from_numpy(np.nonzero(keep)[1].reshape(len(keep), t.keep)), t.device), t.device)


@dataclass
class _Stored:
    """Teacher outputs available for reuse: one candidate partition, aligned to this shard's rows."""

    path: str
    keep: np.ndarray  # bool [N, P]
    target: SoftTarget  # float32, top-K or dense
    lse_tau: dict[float, torch.Tensor]


def _candidates(t: PartitionTask, keys: list[str]) -> list[_Stored]:
    """Existing partitions of the same teacher, shard, view and label spec, readable and aligned."""
    out = []
    fp = t.fingerprints
    mine = reused_mask(t.policy, t.keep)
    for path in paths.related_partitions(t.store, shard=t.shard, view_epoch=t.view_epoch, fingerprints=fp):
        if path == t.path:
            continue
        try:
            with open_partition(path, expect=reuse_expect(fp), expect_keys=keys) as part:
                if stored_mask(part.metadata) != mine:
                    continue  # a forward policy's rows serve that policy at that keep only
                batch = part.read_all(columns=("keep", "target"))
        except StoreError:
            continue  # another label spec, or a damaged file: never reuse what we cannot trust
        assert batch.keep is not None and batch.target is not None  # the columns read
        out.append(_Stored(path, batch.keep.numpy(), batch.target, batch.lse_tau))
    return out


def _kl_rows(fresh: torch.Tensor, stored: SoftTarget) -> torch.Tensor:
    """Per-row KL(fresh || stored) over the stored distribution's buckets (K+1, or all classes)."""
    log_q, log_q_tail = stored.log_probs(stored.tau)
    if log_q_tail is not None:
        # float16 logits can make the stored buckets sum to a hair over 1, which biases the KL below
        # zero by about as much as the KL of a few changed patches: renormalise them first
        norm = torch.logaddexp(torch.logsumexp(log_q, 1), log_q_tail)
        log_q, log_q_tail = log_q - norm.unsqueeze(1), log_q_tail - norm
    log_p, log_p_tail = stored.buckets(F.log_softmax(fresh.float(), dim=1))
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    if log_p_tail is not None and log_q_tail is not None:  # both or neither: the stored target's tail
        p_tail = log_p_tail.exp()
        kl = kl + torch.where(p_tail > 0, p_tail * (log_p_tail - log_q_tail), torch.zeros_like(p_tail))
    return kl.clamp_min(0.0)  # >= 0 but for float32 rounding


def _check_finite(t: PartitionTask, bad: torch.Tensor, keys: list[str]) -> None:
    """Refuse NaN/inf teacher logits (``bad``: bool per row) before they reach a partition, naming where they came from."""
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise NumericError(
            f"the teacher's logits are not finite (NaN/inf) for {int(bad.sum())} of {len(keys)} rows of shard {t.shard}, "
            f"view epoch {t.view_epoch} (first: key {keys[first]}), teacher weights {t.teacher.weights}, precision "
            f"{t.precision}; no partition was written")


def after_shard_read(t: PartitionTask) -> None:
    """Test seam, a no-op: called once the task has read its shard, before any model runs.

    Called once per partition to compute (its view epoch's models run next). The reliability
    tests replace it inside each Dask worker (``tests/reliability/faults.py``, installed as a
    Dask worker preload) to kill or hang the worker at this point.
    """


def _cached(t: PartitionTask) -> dict[str, Any]:
    """The result of ``t`` with ``cached`` set when its partition already exists for exactly its inputs."""
    result: dict[str, Any] = {
        "id": t.id, "shard": t.shard, "view_epoch": t.view_epoch, "path": t.path, "rows": 0,
        "rows_computed": 0, "rows_reused": 0, "rows_reused_tolerance": 0, "student_forwards": 0,
        "teacher_forwards": 0, "teacher_macs": 0, "teacher_macs_saved": 0, "cached": False,
        "spot_check_rows": 0, "spot_check_kl": 0.0, "reuse_check_macs": 0, "skipped": [],
    }
    if paths.file_exists(t.path):
        # the store is a cache: every page is checked before the file counts as cached (a full read)
        problem = partition_problem(t.path, expect={"fingerprints": t.fingerprints})
        if problem is None:
            with open_partition(t.path) as part:
                result.update(cached=True, rows=part.num_rows, sha256=paths.file_sha256(t.path), bytes=part.num_bytes)
        else:
            result["replaced_damaged"] = problem  # recomputed; written over it should the move below fail
            with contextlib.suppress(StoreError):
                result["quarantined"] = {"path": t.path, "reason": problem, "moved_to": quarantine(t.store, t.path)}
    return result


def run_shard(item: dict) -> dict:
    """Dask task body: the partitions of one shard for the view epochs of ``item["tasks"]``.

    The tasks differ in their view epoch only. The shard is read and decoded once for all of
    them; each partition is written (atomically) as soon as it is computed, so a retry skips it.

    Returns:
        ``{"id", "shard", "rows", "partitions": [one result per task, in order]}``.
    """
    tasks: list[PartitionTask] = list(item["tasks"])
    if tasks[0].device == "auto":
        device = worker_device()
        tasks = [replace(t, device=device) for t in tasks]
    results = [_cached(t) for t in tasks]
    todo = [i for i, r in enumerate(results) if not r["cached"]]
    if todo:
        t = tasks[todo[0]]
        pool = render_pool(feed_threads(t.feed_workers), t.device)
        try:
            t0 = time.perf_counter()
            report: list = []
            stats: dict = {}
            # hashed while streamed: a shard changed since the run read its manifest raises before anything is built
            samples = decode_shard(t.shard_path, pool=pool, decode=t.decode, device=t.device, report=report,
                                   num_classes=t.num_classes, sha256=t.shard_sha256, limit=t.limit, stats=stats)
            samples = with_pixel_arrays(samples, _renders_of(t), pool)
            skipped = [{"key": r[0], "reason": r[1]} for r in report][:100]
            read_s = time.perf_counter() - t0
            for i in todo:
                timer = _Timer()
                timer.seconds["read"] = read_s if i == todo[0] else 0.0  # the shard is read once, for all
                results[i].update(skipped=skipped)
                if t.decode == "cuda" and i == todo[0]:  # the shard is decoded once, for all
                    results[i]["decode_fallbacks"] = int(stats.get("decode_fallbacks", 0))
                results[i] = _compute(tasks[i], samples, results[i], pool, timer)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return {"id": item.get("id"), "shard": tasks[0].shard, "rows": sum(int(r["rows"]) for r in results),
            "partitions": results}


def run_partition(item: dict) -> dict:
    """The partition of ``item["task"]`` alone (:func:`run_shard` of one view epoch); returns its result."""
    t: PartitionTask = item["task"]
    return run_shard({"id": t.id, "tasks": [t]})["partitions"][0]


def _compute(t: PartitionTask, samples: list[Sample], result: dict[str, Any], pool, timer: _Timer) -> dict:
    """Compute and write the partition of ``t`` from the decoded ``samples``; returns ``result`` filled in."""
    after_shard_read(t)
    t0 = time.perf_counter()
    keys = [s.key for s in samples]
    spec = ViewSpec.from_dict(t.view_spec)
    views = shard_views(spec, t.view_seed, t.view_epoch, keys, shard=t.shard, batches=t.mix_batches)
    pixels = EpochPixels([s.image for s in samples], views, _renders_of(t), pool, ahead=2 * t.batch_size,
                         pin=t.device.startswith("cuda"))
    t0 = timer.add("read", t0)
    try:
        return _labels(t, samples, keys, spec, pixels, result, timer)
    finally:
        pixels.close()  # a task that failed half-way leaves no renders queued on the shared pool


def _renders_of(t: PartitionTask) -> list[RenderSpec]:
    """How the task's models see its views: the teacher, and the student where its saliency is read."""
    return [t.teacher.render] + ([t.student.render] if t.student is not None and needs_saliency(t.policy) else [])


def _labels(t: PartitionTask, samples: list[Sample], keys: list[str], spec: ViewSpec, pixels: EpochPixels,
            result: dict[str, Any], timer: _Timer) -> dict:
    """Keep sets, reuse, teacher and write of one partition, its views rendered by ``pixels``."""
    views = pixels.views
    n = len(samples)
    teacher = load_model(t.teacher, t.device)
    patch_embed: Any = teacher.patch_embed
    grid = tuple(patch_embed.grid_size)
    n_patches = int(patch_embed.num_patches)
    renders = _Renders(pixels, t, timer)
    with timer.phase("student"):
        keep, result["student_forwards"] = _keep_sets(t, renders, n_patches, grid)

    t0 = time.perf_counter()
    cands, source, best = _match_stored(t, keys, keep, n_patches)
    reuse = best <= t.tolerance
    t0 = timer.add("reuse", t0)

    # teacher on the rest: top-K and logsumexp on the device, only those come back
    compute = np.flatnonzero(~reuse)
    extra_taus = [tau for tau in t.temperatures if float(tau) != 1.0]
    with timer.phase("teacher"):
        macs_per_row = teacher_macs(teacher, t.keep, t.policy)
        fresh, fresh_lse, bad = _teacher_rows(t, teacher, renders, keep, compute, extra_taus)
        if not fresh:
            empty = torch.empty(0, t.num_classes)
            bad, fresh, fresh_lse = [torch.zeros(0, dtype=torch.bool)], [from_logits(empty, t.topk)], [logsumexp_at(empty, extra_taus)]
        _check_finite(t, torch.cat(bad), [keys[i] for i in compute])

        target, extra = _assemble(compute, SoftTarget.cat(fresh), {tau: torch.cat([e[tau] for e in fresh_lse]) for tau in extra_taus},
                                  reuse, source, cands)
        inexact = np.flatnonzero(reuse & (best > 0))
        if len(inexact) and t.spot_check:
            result.update(_spot_check(t, teacher, renders, keep, inexact, source, cands, macs_per_row))
    t0 = time.perf_counter()
    stored_keep = keep.copy()
    for c, cand in enumerate(cands):  # rows reused under tolerance keep what the teacher really saw
        rows = np.flatnonzero(reuse & (source == c))
        stored_keep[rows] = cand.keep[rows]
    counters = {
        "rows_computed": int(len(compute)),
        "rows_reused": int(reuse.sum()),
        "rows_reused_tolerance": int(len(inexact)),
        "teacher_macs": int(macs_per_row * len(compute)),
        "student_forwards": int(result["student_forwards"]),
    }
    if result.get("spot_check_rows"):
        counters["spot_check_rows"] = result["spot_check_rows"]
        counters["spot_check_kl"] = result["spot_check_kl"]
    w = _write(t, samples, keys, stored_keep, target, extra, store_view_columns(views, spec), counters, result)
    if w is None:
        result["teacher_forwards"] = int(len(compute))
        return result
    timer.add("write", t0)
    result.update(
        rows=n, rows_computed=counters["rows_computed"], rows_reused=counters["rows_reused"],
        rows_reused_tolerance=counters["rows_reused_tolerance"], teacher_forwards=int(len(compute)),
        teacher_macs=counters["teacher_macs"], teacher_macs_saved=int(macs_per_row * reuse.sum()),
        sha256=w.sha256, bytes=w.bytes, seconds=timer.seconds,
    )
    return result


def _match_stored(t: PartitionTask, keys: list[str], keep: np.ndarray,
                  n_patches: int) -> tuple[list, np.ndarray, np.ndarray]:
    """Stored teacher outputs to reuse: the candidate partitions of this (shard, view), and per row
    the candidate whose keep set is closest (``-1``: none) and how many patches differ from it."""
    n = len(keys)
    source = np.full(n, -1)
    best = np.full(n, n_patches + 1)
    cands = _candidates(t, keys) if n else []
    for c, cand in enumerate(cands):
        diff = (cand.keep != keep).sum(axis=1)
        better = diff < best
        best[better], source[better] = diff[better], c
    return cands, source, best


def _write(t: PartitionTask, samples: list[Sample], keys: list[str], keep: np.ndarray, target: SoftTarget,
           extra, view_columns, counters: dict[str, Any], result: dict[str, Any]):
    """Publish the partition; None (and ``result`` naming the file found) when another run wrote it first."""
    metadata = {
        "shard": t.shard, "view_epoch": t.view_epoch, "fingerprints": t.fingerprints,
        "counters": counters, "specs": specs_record(t), "package_version": __version__,
    }
    try:
        return write_partition(
            t.path, keys=keys, labels=np.array([s.label for s in samples], dtype=np.int32), keep=keep,
            target=target, metadata=metadata, view_columns=view_columns,
            num_classes=t.num_classes, extra_lse=extra, exclusive="replaced_damaged" not in result,
        )
    except FileExistsError:
        # another run wrote this partition since we looked: keep its file (same fingerprints), so
        # every lock naming it records the bytes that are really there
        with open_partition(t.path, expect={"fingerprints": t.fingerprints}) as part:
            result.update(cached=True, rows=part.num_rows, sha256=paths.file_sha256(t.path), bytes=part.num_bytes)
        return None


def _teacher_rows(t: PartitionTask, teacher: torch.nn.Module, renders: _Renders, keep: np.ndarray,
                  compute: np.ndarray, extra_taus: list[float]):
    """The masked teacher on rows ``compute``: per batch ``(targets, {tau: lse}, non-finite rows)`` on the CPU.

    Software-pipelined so that the host never holds the device back: batch n+1 is rendered,
    staged and its copy queued while the device runs batch n, and each batch's labels come back
    in one transfer (:func:`pipeline.placement.to_host`), the loop's only sync.
    """
    fresh: list[SoftTarget] = []
    fresh_lse: list[dict[float, torch.Tensor]] = []
    bad: list[torch.Tensor] = []
    pending = None

    def collect(out) -> None:
        target, lse, nonfinite = out
        fields = [target.logit] + ([target.idx, target.lse] if target.idx is not None else [])
        host = to_host(*fields, nonfinite, *lse.values())
        n = len(fields)
        logit, idx, lse_k = (host[0], host[1], host[2]) if n == 3 else (host[0], None, None)
        fresh.append(replace(target, logit=logit, idx=idx, lse=lse_k))
        bad.append(host[n])
        fresh_lse.append(dict(zip(lse, host[n + 1:])))

    with sync_debug(t.device):
        for start in range(0, len(compute), t.batch_size):
            idx = compute[start:start + t.batch_size]
            images = renders.teacher(idx)  # host work (render wait, staging, queued copy): overlaps batch n-1
            kidx = _kept(t, keep[idx])
            if pending is not None:
                collect(pending)
            with torch.inference_mode(), autocast_for(t.device, t.precision):
                logits = teacher_forward(teacher, images, t.policy, t.keep, kidx).float()
                pending = (from_logits(logits, t.topk), logsumexp_at(logits, extra_taus),
                           ~torch.isfinite(logits).all(dim=1))
        if pending is not None:
            collect(pending)
    return fresh, fresh_lse, bad


def _assemble(compute, fresh: SoftTarget, fresh_lse: dict, reuse, source, cands):
    """The partition's target and extra-temperature lse, from fresh + reused rows, in row order."""
    rows, targets, extras = [compute], [fresh], [fresh_lse]
    for c, cand in enumerate(cands):
        mine = np.flatnonzero(reuse & (source == c))
        if not len(mine):
            continue
        r = torch.from_numpy(mine)
        rows.append(mine)
        targets.append(cand.target[r])
        extras.append({tau: cand.lse_tau[tau][r] for tau in extras[0]})
    order = torch.from_numpy(np.argsort(np.concatenate(rows), kind="stable"))  # every row exactly once
    target = SoftTarget.cat(targets)[order]
    extra = {tau: torch.cat([e[tau] for e in extras])[order] for tau in extras[0]}
    return target, extra


def _spot_check(t, teacher, renders, keep, inexact, source, cands, macs_per_row) -> dict:
    """Re-run the teacher on a seeded sample of rows reused under tolerance; mean KL(fresh || stored)."""
    rng = np.random.default_rng(int(sha256_json([t.shard, t.view_epoch, t.fingerprints["mask"]])[:16], 16))
    rows = np.sort(rng.choice(inexact, size=min(t.spot_check, len(inexact)), replace=False))
    images = renders.teacher(rows)
    kidx = _kept(t, keep[rows])
    with torch.inference_mode(), autocast_for(t.device, t.precision):
        fresh = teacher_forward(teacher, images, t.policy, t.keep, kidx).float().cpu()
    kls = []
    for c, cand in enumerate(cands):
        sel = source[rows] == c
        if sel.any():
            kls.append(_kl_rows(fresh[torch.from_numpy(sel)], cand.target[torch.from_numpy(rows[sel])]))
    kl = torch.cat(kls)
    # its teacher forwards are part of what the labels cost (the student's saliency of these rows
    # was needed to match keep sets anyway, and is counted in student_forwards)
    return {"spot_check_rows": int(len(rows)), "spot_check_kl": float(kl.mean()),
            "reuse_check_macs": int(macs_per_row * len(rows))}
