"""The staged curriculum: teacher -> c_0 -> per segment [precompute labels from c_i, train to
c_{i+1}, evaluate] -> report (docs/design.md §2, §3).

Every stage is recorded in the run lock with its input fingerprints; a rerun does only what is
stale, and says why. Checkpoints are plain timm state_dicts in ``<run_dir>/checkpoints``; a
trained teacher is content-addressed under ``<store>/teachers`` so every run sharing its inputs
shares it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import click
import torch

from maskedkd import Rung, choose_keep, ladder_keeps, needs_saliency, resolve_keep
from maskedkd.digests import render_digest
from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_file, sha256_json
from pipeline._lock import LOCK_NAME, Freshness, RunLock, file_record
from pipeline.config.loader import dump_config
from pipeline.data.manifest import DatasetManifest, load_manifest
from pipeline.errors import ConfigError, NumericError
from pipeline.labels import paths
from pipeline.labels.contract import LabelRef, render_spec, shard_refs
from pipeline.labels.reader import open_partition
from pipeline.models import (
    checkpoint_stem,
    create_model,
    holds_model,
    load_pretrained,
    model_fingerprint,
    save_checkpoint,
    weights_file,
)
from pipeline.precompute.cluster import run_tasks
from pipeline.precompute.plan import plan_segment
from pipeline.precompute.probe import PROBE_POLICIES, ProbeTask, plan_probe, run_probe
from pipeline.precompute.reach import check_reach, probe_needs
from pipeline.precompute.run import cluster_for, run_precompute
from pipeline.precompute.spec import ModelSpec, PartitionTask, model_spec
from pipeline.report.metrics import write_metrics
from pipeline.report.run_report import write_report
from pipeline.run.claims import announce, register_run
from pipeline.run.distributed import train_distributed
from pipeline.train.evaluate import evaluate
from pipeline.train.loop import OnlineTeacher, train_segment
from pipeline.train.threads import train_threads

Echo = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class Step:
    """One planned stage: its name, input fingerprints and whether the lock says it is fresh."""

    name: str
    inputs: dict[str, Any]
    freshness: Freshness
    detail: str = ""


@dataclass
class RunResult:
    """What a run did: per stage 'cached' or 'ran', totals, and where the report is."""

    stages: dict[str, str] = field(default_factory=dict)
    teacher_forwards: int = 0
    student_forwards: int = 0
    report: Path | None = None
    final_accuracy: float | None = None


class Runner:
    """Plans and runs one stage config; ``until`` stops after a named stage (e.g. ``precompute-1``).

    ``overrides``: the ``--set`` strings ``cfg`` was loaded with; recorded in the run lock and in
    ``<run_dir>/config.yaml`` (their effect is already in ``cfg``). ``progress=False`` turns off
    the progress bars (precompute tasks, training steps), which otherwise show when stderr is a
    terminal and ``-q`` was not given.
    """

    def __init__(self, cfg, *, scheduler: str | None = None, workers: int | Literal["auto"] | None = None,
                 echo: Echo = click.echo, progress: bool = True, device: str | None = None,
                 overrides: Sequence[str] = (), nproc: int | None = None) -> None:
        self.cfg = cfg
        self.nproc = int(nproc or cfg.compute.nproc)  # processes per student train stage (torchrun when > 1)
        self.overrides = list(overrides)
        self.scheduler = scheduler
        self.workers = workers
        self.echo = echo
        self.progress = progress
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.lock = RunLock(self.run_dir / LOCK_NAME, store=cfg.labels.store)
        self.lock.overrides = self.overrides  # written with whatever this command records
        self.manifest: DatasetManifest = load_manifest(cfg.data.root)
        self.device = device or _device(cfg.compute.device)
        self._cluster_cm: contextlib.AbstractContextManager | None = None
        self._cluster = None
        self.result = RunResult()

    # ------------------------------------------------------------------ inputs

    def data_inputs(self) -> dict[str, Any]:
        """Fingerprint of the training data the run sees (shard bytes + subset)."""
        shards = [(r.path.name, r.sha256, r.limit) for r in self._shards(self.cfg.data.train, self.cfg.data.subset)]
        return {"train": sha256_json(shards)}

    def init_inputs(self) -> dict[str, Any]:
        s = self.cfg.student
        file = self._weights_file(s)
        inputs = {"model": s.model, "kwargs": sha256_json(s.kwargs),
                  "init": sha256_file(file) if file else f"seed:{s.init_seed}"}
        # named only when set, so students initialised before `pretrained` existed stay fresh
        return {**inputs, "pretrained": True, "init_seed": s.init_seed} if s.pretrained else inputs

    def _weights_file(self, model) -> Path | None:
        """The file ``model``'s weights load from (its ``weights``, or its pretrained file): the one hashed."""
        return weights_file(model.model, model.kwargs, pretrained=model.pretrained, weights=model.weights)

    def precompute_inputs(self, segment: int, tasks: list[PartitionTask]) -> dict[str, Any]:
        """The tasks' fingerprints, plus the readable parts of them so `status` can say what changed.

        ``render`` is the render digest inside the view fingerprint: when an upgrade of Pillow,
        timm, torch, numpy or Python renders views differently, `status` says
        ``input 'render' changed`` rather than only that the tasks did.
        """
        t = tasks[0] if tasks else None
        return {"tasks": sha256_json([t.fingerprints for t in tasks]),
                "render": render_digest(self.cfg.views.view_spec()),
                "teacher": t.teacher.fingerprint if t else None,
                "student": t.student.fingerprint if t and t.student else None,
                "policy": self.cfg.masking.policy, "keep": self._keep_input(segment, t),
                "tolerance": self.cfg.masking.tolerance,
                # named only when not Pillow, so runs that never set it keep their recorded inputs
                **({"resize": self.cfg.data.resize} if self.cfg.data.resize != "pil" else {})}

    def _keep_input(self, segment: int, task: PartitionTask | None) -> int | str:
        keep = self.cfg.keep_for_segment(segment)
        if keep == "auto" and task is not None:
            return f"auto: {_fmt_keep(task.keep, self.cfg.num_patches)}"  # so `status` names the choice that changed
        return keep

    def train_inputs(self, segment: int, start_ckpt: Path, labels, teacher: ModelSpec | None) -> dict[str, Any]:
        cfg = self.cfg
        start, end = cfg.schedule.segments()[segment]
        label_fp = None if labels is None else sha256_json(sorted([list(k), v.sha256] for k, v in labels.items()))
        inputs = {"start": sha256_file(start_ckpt), "labels": label_fp, "recipe": sha256_json(cfg.train.model_dump(mode="json")),
                  "epochs": [start, end, cfg.schedule.epochs], "views": sha256_json(cfg.views.model_dump(mode="json")),
                  "data": sha256_json(self.data_inputs()), "online": self._online_inputs(segment, teacher),
                  **self._resize_input(cfg.student)}
        return _with_order_seed(inputs, cfg.train.seed, cfg.views.seed)

    def _resize_input(self, model) -> dict[str, str]:
        """``{"render": ...}`` when views are resized by torch (other pixels to train on, whatever the
        labels); nothing for Pillow, so teachers and students trained before `data.resize` stay fresh.
        ``{"preprocess": ...}`` when the model normalises or resamples otherwise than the data section
        (its own fields, or its pretrained_cfg), so models that render as before stay fresh too."""
        data = self.cfg.data
        render = render_spec(data, model)
        out = {"render": sha256_json(render.resize_record())} if render.resize_record() else {}
        if model.preprocessing(data) != (tuple(data.mean), tuple(data.std), data.interpolation):
            out["preprocess"] = sha256_json(render.record())
        return out

    def teacher_inputs(self) -> dict[str, Any]:
        t = self.cfg.teacher
        file = self._weights_file(t)
        # named only when set, so teachers recorded before `pretrained` existed stay fresh
        pretrained = {"pretrained": True} if t.pretrained else {}
        if t.train is None:
            return {"model": t.model, "kwargs": sha256_json(t.kwargs), "weights": sha256_file(file), **pretrained}
        views = (t.train.views or self.cfg.views).model_dump(mode="json")
        # patch_drop_rate 0 (the default) stays out of the recipe hash: teachers trained before the field existed stay valid
        recipe = t.train.model_dump(mode="json", exclude=set() if t.train.patch_drop_rate else {"patch_drop_rate"})
        inputs = {"model": t.model, "kwargs": sha256_json(t.kwargs), "recipe": sha256_json(recipe),
                  "views": sha256_json(views), "data": sha256_json(self.data_inputs()),
                  "val": sha256_json([self.cfg.data.val, self.cfg.data.val_subset]), **self._resize_input(t),
                  **({"init": sha256_file(file), **pretrained} if file else {})}
        return _with_order_seed(inputs, t.train.seed, views["seed"])

    # ------------------------------------------------------------------ cluster

    def cluster(self):
        """The Dask cluster, opened on first use and kept for the whole run."""
        if self._cluster is None:
            self._cluster_cm = cluster_for(self.cfg, scheduler=self.scheduler, workers=self.workers)
            self._cluster = self._cluster_cm.__enter__()
        return self._cluster

    def close(self) -> None:
        if self._cluster_cm is not None:
            cm, self._cluster_cm, self._cluster = self._cluster_cm, None, None
            cm.__exit__(None, None, None)

    # ------------------------------------------------------------------ helpers

    def _fresh(self, name: str, inputs: dict[str, Any]) -> bool:
        """Whether the lock says stage ``name`` is up to date for ``inputs`` (why not: ``-v``)."""
        f = self.lock.check(name, inputs)
        log.debug("stage %s: %s", name, "fresh" if f.fresh else f"stale: {f.reason}")
        return f.fresh

    def _say(self, step: str, what: str) -> None:
        self.echo(f"[{step}] {what}")

    def _shards(self, split: str, subset: int | None):
        return shard_refs(self.manifest, split, subset)

    def _evaluate(self, model, model_cfg) -> dict[str, Any]:
        if self.cfg.data.val is None:
            return {}
        shards = self._shards(self.cfg.data.val, self.cfg.data.val_subset)
        # under torchrun every rank evaluates its share (train_segment calls this on all ranks)
        res = evaluate(model, shards, render_spec(self.cfg.data, model_cfg), batch_size=256, device=self.device,
                       split_ranks=True)
        return {f"val_{k}": v for k, v in res.items()}

    # ------------------------------------------------------------------ stages

    def teacher_stage(self) -> ModelSpec:
        """The teacher's weights file and fingerprint; trains it first when the config says so."""
        cfg = self.cfg
        inputs = self.teacher_inputs()
        fresh = self._fresh("teacher", inputs)
        rec = self.lock.output("teacher", "weights")
        if fresh and rec:
            self._say("teacher", f"cached ({rec['path']})")
            self.result.stages["teacher"] = "cached"
            return self._teacher_spec(rec["path"], self.lock.info("teacher")["fingerprint"])
        if cfg.teacher.frozen:
            path, info = self._load_teacher(inputs)
        else:
            path = self._teachers_dir() / f"{checkpoint_stem(cfg.teacher.model)}-{sha256_json(inputs)[:16]}.pth"
            sidecar = path.with_suffix(".json")
            if path.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("sha256") == sha256_file(path):
                info = json.loads(sidecar.read_text())["info"]
                self._say("teacher", f"trained earlier by a run with the same inputs ({path})")
            else:
                info = self._train_teacher(path, inputs)
        self.lock.record("teacher", inputs, outputs={"weights": file_record(path)}, info=info)
        self.result.stages["teacher"] = "ran"
        return self._teacher_spec(str(path), info["fingerprint"])

    def _teachers_dir(self) -> Path:
        """Where teachers the run writes live, content-addressed: a local (or file://) store shares them
        with every run; a remote store cannot hold what torch loads by path, so the run folder keeps them."""
        local = paths.local_root(self.cfg.labels.store)
        return Path(local) / "teachers" if local is not None else self.run_dir / "teachers"

    def _load_teacher(self, inputs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """A frozen teacher through timm's loader: its weights file when workers can load it as it is,
        else (pretrained, resampled, converted) a plain checkpoint of what timm loaded."""
        t = self.cfg.teacher
        file = self._weights_file(t)
        model = load_pretrained(t.model, t.kwargs, file, pretrained=t.pretrained, seed=0)
        if t.pretrained or not holds_model(file, model):
            path = self._teachers_dir() / f"{checkpoint_stem(t.model)}-{sha256_json(inputs)[:16]}.pth"
            save_checkpoint(model, path)
        else:
            path = Path(file)
        val = self._evaluate(model, t)
        info = {"fingerprint": model_fingerprint(model, t.model), "top1": val.get("val_top1")}
        self._say("teacher", f"weights {file} (val top-1 {_pct(info['top1'])})")
        return path, info

    def _train_teacher(self, path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.teacher
        recipe = t.train
        views = recipe.views or cfg.views
        # token dropping shapes training only: the saved weights load into the plain model
        kwargs = {**t.kwargs, "patch_drop_rate": recipe.patch_drop_rate} if recipe.patch_drop_rate else t.kwargs
        file = self._weights_file(t)
        if file is None:
            model = create_model(t.model, kwargs, seed=recipe.seed)
        else:  # a fine-tune: from the loaded weights, the head re-initialised when it has other classes
            model = load_pretrained(t.model, kwargs, file, pretrained=t.pretrained, num_classes=cfg.data.num_classes,
                                    seed=recipe.seed)
        work = self.run_dir / "teacher-train"
        self._say("teacher", f"training {t.model} for {recipe.epochs} epochs (cross-entropy only)")
        t0 = time.perf_counter()
        with train_threads(cfg.compute.train_threads), _naming_stage("teacher"):  # one process trains: all its cores
            res = train_segment(
                model, shards=self._shards(cfg.data.train, cfg.data.subset), spec=views.view_spec(), seed=views.seed,
                epochs=range(0, recipe.epochs), cfg=recipe, total_epochs=recipe.epochs,
                render=render_spec(cfg.data, t), run_dir=work, view_pool=views.pool_size,
                device=self.device, checkpoint_path=path, log=lambda s: self._say("teacher", s),
                evaluate=lambda m, e: self._evaluate(m, t), progress="teacher" if self.progress else None,
            )
        info = {"fingerprint": model_fingerprint(model, t.model), "epochs": res["epochs"],
                "top1": (res["epochs"][-1] or {}).get("val_top1"), "seconds": time.perf_counter() - t0}
        write_atomic(path.with_suffix(".json"), json.dumps({"sha256": sha256_file(path), "inputs": inputs, "info": info}, indent=1).encode())
        self._say("teacher", f"val top-1 {_pct(info['top1'])}")
        return info

    def _teacher_spec(self, path: str, fingerprint: str) -> ModelSpec:
        return model_spec(self.cfg, "teacher", path, fingerprint)

    def init_stage(self) -> Path:
        """c_0: the student at initialisation (seeded) or from its weights file."""
        s = self.cfg.student
        inputs = self.init_inputs()
        path = self.ckpt_dir / "c0.pth"
        if self._fresh("init", inputs):
            self.result.stages["init"] = "cached"
            return path
        file = self._weights_file(s)
        if file is None:
            model = create_model(s.model, s.kwargs, seed=s.init_seed)
        else:
            model = load_pretrained(s.model, s.kwargs, file, pretrained=s.pretrained,
                                    num_classes=self.cfg.data.num_classes if s.pretrained else None, seed=s.init_seed)
        save_checkpoint(model, path)
        self.lock.record("init", inputs, outputs={"checkpoint": file_record(path)})
        self._say("init", f"student {s.model} -> {path}")
        self.result.stages["init"] = "ran"
        return path

    def plan_precompute(self, segment: int, teacher: ModelSpec, source_ckpt: Path,
                        keep: int | None | str = "config") -> list[PartitionTask]:
        """The tasks of segment ``segment``'s labels, masks chosen by ``source_ckpt``.

        Args:
            keep: the keep count (``None``: all patches); ``"config"`` takes it from the config,
                which ``masking.keep: auto`` cannot give (see :meth:`keep_count`).
        """
        if keep == "config":
            if self.cfg.masking.auto:
                raise ValueError("masking.keep is auto: give the keep the spot-check chose (Runner.keep_count)")
            keep = resolve_keep(self.cfg.keep_for_segment(segment), self.cfg.num_patches, self.cfg.masking.policy)
        student = model_spec(self.cfg, "student", source_ckpt) if needs_saliency(self.cfg.masking.policy) else None
        return plan_segment(self.cfg, segment, manifest=self.manifest, teacher=teacher, student=student,
                            device="auto", num_classes=self.cfg.data.num_classes, keep=keep)

    # ------------------------------------------------------------------ fidelity spot-check

    def plan_probe(self, segment: int, teacher: ModelSpec, source_ckpt: Path, *, policies: tuple[str, ...],
                   samples: int | None = None) -> ProbeTask:
        """The spot-check of segment ``segment``'s views at every rung of ``masking.ladder``."""
        student = model_spec(self.cfg, "student", source_ckpt) if any(needs_saliency(p) for p in policies) else None
        keeps = ladder_keeps(self.cfg.masking.ladder, self.cfg.num_patches)
        return plan_probe(self.cfg, segment, manifest=self.manifest, teacher=teacher, student=student, keeps=keeps,
                          policies=policies, samples=samples)

    def run_probe(self, task: ProbeTask, name: str) -> dict[str, Any]:
        """Run one spot-check on the cluster (a GPU worker where the cluster has them)."""
        cluster = self.cluster()
        check_reach(cluster, probe_needs(task))
        (result,) = run_tasks(cluster, run_probe, [{"id": task.id, "task": task}], resources=cluster.task_resources,
                              key_prefix=f"{self.cfg.name}-{name}", retries=self.cfg.compute.retries,
                              timeout_s=self.cfg.compute.timeout_s, progress=False,
                              lost_after_s=self.cfg.compute.lost_timeout_s)
        return result

    @staticmethod
    def probe_inputs(task: ProbeTask) -> dict[str, Any]:
        """A spot-check's lock inputs: its fingerprint, plus the readable parts `status` names."""
        return {"probe": task.fingerprint, "teacher": task.teacher.fingerprint,
                "student": task.student.fingerprint if task.student else None,
                "samples": len(task.rows), "keeps": list(task.keeps)}

    def probe_stage(self, segment: int, teacher: ModelSpec, source_ckpt: Path) -> dict[str, Any]:
        """``probe-<segment>``: the fidelity curve of the configured policy on a seeded sample of
        the segment's views, masks from ``source_ckpt``; recorded in the run lock and reused."""
        name = f"probe-{segment}"
        task = self.plan_probe(segment, teacher, source_ckpt, policies=(self.cfg.masking.policy,))
        inputs = self.probe_inputs(task)
        if self._fresh(name, inputs):
            self.result.stages[name] = "cached"
            return self.lock.info(name)
        t0 = time.perf_counter()
        result = self.run_probe(task, name)
        result["seconds"] = time.perf_counter() - t0
        result["source"] = source_ckpt.name
        self.lock.record(name, inputs, info=result)
        self.result.stages[name] = "ran"
        self.result.teacher_forwards += result["teacher_forwards"]
        curve = result["curves"][self.cfg.masking.policy]
        self._say(name, f"{len(task.rows)} views, masks from {source_ckpt.name}: " + ", ".join(
            f"keep {_fmt_keep(r['keep'], self.cfg.num_patches)} agreement {r['agreement']:.3f} KL {r['kl']:.3f}"
            for r in curve))
        return result

    def chosen_keep(self, probe: dict[str, Any]) -> int | None:
        """The keep ``masking.budget`` takes from a spot-check's curve (``None``: all patches)."""
        m = self.cfg.masking
        return choose_keep([Rung(**r) for r in probe["curves"][m.policy]], m.budget.budget())

    def probe(self, milestone: int, samples: int | None = None,
              policies: tuple[str, ...] = PROBE_POLICIES) -> dict[str, Any]:
        """``mkd-pipeline probe``: the fidelity curves of several policies at milestone ``milestone``
        (checkpoint c_I on segment I's views), the teacher and c_0 made first when stale.

        Raises:
            ConfigError: the milestone is out of range, or its checkpoint was not trained yet.
        """
        n = len(self.cfg.schedule.segments())
        if not 0 <= milestone < n:
            raise ConfigError(f"--milestone: {milestone} is out of range; {self.cfg.name} has {n} milestone(s) (0..{n - 1})")
        teacher = self.teacher_stage()
        ckpt = self.init_stage() if milestone == 0 else self.ckpt_dir / f"c{milestone}.pth"
        if milestone and not (ckpt.is_file() and self.lock.check(f"train-{milestone - 1}", self.lock.stages.get(
                f"train-{milestone - 1}", {}).get("inputs", {})).fresh):
            raise ConfigError(f"--milestone {milestone}: checkpoint {ckpt} is not trained yet; run "
                              f"`mkd-pipeline run ... --until train-{milestone - 1}` first")
        task = self.plan_probe(milestone, teacher, ckpt, policies=policies, samples=samples)
        result = self.run_probe(task, f"probe-m{milestone}")
        result.update(milestone=milestone, source=ckpt.name, num_patches=self.cfg.num_patches)
        return result

    def keep_count(self, segment: int, teacher: ModelSpec, source_ckpt: Path) -> tuple[int | None, dict | None]:
        """Segment ``segment``'s keep (``None``: all patches) and, with ``keep: auto``, the
        spot-check it was chosen from (run first when stale)."""
        m = self.cfg.masking
        if not m.auto:
            return resolve_keep(self.cfg.keep_for_segment(segment), self.cfg.num_patches, m.policy), None
        probe = self.probe_stage(segment, teacher, source_ckpt)
        return self.chosen_keep(probe), probe

    def precompute_stage(self, segment: int, teacher: ModelSpec, source_ckpt: Path) -> dict[tuple[str, int], Any]:
        """Labels of one segment; returns ``{(shard, view epoch): LabelRef}`` for the trainer."""
        name = f"precompute-{segment}"
        keep, probe = self.keep_count(segment, teacher, source_ckpt)
        tasks = self.plan_precompute(segment, teacher, source_ckpt, keep)
        inputs = self.precompute_inputs(segment, tasks)
        if self._fresh(name, inputs):
            self.result.stages[name] = "cached"
            parts = self.lock.stages[name]["partitions"]
            self._say(name, f"cached ({len(parts)} partitions)")
        else:
            shown = _fmt_keep(keep, self.cfg.num_patches) + (f" (auto: {self.cfg.masking.budget.budget()})" if probe else "")
            self._say(name, f"{len(tasks)} partitions, keep {shown if tasks else '-'} ({self.cfg.masking.policy}) "
                            f"from {source_ckpt.name}")
            t0 = time.perf_counter()
            # announced before any task starts and until the lock names them: gc keeps them meanwhile
            with announce(self.cfg.labels.store, self.lock.path, name, [t.path for t in tasks]):
                with _naming_stage(name):
                    summary = run_precompute(tasks, self.cluster(), cfg=self.cfg, key_prefix=f"{self.cfg.name}-{name}",
                                             progress=self.progress)
                results = summary.pop("results")
                parts = [{"path": r["path"], "inputs": t.fingerprints, "rows": r["rows"], "sha256": r["sha256"]}
                         for t, r in zip(tasks, results)]
                summary["seconds"] = time.perf_counter() - t0
                summary["teacher_top1_masked"] = _teacher_masked_top1(parts)
                summary["source"] = source_ckpt.name
                summary["keep"] = (self.cfg.num_patches if keep is None else keep) if tasks else None  # a count, N for all
                if probe is not None:
                    # what choosing the keep cost is part of what these labels cost
                    summary["auto"] = {"budget": str(self.cfg.masking.budget.budget()), "curve": probe["curves"][self.cfg.masking.policy],
                                       "samples": probe["samples"], "teacher_macs": probe["teacher_macs"],
                                       "teacher_forwards": probe["teacher_forwards"]}
                    summary["teacher_macs"] += probe["teacher_macs"]
                self.lock.record(name, inputs, partitions=parts, info=summary)
            self.result.stages[name] = "ran"
            self.result.teacher_forwards += summary["teacher_forwards"]
            self.result.student_forwards += summary["student_forwards"]
            self._say(name, f"rows {summary['rows']}: computed {summary['rows_computed']}, reused {summary['rows_reused']}, "
                            f"cached partitions {summary['cached']}/{summary['partitions']}; teacher top-1 on masked views "
                            f"{summary['teacher_top1_masked']:.4f}")
        return _label_refs(tasks, parts)

    def train_stage(self, segment: int, start_ckpt: Path, labels, teacher: ModelSpec) -> Path:
        """Train segment ``segment`` from ``start_ckpt``; returns c_{segment+1}."""
        cfg = self.cfg
        start, end = cfg.schedule.segments()[segment]
        name = f"train-{segment}"
        out = self.ckpt_dir / f"c{segment + 1}.pth"
        inputs = self.train_inputs(segment, start_ckpt, labels, teacher)
        if self._fresh(name, inputs):
            self.result.stages[name] = "cached"
            self._say(name, f"cached ({out})")
            return out
        where = f" ({self.nproc} processes, torchrun)" if self.nproc > 1 else ""
        self._say(name, f"epochs {start}..{end - 1} from {start_ckpt.name}" + (" (online teacher)" if cfg.online else "") + where)
        if self.nproc > 1:
            res = train_distributed(self, segment, start_ckpt, labels, teacher, out)
        else:
            res = self.train_here(segment, start_ckpt, labels, teacher, out)
        if cfg.online:
            self.result.teacher_forwards += int(res.get("teacher_forwards", 0))
        # student forwards of this call: the updates done now (not those before a resume) x batch
        spe, resumed = res["steps_per_epoch"], res.get("resumed")
        done_before = start * spe if resumed is None else resumed["epoch"] * spe + resumed["position"]
        self.result.student_forwards += max(0, res["global_step"] - done_before) * cfg.train.batch_size
        info = {k: res.get(k) for k in ("epochs", "global_step", "teacher_forwards", "teacher_macs", "resumed", "seconds")}
        self.lock.record(name, inputs, outputs={"checkpoint": file_record(out)}, info=info)
        self.result.stages[name] = "ran"
        last = (res["epochs"] or [{}])[-1]
        if "val_top1" in last:
            self._say(name, f"val top-1 {last['val_top1']:.4f}")
        return out

    def train_here(self, segment: int, start_ckpt: Path, labels, teacher: ModelSpec | None, out: Path) -> dict[str, Any]:
        """Train segment ``segment`` in this process (or in each torchrun process, see
        :mod:`pipeline.run.distributed`); returns :func:`pipeline.train.train_segment`'s result."""
        cfg, s = self.cfg, self.cfg.student
        start, end = cfg.schedule.segments()[segment]
        name = f"train-{segment}"
        model = create_model(s.model, s.kwargs, weights=start_ckpt)
        online = self._online_teacher(segment, teacher) if cfg.online else None
        # one process trains: all its cores (train/threads.py); a NaN names the stage
        with train_threads(cfg.compute.train_threads), _naming_stage(name):
            return train_segment(
                model, shards=self._shards(cfg.data.train, cfg.data.subset), spec=cfg.views.view_spec(), seed=cfg.views.seed,
                epochs=range(start, end), cfg=cfg.train, total_epochs=cfg.schedule.epochs,
                render=render_spec(cfg.data, s), run_dir=self.run_dir / "train",
                labels=None if cfg.train.kd == "off" or online else labels, view_pool=cfg.views.pool_size, online=online,
                device=self.device, checkpoint_path=out, evaluate=lambda m, e: self._evaluate(m, s),
                log=lambda line: self._say(name, line), progress=name if self.progress else None,
            )

    def _online_inputs(self, segment: int, teacher: ModelSpec | None) -> Any:
        if not self.cfg.online:
            return None
        assert teacher is not None  # the online teacher is the teacher stage's
        return {"teacher": teacher.fingerprint, "policy": self.cfg.masking.policy, "keep": self.cfg.keep_for_segment(segment)}

    def _online_teacher(self, segment: int, teacher: ModelSpec | None):
        assert teacher is not None  # the online teacher is the teacher stage's
        t = self.cfg.teacher
        model = create_model(t.model, t.kwargs, weights=teacher.weights).eval().to(self.device)
        policy = self.cfg.masking.policy
        keep = resolve_keep(self.cfg.keep_for_segment(segment), self.cfg.num_patches, policy)
        return OnlineTeacher(model=model, render=render_spec(self.cfg.data, t), policy=policy, keep=keep)

    # ------------------------------------------------------------------ the run

    def run(self, *, until: str | None = None) -> RunResult:
        """Run every stale stage in order (stop after ``until``); returns what was done.

        Then writes ``config.yaml`` (the resolved config) and the per-epoch ``metrics.csv`` into
        the run folder, from the config and the run lock: a cached rerun rewrites the same bytes.
        """
        result = self._run_stages(until)
        self.lock.save_overrides()
        self.write_run_files()
        return result

    def write_run_files(self) -> list[Path]:
        """Write ``config.yaml`` and the metrics CSV files into the run folder; returns their paths."""
        config = self.run_dir / "config.yaml"
        write_atomic(config, dump_config(self.cfg, self.overrides).encode())
        return [config, *write_metrics(self.lock, len(self.cfg.schedule.segments()), self.run_dir)]

    def _run_stages(self, until: str | None) -> RunResult:
        cfg = self.cfg
        pending: dict[int, _Background] = {}
        register_run(cfg.labels.store, self.lock.path)  # so gc of any config sharing the store keeps our files
        try:
            teacher = self.teacher_stage()
            if until == "teacher":
                return self.result
            ckpt = self.init_stage()
            ckpts = [ckpt]
            needs_labels = not cfg.online and cfg.train.kd != "off"
            for i, _ in enumerate(cfg.schedule.segments()):
                labels = None
                if needs_labels:
                    source = ckpts[max(0, i - cfg.schedule.lag)]
                    labels = pending.pop(i).result() if i in pending else self.precompute_stage(i, teacher, source)
                    if until == f"precompute-{i}":
                        return self.result
                    if cfg.schedule.lag == 1 and i + 1 < len(cfg.schedule.segments()):
                        # labels of segment i+1 come from c_i: compute them while segment i trains
                        pending[i + 1] = _Background(self.precompute_stage, i + 1, teacher, ckpts[i])
                ckpts.append(self.train_stage(i, ckpts[i], labels, teacher))
                if until == f"train-{i}":
                    for job in pending.values():  # let the overlapping precompute finish and record itself
                        job.result()
                    return self.result
            last = (self.lock.info(f"train-{len(ckpts) - 2}").get("epochs") or [{}])[-1]
            self.result.final_accuracy = last.get("val_top1")
            self.result.report = write_report(self)
            return self.result
        finally:
            self.close()

    def status(self) -> list[Step]:
        """Which stages are fresh and why the others are stale, without training or precomputing.

        Each stage's *current* inputs are computed as ``run`` would compute them (from the config
        and the recorded outputs of the stages it depends on) and compared with the lock. A stage
        whose dependency is stale is stale too ("depends on X"): its inputs are outputs of X.
        """
        cfg = self.cfg
        steps: list[Step] = []
        stale: set[str] = set()

        def add(name: str, deps: list[str], inputs_fn: Callable[[], dict[str, Any]]) -> None:
            bad = next((d for d in deps if d in stale), None)
            if bad is not None:
                step = Step(name, {}, Freshness(False, f"depends on {bad}, which is stale"))
            elif name not in self.lock.stages:
                step = Step(name, {}, Freshness(False, "never run"))
            else:
                inputs = inputs_fn()
                step = Step(name, inputs, self.lock.check(name, inputs))
            if not step.freshness.fresh:
                stale.add(name)
            steps.append(step)

        add("teacher", [], self.teacher_inputs)
        teacher = None
        if "teacher" not in stale:
            rec = self.lock.output("teacher", "weights")
            teacher = self._teacher_spec(rec["path"], self.lock.info("teacher")["fingerprint"])  # type: ignore[index]  # recorded
        add("init", [], self.init_inputs)
        makers = ["init"]  # makers[i]: the stage that writes checkpoint c_i
        ckpt = [self.ckpt_dir / "c0.pth"]
        needs_labels = not cfg.online and cfg.train.kd != "off"
        for i, _ in enumerate(cfg.schedule.segments()):
            labels = None
            deps = [makers[i]]
            if needs_labels:
                src = max(0, i - cfg.schedule.lag)
                pname = f"precompute-{i}"
                tasks: list[PartitionTask] = []
                pre_deps = ["teacher", makers[src]]
                if cfg.masking.auto:
                    qname = f"probe-{i}"

                    # teacher is not None here: add() calls inputs only when every dependency is fresh
                    add(qname, ["teacher", makers[src]], lambda i=i, src=src: self.probe_inputs(  # type: ignore[misc]
                        self.plan_probe(i, teacher, ckpt[src], policies=(cfg.masking.policy,))))  # type: ignore[arg-type]
                    pre_deps.append(qname)

                def pre_inputs(i=i, src=src, tasks=tasks) -> dict[str, Any]:
                    keep = self.chosen_keep(self.lock.info(f"probe-{i}")) if cfg.masking.auto else "config"
                    tasks[:] = self.plan_precompute(i, teacher, ckpt[src], keep)  # type: ignore[arg-type]
                    return self.precompute_inputs(i, tasks)

                add(pname, pre_deps, pre_inputs)
                if pname not in stale:
                    labels = _label_refs(tasks, self.lock.stages[pname]["partitions"])
                deps.append(pname)
            if cfg.online:
                deps.append("teacher")
            add(f"train-{i}", deps, lambda i=i, labels=labels: self.train_inputs(i, ckpt[i], labels, teacher))  # type: ignore[misc]
            makers.append(f"train-{i}")
            ckpt.append(self.ckpt_dir / f"c{i + 1}.pth")
        return steps


@contextlib.contextmanager
def _naming_stage(stage: str) -> Iterator[None]:
    """Non-finite numbers say which stage met them (the task or trainer knows only shard or step)."""
    try:
        yield
    except NumericError as e:
        raise NumericError(f"[{stage}] {e}") from e


class _Background:
    """Run a function in a thread; ``result()`` joins it and re-raises its error."""

    def __init__(self, fn, *args) -> None:
        self._out: Any = None
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args) -> None:
        try:
            self._out = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller in result()
            self._err = e

    def result(self) -> Any:
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out


def _label_refs(tasks: list[PartitionTask], parts: list[dict]) -> dict[tuple[str, int], Any]:
    """``{(shard, view epoch): LabelRef}`` of a precompute stage's recorded partitions."""
    return {(t.shard, t.view_epoch): LabelRef(p["path"], p["sha256"], {"fingerprints": t.fingerprints})
            for t, p in zip(tasks, parts)}


def _teacher_masked_top1(parts: list[dict]) -> float:
    """The teacher's top-1 on the (masked) views it labelled, over all partitions of a stage."""
    correct = total = 0
    for p in parts:
        with open_partition(p["path"]) as part:
            b = part.read_all(columns=("label", "target"))
        assert b.target is not None and b.label is not None  # the columns read
        correct += int((b.target.top_class() == b.label).sum())
        total += len(b.label)
    return correct / max(1, total)


def _with_order_seed(inputs: dict[str, Any], train_seed: int, views_seed: int) -> dict[str, Any]:
    """Stage inputs naming the data-order seed where it differs from the view seed.

    Before 0.2 the trainer seeded the data order with ``views.seed`` too; a stage trained where the
    two differ is stale (``input 'order_seed' changed``), one where they agree keeps its record.
    """
    return inputs if train_seed == views_seed else {**inputs, "order_seed": train_seed}


def _fmt_keep(keep: int | None, num_patches: int | None) -> str:
    return f"{num_patches if keep is None else keep}/{num_patches}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"
