"""A run's report: ``report.md`` and PNG plots in its run folder, built from the run lock."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch

from maskedkd import teacher_macs
from pipeline._atomic import write_atomic
from pipeline.models import create_model
from pipeline.report.fidelity import curve_table, plot_curves


def _macs_full(runner) -> int:
    """Teacher MACs full-teacher KD would have spent on the same rows (every row, all patches)."""
    t = runner.cfg.teacher
    with torch.device("cpu"):
        model = create_model(t.model, t.kwargs, seed=0).eval()
    return teacher_macs(model, None)


def collect(runner) -> dict[str, Any]:
    """The numbers of the report, from the run lock."""
    lock, cfg = runner.lock, runner.cfg
    segments = []
    epochs = []
    full_macs_per_row = _macs_full(runner)
    for i, (start, end) in enumerate(cfg.schedule.segments()):
        pre = lock.info(f"precompute-{i}")
        tr = lock.info(f"train-{i}")
        rows = int(pre.get("rows", 0))
        taught = rows or int(tr.get("teacher_forwards") or 0)  # online: the teacher ran in the loop
        segments.append({
            "segment": i, "epochs": f"{start}-{end - 1}", "keep": pre.get("keep"), "source": pre.get("source"),
            "rows": rows, "computed": pre.get("rows_computed", 0), "reused": pre.get("rows_reused", 0),
            "reused_tolerance": pre.get("rows_reused_tolerance", 0), "spot_check_kl": pre.get("spot_check_kl"),
            "teacher_top1_masked": pre.get("teacher_top1_masked"), "teacher_macs": pre.get("teacher_macs", 0) or tr.get("teacher_macs", 0),
            "full_teacher_macs": full_macs_per_row * taught, "precompute_s": pre.get("seconds"),
            "train_s": tr.get("seconds"), "auto": pre.get("auto"),
        })
        for e in tr.get("epochs") or []:
            epochs.append(e)
    teacher = lock.info("teacher")
    return {"segments": segments, "epochs": epochs, "teacher_top1": teacher.get("top1"),
            "teacher_seconds": teacher.get("seconds"), "full_macs_per_row": full_macs_per_row}


def _plot(path: Path, xs, series: dict[str, list], xlabel: str, ylabel: str, title: str) -> None:
    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()

    def save(f) -> None:
        fig.savefig(f, format="png")

    write_atomic(path, save)
    plt.close(fig)


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def write_report(runner) -> Path:
    """Write ``report.md`` and its plots into the run folder; returns the report's path."""
    cfg, out = runner.cfg, runner.run_dir
    data = collect(runner)
    plots = []
    ep = [e for e in data["epochs"] if "val_top1" in e]
    if ep:
        _plot(out / "student_accuracy.png", [e["epoch"] for e in ep], {"val": [e["val_top1"] for e in ep],
                                                                      "train": [e.get("top1") for e in ep]},
              "epoch", "val top-1", "Student accuracy")
        plots.append("student_accuracy.png")
    seg = [s for s in data["segments"] if s["teacher_top1_masked"] is not None]
    if seg:
        _plot(out / "teacher_masked_accuracy.png", [s["segment"] for s in seg],
              {cfg.masking.policy: [s["teacher_top1_masked"] for s in seg]},
              "milestone", "teacher top-1 on its views", "Teacher accuracy on masked views")
        _plot(out / "rows_reused.png", [s["segment"] for s in seg],
              {"reused": [s["reused"] / max(1, s["rows"]) for s in seg]}, "milestone", "fraction of rows", "Teacher rows reused")
        plots += ["teacher_masked_accuracy.png", "rows_reused.png"]
    spent = sum(s["teacher_macs"] for s in data["segments"])
    full = sum(s["full_teacher_macs"] for s in data["segments"])
    lines = [
        f"# Run `{cfg.name}`", "",
        f"Config: policy `{cfg.masking.policy}`, keep {cfg.keep_for_segment(0)} of {cfg.num_patches} patches, "
        f"{cfg.schedule.epochs} epochs, milestones {cfg.schedule.milestones}, lag {cfg.schedule.lag}, "
        f"tolerance {cfg.masking.tolerance}, online {cfg.online}.", "",
        f"Teacher val top-1: {_fmt(data['teacher_top1'])}.", "",
        "## Student accuracy per epoch", "", "| epoch | val top-1 | val loss | train top-1 | train loss |", "|---:|---:|---:|---:|---:|",
    ]
    for e in data["epochs"]:
        lines.append(f"| {e.get('epoch')} | {_fmt(e.get('val_top1'))} | {_fmt(e.get('val_loss'))} | {_fmt(e.get('top1'))} | "
                     f"{_fmt(e.get('loss'))} |")
    lines += ["", "## Milestones", "",
              "| segment | epochs | keep | masks from | rows | computed | reused | reused (tolerance) | spot-check KL | "
              "teacher top-1 on masked views | teacher GMACs | full-teacher GMACs | precompute s | train s |",
              "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in data["segments"]:
        lines.append(
            f"| {s['segment']} | {s['epochs']} | {_fmt(s['keep'], 'd')} | {_fmt(s['source'])} | {s['rows']} | {s['computed']} | "
            f"{s['reused']} | {s['reused_tolerance']} | {_fmt(s['spot_check_kl'], '.2e')} | {_fmt(s['teacher_top1_masked'])} | "
            f"{s['teacher_macs'] / 1e9:.2f} | {s['full_teacher_macs'] / 1e9:.2f} | {_fmt(s['precompute_s'], '.1f')} | "
            f"{_fmt(s['train_s'], '.1f')} |")
    ratio = spent / full if full else float("nan")
    lines += ["", f"Teacher compute: {spent / 1e9:.2f} GMACs spent, {full / 1e9:.2f} GMACs for full-teacher KD on the "
              f"same rows ({_fmt(ratio, '.2%')}).", ""]
    auto = {f"milestone {s['segment']}": s["auto"] for s in data["segments"] if s.get("auto")}
    if auto:
        n = cfg.num_patches
        first = next(iter(auto.values()))
        lines += ["## Fidelity spot-check (masking.keep: auto)", "",
                  f"Before each segment was labelled, {first['samples']} seeded views of it went through the unmasked "
                  f"teacher and the masked teacher at each keep of the ladder (policy `{cfg.masking.policy}`, masks "
                  f"from the milestone's checkpoint); the keep marked ← is the smallest within the budget "
                  f"({first['budget']}), all {n} patches when none is. The spot-checks' own teacher MACs are included "
                  f"in the GMACs above.", ""]
        chosen = {label: (None if s["keep"] == n else s["keep"]) for label, s in
                  ((f"milestone {s['segment']}", s) for s in data["segments"] if s.get("auto"))}
        lines += curve_table({k: v["curve"] for k, v in auto.items()}, n, chosen) + [""]
        plot_curves(out / "fidelity_curves.png", {k: v["curve"] for k, v in auto.items()}, n,
                    f"{cfg.name}: masked teacher vs unmasked, per milestone")
        plots.append("fidelity_curves.png")
    else:
        lines += ["No fidelity spot-check in this run (masking.keep is fixed); `mkd-pipeline probe STAGES.yaml "
                  "--milestone I` measures what each keep costs the teacher.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path
