"""A run's report: ``report.md`` and PNG plots in its run folder, built from the run lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt

from maskedkd import needs_saliency, resolve_keep
from pipeline._atomic import write_atomic
from pipeline.precompute.costs import full_teacher_macs_per_view, recorded_reuse_check_macs
from pipeline.report.baseline import Baseline, row_label
from pipeline.report.fidelity import curve_table, plot_curves
from pipeline.report.fmt import fmt_number
from pipeline.report.headline import NOT_RECORDED, headline_lines

# What each stage kind contributes to the report (declared with the kind, pipeline/run/graph.py):
# the run's fields from `teacher`, a milestone row's fields from `precompute-i` and `train-i`.


def teacher_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """The report's fields from the teacher stage's lock info."""
    return {"teacher_top1": info.get("top1"), "teacher_seconds": info.get("seconds")}


def finetune_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """The report's fields from the ``teacher-finetune`` stage's lock info: the teacher's accuracy
    after it, and what the fine-tune cost (MACs: forward + backward, 3x the token-dropped forward)."""
    tuned = {"teacher_top1": info["top1"], "start_top1": info.get("start_top1")} if "top1" in info else {}
    return {**tuned, "finetune_macs": info.get("macs"), "finetune_s": info.get("seconds"),
            "finetune_epochs": len(info.get("epochs") or [])}


def precompute_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """A milestone row's fields from its precompute stage's lock info (``{}``: no stored labels)."""
    reuse = recorded_reuse_check_macs(info)
    return {"keep": info.get("keep"), "source": info.get("source"), "rows": int(info.get("rows", 0)),
            "computed": info.get("rows_computed", 0), "reused": info.get("rows_reused", 0),
            "reused_tolerance": info.get("rows_reused_tolerance", 0), "spot_check_kl": info.get("spot_check_kl"),
            "teacher_top1_masked": info.get("teacher_top1_masked"), "label_macs": info.get("teacher_macs", 0),
            # None in a lock written before they were recorded: the report says "not recorded"
            "saliency_macs": info.get("saliency_macs"), "spot_check_macs": info.get("spot_check_macs", (info.get("auto") or {}).get("teacher_macs")),
            "reuse_check_macs": reuse, "net_macs": None if reuse is None else info.get("net_macs"),  # net without it: not net
            "precompute_s": info.get("seconds"), "auto": info.get("auto"),
            # with masking.policy: auto, the policy the runner chose for this milestone (None: not chosen)
            "policy": (info.get("auto") or {}).get("policy")}


def train_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """A milestone row's fields from its train stage's lock info (an online teacher's MACs and forwards)."""
    return {"train_s": info.get("seconds"), "online_macs": info.get("teacher_macs", 0),
            "online_forwards": int(info.get("teacher_forwards") or 0), "epoch_records": info.get("epochs") or []}


def collect(cfg, lock, stages: Sequence) -> dict[str, Any]:
    """The numbers of the report, from the run lock: each stage of ``stages`` (the run's graph,
    :func:`pipeline.run.graph.expand`) adds its kind's fields to the run or to its milestone's row."""
    full_macs_per_row = full_teacher_macs_per_view(cfg)
    run: dict[str, Any] = {**teacher_fields({}), **finetune_fields({})}
    rows = [{"segment": i, "epochs": f"{start}-{end - 1}", **precompute_fields({}), **train_fields({})}
            for i, (start, end) in enumerate(cfg.schedule.segments())]
    for stage in stages:
        if stage.kind.report is not None:
            (run if stage.segment is None else rows[stage.segment]).update(stage.kind.report(lock.info(stage.name)))
    epochs = []
    for row in rows:
        online_forwards, online_macs = row.pop("online_forwards"), row.pop("online_macs")
        taught = row["rows"] or online_forwards  # online: the teacher ran in the loop
        row["teacher_macs"] = row.pop("label_macs") or online_macs
        if not row["rows"]:  # online (the saliency comes with the training forward) or no teacher at all
            row.update(saliency_macs=0, net_macs=row["teacher_macs"])
        row["full_teacher_macs"] = full_macs_per_row * taught
        epochs += row.pop("epoch_records")
    return {"segments": rows, "epochs": epochs, **run, "full_macs_per_row": full_macs_per_row}


def _plot(path: Path, xs, series: dict[str, list], xlabel: str, ylabel: str, title: str, *,
          more: dict[str, tuple[list, list]] | None = None, hline: tuple[str, float] | None = None,
          vlines: tuple[str, list[int]] | None = None) -> None:
    """A line plot; ``more``: series with x values of their own, ``hline`` / ``vlines``: a labelled
    reference level and labelled x positions."""
    matplotlib.use("Agg")
    rich = bool(more or hline or vlines)
    fig, ax = plt.subplots(figsize=(6, 4.4) if rich else (5, 3.2), dpi=100)
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    for name, (mx, my) in (more or {}).items():
        ax.plot(mx, my, marker="x", linestyle="--", label=name)
    if hline is not None:
        ax.axhline(hline[1], color="gray", linestyle=":", label=hline[0])
    for k, x in enumerate((vlines or ("", []))[1]):
        ax.axvline(x, color="gray", alpha=0.4, linestyle="--", label=(vlines or ("", []))[0] if k == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[1]) > 1:
        # below the axes when there are reference lines: inside, it hid the teacher's line at the top
        if rich:
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        else:
            ax.legend(fontsize=6)
    fig.tight_layout()

    def save(f) -> None:
        fig.savefig(f, format="png")

    write_atomic(path, save)
    plt.close(fig)


def _policy_named(cfg, segments: Sequence[Mapping[str, Any]], quote: str = "`") -> str:
    """``masking.policy`` as the report names it: with ``policy: auto`` the policy and keep the
    runner chose (the lock's ``auto.policy`` and ``keep`` of each precompute stage), ``auto → tome
    (keep 31)``, per milestone where they differ; ``auto`` alone before any milestone chose.
    ``quote`` wraps each policy name."""
    auto = f"{quote}auto{quote}"
    if cfg.masking.policy != "auto":
        return f"{quote}{cfg.masking.policy}{quote}"
    chosen = [(s["segment"], f"{quote}{s['policy']}{quote} ({_keep_named(s['keep'], cfg.num_patches)})")
              for s in segments if s["policy"] is not None]
    if not chosen:
        return auto
    if len({named for _, named in chosen}) == 1:
        return f"{auto} → {chosen[0][1]}"
    return f"{auto} → " + ", ".join(f"milestone {i} {named}" for i, named in chosen)


def _keep_named(keep: int | None, num_patches: int) -> str:
    return f"all {num_patches} patches" if keep == num_patches else f"keep {fmt_number(keep, 'd')}"


def _chose(segment: Mapping[str, Any]) -> str:
    """`` (tome)``: the policy ``policy: auto`` chose for a milestone, after its keep in the table."""
    return "" if segment["policy"] is None else f" ({segment['policy']})"


def _masks_from(cfg, segment: Mapping[str, Any]) -> str:
    """Whose saliency picked a milestone's masks: its checkpoint, or no student for a policy that reads
    none (random, lowres, tome, ...) and for all patches."""
    policy = segment["policy"] or cfg.masking.policy
    if resolve_keep(segment["keep"], cfg.num_patches, policy) is None or not needs_saliency(policy):
        return "no student"
    return fmt_number(segment["source"])


def _gmacs(macs: int | None) -> str:
    return NOT_RECORDED if macs is None else f"{macs / 1e9:.2f}"


def _finetune_lines(data: Mapping[str, Any]) -> list[str]:
    if data["finetune_macs"] is None:
        return []
    return [f"Teacher fine-tune (`teacher-finetune`): {data['finetune_epochs']} epochs, val top-1 "
            f"{fmt_number(data.get('start_top1'))} before; {data['finetune_macs'] / 1e9:.2f} GMACs (forward + backward, "
            f"counted as 3x the token-dropped forward per image-step), {fmt_number(data['finetune_s'], '.1f')} s.", ""]


def _ema_lines(cfg, data: Mapping[str, Any]) -> list[str]:
    """The EMA of the student (``train.model_ema``) beside the trained weights, at the last epoch
    that evaluated both; nothing for a run without one."""
    ep = [e for e in data["epochs"] if "ema_val_top1" in e]
    if not ep:
        return []
    last = ep[-1]
    return [f"Student EMA (`train.model_ema`, decay {cfg.train.model_ema_decay}): val top-1 "
            f"{fmt_number(last['ema_val_top1'])} after epoch {last['epoch']}, the trained weights "
            f"{fmt_number(last.get('val_top1'))} (the headline and the milestone checkpoints are the trained "
            f"weights; the EMA's are the run folder's `train/ema-eNNNN.pt`).", ""]


def _student_plot(cfg, data: Mapping[str, Any], out: Path, baseline: Baseline | None) -> bool:
    """``student_accuracy.png``: val top-1 per epoch, the teacher's val top-1 as a line, the
    milestones marked and the baseline's val curve; False when no epoch was evaluated (train
    top-1 is in the report's table).

    The x axis counts epochs trained: epoch e's evaluation (after it) sits at e + 1, so checkpoint
    c_i, taken after ``milestones[i]`` epochs, is the line at that count."""
    ep = [e for e in data["epochs"] if "val_top1" in e]
    if not ep:
        return False
    row = row_label(cfg.name, cfg.teacher.model, cfg.train.kd, cfg.online, _policy_named(cfg, data["segments"], quote=""))
    more = {f"baseline {baseline.label} val": ([e + 1 for e, _ in baseline.epochs], [t for _, t in baseline.epochs])} \
        if baseline is not None else None
    teacher = None if data["teacher_top1"] is None else \
        (f"teacher {cfg.teacher.model} val ({data['teacher_top1']:.3f})", data["teacher_top1"])
    _plot(out / "student_accuracy.png", [e["epoch"] + 1 for e in ep], {f"{row} val": [e["val_top1"] for e in ep]},
          "epochs trained", "val top-1", "Student accuracy", more=more, hline=teacher,
          vlines=("milestones (c_i)", [start for start, _ in cfg.schedule.segments()]))
    return True


def write_report(cfg, lock, out: Path, stages: Sequence, baseline: Baseline | None = None) -> Path:
    """Write ``report.md`` and its plots into the run folder ``out`` from the run lock, walking the
    run's ``stages`` (:func:`pipeline.run.graph.expand`); ``baseline``: a comparison run shown beside
    the student; returns the report's path."""
    data = collect(cfg, lock, stages)
    plots = ["student_accuracy.png"] if _student_plot(cfg, data, out, baseline) else []
    seg = [s for s in data["segments"] if s["teacher_top1_masked"] is not None]
    if seg:
        _plot(out / "teacher_masked_accuracy.png", [s["segment"] for s in seg],
              {_policy_named(cfg, data["segments"], quote=""): [s["teacher_top1_masked"] for s in seg]},
              "milestone", "teacher top-1 on its views", "Teacher accuracy on masked views")
        _plot(out / "rows_reused.png", [s["segment"] for s in seg],
              {"reused": [s["reused"] / max(1, s["rows"]) for s in seg]}, "milestone", "fraction of rows", "Teacher rows reused")
        plots += ["teacher_masked_accuracy.png", "rows_reused.png"]
    spent = sum(s["teacher_macs"] for s in data["segments"])
    full = sum(s["full_teacher_macs"] for s in data["segments"])
    lines = [
        f"# Run `{cfg.name}`", "", *headline_lines(data, baseline),
        # a cross-entropy-only run (a baseline) has no masks: its masking section is unused
        ("Config: cross-entropy only (`train.kd: off`: no teacher labels, masking unused), " if cfg.train.kd == "off" else
         f"Config: policy {_policy_named(cfg, data['segments'])}, keep {cfg.keep_for_segment(0)} of {cfg.num_patches} patches, ") +
        f"{cfg.schedule.epochs} epochs, milestones {cfg.schedule.milestones}, lag {cfg.schedule.lag}, "
        f"tolerance {cfg.masking.tolerance}, online {cfg.online}.", "",
        f"Teacher val top-1: {fmt_number(data['teacher_top1'])}.", "",
        *_ema_lines(cfg, data),
        *_finetune_lines(data),
        "## Student accuracy per epoch", "", "| epoch | val top-1 | val loss | train top-1 | train loss |", "|---:|---:|---:|---:|---:|",
    ]
    for e in data["epochs"]:
        lines.append(f"| {e.get('epoch')} | {fmt_number(e.get('val_top1'))} | {fmt_number(e.get('val_loss'))} | "
                     f"{fmt_number(e.get('top1'))} | {fmt_number(e.get('loss'))} |")
    lines += ["", "## Milestones", "",
              "| segment | epochs | keep | masks from | rows | computed | reused | reused (tolerance) | spot-check KL | "
              "teacher top-1 on masked views | teacher GMACs | saliency GMACs | net GMACs | full-teacher GMACs | precompute s | "
              "train s |", "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in data["segments"]:
        lines.append(
            f"| {s['segment']} | {s['epochs']} | {fmt_number(s['keep'], 'd')}{_chose(s)} | {_masks_from(cfg, s)} | "
            f"{s['rows']} | {s['computed']} | {s['reused']} | {s['reused_tolerance']} | "
            f"{fmt_number(s['spot_check_kl'], '.2e')} | {fmt_number(s['teacher_top1_masked'])} | "
            f"{s['teacher_macs'] / 1e9:.2f} | {_gmacs(s['saliency_macs'])} | {_gmacs(s['net_macs'])} | "
            f"{s['full_teacher_macs'] / 1e9:.2f} | "
            f"{fmt_number(s['precompute_s'], '.1f')} | {fmt_number(s['train_s'], '.1f')} |")
    ratio = spent / full if full else float("nan")
    lines += ["", f"Teacher compute: {spent / 1e9:.2f} GMACs spent, {full / 1e9:.2f} GMACs for full-teacher KD on the "
              f"same rows ({fmt_number(ratio, '.2%')}).", ""]
    # with policy: auto each milestone's curve is its chosen policy's, named beside it
    auto = {f"milestone {s['segment']}{_chose(s)}": s["auto"] for s in data["segments"] if s.get("auto")}
    if auto:
        n = cfg.num_patches
        first = next(iter(auto.values()))
        reads = any(needs_saliency(s["policy"] or cfg.masking.policy) for s in data["segments"] if s.get("auto"))
        masks = "masks from the milestone's checkpoint" if reads else "which reads no student"
        lines += ["## Fidelity spot-check (masking.keep: auto)", "",
                  f"Before each segment was labelled, {first['samples']} seeded views of it went through the unmasked "
                  f"teacher and the masked teacher at each keep of the ladder (policy {_policy_named(cfg, data['segments'])}, "
                  f"{masks}); the keep marked ← is the smallest within the budget "
                  f"({first['budget']}), all {n} patches when none is. The spot-checks' own teacher MACs are included "
                  f"in the GMACs above.", ""]
        chosen = {label: (None if s["keep"] == n else s["keep"]) for label, s in
                  ((f"milestone {s['segment']}{_chose(s)}", s) for s in data["segments"] if s.get("auto"))}
        lines += curve_table({k: v["curve"] for k, v in auto.items()}, n, chosen) + [""]
        plot_curves(out / "fidelity_curves.png", {k: v["curve"] for k, v in auto.items()}, n,
                    f"{cfg.name}: masked teacher vs unmasked, per milestone")
        plots.append("fidelity_curves.png")
    elif cfg.train.kd != "off":
        lines += ["No fidelity spot-check in this run (masking.keep is fixed); `mkd-pipeline probe STAGES.yaml "
                  "--milestone I` measures what each keep costs the teacher.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path
