"""``mkd-pipeline report --results CONFIGS... --out RESULTS.md``: the results table (issue 13, v2).

Every number in the output comes from the runs' lock files (``runs/<name>/run.lock.json``), their
logs, the committed teachers' metadata (the ``.json`` beside each ``teacher.weights`` file) and
the probe curves ``stages/results/run_all.sh`` writes (``runs/probes/<teacher>-m<I>.json``);
nothing is typed in by hand. A config's *row* is the text after ``# Row:`` in its opening comment
(default: the file name without a trailing ``-s<seed>``); configs of the same row are its seeds.
A config with a ``teacher.train`` block and no ``# Row:`` line trained a teacher; it is not a row.
A config whose run has not finished is listed as "not run" with its command.

Per run it reads: the final student test top-1 (``val_top1`` of the last epoch of the last
``train-i`` stage), teacher MACs spent (precompute ``teacher_macs``, which includes the auto-keep
spot-checks, plus online ``teacher_macs``), the keep used per milestone and, with ``keep: auto``,
the spot-check curve it was chosen from, teacher forwards avoided by reuse, wall time (the sum of
the stages' ``seconds``), the teacher's top-1 on its masked views per milestone, and, from
``runs/logs/<config stem>.log`` when present, the load average written there by ``run_all.sh``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from pipeline._atomic import write_atomic
from pipeline.data.manifest import load_manifest

__all__ = ["RunResult", "collect_run", "render_results", "report_cmd"]

# Rows in this order (a teacher's rows together); rows not listed here follow alphabetically.
ROW_ORDER = ["CE only"] + [f"{t} teacher: offline {r}" for t in ("plain", "robust") for r in (
    "full-teacher KD", "MaskedKD 50%", "random 50%", "auto keep, agreement 0.95", "auto keep, agreement 0.90")]


@dataclass
class RunResult:
    """What one config's run produced (``finished`` False: not run, or not to the end)."""

    config: Path
    name: str
    row: str
    seed: int
    online: bool
    kd: str
    policy: str
    keep: int | str | None  # "auto": chosen per milestone by the spot-check
    every: list[int]
    tolerance: int
    pool: str
    lr: float
    epochs: int
    train_samples: int
    keeps: list[int | str | None] = field(default_factory=list)  #: keep per segment (differs with masking.per_milestone)
    finished: bool = False
    top1: float | None = None
    teacher_top1: float | None = None
    teacher_macs: int = 0  #: spent by this run (rows another run had labelled cost it nothing)
    label_macs: int = 0  #: what its labels cost, reused or not: rows x MACs at their keep, spot-checks included
    full_macs: int = 0
    teacher_forwards: int = 0
    avoided: int = 0
    rows: int = 0
    seconds: float = 0.0
    masked_top1: list[tuple[int, float]] = field(default_factory=list)  # (milestone epoch, top-1)
    epoch_top1: list[tuple[int, float]] = field(default_factory=list)  # (epoch, student test top-1)
    spot_kl: list[float] = field(default_factory=list)  # mean KL of tolerance reuse vs a fresh forward, per milestone
    reused_tolerance: int = 0
    used_keeps: list[int] = field(default_factory=list)  # keep per milestone as labelled (auto: as chosen)
    auto: list[dict[str, Any]] = field(default_factory=list)  # keep: auto, per milestone: budget, curve, samples, MACs
    load: list[float] = field(default_factory=list)  # 1-minute load averages from the run log
    teacher_train: dict[str, Any] | None = None
    teacher_file: dict[str, Any] | None = None  # the committed teacher's metadata (the .json beside its weights)
    num_patches: int = 0
    sizes: str = ""

    @property
    def command(self) -> str:
        return f"mkd-pipeline run {self.config.as_posix()}"

    @property
    def keep_label(self) -> str:
        """``25``, ``all``, or ``37→37→25→25→25`` when the keep changes between milestones."""
        ks: list[Any] = self.used_keeps or [self.num_patches if k is None else k for k in self.keeps]
        if not ks:
            return "-"
        show = ["all" if k == self.num_patches else str(k) for k in ks]
        return "→".join(show) if len(set(show)) > 1 else show[0]

    @property
    def spot_macs(self) -> int:
        """Teacher MACs of the auto-keep spot-checks (part of ``teacher_macs``)."""
        return sum(int(a.get("teacher_macs") or 0) for a in self.auto)


def _row_comment(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s*Row:\s*(.+?)\s*$", line)
        if m:
            return m.group(1)
    return None


_TEACHERS: dict[str, Any] = {}
_MACS: dict[tuple[str, int | None], int] = {}


def _macs_per_view(cfg, keep: int | None = None) -> int:
    """MACs of one teacher forward keeping ``keep`` patches (None or all: the full teacher), by
    maskedkd.teacher_macs; one model per teacher config, one count per keep."""
    key = json.dumps([cfg.teacher.model, cfg.teacher.kwargs], sort_keys=True, default=repr)
    if (key, keep) not in _MACS:
        # lazy: `mkd-pipeline --help` imports this module; torch + timm would add 4 s
        import torch

        from maskedkd import teacher_macs
        from pipeline.models import create_model

        if key not in _TEACHERS:
            with torch.device("cpu"):
                _TEACHERS[key] = create_model(cfg.teacher.model, cfg.teacher.kwargs, seed=0).eval()
        _MACS[key, keep] = teacher_macs(_TEACHERS[key], keep)
    return _MACS[key, keep]


def _loads(log: Path) -> list[float]:
    if not log.is_file():
        return []
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"# uptime (?:before|after):.*load average:\s*([\d.]+)", line)
        if m:
            out.append(float(m.group(1)))
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown model"


def collect_run(path: str | Path, logs: Path | None = None) -> RunResult:
    """Load one config and read what its run wrote (lock file, run log)."""
    # lazy: `mkd-pipeline --help` imports this module; torch + timm would add 4 s
    from pipeline.config import load_config

    path = Path(path)
    cfg = load_config(path, check_files=False)
    manifest = load_manifest(cfg.data.root)
    n_train = cfg.data.subset or manifest.num_samples(cfg.data.train)
    n_val = cfg.data.val_subset or (manifest.num_samples(cfg.data.val) if cfg.data.val else 0)
    segs = cfg.schedule.segments()
    row = _row_comment(path)
    r = RunResult(
        config=path, name=cfg.name, row=row or re.sub(r"-s\d+$", "", path.stem), seed=int(cfg.train.seed), online=bool(cfg.online),
        kd=cfg.train.kd, policy=cfg.masking.policy, keep=cfg.keep_for_segment(0),
        every=list(cfg.schedule.milestones or [0]), tolerance=cfg.masking.tolerance, pool=str(cfg.views.pool),
        lr=float(cfg.train.lr or 0), epochs=cfg.schedule.epochs, train_samples=int(n_train),
        keeps=[] if cfg.masking.auto else [cfg.keep_for_segment(i) for i in range(len(segs))],
        num_patches=cfg.num_patches or 0,
    )
    def _desc(m) -> str:
        k = m.kwargs
        return (f"`{m.model}` dim {k.get('embed_dim', '?')} / depth {k.get('depth', '?')} / {k.get('num_heads', '?')} heads, "
                f"patch {k.get('patch_size', '?')} ({m.info().num_patches} patches)")

    r.sizes = (f"student {_desc(cfg.student)}; teacher {_desc(cfg.teacher)}; {cfg.schedule.epochs} student epochs on "
               f"{n_train} training images, batch {cfg.train.batch_size}; test top-1 on "
               + (f"the first {n_val}" if cfg.data.val_subset else f"all {n_val}") + " test images")
    r.load = _loads((logs or Path("runs/logs")) / f"{path.stem}.log")
    weights = cfg.teacher.weights
    if weights is not None and Path(weights).with_suffix(".json").is_file():
        shown = Path(os.path.relpath(weights)) if Path(weights).is_absolute() else Path(weights)  # as the configs say it
        r.teacher_file = dict(json.loads(Path(weights).with_suffix(".json").read_text()), weights=shown.as_posix())
    if cfg.teacher.train is not None and row is None:  # a config that trained a teacher: not a row
        r.teacher_train = {}
    assert cfg.run_dir is not None  # the loader fills it
    lock_path = Path(cfg.run_dir) / "run.lock.json"
    if not lock_path.is_file():
        return r
    stages = json.loads(lock_path.read_text()).get("stages", {})
    teacher = stages.get("teacher", {}).get("info", {})
    r.teacher_top1 = teacher.get("top1")
    if r.teacher_train is not None:
        r.teacher_train, r.finished = teacher, bool(teacher)
        return r
    last = stages.get(f"train-{len(segs) - 1}", {}).get("info", {})
    epochs = last.get("epochs") or []
    if not epochs or epochs[-1].get("epoch") != cfg.schedule.epochs - 1 or "val_top1" not in epochs[-1]:
        return r
    r.finished = True
    r.top1 = float(epochs[-1]["val_top1"])
    per_image = _macs_per_view(cfg)
    r.full_macs = 0 if cfg.train.kd == "off" else per_image * r.train_samples * cfg.schedule.epochs
    for i, (start, _end) in enumerate(segs):
        pre = stages.get(f"precompute-{i}", {}).get("info", {})
        tr = stages.get(f"train-{i}", {}).get("info", {})
        r.epoch_top1 += [(int(e["epoch"]), float(e["val_top1"])) for e in tr.get("epochs") or [] if "val_top1" in e]
        r.teacher_macs += int(pre.get("teacher_macs") or 0) + int(tr.get("teacher_macs") or 0)
        r.teacher_forwards += int(pre.get("teacher_forwards") or 0) + int(tr.get("teacher_forwards") or 0)
        rows = int(pre.get("rows") or 0)
        r.rows += rows
        r.avoided += max(0, rows - int(pre.get("rows_computed") or 0))
        r.reused_tolerance += int(pre.get("rows_reused_tolerance") or 0)
        if pre.get("spot_check_kl") is not None:
            r.spot_kl.append(float(pre["spot_check_kl"]))
        r.seconds += float(pre.get("seconds") or 0) + float(tr.get("seconds") or 0)
        if pre.get("teacher_top1_masked") is not None:
            r.masked_top1.append((start, float(pre["teacher_top1_masked"])))
        if pre.get("keep") is not None:
            r.used_keeps.append(int(pre["keep"]))
            r.label_macs += rows * _macs_per_view(cfg, r.used_keeps[-1])
        if pre.get("auto"):
            r.auto.append(dict(pre["auto"], milestone=start, keep=pre.get("keep")))
            r.label_macs += int(pre["auto"].get("teacher_macs") or 0)
    return r


# ----------------------------------------------------------------------------- rendering


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _mean_std(vals: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _acc_cell(runs: list[RunResult]) -> str:
    done = [r.top1 for r in runs if r.finished and r.top1 is not None]
    if not done:
        return "not run (time)"
    m, s = _mean_std(done)
    seeds = ", ".join(_pct(v) for v in done)
    if s is None:
        return f"{100 * m:.2f} (1 seed)"
    return f"{100 * m:.2f} ± {100 * s:.2f} (n={len(done)}: {seeds})"


def _row_key(row: str) -> tuple[int, str]:
    return (ROW_ORDER.index(row) if row in ROW_ORDER else len(ROW_ORDER), row)


def _compare(rows: dict[str, list[RunResult]], a: str, b: str) -> str | None:
    ra = [r.top1 for r in rows.get(a, []) if r.finished and r.top1 is not None]
    rb = [r.top1 for r in rows.get(b, []) if r.finished and r.top1 is not None]
    if not ra or not rb:
        return None
    ma, sa = _mean_std(ra)
    mb, sb = _mean_std(rb)
    diff = 100 * (ma - mb)
    sds = [s for s in (sa, sb) if s is not None]
    if sds:
        noise = 100 * max(sds)
        verdict = (f"larger than twice the larger seed std ({noise:.2f})" if abs(diff) > 2 * noise
                   else f"within twice the larger seed std ({noise:.2f}): not distinguishable from seed noise")
    else:
        verdict = "1 seed each: no seed spread measured, cannot separate from noise"
    return f"- **{a}** − **{b}**: {diff:+.2f} points (n={len(ra)} vs {len(rb)}); {verdict}."


def _figure(path: Path, runs: list[RunResult], teacher_top1: float | None) -> bool:
    # lazy: `mkd-pipeline --help` imports this module; matplotlib.pyplot would add 0.4 s
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in runs if r.finished and r.masked_top1]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    for r in curves:
        xs, ys = zip(*r.masked_top1)
        ax.plot(xs, ys, marker="o", ls="-" if r.seed == 0 else "--",
                label=f"{r.policy}, keep {r.keep_label}, seed {r.seed}, milestones {','.join(map(str, xs))}")
    if teacher_top1 is not None:
        ax.axhline(teacher_top1, color="k", ls="--", lw=1, label="teacher, unmasked test images")
    ax.set_xlabel("milestone (student epoch whose masks are used)")
    ax.set_ylabel("teacher top-1 on its (masked) training views")
    ax.set_title("Teacher accuracy on masked views per milestone")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_xticks(sorted({x for r in curves for x, _ in r.masked_top1}))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return True


def _series_cells(points: list[tuple[int, float]], columns: list[int]) -> str:
    """Table cells of ``(x, value)`` points under ``columns`` (percent; ``-`` where a run has no such x)."""
    got = dict(points)
    return " | ".join(_pct(got[x]) if x in got else "-" for x in columns)


def _teachers_section(students: list[RunResult]) -> list[str]:
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
             "Committed weights (trained once, loaded by every row; retrain with the config named, then "
             "`python stages/results/export_teacher.py CONFIG`). Test top-1 on all test images.", "",
             "| weights | trained by | epochs | patch_drop_rate | test top-1 % (at export) | as the rows evaluated it | train min | sha256 |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for w, f in sorted(files.items()):
        rec = f.get("recipe") or {}
        seen = ", ".join(_pct(v) for v in sorted(evaluated.get(w, ()))) or "-"
        lines.append(f"| `{w}` | `{f.get('config', '?')}` | {f.get('epochs', '?')} | {rec.get('patch_drop_rate', 0.0)} | "
                     f"{_pct(f.get('test_top1'))} | {seen} | {float(f.get('seconds') or 0) / 60:.0f} | `{str(f.get('sha256', ''))[:16]}…` |")
    return lines + [""]


def _target(rows: dict[str, list[RunResult]], row: str, full: str, max_ratio: float, what: str) -> str | None:
    """One target line: ``row`` within twice full-KD's seed std of ``full`` at <= ``max_ratio`` of its MACs."""
    ra = [r for r in rows.get(row, []) if r.finished]
    rb = [r for r in rows.get(full, []) if r.finished]
    if not ra or not rb:
        return f"- {what}: **not measured** (rows not run: {row if not ra else full})."
    ma, _ = _mean_std([r.top1 for r in ra if r.top1 is not None])
    mb, sb = _mean_std([r.top1 for r in rb if r.top1 is not None])
    ratio = statistics.fmean(r.label_macs / r.full_macs for r in ra if r.full_macs)
    diff = 100 * (ma - mb)
    if sb is None:
        return f"- {what}: {diff:+.2f} points at {ratio:.2f}x MACs; **not decidable** (full-teacher KD has 1 seed, no std)."
    acc_ok = diff >= -2 * 100 * sb
    cost_ok = ratio <= max_ratio
    verdict = "**met**" if acc_ok and cost_ok else "**missed**"
    why = [] if acc_ok else [f"accuracy {-diff:.2f} points below full-teacher KD, more than twice its seed std ({2 * 100 * sb:.2f})"]
    why += [] if cost_ok else [f"teacher MACs {ratio:.2f}x of full-teacher KD, above {max_ratio:g}x"]
    return (f"- {what}: {verdict}. **{row}** − **{full}** = {diff:+.2f} points (n={len(ra)} vs {len(rb)}; twice full-KD's "
            f"seed std = {2 * 100 * sb:.2f}) at {ratio:.2f}x its teacher MACs (spot-checks included)"
            + (f"; missed on: {'; '.join(why)}." if why else "."))


def _probe_section(out: Path, probes: Path | None) -> list[str]:
    """The probe curves (``mkd-pipeline probe --json``) written by run_all.sh: a table and a plot each."""
    from pipeline.report.fidelity import curve_table, plot_curves

    files = sorted(probes.glob("*.json")) if probes is not None and probes.is_dir() else []
    found = []
    for f in files:
        try:
            found.append((f, json.loads(f.read_text())))
        except (OSError, ValueError):
            continue
    lines = ["## Probe: what each mask costs the teacher, at the first and the last milestone", ""]
    if not found:
        return lines + ["not run (time): `stages/results/run_all.sh` writes the probes after the rows."]
    lines += ["`mkd-pipeline probe stages/results/<teacher>-mkd50-s0.yaml --milestone I --samples 1000` (masks from that "
              "row's checkpoint c_I on a seeded sample of segment I's views): the masked teacher's top-1, its top-1 agreement "
              "with the unmasked teacher and the mean KL(unmasked ‖ masked), per policy and keep.", ""]
    for f, res in found:
        png = out.with_name(f"results_probe_{f.stem}.png")
        n = int(res["num_patches"])
        plot_curves(png, res["curves"], n, f"{f.stem}: masks from {res['source']}, {res['samples']} views")
        lines += [f"### {f.stem} (masks from {res['source']}, {res['samples']} views; unmasked teacher top-1 "
                  f"{res['unmasked_top1']:.4f})", "", f"![probe {f.stem}]({png.name})", "", *curve_table(res["curves"], n), ""]
    return lines


def render_results(runs: list[RunResult], out: Path, notes: str | None = None, notes_path: str | None = None,
                   probes: Path | None = None) -> str:
    """The markdown of RESULTS.md (and its PNGs beside ``out``)."""
    students = [r for r in runs if r.teacher_train is None]
    rows: dict[str, list[RunResult]] = {}
    for r in students:
        rows.setdefault(r.row, []).append(r)
    order = sorted(rows, key=_row_key)
    finished = [r for r in students if r.finished]
    lines = ["# Results v2: fidelity-guarded MaskedKD on Fashion-MNIST (issue 13)", "",
             "Generated by `mkd-pipeline report --results " + " ".join(sorted({str(r.config.parent.as_posix()) + "/*.yaml" for r in runs}))
             + f" --out {out.as_posix()}" + (f" --notes {notes_path}" if notes_path else "")
             + "` from the runs' lock files and logs; do not edit by hand. Run every row first with "
               "`stages/results/run_all.sh` (`JOBS` rows at a time, default 2; finished rows are cached).", ""]
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
    lines += _teachers_section(students)
    # the lr sweep: CE-only, seed 0, one row per lr
    sweep = sorted((r for r in students if r.kd == "off" and r.seed == 0), key=lambda r: r.lr)
    chosen = {r.lr for r in students if r.kd != "off"}
    if sweep:
        lines += ["## Learning rate: a CE-only sweep", "",
                  "The student trained alone (no teacher) at each learning rate, seed 0; every row uses the one marked.", "",
                  "| lr | top-1 % | run |", "|---:|---:|---|"]
        for r in sweep:
            mark = " ← used" if r.lr in chosen else ""
            lines.append(f"| {r.lr:g}{mark} | " + (_pct(r.top1) if r.finished else "not run") + f" | `{r.command}` |")
        lines.append("")
    lines += ["## Main table", "",
              "Student top-1 (%) on the test images after the last epoch: mean ± sample std over seeds, with each "
              "seed's value. Keep: patches the teacher saw per milestone (of " + str(max((r.num_patches for r in students), default=0))
              + "; auto rows: as chosen, seed by seed). Labels' GMACs: the teacher compute the row's labels cost, reused or "
              "not (rows x MACs at their keep), the auto-keep spot-checks included. Of full-KD: that against full-teacher "
              "KD on the same training samples (the targets use this). Spent: what this run computed itself (rows another "
              "run had already labelled cost it nothing). Avoided: teacher forwards the store reused. Wall: sum of the "
              "stages' seconds (precompute + train), per seed.", "",
              "| row | top-1 % | keep per milestone | labels' teacher GMACs, per seed | of full-KD, per seed | GMACs spent | forwards avoided | wall min / run | commands |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in order:
        rs = sorted(rows[row], key=lambda r: r.seed)
        if sweep and all(r.kd == "off" and r.lr not in chosen for r in rs):
            continue  # a sweep point at another lr: in the sweep's table above
        done = [r for r in rs if r.finished]
        if done:
            keeps = " / ".join(dict.fromkeys(r.keep_label for r in done)) if any(r.kd != "off" for r in done) else "-"
            macs = " / ".join(f"{r.label_macs / 1e9:.1f}" for r in done)
            frac = " / ".join(f"{r.label_macs / r.full_macs:.0%}" if r.full_macs else "-" for r in done)
            spent = " / ".join(f"{r.teacher_macs / 1e9:.1f}" for r in done)
            avoided = " / ".join(str(r.avoided) for r in done)
            wall = " / ".join(f"{r.seconds / 60:.1f}" for r in done)
            cells = [keeps, macs, frac, spent, avoided, wall]
        else:
            cells = ["-"] * 6
        cmds = "<br>".join(f"`{r.command}`" + ("" if r.finished else " (not run)") for r in rs)
        lines.append(f"| {row} | {_acc_cell(rs)} | " + " | ".join(cells) + f" | {cmds} |")
    teacher_names = [t for t in ("plain", "robust") if any(r.startswith(f"{t} teacher:") for r in rows)]
    lines += ["", "## Targets (computed)", ""]
    targets = []
    for t in teacher_names:
        full = f"{t} teacher: offline full-teacher KD"
        for row in order:
            if row.startswith(f"{t} teacher: offline auto keep"):
                targets.append(_target(rows, row, full, 0.7, f"{t} teacher, {row.split(': ', 1)[1]}: within twice the "
                                       "seed std of full-teacher KD at <= 0.7x its teacher MACs"))
    if "robust" in teacher_names:
        targets.append(_target(rows, "robust teacher: offline MaskedKD 50%", "robust teacher: offline full-teacher KD", 0.55,
                               "robust teacher, MaskedKD 50% (keep 25 of 49 patches): within twice the seed std of "
                               "full-teacher KD at about 0.5x its MACs (<= 0.55x: the CLS token is always kept)"))
    lines += [x for x in targets if x] or ["- nothing to compare yet."]
    ce = rows.get("CE only", [])
    if ce and any(r.finished for r in ce):
        ce_m, _ = _mean_std([r.top1 for r in ce if r.finished and r.top1 is not None])
        for t in teacher_names:
            tops = {r.teacher_top1 for r in students if r.row.startswith(f"{t} teacher:") and r.teacher_top1 is not None}
            if tops:
                gap = 100 * (max(tops) - ce_m)
                lines.append(f"- KD matters ({t} teacher at least 3 points above the student trained alone): "
                             f"{'**met**' if gap >= 3 else '**missed**'}, teacher {_pct(max(tops))} vs CE only {100 * ce_m:.2f} "
                             f"({gap:+.2f} points).")
    lines += ["", "## Comparisons (computed)", ""]
    pairs = []
    for t in teacher_names:
        p = f"{t} teacher: offline "
        pairs += [(p + "full-teacher KD", "CE only"), (p + "MaskedKD 50%", p + "full-teacher KD"),
                  (p + "random 50%", p + "full-teacher KD"), (p + "MaskedKD 50%", p + "random 50%"),
                  (p + "MaskedKD 50%", "CE only"), (p + "auto keep, agreement 0.95", p + "full-teacher KD"),
                  (p + "auto keep, agreement 0.90", p + "full-teacher KD")]
    if len(teacher_names) == 2:
        pairs += [("robust teacher: offline " + x, "plain teacher: offline " + x) for x in ("full-teacher KD", "MaskedKD 50%")]
    got = [c for c in (_compare(rows, a, b) for a, b in pairs) if c]
    lines += got or ["- nothing to compare yet."]
    autos = [r for r in finished if r.auto]
    if autos:
        ms = sorted({a["milestone"] for r in autos for a in r.auto})
        lines += ["", "## Auto keep: what the budget chose", "",
                  "Per milestone: the keep chosen (of all patches) and, in brackets, the spot-check's agreement with the "
                  "unmasked teacher at that keep, from the spot-check the run recorded in its lock. Spot-check GMACs: "
                  "the teacher compute of the spot-checks themselves (counted in the main table's labels' GMACs).", "",
                  "| run | budget | " + " | ".join(f"milestone {m}" for m in ms) + " | spot-check GMACs | of the labels' GMACs |",
                  "|---|---|" + "---:|" * len(ms) + "---:|---:|"]
        for r in sorted(autos, key=lambda r: (_row_key(r.row), r.seed)):
            cells = []
            by_m = {a["milestone"]: a for a in r.auto}
            for m in ms:
                a = by_m.get(m)
                if a is None:
                    cells.append("-")
                    continue
                keep = a.get("keep")
                rung = next((x for x in a["curve"] if (x["keep"] or r.num_patches) == keep), None)
                cells.append(("all" if keep == r.num_patches else str(keep)) + (f" ({rung['agreement']:.3f})" if rung else ""))
            lines.append(f"| {r.row}, seed {r.seed} | {r.auto[0]['budget']} | " + " | ".join(cells)
                         + f" | {r.spot_macs / 1e9:.2f} | {r.spot_macs / r.label_macs:.1%} |")
    lines += [""] + _probe_section(out, probes)
    if finished:
        ep = sorted({e for r in finished for e, _ in r.epoch_top1})
        lines += ["", "## Student test top-1 per evaluated epoch", "",
                  "Where a row gains or loses its accuracy: the student's test top-1 (%) at each evaluation, every finished run.", "",
                  "| run | " + " | ".join(f"epoch {e}" for e in ep) + " |", "|---|" + "---:|" * len(ep)]
        for r in sorted(finished, key=lambda r: (_row_key(r.row), r.seed)):
            lines.append(f"| {r.row}, seed {r.seed} | {_series_cells(r.epoch_top1, ep)} |")
    # curriculum figure: one curve per masked offline row, seed 0
    fig_runs = [r for r in sorted(finished, key=lambda r: _row_key(r.row))
                if r.seed == 0 and r.kd != "off" and not r.online and len(r.masked_top1) >= 2]
    png = out.with_name("results_curriculum.png")
    lines += ["", "## Curriculum: the teacher's accuracy on the views it labelled", ""]
    milestones = sorted({x for r in fig_runs for x, _ in r.masked_top1})
    t1 = next((r.teacher_top1 for r in finished if r.teacher_top1 is not None), None)
    if _figure(png, fig_runs, t1):
        lines += [f"![curriculum]({png.name})", "",
                  "| run | " + " | ".join(f"milestone {x}" for x in milestones) + " |",
                  "|---|" + "---:|" * len(milestones)]
        for r in fig_runs:
            lines.append(f"| {r.row} (`{r.policy}`, keep {r.keep_label}, seed {r.seed}) | {_series_cells(r.masked_top1, milestones)} |")
        lines += ["", "Teacher top-1 (%) on the training views it labelled, with the keep set of each row, per milestone "
                  "(masks from the student checkpoint at that epoch)."]
    else:
        lines += ["not run (time): needs the offline rows."]
    if notes:
        lines += ["", notes.rstrip()]
    return "\n".join(lines) + "\n"


def _nproc() -> int:
    return os.cpu_count() or 0


@click.command("report")
@click.option("--results", "configs", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Stage configs of the rows (repeat, or pass a shell glob).")
@click.argument("more", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default="RESULTS.md", show_default=True,
              help="Markdown file to write; the curriculum PNG goes beside it.")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Markdown appended verbatim (the hand-written reading of the numbers; no numbers in it).")
@click.option("--logs", type=click.Path(file_okay=False), default="runs/logs", show_default=True,
              help="Folder of the run logs written by stages/results/run_all.sh (load averages).")
@click.option("--probes", type=click.Path(file_okay=False), default="runs/probes", show_default=True,
              help="Folder of `mkd-pipeline probe --json` outputs (<name>.json) written by stages/results/run_all.sh.")
def report_cmd(configs: tuple[str, ...], more: tuple[str, ...], out: str, notes: str | None, logs: str, probes: str) -> None:
    """Build RESULTS.md from finished runs: one row per `# Row:` label, seeds averaged."""
    paths = list(dict.fromkeys([*configs, *more]))
    runs = [collect_run(p, Path(logs)) for p in paths if Path(p).suffix in (".yaml", ".yml")]
    outp = Path(out)
    text = render_results(runs, outp, Path(notes).read_text() if notes else None, notes, probes=Path(probes))
    write_atomic(outp, text.encode())
    done = sum(r.finished for r in runs)
    click.echo(f"{outp}: {done} of {len(runs)} configs finished")
