"""``mkd-pipeline run | status | precompute | gc``: the staged runner's commands."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Callable

import click

from pipeline._cli_options import (
    scheduler_file_opt,
    scheduler_from_flags,
    scheduler_opt,
    set_opt,
)
from pipeline._lock import stage_name
from pipeline.errors import ConfigError
from pipeline.report.fidelity import curve_table, plot_curves
from pipeline.run.folder_lock import hold_run_folder

workers_opt = click.option("--workers", default=None, type=click.IntRange(1), help="LocalCluster workers (overrides compute.workers).")


def _runner(stages: str, overrides: tuple[str, ...] = (), **kw):
    # lazy: `mkd-pipeline --help` imports this module; config + runner (torch, timm) would add 5 s
    from pipeline.config import load_config
    from pipeline.run.runner import Runner

    return Runner(load_config(stages, overrides=overrides), overrides=overrides, **kw)


@contextlib.contextmanager
def _exclusive(stages: str, overrides: tuple[str, ...] = (), *, check: Callable[[Path], None] | None = None, **kw):
    """A Runner holding ``<run_dir>/.lock`` (flock): one run of a run folder at a time.

    A second ``run`` of the same config waits for the first, then reads its run lock and does
    only what is still stale (usually nothing). Bad configs fail before anything is created;
    ``check(run_dir)`` may refuse the run there too.
    """
    run_dir = _runner(stages, overrides, **kw).run_dir  # validates config and dataset first
    if check is not None:
        check(run_dir)
    waiting = f"{run_dir}: another run of this config is in progress; waiting for it to finish"
    with hold_run_folder(run_dir, on_wait=lambda: click.echo(waiting, err=True)):
        runner = _runner(stages, overrides, **kw)  # loads the run lock as the previous holder left it
        try:
            yield runner
        finally:
            runner.close()  # the cluster `probe` opened (`run` closes its own), on errors too


@click.command("run")
@click.argument("stages", type=click.Path(dir_okay=False))
@scheduler_opt
@scheduler_file_opt
@workers_opt
@click.option("--dry-run", is_flag=True, help="Print the plan (cached / stale and why) and exit.")
@click.option("--until", default=None, metavar="STAGE",
              help="Stop after this stage (as `status` names them: teacher, teacher-finetune, init, probe-I, precompute-I, train-I).")
@click.option("--nproc", default=None, type=click.IntRange(1),
              help="Processes per student train stage and teacher fine-tune, under torchrun (overrides compute.nproc; one GPU each on CUDA).")
@click.option("--baseline", default=None, type=click.Path(exists=True), metavar="RUN_DIR_OR_STAGE_FILE",
              help="A finished comparison run's folder (e.g. runs/NAME after this stage file ran with --set "
                   "train.kd=off --set name=NAME) or its own stage file: its student's top-1 and curve go beside "
                   "this run's in report.md.")
@set_opt
def run_cmd(stages: str, scheduler: str | None, scheduler_file: str | None, workers: int | None, dry_run: bool,
            until: str | None, nproc: int | None, baseline: str | None, overrides: tuple[str, ...]) -> None:
    """Run the stage config STAGES: teacher -> c_0 -> per segment [precompute, train] -> report.

    Only stale stages run; a repeated run with unchanged inputs computes nothing. The run folder
    keeps the resolved config (config.yaml) and the per-epoch metrics (metrics.csv). With
    --nproc N (or compute.nproc) each student train stage (and a teacher fine-tune) runs in N torchrun
    processes (DDP).
    """
    scheduler = scheduler_from_flags(scheduler, scheduler_file)
    if dry_run:
        _print_status(_runner(stages, overrides, scheduler=scheduler, workers=workers).status())
        return
    from pipeline.report.baseline import read_baseline, refuse_own_folder  # lazy, as in _runner

    compared = read_baseline(baseline) if baseline is not None else None  # before any stage: a bad one fails first
    check = functools.partial(refuse_own_folder, compared) if compared is not None else None
    with _exclusive(stages, overrides, check=check, scheduler=scheduler, workers=workers, nproc=nproc) as runner:
        res = runner.run(until=until, baseline=compared)
    ran = [k for k, v in res.stages.items() if v == "ran"]
    click.echo(f"done: {len(ran)} stage(s) ran ({', '.join(ran) or 'none: everything was cached'}); "
               f"teacher forwards {res.teacher_forwards}, student forwards {res.student_forwards}")
    if res.report:
        click.echo(f"report: {res.report}")


def _print_status(steps) -> None:
    for s in steps:
        click.echo(f"{'fresh' if s.freshness.fresh else 'stale':5}  {s.name:14} {s.freshness.reason}")


@click.command("status")
@click.argument("stages", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print [{stage, fresh, reason}] as JSON.")
@click.option("--deep", is_flag=True, help="Also check that every recorded label partition exists (one stat each).")
@set_opt
def status_cmd(stages: str, as_json: bool, deep: bool, overrides: tuple[str, ...]) -> None:
    """Say which stages of STAGES are up to date and why the others are stale (exit 1 if any is).

    Label partitions are not looked at one by one unless ``--deep``; ``labels verify`` reads them whole."""
    steps = _runner(stages, overrides).status(deep=deep)
    if as_json:
        click.echo(json.dumps([{"stage": s.name, "fresh": s.freshness.fresh, "reason": s.freshness.reason} for s in steps]))
    else:
        _print_status(steps)
    if not all(s.freshness.fresh for s in steps):
        sys.exit(1)


@click.command("precompute")
@click.argument("stages", type=click.Path(dir_okay=False))
@click.option("--segment", "segment", type=click.IntRange(0), required=True, help="Segment index (0 = first milestone).")
@scheduler_opt
@scheduler_file_opt
@workers_opt
@click.option("--dry-run", is_flag=True, help="List each partition as cached, reusable (rows) or to compute, with the reason.")
@set_opt
def precompute_cmd(stages: str, segment: int, scheduler: str | None, scheduler_file: str | None, workers: int | None,
                   dry_run: bool, overrides: tuple[str, ...]) -> None:
    """Compute the labels segment SEGMENT of STAGES needs (running the stages before it that are stale)."""
    scheduler = scheduler_from_flags(scheduler, scheduler_file)
    runner = _runner(stages, overrides, scheduler=scheduler, workers=workers)
    n = len(runner.cfg.schedule.segments())
    if segment >= n:
        raise ConfigError(f"--segment: {segment} is out of range; {stages} has {n} segment(s) (0..{n - 1})")
    if runner.cfg.online or runner.cfg.train.kd == "off":
        raise ConfigError(f"{stages}: {'online: true' if runner.cfg.online else 'train.kd: off'} uses no stored labels")
    if dry_run:
        _dry_run(runner, segment)
        return
    name = stage_name("precompute", segment)
    with _exclusive(stages, overrides, scheduler=scheduler, workers=workers) as runner:
        runner.run(until=name)
    info = runner.lock.info(name)
    avoided = info.get("rows_reused", 0) + (info.get("rows", 0) if runner.result.stages.get(name) == "cached" else 0)
    click.echo(f"segment {segment}: {info.get('partitions', 0)} partitions, {info.get('rows', 0)} rows; teacher forwards "
               f"done {runner.result.teacher_forwards}, avoided {avoided}")


def _dry_run(runner, segment: int) -> None:
    # lazy: `mkd-pipeline --help` imports this module; config + runner (torch, timm) would add 5 s
    from pipeline.precompute.run import dry_run
    from pipeline.run.graph import teacher_source
    from pipeline.run.stages import auto_choice, plan_precompute, recorded_teacher

    lag = runner.cfg.schedule.lag
    ckpt = runner.checkpoint(max(0, segment - lag))
    teacher = recorded_teacher(runner, teacher_source(runner.cfg))
    if teacher is None or not ckpt.exists():
        missing = "the teacher" if teacher is None else f"checkpoint {ckpt}"
        click.echo(f"segment {segment}: {missing} does not exist yet; everything is to compute "
                   f"(run `mkd-pipeline run` to create it)")
        return
    keep: int | None | str = "config"
    policy = None
    if runner.cfg.masking.auto:
        probe = runner.lock.info(stage_name("probe", segment))
        if not probe:
            click.echo(f"segment {segment}: masking.keep is auto and the spot-check has not run yet; it chooses the "
                       f"keep before the labels are planned (run `mkd-pipeline run` or `precompute`)")
            return
        policy, keep, _ = auto_choice(runner.cfg, probe)
        click.echo(f"segment {segment}: keep {keep or runner.cfg.num_patches} ({policy}) chosen by the recorded "
                   f"spot-check ({runner.cfg.masking.budget.budget()})")
    for row in dry_run(plan_precompute(runner, segment, teacher, ckpt, keep, policy)):
        extra = f" ({row['rows']} rows)" if row["state"] != "compute" else ""
        click.echo(f"{row['state']:8} {row['shard']} e{row['view_epoch']}{extra}: {row['reason']}")


@click.command("probe")
@click.argument("stages", type=click.Path(dir_okay=False))
@click.option("--milestone", default=0, show_default=True, type=click.IntRange(0),
              help="Masks from checkpoint c_I, on segment I's views.")
@click.option("--samples", default=None, type=click.IntRange(1), help="Views in the seeded sample (default masking.probe_samples).")
@click.option("--json", "as_json", is_flag=True, help="Print the curves as JSON.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="The PNG plot (default <run_dir>/probe-m<I>.png).")
@scheduler_opt
@scheduler_file_opt
@workers_opt
@set_opt
def probe_cmd(stages: str, milestone: int, samples: int | None, as_json: bool, out: str | None,
              scheduler: str | None, scheduler_file: str | None, workers: int | None, overrides: tuple[str, ...]) -> None:
    """Measure what masks cost the teacher at milestone I of STAGES.

    On a seeded sample of segment I's views: the masked teacher's top-1, its top-1 agreement with
    the unmasked teacher and the mean KL(unmasked || masked) at each keep of masking.ladder, for the
    policies student (checkpoint c_I), random, student_inverse and every forward policy (lowres:
    the whole view at the keep's patch count). Prints a table and writes a plot.
    """
    scheduler = scheduler_from_flags(scheduler, scheduler_file)
    # with --json, stdout is the JSON alone: the stages' progress lines go to stderr
    echo = functools.partial(click.echo, err=True) if as_json else click.echo
    with _exclusive(stages, overrides, scheduler=scheduler, workers=workers, echo=echo) as runner:
        res = runner.probe(milestone, samples)
    n = res["num_patches"]
    png = Path(out) if out else runner.run_dir / f"probe-m{milestone}.png"
    plot_curves(png, res["curves"], n, f"{runner.cfg.name}: masks from {res['source']}, {res['samples']} views")
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return
    click.echo(f"{runner.cfg.name} milestone {milestone}: masks from {res['source']} on {res['samples']} views; "
               f"unmasked teacher top-1 {res['unmasked_top1']:.4f}; spot-check teacher GMACs {res['teacher_macs'] / 1e9:.2f}")
    for line in curve_table(res["curves"], n):
        click.echo(line)
    click.echo(f"plot: {png}")
    _advise(runner.cfg, res["curves"], n)


def _advise(cfg, curves, num_patches: int) -> None:
    """Name the fine-tune when the teacher's agreement at half the patches is short of the budget."""
    # here: `mkd-pipeline --help` imports this module, and the advice's maskedkd would bring torch
    from pipeline.report.advice import finetune_advice

    policy = cfg.masking.policy if cfg.masking.policy in curves else next(iter(curves))
    t = cfg.teacher
    advice = finetune_advice(curves[policy], num_patches, cfg.masking.budget.budget() if cfg.masking.budget else None,
                             label=f"policy {policy}", fine_tuned=t.fine_tuned,
                             patch_drop_rate=t.train.patch_drop_rate if t.train else 0.0)
    if advice:
        click.echo("")
    for line in advice:
        click.echo(line)


@click.command("gc")
@click.argument("stages", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="Really delete (default: dry run, only list).")
# the default is pipeline.run.gc.DEFAULT_GRACE_S (not imported here: it pulls in pyarrow for `--help`)
@click.option("--grace", "grace_s", default=3600.0, show_default=True, type=click.FloatRange(0), metavar="SECONDS",
              help="Never delete files younger than this.")
def gc_cmd(stages: tuple[str, ...], yes: bool, grace_s: float) -> None:
    """Remove label partitions (and leftover temp files) that no run lock using the stores of STAGES references.

    Kept: everything the run locks of STAGES and of every other run registered with the same
    store reference, the partitions an in-flight precompute announced, and files younger than
    --grace. Runs of those folders cannot start while gc runs.
    """
    # lazy: `mkd-pipeline --help` imports this module; config + runner (torch, timm) would add 5 s
    from pipeline.config import load_config
    from pipeline.run.gc import collect_garbage

    cfgs = [load_config(s) for s in stages]
    report = collect_garbage(cfgs, delete=yes, grace_s=grace_s)
    for store in report["not_collected"]:
        click.echo(f"not collected: {store}: gc collects the partitions of local and file:// stores only (a remote "
                   f"store has no file locks to keep live runs safe); of it only temp files of killed writes are "
                   f"listed and removed", err=True)
    for d in report["live_runs"]:
        click.echo(f"run in progress in {d}: keeping what it announced and its temp files")
    for p, size in report["files"]:
        click.echo(f"{'removed' if yes else 'would remove'} {p} ({size} bytes)")
    verb = "reclaimed" if yes else "would reclaim (dry run; --yes to delete)"
    click.echo(f"{len(report['files'])} file(s), {report['bytes']} bytes {verb}; {report['kept']} partition(s) kept"
               f"; {report['announced']} announced by in-flight precomputes; {report['young']} file(s) younger than {grace_s:g} s")
