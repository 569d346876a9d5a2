"""The bodies of the run's stage kinds (declared in :mod:`pipeline.run.graph`).

Each kind has three functions, all taking the run's :class:`pipeline.run.context.RunContext`, the
concrete :class:`pipeline.run.graph.Stage` and the outputs of the stages it depends on
(``stage.dep(outs, role)``):

- ``plan_*``: the stage's current inputs (:mod:`pipeline.fingerprints`) and whatever running it
  needs beyond them (planned tasks); ``status`` and ``run`` both call it;
- ``cached_*``: the stage's output read back from the run lock, when the lock says it is fresh;
- ``run_*``: do the work, record it in the run lock, return the output.

Outputs: ``teacher`` and ``teacher-finetune`` a :class:`ModelSpec`; ``init`` and ``train-i`` a checkpoint path; ``probe-i``
the spot-check's result; ``precompute-i`` ``{(shard, view epoch): LabelRef}`` for the trainer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from maskedkd import Rung, keep_choice, ladder_keeps, needs_saliency, policy_choice, resolve_keep
from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline._lock import file_record
from pipeline.fingerprints import (
    fmt_keep,
    init_inputs,
    precompute_inputs,
    probe_inputs,
    teacher_finetune_inputs,
    teacher_inputs,
    train_inputs,
    weights_file,
)
from pipeline.labels import paths
from pipeline.labels.contract import LabelRef
from pipeline.labels.heal import damaged_recorded, quarantine_all
from pipeline.labels.reader import open_partition
from pipeline.models import (
    checkpoint_stem,
    create_model,
    holds_model,
    load_pretrained,
    model_fingerprint,
    save_checkpoint,
)
from pipeline.precompute.cluster import run_tasks
from pipeline.precompute.costs import net_cost_fields
from pipeline.precompute.plan import plan_segment
from pipeline.precompute.probe import ProbeTask
from pipeline.precompute.probe import plan_probe as plan_probe_task
from pipeline.precompute.probe import run_probe as run_probe_task
from pipeline.precompute.reach import check_reach, probe_needs
from pipeline.precompute.run import run_precompute
from pipeline.precompute.spec import ModelSpec, PartitionTask, model_spec
from pipeline.report.fmt import fmt_number
from pipeline.run.claims import announce
from pipeline.run.context import RunContext
from pipeline.run.distributed import train_distributed
from pipeline.run.stage import Outputs, Planned, Stage
from pipeline.run.training import evaluate_val, naming_stage, train_step_macs, train_student, train_teacher

# ---------------------------------------------------------------------------- shared planning


def teacher_spec(ctx: RunContext, path: str, fingerprint: str) -> ModelSpec:
    """The teacher as the stages after it load it: weights ``path`` with ``fingerprint``."""
    return model_spec(ctx.cfg, "teacher", path, fingerprint)


def recorded_teacher(ctx: RunContext, name: str = "teacher") -> ModelSpec | None:
    """The teacher stage ``name`` recorded in the run lock (None: it has not run); the teacher later
    stages use is :func:`pipeline.run.graph.teacher_source`'s."""
    rec = ctx.lock.output(name, "weights")
    return None if rec is None else teacher_spec(ctx, rec["path"], ctx.lock.info(name)["fingerprint"])


def chosen_keep(cfg, probe: Mapping[str, Any]) -> int | None:
    """The keep ``masking.budget`` takes from a spot-check's curve (``None``: all patches)."""
    return auto_choice(cfg, probe)[1]


def auto_keep(cfg, probe: Mapping[str, Any]) -> tuple[int | None, str]:
    """:func:`chosen_keep` and why (:func:`maskedkd.keep_choice`: the budget, or a net cost above the full teacher's)."""
    return auto_choice(cfg, probe)[1:]


def auto_choice(cfg, probe: Mapping[str, Any]) -> tuple[str, int | None, str]:
    """The policy and keep ``masking.budget`` takes from a spot-check, and why: the configured
    policy's keep (:func:`maskedkd.keep_choice`), or with ``policy: auto`` the candidate whose keep
    costs the fewest net MACs (:func:`maskedkd.policy_choice`)."""
    m = cfg.masking
    curves = {p: [Rung(**r) for r in probe["curves"][p]] for p in m.candidates()}
    if m.policy != "auto":
        return (m.policy, *keep_choice(curves[m.policy], m.budget.budget()))
    return policy_choice(curves, m.budget.budget())


def plan_precompute(ctx: RunContext, segment: int, teacher: ModelSpec, source_ckpt: Path,
                    keep: int | None | str = "config", policy: str | None = None) -> list[PartitionTask]:
    """The tasks of segment ``segment``'s labels, masks chosen by ``source_ckpt``.

    Args:
        keep: the keep count (``None``: all patches); ``"config"`` takes it from the config,
            which ``masking.keep: auto`` cannot give (the spot-check chooses it: :func:`chosen_keep`).
        policy: the policy (default ``masking.policy``; with ``policy: auto`` the one the
            spot-check chose: :func:`auto_choice`).
    """
    cfg = ctx.cfg
    policy = policy or cfg.masking.policy
    if keep == "config":
        if cfg.masking.auto:
            raise ValueError("masking.keep is auto: give the keep the spot-check chose (chosen_keep)")
        keep = resolve_keep(cfg.keep_for_segment(segment), cfg.num_patches, policy)
    student = model_spec(cfg, "student", source_ckpt) if needs_saliency(policy) else None
    return plan_segment(cfg, segment, manifest=ctx.manifest, teacher=teacher, student=student,
                        device="auto", num_classes=cfg.data.num_classes, keep=keep, policy=policy)


def plan_probe(ctx: RunContext, segment: int, teacher: ModelSpec, source_ckpt: Path, *, policies: tuple[str, ...],
               samples: int | None = None) -> ProbeTask:
    """The spot-check of segment ``segment``'s views at every rung of ``masking.ladder``."""
    cfg = ctx.cfg
    student = model_spec(cfg, "student", source_ckpt) if any(needs_saliency(p) for p in policies) else None
    keeps = ladder_keeps(cfg.masking.ladder, cfg.num_patches)
    return plan_probe_task(cfg, segment, manifest=ctx.manifest, teacher=teacher, student=student, keeps=keeps,
                           policies=policies, samples=samples)


def run_probe(ctx: RunContext, task: ProbeTask, name: str) -> dict[str, Any]:
    """Run one spot-check on the cluster (a GPU worker where the cluster has them)."""
    cluster = ctx.cluster()
    check_reach(cluster, probe_needs(task))  # every worker sees what the task reads, before it is submitted
    c = ctx.cfg.compute
    (result,) = run_tasks(cluster, run_probe_task, [{"id": task.id, "task": task}], resources=cluster.task_resources,
                          key_prefix=f"{ctx.cfg.name}-{name}", retries=c.retries, timeout_s=c.timeout_s,
                          progress=False, lost_after_s=c.lost_timeout_s)
    return result


# ---------------------------------------------------------------------------- teacher


def plan_teacher(ctx: RunContext, stage: Stage, outs: Outputs) -> Planned:
    return Planned(teacher_inputs(ctx.cfg, ctx.manifest))


def cached_teacher(ctx: RunContext, stage: Stage, planned: Planned) -> ModelSpec:
    """The weights a fresh ``teacher`` or ``teacher-finetune`` stage recorded."""
    spec = recorded_teacher(ctx, stage.name)
    assert spec is not None  # fresh: the lock recorded its weights
    return spec


def run_teacher(ctx: RunContext, stage: Stage, planned: Planned, outs: Outputs) -> ModelSpec:
    """The teacher's weights file and fingerprint: loaded (frozen, or where a fine-tune starts), or
    trained from scratch first when the config says so."""
    cfg, inputs = ctx.cfg, planned.inputs
    if cfg.teacher.frozen or cfg.teacher.fine_tuned:
        path, info = _load_teacher(ctx, stage.name, inputs)
    else:
        path = _teachers_dir(ctx) / f"{checkpoint_stem(cfg.teacher.model)}-{sha256_json(inputs)[:16]}.pth"
        info = _trained_before(ctx, stage.name, path) or _train_teacher(ctx, stage.name, path, inputs)
    ctx.lock.record(stage.name, inputs, outputs={"weights": file_record(path)}, info=info)
    return teacher_spec(ctx, str(path), info["fingerprint"])


def _teachers_dir(ctx: RunContext) -> Path:
    """Where teachers the run writes live, content-addressed: a local (or file://) store shares them
    with every run; with a remote store the run folder keeps them, and ``model_spec`` publishes the
    copy workers load to ``<store>/checkpoints/``."""
    local = paths.local_root(ctx.cfg.labels.store)
    return Path(local) / "teachers" if local is not None else ctx.run_dir / "teachers"


def _trained_before(ctx: RunContext, name: str, path: Path) -> dict[str, Any] | None:
    """The lock info of a teacher a run with the same inputs trained into ``path`` (None: none did)."""
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("sha256") == sha256_file(path):
        ctx.say(name, f"trained earlier by a run with the same inputs ({path})")
        return json.loads(sidecar.read_text())["info"]
    return None


def _write_sidecar(path: Path, inputs: dict[str, Any], info: dict[str, Any]) -> None:
    sidecar = {"sha256": sha256_file(path), "inputs": inputs, "info": info}
    write_atomic(path.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())


def _load_teacher(ctx: RunContext, name: str, inputs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A teacher through timm's loader: its weights file when workers can load it as it is, else
    (pretrained, resampled, converted) a plain checkpoint of what timm loaded. Where a fine-tune
    starts, a pretrained head with other classes than ``data.num_classes`` is re-initialised (seeded)."""
    t = ctx.cfg.teacher
    file = weights_file(t)
    assert file is not None  # a loaded teacher has weights or pretrained (the schema)
    start = t.fine_tuned and t.pretrained
    model = load_pretrained(t.model, t.kwargs, file, pretrained=t.pretrained, seed=t.train.seed if start else 0,
                            num_classes=ctx.cfg.data.num_classes if start else None)
    if t.pretrained or not holds_model(file, model):
        path = _teachers_dir(ctx) / f"{checkpoint_stem(t.model)}-{sha256_json(inputs)[:16]}.pth"
        save_checkpoint(model, path)
    else:
        path = Path(file)
    val = evaluate_val(ctx.cfg, ctx.manifest, model, t, ctx.device)
    info = {"fingerprint": model_fingerprint(model, t.model), "top1": val.get("val_top1")}
    ctx.say(name, f"weights {file} (val top-1 {fmt_number(info['top1'])})" + (", to fine-tune" if t.fine_tuned else ""))
    return path, info


def _train_teacher(ctx: RunContext, name: str, path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """Train the teacher from scratch in this process (the ``teacher`` stage without weights)."""
    t0 = time.perf_counter()
    model, res = train_teacher(ctx.cfg, ctx.manifest, None, path, name=name, run_dir=ctx.run_dir / "teacher-train",
                               device=ctx.device, progress=ctx.progress, say=ctx.say)
    info = {"fingerprint": model_fingerprint(model, ctx.cfg.teacher.model), "epochs": res["epochs"],
            "top1": (res["epochs"][-1] or {}).get("val_top1"), "seconds": time.perf_counter() - t0}
    _write_sidecar(path, inputs, info)
    ctx.say(name, f"val top-1 {fmt_number(info['top1'])}")
    return info


# ---------------------------------------------------------------------------- teacher-finetune


def plan_teacher_finetune(ctx: RunContext, stage: Stage, outs: Outputs) -> Planned:
    return Planned(teacher_finetune_inputs(ctx.cfg, ctx.manifest, stage.dep(outs, "teacher")))


def run_teacher_finetune(ctx: RunContext, stage: Stage, planned: Planned, outs: Outputs) -> ModelSpec:
    """Fine-tune the loaded teacher with ``teacher.train`` (token dropping, the recipe's views),
    resumable, under torchrun with ``--nproc N``; records its MACs and wall time."""
    cfg, inputs, name, start = ctx.cfg, planned.inputs, stage.name, stage.dep(outs, "teacher")
    path = _teachers_dir(ctx) / f"{checkpoint_stem(cfg.teacher.model)}-finetune-{sha256_json(inputs)[:16]}.pth"
    info = _trained_before(ctx, name, path) or _finetune(ctx, name, Path(start.weights), path, inputs)
    ctx.lock.record(name, inputs, outputs={"weights": file_record(path)}, info=info)
    return teacher_spec(ctx, str(path), info["fingerprint"])


def _finetune(ctx: RunContext, name: str, start: Path, path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    cfg, t = ctx.cfg, ctx.cfg.teacher
    run_dir = ctx.run_dir / "teacher-finetune"
    t0 = time.perf_counter()
    if ctx.nproc > 1:
        ctx.say(name, f"{ctx.nproc} processes, torchrun")
        res = train_distributed(cfg, nproc=ctx.nproc, overrides=ctx.overrides, name=name, segment=None,
                                start_ckpt=start, labels=None, teacher=None, out=path, run_dir=run_dir,
                                device=ctx.device, progress=ctx.progress, task="teacher")
    else:
        res = train_teacher(cfg, ctx.manifest, start, path, name=name, run_dir=run_dir, device=ctx.device,
                            progress=ctx.progress, say=ctx.say)[1]
    # every batch of the fine-tune, resumed ones included (epochs x batches: optimizer steps x grad_accum_steps)
    images = res["global_step"] // res["steps_per_epoch"] * res["batches_per_epoch"] * t.train.batch_size
    info = {"fingerprint": model_fingerprint(create_model(t.model, t.kwargs, weights=path), t.model),
            "epochs": res["epochs"], "top1": (res["epochs"][-1] or {}).get("val_top1"),
            "start_top1": ctx.lock.info("teacher").get("top1"), "seconds": time.perf_counter() - t0,
            "macs": train_step_macs(cfg, images), "image_steps": images, "nproc": ctx.nproc,
            "resumed": res.get("resumed")}
    _write_sidecar(path, inputs, info)
    ctx.say(name, f"val top-1 {fmt_number(info['start_top1'])} -> {fmt_number(info['top1'])}; "
                  f"{info['macs'] / 1e9:.2f} GMACs (forward + backward), {info['seconds']:.1f} s")
    return info


# ---------------------------------------------------------------------------- init (c_0)


def plan_init(ctx: RunContext, stage: Stage, outs: Outputs) -> Planned:
    return Planned(init_inputs(ctx.cfg))


def cached_checkpoint(ctx: RunContext, stage: Stage, planned: Planned) -> Path:
    """The checkpoint a fresh ``init`` or ``train-i`` stage wrote."""
    return ctx.checkpoint(0 if stage.segment is None else stage.index + 1)


def run_init(ctx: RunContext, stage: Stage, planned: Planned, outs: Outputs) -> Path:
    """c_0: the student at initialisation (seeded) or from its weights file."""
    s = ctx.cfg.student
    path = ctx.checkpoint(0)
    file = weights_file(s)
    if file is None:
        model = create_model(s.model, s.kwargs, seed=s.init_seed)
    else:
        model = load_pretrained(s.model, s.kwargs, file, pretrained=s.pretrained,
                                num_classes=ctx.cfg.data.num_classes if s.pretrained else None, seed=s.init_seed)
    save_checkpoint(model, path)
    ctx.lock.record(stage.name, planned.inputs, outputs={"checkpoint": file_record(path)})
    ctx.say(stage.name, f"student {s.model} -> {path}")
    return path


# ---------------------------------------------------------------------------- probe-i (keep: auto)


def plan_probe_stage(ctx: RunContext, stage: Stage, outs: Outputs) -> Planned:
    task = plan_probe(ctx, stage.index, stage.dep(outs, "teacher"), stage.dep(outs, "source"),
                      policies=ctx.cfg.masking.candidates())
    return Planned(probe_inputs(task), task)


def cached_probe(ctx: RunContext, stage: Stage, planned: Planned) -> dict[str, Any]:
    return ctx.lock.info(stage.name)


def run_probe_stage(ctx: RunContext, stage: Stage, planned: Planned, outs: Outputs) -> dict[str, Any]:
    """The fidelity curve of the configured policy on a seeded sample of the segment's views,
    masks from the source checkpoint; recorded in the run lock and reused."""
    task, source = planned.work, stage.dep(outs, "source")
    t0 = time.perf_counter()
    result = run_probe(ctx, task, stage.name)
    result["seconds"] = time.perf_counter() - t0
    result["source"] = source.name
    ctx.lock.record(stage.name, planned.inputs, info=result)
    ctx.result.teacher_forwards += result["teacher_forwards"]
    for policy in task.policies:
        named = f"{policy}: " if len(task.policies) > 1 else ""
        ctx.say(stage.name, f"{len(task.rows)} views, masks from {source.name}: {named}" + ", ".join(
            f"keep {fmt_keep(r['keep'], ctx.cfg.num_patches)} agreement {r['agreement']:.3f} KL {r['kl']:.3f}"
            for r in result["curves"][policy]))
    return result


# ---------------------------------------------------------------------------- precompute-i


def plan_precompute_stage(ctx: RunContext, stage: Stage, outs: Outputs) -> Planned:
    cfg, m, probe = ctx.cfg, ctx.cfg.masking, stage.dep(outs, "probe")
    policy, keep = auto_choice(cfg, probe)[:2] if m.auto else (
        m.policy, resolve_keep(cfg.keep_for_segment(stage.index), cfg.num_patches, m.policy))
    tasks = plan_precompute(ctx, stage.index, stage.dep(outs, "teacher"), stage.dep(outs, "source"), keep, policy)
    return Planned(precompute_inputs(cfg, stage.index, tasks), (keep, tasks))


def cached_precompute(ctx: RunContext, stage: Stage, planned: Planned) -> dict[tuple[str, int], Any]:
    return label_refs(planned.work[1], ctx.lock.stages[stage.name]["partitions"])


def run_precompute_stage(ctx: RunContext, stage: Stage, planned: Planned, outs: Outputs) -> dict[tuple[str, int], Any]:
    """Label one segment's views on the cluster; returns ``{(shard, view epoch): LabelRef}`` for the trainer."""
    cfg, name, (keep, tasks) = ctx.cfg, stage.name, planned.work
    source, probe = stage.dep(outs, "source"), stage.dep(outs, "probe")
    policy, _, reason = auto_choice(cfg, probe) if probe is not None else (cfg.masking.policy, keep, None)
    shown = fmt_keep(keep, cfg.num_patches) + (f" (auto: {reason})" if reason else "")
    # a policy that reads no saliency, or all patches, labels without the student (plan_segment passes
    # none): naming its checkpoint would mislead
    masks = f" from {source.name}" if keep is not None and needs_saliency(policy) else ", no student"
    ctx.say(name, f"{len(tasks)} partitions, keep {shown if tasks else '-'} ({policy}){masks}")
    t0 = time.perf_counter()
    # announced before any task starts and until the lock names them: gc keeps them meanwhile
    with announce(cfg.labels.store, ctx.lock.path, name, [t.path for t in tasks]):
        with naming_stage(name):
            summary = run_precompute(tasks, ctx.cluster(), cfg=cfg, key_prefix=f"{cfg.name}-{name}",
                                     progress=ctx.progress)
        results = summary.pop("results")
        parts: list[Mapping[str, Any]] = [{"path": r["path"], "inputs": t.fingerprints, "rows": r["rows"], "sha256": r["sha256"]}
                 for t, r in zip(tasks, results)]
        summary["seconds"] = time.perf_counter() - t0
        summary["teacher_top1_masked"] = teacher_masked_top1(parts)
        summary["source"] = source.name
        summary["keep"] = (cfg.num_patches if keep is None else keep) if tasks else None  # a count, N for all
        if probe is not None:
            # what choosing the keep cost is part of what these labels cost
            summary["auto"] = {"budget": str(cfg.masking.budget.budget()), "reason": reason, "curve": probe["curves"][policy],
                               "samples": probe["samples"], "teacher_macs": probe["teacher_macs"],
                               "teacher_forwards": probe["teacher_forwards"]}
            if cfg.masking.policy == "auto":  # which policy, and every candidate's curve it was chosen from
                summary["auto"].update(policy=policy, curves=probe["curves"])
            summary["teacher_macs"] += probe["teacher_macs"]
        summary.update(net_cost_fields(cfg, summary, probe["teacher_macs"] if probe is not None else None))
        ctx.lock.record(name, planned.inputs, partitions=parts, info=summary)
    for q in summary.get("quarantined", []):
        ctx.say(name, f"damaged partition {q['path']} ({q['reason']}): moved to {q['moved_to']}, recomputed")
    ctx.result.teacher_forwards += summary["teacher_forwards"]
    ctx.result.student_forwards += summary["student_forwards"]
    ctx.say(name, f"rows {summary['rows']}: computed {summary['rows_computed']}, reused {summary['rows_reused']}, "
                  f"cached partitions {summary['cached']}/{summary['partitions']}; teacher top-1 on masked views "
                  f"{summary['teacher_top1_masked']:.4f}")
    return label_refs(tasks, parts)


def heal_precompute(ctx: RunContext, stage: Stage) -> list[dict[str, str]]:
    """A fresh precompute stage's recorded partitions whose bytes changed, moved into the store's
    quarantine (the stage then runs again and recomputes them)."""
    return quarantine_all(ctx.cfg.labels.store, damaged_recorded(ctx.lock.stages[stage.name]["partitions"]))


def label_refs(tasks: list[PartitionTask], parts: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Any]:
    """``{(shard, view epoch): LabelRef}`` of a precompute stage's recorded partitions."""
    return {(t.shard, t.view_epoch): LabelRef(p["path"], p["sha256"], {"fingerprints": t.fingerprints})
            for t, p in zip(tasks, parts)}


def teacher_masked_top1(parts: Sequence[Mapping[str, Any]]) -> float:
    """The teacher's top-1 on the (masked) views it labelled, over all partitions of a stage."""
    correct = total = 0
    for p in parts:
        with open_partition(p["path"]) as part:
            b = part.read_all(columns=("label", "target"))
        assert b.target is not None and b.label is not None  # the columns read
        correct += int((b.target.top_class() == b.label).sum())
        total += len(b.label)
    return correct / max(1, total)


# ---------------------------------------------------------------------------- train-i


def plan_train(ctx: RunContext, stage: Stage, outs: Outputs) -> Planned:
    inputs = train_inputs(ctx.cfg, ctx.manifest, stage.index, stage.dep(outs, "start"), stage.dep(outs, "labels"),
                          stage.dep(outs, "teacher"))
    return Planned(inputs)


def run_train(ctx: RunContext, stage: Stage, planned: Planned, outs: Outputs) -> Path:
    """Train segment ``stage.index`` from its start checkpoint; returns c_{segment+1}."""
    cfg, name, segment = ctx.cfg, stage.name, stage.index
    start, end = cfg.schedule.segments()[segment]
    start_ckpt, labels, teacher = stage.dep(outs, "start"), stage.dep(outs, "labels"), stage.dep(outs, "teacher")
    out = ctx.checkpoint(segment + 1)
    where = f" ({ctx.nproc} processes, torchrun)" if ctx.nproc > 1 else ""
    ctx.say(name, f"epochs {start}..{end - 1} from {start_ckpt.name}" + (" (online teacher)" if cfg.online else "") + where)
    if ctx.nproc > 1:
        res = train_distributed(cfg, nproc=ctx.nproc, overrides=ctx.overrides, name=name, segment=segment,
                                start_ckpt=start_ckpt, labels=labels, teacher=teacher, out=out, run_dir=ctx.run_dir,
                                device=ctx.device, progress=ctx.progress)
    else:
        res = train_student(cfg, ctx.manifest, segment, start_ckpt, labels, teacher, out, name=name,
                            run_dir=ctx.run_dir, device=ctx.device, progress=ctx.progress, say=ctx.say)
    if cfg.online:
        ctx.result.teacher_forwards += int(res.get("teacher_forwards", 0))
    # student forwards of this call: the batches trained now (not those before a resume) x batch
    ctx.result.student_forwards += res["batches_trained"] * cfg.train.batch_size
    info = {k: res.get(k) for k in ("epochs", "global_step", "teacher_forwards", "teacher_macs", "resumed", "seconds")}
    ctx.lock.record(name, planned.inputs, outputs={"checkpoint": file_record(out)}, info=info)
    last = (res["epochs"] or [{}])[-1]
    if "val_top1" in last:
        ema = f" (EMA {last['ema_val_top1']:.4f})" if "ema_val_top1" in last else ""
        ctx.say(name, f"val top-1 {last['val_top1']:.4f}{ema}")
    return out
