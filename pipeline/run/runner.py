"""The staged curriculum: teacher -> c_0 -> per segment [precompute labels from c_i, train to
c_{i+1}, evaluate] -> report (docs/design.md §2, §3).

The stages are declared once, in :mod:`pipeline.run.graph`; the runner walks them. Every stage is
recorded in the run lock with its input fingerprints (:mod:`pipeline.fingerprints`); a rerun does
only what is stale, and says why. Checkpoints are plain timm state_dicts in
``<run_dir>/checkpoints``; a trained teacher is content-addressed under ``<store>/teachers`` so
every run sharing its inputs shares it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import click

from pipeline._atomic import write_atomic
from pipeline._gpu import check_overlap
from pipeline._lock import Freshness
from pipeline.config.loader import dump_config
from pipeline.devices import resolve_device
from pipeline.errors import ConfigError
from pipeline.precompute.address import resolve_address
from pipeline.precompute.probe import probe_policies
from pipeline.report.baseline import Baseline
from pipeline.report.metrics import write_metrics
from pipeline.report.run_report import write_report
from pipeline.run.claims import register_run
from pipeline.run.context import Echo, RunContext, RunOutcome
from pipeline.run.graph import checkpoint_maker, expand, needs_labels, teacher_source
from pipeline.run.stage import Stage
from pipeline.run.stages import plan_probe, run_probe

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One planned stage: its name, input fingerprints and whether the lock says it is fresh."""

    name: str
    inputs: dict[str, Any]
    freshness: Freshness


class Runner(RunContext):
    """Plans and runs one stage config; ``until`` stops after a named stage (e.g. ``precompute-1``).

    ``overrides``: the ``--set`` strings ``cfg`` was loaded with; recorded in the run lock and in
    ``<run_dir>/config.yaml`` (their effect is already in ``cfg``). ``progress=False`` turns off
    the progress bars (precompute tasks, training steps), which otherwise show when stderr is a
    terminal and ``-q`` was not given.
    """

    def __init__(self, cfg, *, scheduler: str | None = None, workers: int | Literal["auto"] | None = None,
                 echo: Echo = click.echo, progress: bool = True, device: str | None = None,
                 overrides: Sequence[str] = (), nproc: int | None = None) -> None:
        super().__init__(cfg, device=device or resolve_device(cfg.compute.device), echo=echo, progress=progress,
                         # processes per student train stage and teacher fine-tune (torchrun when > 1)
                         nproc=int(nproc or cfg.compute.nproc), overrides=list(overrides),
                         scheduler=scheduler, workers=workers)
        self.stages = expand(cfg)

    def run(self, *, until: str | None = None, baseline: Baseline | None = None) -> RunOutcome:
        """Run every stale stage in order (stop after ``until``); returns what was done.
        ``baseline``: a comparison run the report shows beside this one.

        Then writes ``config.yaml`` (the resolved config) and the per-epoch ``metrics.csv`` into
        the run folder, from the config and the run lock: a cached rerun rewrites the same bytes.

        Raises:
            ConfigError: ``until`` names no stage of this run.
        """
        names = [s.name for s in self.stages]
        if until is not None and until not in names:
            raise ConfigError(f"--until: {self.cfg.name} has no stage {until!r}; its stages: {', '.join(names)}")
        self._check_gpu_overlap()
        register_run(self.cfg.labels.store, self.lock.path)  # so gc of any config sharing the store keeps our files
        try:
            outs = self._walk(until)
            if outs is not None:
                last = (self.lock.info(self.stages[-1].name).get("epochs") or [{}])[-1]
                self.result.final_accuracy = last.get("val_top1")
                self.result.report = write_report(self.cfg, self.lock, self.run_dir, self.stages, baseline)
        finally:
            self.close()
        self.lock.save_overrides()
        self.write_run_files()
        return self.result

    def _check_gpu_overlap(self) -> None:
        """``schedule.lag: 1`` must not put an embedded GPU cluster's workers beside CUDA trainer
        ranks on the same GPUs (:func:`pipeline._gpu.check_overlap`); checked before the first stage."""
        cfg = self.cfg
        if needs_labels(cfg) and len(cfg.schedule.segments()) > 1:
            check_overlap(cfg.schedule.lag, embedded=resolve_address(self._scheduler, cfg.compute.scheduler) is None,
                          precompute_gpu=resolve_device(cfg.compute.device) in ("cuda", "gpu"),
                          train_gpu=str(self.device).startswith("cuda"))

    def _walk(self, until: str | None) -> dict[str, Any] | None:
        """Visit the stages in order, each cached or run; the outputs, or None when stopped at ``until``."""
        outs: dict[str, Any] = {}
        pending: dict[str, _Background] = {}
        for at, stage in enumerate(self.stages):
            self._start_overlapping(at, outs, pending)
            if stage.name in pending:
                pending.pop(stage.name).result()  # its thread put the output in `outs`
            else:
                outs[stage.name] = self.run_stage(stage, outs)
            if stage.name == until:
                for job in pending.values():  # let an overlapping stage finish and record itself
                    job.result()
                return None
        return outs

    def _start_overlapping(self, at: int, outs: dict[str, Any], pending: dict[str, _Background]) -> None:
        """Before stage ``at``, start in one background thread the later stages declared to overlap
        its kind whose dependencies are all done (lag 1: the next segment's labels while this one trains)."""
        kind = self.stages[at].kind.kind
        chain: list[Stage] = []
        for later in self.stages[at + 1:]:
            ready = all(d in outs or d in {s.name for s in chain} for d in later.deps.values())
            if later.kind.overlaps == kind and later.name not in pending and later.name not in outs and ready:
                chain.append(later)
        if chain:
            def run_chain() -> None:
                for s in chain:
                    outs[s.name] = self.run_stage(s, outs)

            job = _Background(run_chain)
            pending.update({s.name: job for s in chain})

    def run_stage(self, stage: Stage, outs: dict[str, Any]) -> Any:
        """Cache or run one stage (its dependencies' outputs in ``outs``); returns its output."""
        planned = stage.kind.plan(self, stage, outs)
        fresh = self.lock.check(stage.name, planned.inputs)
        log.debug("stage %s: %s", stage.name, "fresh" if fresh.fresh else f"stale: {fresh.reason}")
        # the store is a cache: a fresh stage's recorded outputs that changed are moved aside, and it runs again
        healed = stage.kind.heal(self, stage) if fresh.fresh and stage.kind.heal is not None else []
        for q in healed:
            self.say(stage.name, f"damaged partition {q['path']} ({q['reason']}): moved to {q['moved_to']}, recomputed")
        if not fresh.fresh or healed:
            out = stage.kind.run(self, stage, planned, outs)
            self.result.stages[stage.name] = "ran"
            return out
        out = stage.kind.cached(self, stage, planned)
        self.result.stages[stage.name] = "cached"
        if stage.kind.cached_note is not None:
            self.say(stage.name, stage.kind.cached_note(out))
        return out

    def status(self, deep: bool = False) -> list[Step]:
        """Which stages are fresh and why the others are stale, without training or precomputing.

        Each stage's *current* inputs are computed as ``run`` would compute them (from the config
        and the recorded outputs of the stages it depends on) and compared with the lock. A stage
        whose dependency is stale is stale too ("depends on X"): its inputs are outputs of X.
        ``deep``: also stat every recorded label partition (``run`` always does).
        """
        steps: list[Step] = []
        stale: set[str] = set()
        outs: dict[str, Any] = {}
        for stage in self.stages:
            bad = next((d for d in stage.deps.values() if d in stale), None)
            if bad is not None:
                step = Step(stage.name, {}, Freshness(False, f"depends on {bad}, which is stale"))
            elif stage.name not in self.lock.stages:
                step = Step(stage.name, {}, Freshness(False, "never run"))
            else:
                planned = stage.kind.plan(self, stage, outs)
                step = Step(stage.name, planned.inputs, self.lock.check(stage.name, planned.inputs, deep=deep))
                if step.freshness.fresh:
                    outs[stage.name] = stage.kind.cached(self, stage, planned)
            if not step.freshness.fresh:
                stale.add(stage.name)
            steps.append(step)
        return steps

    def write_run_files(self) -> list[Path]:
        """Write ``config.yaml`` and the metrics CSV files into the run folder; returns their paths."""
        config = self.run_dir / "config.yaml"
        write_atomic(config, dump_config(self.cfg, self.overrides).encode())
        return [config, *write_metrics(self.lock, len(self.cfg.schedule.segments()), self.run_dir)]

    def probe(self, milestone: int, samples: int | None = None,
              policies: tuple[str, ...] | None = None) -> dict[str, Any]:
        """``mkd-pipeline probe``: the fidelity curves of several policies at milestone ``milestone``
        (checkpoint c_I on segment I's views), the teacher and c_0 made first when stale.

        Raises:
            ConfigError: the milestone is out of range, or its checkpoint was not trained yet.
        """
        n = len(self.cfg.schedule.segments())
        if not 0 <= milestone < n:
            raise ConfigError(f"--milestone: {milestone} is out of range; {self.cfg.name} has {n} milestone(s) (0..{n - 1})")
        by_name = {s.name: s for s in self.stages}
        outs: dict[str, Any] = {}
        for name in dict.fromkeys(("teacher", teacher_source(self.cfg))):  # loaded, then fine-tuned if it is
            outs[name] = self.run_stage(by_name[name], outs)
        teacher = outs[teacher_source(self.cfg)]
        ckpt = self.run_stage(by_name["init"], outs) if milestone == 0 else self.checkpoint(milestone)
        maker = checkpoint_maker(milestone)
        if milestone and not (ckpt.is_file() and self.lock.check(maker, self.lock.stages.get(maker, {}).get(
                "inputs", {})).fresh):
            raise ConfigError(f"--milestone {milestone}: checkpoint {ckpt} is not trained yet; run "
                              f"`mkd-pipeline run ... --until {maker}` first")
        task = plan_probe(self, milestone, teacher, ckpt, policies=policies or probe_policies(), samples=samples)
        result = run_probe(self, task, f"probe-m{milestone}")  # a Dask key prefix, not a stage of the run
        result.update(milestone=milestone, source=ckpt.name, num_patches=self.cfg.num_patches)
        return result


class _Background:
    """Run a function in a thread; ``result()`` joins it and re-raises its error."""

    def __init__(self, fn) -> None:
        self._out: Any = None
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller in result()
            self._err = e

    def result(self) -> Any:
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out
