"""``mkd-pipeline report``: any set of runs -> a results page (markdown tables and PNG figures).

One row per ``# Row:`` label of the configs (seeds averaged; see :mod:`pipeline.report.collect`
for what is read from each run), with the committed teachers, the CE-only learning-rate sweep,
the main table, what auto keep chose, the probe curves, the student's accuracy per epoch and the
teacher's accuracy on its masked views per milestone. A results spec (:mod:`pipeline.report.spec`,
kept beside the experiment's configs) orders the rows and names the comparisons and targets; the
experiment of RESULTS.md keeps its spec in ``stages/results/results.toml``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.report.cheapened import cheapened_figure, cheapened_points  # noqa: E402
from pipeline.report.cheapest import answer_lines  # noqa: E402
from pipeline.report.collect import RunOutcome  # noqa: E402
from pipeline.report.fidelity import curve_table, kept, plot_curves  # noqa: E402
from pipeline.report.figures import save_with_legend  # noqa: E402
from pipeline.report.fmt import mean_std, percent  # noqa: E402
from pipeline.report.names import run_name, teacher_name  # noqa: E402
from pipeline.report.spec import ResultsSpec, Target  # noqa: E402

__all__ = ["render_results"]


def _gmacs(v: float | None, digits: int = 1) -> str:
    """MACs as GMACs (``-`` when not recorded)."""
    return "-" if v is None else f"{v / 1e9:.{digits}f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown model"


def _nproc() -> int:
    return os.cpu_count() or 0


@dataclass
class _Page:
    """What every section reads: the spec, the student runs grouped by row, in the spec's order."""

    spec: ResultsSpec
    out: Path
    students: list[RunOutcome]
    rows: dict[str, list[RunOutcome]]
    order: list[str]
    finished: list[RunOutcome]

    def run_key(self, r: RunOutcome) -> tuple[tuple[int, str], int]:
        return self.spec.row_key(r.row), r.seed


def _acc_cell(runs: list[RunOutcome]) -> str:
    done = [r.top1 for r in runs if r.finished and r.top1 is not None]
    if not done:
        return "not run (time)"
    m, s = mean_std(done)
    seeds = ", ".join(percent(v) for v in done)
    if s is None:
        return f"{percent(m)} (1 seed)"
    return f"{percent(m)} ± {percent(s)} (n={len(done)}: {seeds})"


def _compare(rows: dict[str, list[RunOutcome]], a: str, b: str) -> str | None:
    ra = [r.top1 for r in rows.get(a, []) if r.finished and r.top1 is not None]
    rb = [r.top1 for r in rows.get(b, []) if r.finished and r.top1 is not None]
    if not ra or not rb:
        return None
    ma, sa = mean_std(ra)
    mb, sb = mean_std(rb)
    diff = 100 * (ma - mb)
    sds = [s for s in (sa, sb) if s is not None]
    if sds:
        noise = 100 * max(sds)
        verdict = (f"larger than twice the larger seed std ({noise:.2f})" if abs(diff) > 2 * noise
                   else f"within twice the larger seed std ({noise:.2f}): not distinguishable from seed noise")
    else:
        verdict = "1 seed each: no seed spread measured, cannot separate from noise"
    return f"- **{a}** − **{b}**: {diff:+.2f} points (n={len(ra)} vs {len(rb)}); {verdict}."


def curriculum_figure(path: Path, runs: list[RunOutcome], teachers: dict[str, float]) -> list[str]:
    """Plot each finished run's teacher top-1 on its masked views per milestone, and each teacher's
    unmasked top-1 (``teachers``: name -> top-1) as a line; returns the legend's labels (empty: nothing
    to plot, no file written)."""
    curves = [r for r in runs if r.finished and r.masked_top1]
    if not curves:
        return []
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    # a colour and marker of its own per curve: the default cycle repeats its 10 colours, so two curves
    # would read alike in the legend
    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    for i, r in enumerate(curves):
        xs, ys = zip(*r.masked_top1)
        ax.plot(xs, ys, marker="osD^v<>ph*"[(i // len(colours)) % 10], color=colours[i % len(colours)],
                ls="-" if r.seed == 0 else "--", label=run_name(r))
    for (name, top1), ls in zip(sorted(teachers.items()), itertools.cycle(("--", ":", "-."))):
        ax.axhline(top1, color="k", ls=ls, lw=1, label=f"{name}, unmasked test images")
    ax.set_xlabel("milestone (student epoch whose masks are used)")
    ax.set_ylabel("teacher top-1 on its (masked) training views")
    ax.set_title("Teacher accuracy on masked views per milestone")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_xticks(sorted({x for r in curves for x, _ in r.masked_top1}))
    return save_with_legend(fig, ax, path)


def _series_cells(points: list[tuple[int, float]], columns: list[int]) -> str:
    """Table cells of ``(x, value)`` points under ``columns`` (percent; ``-`` where a run has no such x)."""
    got = dict(points)
    return " | ".join(percent(got[x]) if x in got else "-" for x in columns)


def _teachers_section(students: list[RunOutcome], intro: str) -> list[str]:
    """The committed teachers the rows load, from the metadata beside their weights."""
    files: dict[str, dict[str, Any]] = {}
    evaluated: dict[str, set[float]] = {}
    for r in students:
        if r.teacher_file is not None and r.kd != "off":
            files.setdefault(r.teacher_file["weights"], r.teacher_file)
            if r.teacher_top1 is not None:
                evaluated.setdefault(r.teacher_file["weights"], set()).add(r.teacher_top1)
    if not files:
        return []
    lines = ["## Teachers", "",
             intro, "",
             "| weights | trained by | epochs | patch_drop_rate | test top-1 % (at export) | as the rows evaluated it | train min | fine-tuned from (its top-1 %), GMACs | sha256 |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for w, f in sorted(files.items()):
        rec = f.get("recipe") or {}
        seen = ", ".join(percent(v) for v in sorted(evaluated.get(w, ()))) or "-"
        ft = f.get("finetune")
        tuned = "-" if not ft else f"`{ft.get('from', '?')}` ({percent(ft.get('start_top1'))}), {_gmacs(ft.get('macs'), 1)}"
        lines.append(f"| `{w}` | `{f.get('config', '?')}` | {f.get('epochs', '?')} | {rec.get('patch_drop_rate', 0.0)} | "
                     f"{percent(f.get('test_top1'))} | {seen} | {float(f.get('seconds') or 0) / 60:.0f} | {tuned} | "
                     f"`{str(f.get('sha256', ''))[:16]}…` |")
    return lines + [""]


def _net_ratio(runs: list[RunOutcome]) -> str:
    """``, net 0.71x`` (the labels' net MACs against full-teacher KD's, mean over seeds); empty when not recorded."""
    nets = [r.net_label_macs / r.full_macs for r in runs if r.full_macs and r.net_label_macs is not None]
    return f", net {statistics.fmean(nets):.2f}x" if nets and len(nets) == len(runs) else ""


def _target(rows: dict[str, list[RunOutcome]], row: str, full: str, max_ratio: float | None, what: str) -> tuple[str, bool | None]:
    """One target line and its verdict (None: not measured or not decidable): ``row`` within twice
    full-KD's seed std of ``full``, at <= ``max_ratio`` of its teacher MACs when given."""
    ra = [r for r in rows.get(row, []) if r.finished]
    rb = [r for r in rows.get(full, []) if r.finished]
    if not ra or not rb:
        return f"- {what}: **not measured** (no run or record: {row if not ra else full}).", None
    ma, _ = mean_std([r.top1 for r in ra if r.top1 is not None])
    mb, sb = mean_std([r.top1 for r in rb if r.top1 is not None])
    ratio = statistics.fmean(r.label_macs / r.full_macs for r in ra if r.full_macs)
    cost = f"{ratio:.2f}x its teacher MACs (spot-checks included{_net_ratio(ra)})"
    diff = 100 * (ma - mb)
    if sb is None:
        return f"- {what}: {diff:+.2f} points at {cost}; **not decidable** (full-teacher KD has 1 seed, no std).", None
    acc_ok = diff >= -2 * 100 * sb
    cost_ok = max_ratio is None or ratio <= max_ratio
    verdict = "**met**" if acc_ok and cost_ok else "**missed**"
    why = [] if acc_ok else [f"accuracy {-diff:.2f} points below full-teacher KD, more than twice its seed std ({2 * 100 * sb:.2f})"]
    why += [] if cost_ok else [f"teacher MACs {ratio:.2f}x of full-teacher KD, above {max_ratio:g}x"]
    return (f"- {what}: {verdict}. **{row}** − **{full}** = {diff:+.2f} points (n={len(ra)} vs {len(rb)}; twice full-KD's "
            f"seed std = {2 * 100 * sb:.2f}) at {cost}"
            + (f"; missed on: {'; '.join(why)}." if why else ".")), acc_ok and cost_ok


def _target_lines(rows: dict[str, list[RunOutcome]], t: Target) -> list[str]:
    """A target of one row: its line; of several (met when any row meets it): a verdict, then one line per row."""
    if len(t.rows) == 1:
        return [_target(rows, t.rows[0], t.full, t.max_ratio, t.what)[0]]
    got = [_target(rows, row, t.full, t.max_ratio, f"**{row}**") for row in t.rows]
    met = [row for row, (_, ok) in zip(t.rows, got) if ok]
    verdict = (f"**met** by {', '.join(met)}" if met else "**missed** by every row" if all(ok is False for _, ok in got)
               else "**not met yet** (a row not measured or not decidable)")
    return [f"- {t.what}: {verdict}."] + [f"  {line}" for line, _ in got]


def _breakeven_section(page: _Page) -> list[str]:
    """Rows of a fine-tuned teacher: how many student runs like the row the fine-tune's MACs pay for
    through the labels' net saving against full-teacher KD on the same training samples."""
    tuned = [row for row in page.order if any(r.finished and r.kd != "off" and r.teacher_file and r.teacher_file.get("finetune")
                                              for r in page.rows[row])]
    if not tuned:
        return []
    lines = ["", "## Fine-tuned teachers: break-even (computed)", "",
             "Each row of a fine-tuned teacher: the fine-tune's MACs (forward + backward on the dropped tokens, from "
             "the teacher's metadata), the labels' net saving per student run against full-teacher KD on the same "
             "training samples (full-teacher KD's label MACs − the row's net label MACs, mean over seeds), and "
             "break-even: fine-tune MACs / that saving, the number of student runs of this length the fine-tune pays for.", "",
             "| row | teacher | fine-tune GMACs | fine-tune wall min | full-KD label GMACs | net label GMACs | saving GMACs / run | break-even runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in tuned:
        rs = [r for r in page.rows[row] if r.finished and r.teacher_file]
        ft = rs[0].teacher_file["finetune"]  # type: ignore[index]
        full = statistics.fmean(r.full_macs for r in rs)
        nets = [r.net_label_macs for r in rs]
        net = None if any(v is None for v in nets) else statistics.fmean(v for v in nets if v is not None)
        saving = None if net is None else full - net
        macs = ft.get("macs")
        if saving is None or macs is None:
            even = "not recorded"
        elif saving <= 0:
            even = "never (the labels cost no less than full-teacher KD's)"
        else:
            even = f"{macs / saving:.1f}"
        lines.append(f"| {row} | `{rs[0].teacher_file['weights']}` | {_gmacs(macs)} | "  # type: ignore[index]
                     f"{float(ft.get('seconds') or 0) / 60:.1f} | {_gmacs(full)} | {_gmacs(net)} | {_gmacs(saving)} | {even} |")
    return lines


def _probe_summary(found: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """One line per probe: each policy's agreement with the unmasked teacher at the keep nearest half
    the patches (MaskedKD 50%'s), the probes' details below."""
    policies = list(dict.fromkeys(p for _, res in found for p in res["curves"]))
    lines = ["Agreement with the unmasked teacher at the keep nearest half the patches, per policy:", "",
             "| probe | masks from | views | unmasked top-1 | keep | " + " | ".join(policies) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(policies)]
    for f, res in found:
        n = int(res["num_patches"])
        keeps = {kept(r, n) for curve in res["curves"].values() for r in curve}
        half = min(keeps, key=lambda k: (abs(k - n / 2), -k)) if keeps else None  # a tie: the larger (25 of 49)
        cells = []
        for p in policies:
            rung = next((r for r in res["curves"].get(p, []) if kept(r, n) == half), None)
            cells.append("-" if rung is None else f"{rung['agreement']:.3f}")
        lines.append(f"| {f.stem} | {res['source']} | {res['samples']} | {res['unmasked_top1']:.4f} | "
                     f"{'-' if half is None else f'{half} of {n}'} | " + " | ".join(cells) + " |")
    return lines


def _probe_section(out: Path, probes: Path | None, words: dict[str, str]) -> list[str]:
    """The probe curves (``mkd-pipeline probe --json`` outputs in ``probes``): a table and a plot each."""
    files = sorted(probes.glob("*.json")) if probes is not None and probes.is_dir() else []
    found = []
    for f in files:
        try:
            found.append((f, json.loads(f.read_text())))
        except (OSError, ValueError):
            continue
    lines = [f"## {words['title']}", ""]
    if not found:
        return lines + [words["missing"]]
    lines += [words["intro"], "", *_probe_summary(found), ""]
    for f, res in found:
        png = out.with_name(f"results_probe_{f.stem}.png")
        n = int(res["num_patches"])
        plot_curves(png, res["curves"], n, f"{f.stem}: masks from {res['source']}, {res['samples']} views")
        lines += [f"### {f.stem} (masks from {res['source']}, {res['samples']} views; unmasked teacher top-1 "
                  f"{res['unmasked_top1']:.4f})", "", f"![probe {f.stem}]({png.name})", "", *curve_table(res["curves"], n), ""]
    return lines


def _header(page: _Page, runs: list[RunOutcome], notes_path: str | None, probes: Path | None) -> list[str]:
    """Title, the command that generated the page, the machine and the sizes of the runs."""
    spec, out, students, finished = page.spec, page.out, page.students, page.finished
    command = ("mkd-pipeline report" + (f" --spec {spec.path}" if spec.path else "") + " --results "
               + " ".join(sorted({str(r.config.parent.as_posix()) + "/*.yaml" for r in runs}))
               + f" --out {out.as_posix()}" + (f" --notes {notes_path}" if notes_path else "")
               + (f" --probes {probes.as_posix()}" if probes is not None and probes != Path("runs/probes") else ""))
    recorded = sorted({r.record.parent.as_posix() for r in runs if r.record is not None})
    lines = [f"# {spec.title}", "",
             f"Generated by `{command}` from the runs' lock files and logs"
             + (f", or, where a run folder is not here, the run's committed record ({', '.join(recorded)})" if recorded else "")
             + "; do not edit by hand." + (f" {spec.how_to_run}" if spec.how_to_run else ""), ""]
    if recorded:
        lines += ["Read from records: " + ", ".join(f"`{r.config.stem}`" for r in sorted(runs, key=page.run_key)
                                                     if r.record is not None) + ".", ""]
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        uptime = "unknown"
    loads = [v for r in students for v in r.load]
    lines += [f"Machine: CPU only ({_cpu_model()}), `nproc` = {_nproc()}; rows ran several at a time and the machine "
              f"may have been shared, so wall times are noisy. `uptime` when this file was generated: `{uptime}`."
              + (f" 1-minute load average around the runs (from the run logs): min {min(loads):.2f}, "
                 f"max {max(loads):.2f}, mean {statistics.fmean(loads):.2f}." if loads else ""), ""]
    if finished:
        sizes = sorted({r.sizes for r in finished})
        lines += ([f"Sizes (every row): {sizes[0]}. Every other setting is in the configs.", ""] if len(sizes) == 1 else
                  ["Sizes differ between rows:"] + [f"- {x}" for x in sizes] + [""])
    return lines


def _sweep(page: _Page) -> tuple[list[RunOutcome], set[float]]:
    """The CE-only runs of seed 0 by learning rate, and the learning rates the KD rows use."""
    sweep = sorted((r for r in page.students if r.kd == "off" and r.seed == 0), key=lambda r: r.lr)
    return sweep, {r.lr for r in page.students if r.kd != "off"}


def _sweep_section(page: _Page) -> list[str]:
    """The lr sweep: CE-only, seed 0, one row per lr, the one the KD rows use marked."""
    sweep, chosen = _sweep(page)
    if not sweep:
        return []
    lines = ["## Learning rate: a CE-only sweep", "",
             "The student trained alone (no teacher) at each learning rate, seed 0; every row uses the one marked.", "",
             "| lr | top-1 % | run |", "|---:|---:|---|"]
    for r in sweep:
        mark = " ← used" if r.lr in chosen else ""
        lines.append(f"| {r.lr:g}{mark} | " + (percent(r.top1) if r.finished else "not run") + f" | `{r.command}` |")
    return lines + [""]


def _of_full(part: int | None, r: RunOutcome) -> str:
    return f"{part / r.full_macs:.0%}" if r.full_macs and part is not None else "-"


def _main_cells(done: list[RunOutcome]) -> list[str]:
    """keep, labels' GMACs and of full-KD (teacher-only, then net), GMACs spent, forwards avoided, wall: per seed."""
    if not done:
        return ["-"] * 8
    keeps = " / ".join(dict.fromkeys(r.keep_label for r in done)) if any(r.kd != "off" for r in done) else "-"
    return [keeps,
            " / ".join(f"{r.label_macs / 1e9:.1f}" for r in done),
            " / ".join(_of_full(r.label_macs, r) for r in done),
            " / ".join(_gmacs(r.net_label_macs) for r in done),
            " / ".join(_of_full(r.net_label_macs, r) for r in done),
            " / ".join(f"{r.teacher_macs / 1e9:.1f}" for r in done),
            " / ".join(str(r.avoided) for r in done),
            " / ".join(f"{r.seconds / 60:.1f}" for r in done)]


def _main_table(page: _Page) -> list[str]:
    """One line per row: accuracy over seeds, keep, teacher compute, reuse, wall time, commands."""
    lines = ["## Main table", "",
             "Student top-1 (%) on the test images after the last epoch: mean ± sample std over seeds, with each "
             "seed's value. Keep: patches the teacher saw per milestone (of " + str(max((r.num_patches for r in page.students), default=0))
             + "; auto rows: as chosen, seed by seed). Labels' GMACs: the teacher compute the row's labels cost, reused or "
             "not (rows x MACs at their keep), the auto-keep spot-checks included. Of full-KD: that against full-teacher "
             "KD on the same training samples (the targets use this). Net: the labels' teacher GMACs plus the student's "
             "saliency forwards that chose the masks (what offline MaskedKD pays beyond the teacher; `-`: the run's lock "
             "predates that count), and that against full-teacher KD. Spent: what this run computed itself (rows another "
             "run had already labelled cost it nothing). Avoided: teacher forwards the store reused. Wall: sum of the "
             "stages' seconds (precompute + train), per seed. Commands marked (record): read from the run's committed "
             "record, its run folder is not here.", "",
             "| row | top-1 % | keep per milestone | labels' teacher GMACs, per seed | of full-KD, per seed | labels' net GMACs, per seed | net of full-KD, per seed | GMACs spent | forwards avoided | wall min / run | commands |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    sweep, chosen = _sweep(page)
    for row in page.order:
        rs = sorted(page.rows[row], key=lambda r: r.seed)
        if sweep and all(r.kd == "off" and r.lr not in chosen for r in rs):
            continue  # a sweep point at another lr: in the sweep's table above
        cmds = "<br>".join(f"`{r.command}`" + (" (not run)" if not r.finished else " (record)" if r.record else "") for r in rs)
        lines.append(f"| {row} | {_acc_cell(rs)} | " + " | ".join(_main_cells([r for r in rs if r.finished])) + f" | {cmds} |")
    return lines


def _kd_matters(page: _Page) -> list[str]:
    """Each teacher of the spec at least ``min_gain`` points above the baseline row (the student alone)."""
    kd = page.spec.kd_matters
    base = page.rows.get(kd.baseline, []) if kd else []
    if not kd or not any(r.finished for r in base):
        return []
    base_m, _ = mean_std([r.top1 for r in base if r.finished and r.top1 is not None])
    lines = []
    for label, prefix in kd.teachers:
        tops = {r.teacher_top1 for r in page.students if r.row.startswith(prefix) and r.teacher_top1 is not None}
        if tops:
            gap = 100 * (max(tops) - base_m)
            lines.append(f"- KD matters ({label} at least {kd.min_gain:g} points above the student trained alone): "
                         f"{'**met**' if gap >= kd.min_gain else '**missed**'}, teacher {percent(max(tops))} vs "
                         f"{kd.baseline} {percent(base_m)} ({gap:+.2f} points).")
    return lines


def _targets_and_comparisons(page: _Page) -> list[str]:
    """The spec's targets (those whose row has configs here) and its pairs (those both run)."""
    targets = [line for t in page.spec.targets if any(row in page.rows for row in t.rows) for line in _target_lines(page.rows, t)]
    lines = ["", "## Targets (computed)", ""]
    lines += targets or ["- nothing to compare yet."]
    lines += _kd_matters(page)
    lines += ["", "## Comparisons (computed)", ""]
    got = [c for c in (_compare(page.rows, a, b) for a, b in page.spec.pairs) if c]
    return lines + (got or ["- nothing to compare yet."])


def _auto_cell(r: RunOutcome, a: dict[str, Any] | None) -> str:
    if a is None:
        return "-"
    keep = a.get("keep")
    rung = next((x for x in a["curve"] if (x["keep"] or r.num_patches) == keep), None)
    return ("all" if keep == r.num_patches else str(keep)) + (f" ({rung['agreement']:.3f})" if rung else "")


def _auto_section(page: _Page) -> list[str]:
    """What auto keep chose per milestone, with its spot-check's agreement and cost."""
    autos = [r for r in page.finished if r.auto]
    if not autos:
        return []
    ms = sorted({a["milestone"] for r in autos for a in r.auto})
    lines = ["", "## Auto keep: what the budget chose", "",
             "Per milestone: the keep chosen (of all patches) and, in brackets, the spot-check's agreement with the "
             "unmasked teacher at that keep, from the spot-check the run recorded in its lock. Spot-check GMACs: "
             "the teacher compute of the spot-checks themselves (counted in the main table's labels' GMACs).", "",
             "| run | budget | " + " | ".join(f"milestone {m}" for m in ms) + " | spot-check GMACs | of the labels' GMACs |",
             "|---|---|" + "---:|" * len(ms) + "---:|---:|"]
    for r in sorted(autos, key=page.run_key):
        by_m = {a["milestone"]: a for a in r.auto}
        cells = [_auto_cell(r, by_m.get(m)) for m in ms]
        lines.append(f"| {r.row}, seed {r.seed} | {r.auto[0]['budget']} | " + " | ".join(cells)
                     + f" | {r.spot_macs / 1e9:.2f} | {r.spot_macs / r.label_macs:.1%} |")
    return lines


def _epochs_section(page: _Page) -> list[str]:
    """The student's test top-1 at each evaluated epoch, every finished run."""
    if not page.finished:
        return []
    ep = sorted({e for r in page.finished for e, _ in r.epoch_top1})
    lines = ["", "## Student test top-1 per evaluated epoch", "",
             "Where a row gains or loses its accuracy: the student's test top-1 (%) at each evaluation, every finished run.", "",
             "| run | " + " | ".join(f"epoch {e}" for e in ep) + " |", "|---|" + "---:|" * len(ep)]
    for r in sorted(page.finished, key=page.run_key):
        lines.append(f"| {run_name(r)} | {_series_cells(r.epoch_top1, ep)} |")
    return lines


def _curriculum_section(page: _Page) -> list[str]:
    """The teacher's accuracy on the views it labelled per milestone: one curve per masked offline row, seed 0."""
    fig_runs = [r for r in sorted(page.finished, key=lambda r: page.spec.row_key(r.row))
                if r.seed == 0 and r.kd != "off" and not r.online and len(r.masked_top1) >= 2]
    png = page.out.with_name("results_curriculum.png")
    lines = ["", "## Curriculum: the teacher's accuracy on the views it labelled", ""]
    milestones = sorted({x for r in fig_runs for x, _ in r.masked_top1})
    teachers = {teacher_name(r): r.teacher_top1 for r in fig_runs if r.teacher_top1 is not None}
    if not curriculum_figure(png, fig_runs, teachers):
        return lines + ["not run (time): needs the offline rows."]
    lines += [f"![curriculum]({png.name})", "",
              "| run | " + " | ".join(f"milestone {x}" for x in milestones) + " |",
              "|---|" + "---:|" * len(milestones)]
    for r in fig_runs:
        lines.append(f"| {r.row} (`{r.policy}`, keep {r.keep_label}, seed {r.seed}) | {_series_cells(r.masked_top1, milestones)} |")
    return lines + ["", "Teacher top-1 (%) on the training views it labelled, with the keep set of each row, per milestone "
                    "(masks from the student checkpoint at that epoch)."]


def _cheapened_section(page: _Page) -> list[str]:
    """The paper's figure: per row, the teacher's top-1 on its cheapened views against the student's top-1."""
    order = page.order
    if page.spec.cheapest:  # the fair fight's rows only: the online and re-labelling rows answer other questions
        order = [row for row in order if any(c.has(row) or row == c.full for c in page.spec.cheapest)]
    points, left_out = cheapened_points(page.rows, order)
    png = page.out.with_name("results_cheapened.png")
    lines = ["", "## The teacher on its cheapened views against the student it trains", ""]
    base = page.spec.kd_matters.baseline if page.spec.kd_matters else None  # the student trained alone, a line
    base_top1 = [r.top1 for r in page.rows.get(base or "", []) if r.finished and r.top1 is not None]
    baselines = {base: mean_std(base_top1)[0]} if base and base_top1 else {}
    if not cheapened_figure(png, points, baselines):
        return lines + ["not run (time): needs the distilled rows."]
    lines += [f"![teacher on its views against the student]({png.name})", "",
              "Per row (mean over its seeds, ± seed std when more than one): the teacher's top-1 on the training views "
              "it labelled, masked, merged or downsampled as the row's policy does (mean over milestones; *unmasked*: "
              "a full-teacher row without that record, at the teacher's test top-1), against the student's test top-1 "
              "after distilling from those labels. Marker: the policy; colour: the teacher. Where the spec names the "
              "answer's rows, only those (each teacher's cheapened rows and its full-teacher KD).", "",
              "| row | teacher | policy | teacher top-1 % on its views | student top-1 % | seeds |",
              "|---|---|---|---:|---:|---:|"]
    for p in points:
        x = percent(p.x) + ("" if p.x_std is None else f" ± {percent(p.x_std)}") + (" (unmasked)" if p.unmasked else "")
        y = percent(p.y) + ("" if p.y_std is None else f" ± {percent(p.y_std)}")
        lines.append(f"| {p.row} | {p.teacher} | `{p.policy}` | {x} | {y} | {p.seeds} |")
    return lines + (["", f"Left out (no record of the teacher's top-1 on its views): {'; '.join(left_out)}."] if left_out else [])


def _relabel_section(page: _Page) -> list[str]:
    """What incremental recomputation bought: the runs whose milestones re-label views labelled before
    (a view pool, or a reuse tolerance); none, no section."""
    runs = [r for r in sorted(page.finished, key=page.run_key)
            if not r.online and r.rows and (r.pool != "epochs" or r.tolerance)]
    if not runs:
        return []
    lines = ["", "## Re-labelling: what incremental recomputation bought", "",
             "Runs whose milestones re-label views labelled at an earlier milestone (`views.pool`) or reuse stored "
             "labels whose keep set differs by at most `masking.tolerance` patches. Rows: labels the run needed over "
             "all milestones; teacher forwards: rows the teacher computed; reused: rows served from the store, "
             "exactly (same keep set, or labels that do not depend on the student) or under tolerance; KL: mean "
             "KL(fresh ‖ reused) of the spot-checked rows reused under tolerance, over milestones.", "",
             "| run | pool | milestones | tolerance | rows | teacher forwards | reused exactly | reused under tolerance "
             "| spot-check KL | top-1 % |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        kl = f"{statistics.fmean(r.spot_kl):.4f}" if r.spot_kl else "-"
        lines.append(f"| {run_name(r)} | {r.pool} | {', '.join(map(str, r.every))} | {r.tolerance} | {r.rows} | "
                     f"{r.teacher_forwards} | {r.avoided - r.reused_tolerance} | {r.reused_tolerance} | {kl} | "
                     f"{percent(r.top1)} |")
    return lines


def render_results(runs: list[RunOutcome], out: Path, spec: ResultsSpec | None = None, notes: str | None = None,
                   notes_path: str | None = None, probes: Path | None = None) -> str:
    """The markdown of the results page at ``out`` (its PNGs are written beside it).

    Args:
        runs: what :func:`pipeline.report.collect.collect_run` read of each config.
        spec: rows order, comparisons, targets and the experiment's words (default: none of them).
        notes: markdown appended verbatim; ``notes_path`` (its file) is named in the page's command line.
        probes: folder of ``mkd-pipeline probe --json`` outputs shown as curves.
    """
    spec = spec or ResultsSpec()
    students = [r for r in runs if r.teacher_train is None]
    rows: dict[str, list[RunOutcome]] = {}
    for r in students:
        rows.setdefault(r.row, []).append(r)
    page = _Page(spec, out, students, rows, sorted(rows, key=spec.row_key), [r for r in students if r.finished])
    header = _header(page, runs, notes_path, probes)
    lines = header[:2] + answer_lines(rows, spec.cheapest) + header[2:]  # the answer first, under the title
    lines += _teachers_section(students, spec.teachers) + _sweep_section(page)
    lines += _main_table(page) + _breakeven_section(page) + _targets_and_comparisons(page) + _cheapened_section(page)
    lines += _auto_section(page)
    lines += [""] + _probe_section(out, probes, spec.probe) + _epochs_section(page) + _relabel_section(page)
    lines += _curriculum_section(page)
    if notes:
        lines += ["", notes.rstrip()]
    return "\n".join(lines) + "\n"
