"""``mkd-pipeline report --results CONFIGS... --out RESULTS.md``: the results table of issue 7.

Every number in the output comes from the runs' lock files (``runs/<name>/run.lock.json``) and
their logs; nothing is typed in by hand. A config's *row* is the text after ``# Row:`` in its
opening comment (default: the file name without a trailing ``-s<seed>``); configs of the same row
are its seeds. A config with a ``teacher.train`` block and no ``# Row:`` line is the shared
teacher's config (reported with its training epochs and time). A config whose run has not
finished is listed as "not run" with its command.

Per run it reads: the final student test top-1 (``val_top1`` of the last epoch of the last
``train-i`` stage), teacher MACs spent (precompute ``teacher_macs`` plus online ``teacher_macs``),
teacher forwards avoided by reuse (precompute ``rows - rows_computed``), wall time (the sum of the
stages' ``seconds``), the teacher's top-1 on its masked views per milestone (precompute
``teacher_top1_masked``), and, from ``runs/logs/<config stem>.log`` when present, the load
average written there by ``stages/results/run_all.sh``.
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
import numpy as np

from pipeline._atomic import write_atomic
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import read_shard

__all__ = ["RunResult", "collect_run", "render_results", "report_cmd"]

# The order; rows not listed here follow alphabetically.
ROW_ORDER = [
    "CE only", "online full-teacher KD", "online MaskedKD 50%", "offline full teacher",
    "offline MaskedKD 75%", "offline MaskedKD 50%", "offline MaskedKD 25%", "offline random 50%",
    "offline inverse 50%",
]


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
    keep: int | None
    every: list[int]
    tolerance: int
    pool: str
    lr: float
    epochs: int
    train_samples: int
    keeps: list[int] = field(default_factory=list)  #: keep per segment (differs with masking.per_milestone)
    finished: bool = False
    top1: float | None = None
    teacher_top1: float | None = None
    teacher_macs: int = 0
    full_macs: int = 0
    teacher_forwards: int = 0
    avoided: int = 0
    rows: int = 0
    seconds: float = 0.0
    masked_top1: list[tuple[int, float]] = field(default_factory=list)  # (milestone epoch, top-1)
    epoch_top1: list[tuple[int, float]] = field(default_factory=list)  # (epoch, student test top-1)
    spot_kl: list[float] = field(default_factory=list)  # mean KL of tolerance reuse vs a fresh forward, per milestone
    reused_tolerance: int = 0
    content: list[dict[str, float]] = field(default_factory=list)  # per milestone: what the kept patches hold
    load: list[float] = field(default_factory=list)  # 1-minute load averages from the run log
    teacher_train: dict[str, Any] | None = None
    sizes: str = ""

    @property
    def command(self) -> str:
        return f"mkd-pipeline run {self.config.as_posix()}"

    @property
    def keep_label(self) -> str:
        """``25``, or ``49→25→25`` when the keep changes between milestones."""
        return "→".join(map(str, self.keeps)) if len(set(self.keeps)) > 1 else str(self.keep)

    def keep_of(self, j: int) -> int | None:
        """The keep of the ``j``-th milestone."""
        return self.keeps[j] if j < len(self.keeps) else self.keep


def _row_comment(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s*Row:\s*(.+?)\s*$", line)
        if m:
            return m.group(1)
    return None


_FULL_MACS: dict[str, int] = {}


def _full_macs_per_image(cfg) -> int:
    """MACs of one unmasked teacher forward (measured by maskedkd.teacher_macs), per teacher config."""
    key = json.dumps([cfg.teacher.model, cfg.teacher.kwargs], sort_keys=True, default=repr)
    if key not in _FULL_MACS:
        # lazy: `mkd-pipeline --help` imports this module; torch + timm would add 4 s
        import torch

        from maskedkd import teacher_macs
        from pipeline.models import create_model

        with torch.device("cpu"):
            model = create_model(cfg.teacher.model, cfg.teacher.kwargs, seed=0).eval()
        _FULL_MACS[key] = teacher_macs(model, None)
    return _FULL_MACS[key]


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
    n_val = cfg.data.val_subset or manifest.num_samples(cfg.data.val)
    segs = cfg.schedule.segments()
    row = _row_comment(path)
    r = RunResult(
        config=path, name=cfg.name, row=row or re.sub(r"-s\d+$", "", path.stem), seed=int(cfg.train.seed), online=bool(cfg.online),
        kd=cfg.train.kd, policy=cfg.masking.policy, keep=cfg.keep_for_segment(0),
        every=list(cfg.schedule.milestones or [0]), tolerance=cfg.masking.tolerance, pool=str(cfg.views.pool),
        lr=float(cfg.train.lr or 0), epochs=cfg.schedule.epochs, train_samples=int(n_train),
        keeps=[cfg.keep_for_segment(i) for i in range(len(segs))],
    )
    def _desc(m) -> str:
        k = m.kwargs
        return (f"`{m.model}` dim {k.get('embed_dim', '?')} / depth {k.get('depth', '?')} / {k.get('num_heads', '?')} heads, "
                f"patch {k.get('patch_size', '?')} ({m.info().num_patches} patches)")

    r.sizes = (f"student {_desc(cfg.student)}; teacher {_desc(cfg.teacher)}; {cfg.schedule.epochs} student epochs on "
               f"{n_train} training images, batch {cfg.train.batch_size}; test top-1 on "
               + (f"the first {n_val}" if cfg.data.val_subset else f"all {n_val}") + " test images")
    r.load = _loads((logs or Path("runs/logs")) / f"{path.stem}.log")
    lock_path = Path(cfg.run_dir) / "run.lock.json"
    if not lock_path.is_file():
        return r
    stages = json.loads(lock_path.read_text()).get("stages", {})
    teacher = stages.get("teacher", {}).get("info", {})
    r.teacher_top1 = teacher.get("top1")
    if cfg.teacher.train is not None and row is None:  # the shared teacher's own config (no `# Row:`)
        r.teacher_train = teacher or None
        r.finished = bool(teacher)
        return r
    last = stages.get(f"train-{len(segs) - 1}", {}).get("info", {})
    epochs = last.get("epochs") or []
    if not epochs or epochs[-1].get("epoch") != cfg.schedule.epochs - 1 or "val_top1" not in epochs[-1]:
        return r
    r.finished = True
    r.top1 = float(epochs[-1]["val_top1"])
    per_image = _full_macs_per_image(cfg)
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
        parts = stages.get(f"precompute-{i}", {}).get("partitions") or []
        if parts and Path(parts[0]["path"]).is_file():
            r.content.append(kept_content(cfg, parts[0]["path"]))
    return r


def kept_content(cfg, partition: str, rows: int = 400) -> dict[str, float]:
    """What the kept patches of the first ``rows`` rows of a label partition hold, against all patches.

    The views are re-derived (they are a pure function of seed, key and view epoch) and rendered
    in raw pixel units (0..1) at the teacher's size; per patch: mean intensity, whether it is
    empty (mean < 0.02), and the pixel std inside it (edges / texture).
    """
    # lazy: `mkd-pipeline --help` imports this module; torch + timm would add 4 s
    import torch
    import torch.nn.functional as F

    from maskedkd.views import render, shard_views
    from pipeline.labels.reader import open_partition

    with open_partition(partition) as part:
        b = part.read_all(columns=["keys", "label", "keep", "view", "target"])
        shard = part.metadata["shard"]
    keys = list(b.keys)
    views = shard_views(cfg.views.view_spec(), cfg.views.seed, int(b.view["view_epoch"][0]), keys)[:rows]
    want, images = set(keys[:rows]), {}
    for s in read_shard(Path(cfg.data.root) / f"{shard}.tar"):
        if s.key in want:
            images[s.key] = s.image
            if len(images) == len(want):
                break
    info = cfg.teacher.info()
    ps = info.img_size[0] // info.grid_size[0]
    x = torch.stack([render(images[k], v, tuple(info.img_size), mean=[0.0] * len(cfg.data.mean),
                            std=[1.0] * len(cfg.data.mean), interpolation=cfg.data.interpolation)
                     for k, v in zip(keys[:rows], views)]).mean(1, keepdim=True)
    mean = F.avg_pool2d(x, ps).flatten(1)
    std = (F.avg_pool2d(x * x, ps).flatten(1) - mean * mean).clamp_min(0).sqrt()
    keep = b.keep[:rows].bool()
    empty = mean < 0.02
    k = int(keep[0].sum())
    freq = keep.float().mean(0)  # how often each patch position is kept
    share = float(keep[:, freq.topk(k).indices].float().sum() / keep.float().sum())
    g = keep.view(-1, 1, *info.grid_size).float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    kept_nb = F.conv2d(g, kernel, padding=1)  # kept 4-neighbours of each patch
    all_nb = F.conv2d(torch.ones_like(g[:1]), kernel, padding=1)  # 4-neighbours inside the grid
    clump = float((kept_nb * g).sum() / (all_nb * g).sum())
    t = b.target
    top_p = t.log_probs(t.tau)[0].max(-1).values
    wrong = t.top_class() != b.label
    conf_wrong = float(top_p.exp()[wrong].mean()) if bool(wrong.any()) else float("nan")
    return {"fixed_share": share, "clump": clump, "teacher_conf": float(top_p.exp().mean()), "teacher_conf_wrong": conf_wrong, "freq": [float(v) for v in freq], "grid": list(info.grid_size),
            "kept_empty": float(empty[keep].float().mean()), "all_empty": float(empty.float().mean()),
            "kept_mean": float(mean[keep].mean()), "all_mean": float(mean.mean()),
            "kept_std": float(std[keep].mean()), "all_std": float(std.mean())}


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
    ra = [r.top1 for r in rows.get(a, []) if r.finished]
    rb = [r.top1 for r in rows.get(b, []) if r.finished]
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


def _keepmap(path: Path, runs: list[RunResult]) -> None:
    # lazy: `mkd-pipeline --help` imports this module; matplotlib.pyplot would add 0.4 s
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r.content) for r in runs)
    fig, axes = plt.subplots(len(runs), cols, figsize=(2.0 * cols + 1.8, 2.0 * len(runs) + 0.3), dpi=100, squeeze=False)
    for i, r in enumerate(runs):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r.content):
                ax.axis("off")
                continue
            c = r.content[j]
            im = ax.imshow(np.array(c["freq"]).reshape(c["grid"]), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{r.policy} k{r.keep_of(j)} s{r.seed} @{r.masked_top1[j][0]}", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="fraction of rows keeping the patch")
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def _series_cells(points: list[tuple[int, float]], columns: list[int]) -> str:
    """Table cells of ``(x, value)`` points under ``columns`` (percent; ``-`` where a run has no such x)."""
    got = dict(points)
    return " | ".join(_pct(got[x]) if x in got else "-" for x in columns)


def render_results(runs: list[RunResult], out: Path, notes: str | None = None, notes_path: str | None = None) -> str:
    """The markdown of RESULTS.md (and the curriculum PNG beside ``out``)."""
    teachers = [r for r in runs if r.teacher_train is not None or (r.row == r.config.stem == "teacher")]
    students = [r for r in runs if r not in teachers]
    rows: dict[str, list[RunResult]] = {}
    for r in students:
        rows.setdefault(r.row, []).append(r)
    order = sorted(rows, key=_row_key)
    finished = [r for r in students if r.finished]
    lines = ["# Results: offline MaskedKD on Fashion-MNIST (issue 7)", "",
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
    for t in teachers:
        info = t.teacher_train or {}
        ep = info.get("epochs") or []
        accs = ", ".join(_pct(e.get("val_top1")) for e in ep)
        lines += ["## The shared teacher", "",
                  f"`{t.command} --until teacher`: " + (
                      f"test top-1 {_pct(info.get('top1'))} after {len(ep)} epochs (per epoch: {accs}), "
                      f"trained in {info.get('seconds', 0) / 60:.1f} min. Every row loads this file."
                      if t.finished else "not run yet."), ""]
    t1 = next((r.teacher_top1 for r in finished if r.teacher_top1 is not None), None)
    if t1 is not None:
        lines += [f"Teacher test top-1 as evaluated by the rows (same test subset): {_pct(t1)}.", ""]
    if finished:
        sizes = sorted({r.sizes for r in finished})
        lines += ([f"Sizes (every row): {sizes[0]}. Every other setting is in the configs.", ""] if len(sizes) == 1 else
                  ["Sizes differ between rows:"] + [f"- {x}" for x in sizes] + [""])
    lines += ["## Main table", "",
              "Student top-1 (%) on the test subset after the last epoch: mean ± sample std over seeds, with each "
              "seed's value. Teacher GMACs: teacher compute the run spent (precompute + teacher in the loop). "
              "Full-KD GMACs: what full-teacher KD costs on the same training samples. Avoided: teacher "
              "forwards the store reused (rows not recomputed). Wall: sum of the stages' seconds (precompute + "
              "train; teacher training excluded), per seed.", "",
              "| row | top-1 % | teacher GMACs, per seed | of full-KD, per seed | forwards avoided | wall min / run | commands |",
              "|---|---|---:|---:|---:|---:|---|"]
    for row in order:
        rs = sorted(rows[row], key=lambda r: r.seed)
        done = [r for r in rs if r.finished]
        if done:
            macs = " / ".join(f"{r.teacher_macs / 1e9:.1f}" for r in done)
            frac = " / ".join(f"{r.teacher_macs / r.full_macs:.0%}" if r.full_macs else "-" for r in done)
            avoided = " / ".join(str(r.avoided) for r in done)
            wall = " / ".join(f"{r.seconds / 60:.1f}" for r in done)
            cells = [macs, frac, avoided, wall]
        else:
            cells = ["-", "-", "-", "-"]
        cmds = "<br>".join(f"`{r.command}`" + ("" if r.finished else " (not run)") for r in rs)
        lines.append(f"| {row} | {_acc_cell(rs)} | " + " | ".join(cells) + f" | {cmds} |")
    lines += ["", "## Comparisons (computed)", ""]
    pairs = [("online full-teacher KD", "CE only"), ("offline full teacher", "CE only"),
             ("offline full teacher", "online full-teacher KD"), ("offline MaskedKD 50%", "offline full teacher"),
             ("offline MaskedKD 50%", "online MaskedKD 50%"), ("online MaskedKD 50%", "online full-teacher KD"),
             ("offline MaskedKD 50%", "CE only"), ("offline MaskedKD 50%", "offline random 50%"),
             ("offline MaskedKD 50%", "offline inverse 50%"), ("offline random 50%", "offline full teacher")]
    got = [c for c in (_compare(rows, a, b) for a, b in pairs) if c]
    lines += got or ["- nothing to compare yet."]
    if finished:
        ep = sorted({e for r in finished for e, _ in r.epoch_top1})
        lines += ["", "## Student test top-1 per epoch", "",
                  "Where a row loses its accuracy: the student's test top-1 (%) after each epoch, every finished run.", "",
                  "| run | " + " | ".join(f"epoch {e}" for e in ep) + " |", "|---|" + "---:|" * len(ep)]
        for r in sorted(finished, key=lambda r: (_row_key(r.row), r.seed)):
            lines.append(f"| {r.row}, seed {r.seed} | {_series_cells(r.epoch_top1, ep)} |")
    # curriculum figure: one curve per offline policy/keeps/seed with two milestones or more
    fig_runs, seen = [], set()
    for r in sorted(finished, key=lambda r: (r.seed, _row_key(r.row))):
        k = (r.policy, tuple(r.keeps), r.seed)
        if r.online or r.kd == "off" or not r.masked_top1 or k in seen:
            continue
        if r.row.startswith(("reuse", "sweep")) or len(r.masked_top1) < 2:  # no curve from one point
            continue
        seen.add(k)
        fig_runs.append(r)
    png = out.with_name("results_curriculum.png")
    lines += ["", "## Curriculum: the teacher's accuracy on its masked views", ""]
    milestones = sorted({x for r in fig_runs for x, _ in r.masked_top1})
    if _figure(png, fig_runs, t1):
        lines += [f"![curriculum]({png.name})", "",
                  "| run | " + " | ".join(f"milestone {x}" for x in milestones) + " |",
                  "|---|" + "---:|" * len(milestones)]
        for r in fig_runs:
            lines.append(f"| {r.row} (`{r.policy}`, keep {r.keep_label}, seed {r.seed}) | {_series_cells(r.masked_top1, milestones)} |")
        lines += ["", "Teacher top-1 (%) on the training views it labelled, with the keep set of each policy, "
                  "per milestone (masks from the student checkpoint at that epoch)."]
        content = [r for r in fig_runs if r.content]
        if content:
            lines += ["", "What the kept patches hold (first 400 rows of the first shard per milestone, views re-rendered "
                      "in pixel units 0..1; a patch is *empty* when its mean is below 0.02; *std* is the pixel std "
                      "inside a patch, high on edges). All patches, for reference: "
                      + ", ".join(f"empty {100 * c['all_empty']:.1f}%, mean {c['all_mean']:.3f}, std {c['all_std']:.3f}"
                                  for c in content[0].content[:1]) + ".", "",
                      "*Same positions*: the share of kept patches that lie in the `keep` positions kept most often "
                      "(100% = every image gets the same mask whatever it shows; keep/49 for masks independent of "
                      "position). *Kept neighbours*: the share of a kept patch's 4-neighbours that are kept too "
                      "(about (keep-1)/48 for scattered random masks; higher = the kept patches form blobs). *Teacher "
                      "max-prob*: the mean probability of the teacher's top class in the stored labels (all rows of "
                      "the partition), overall and on the rows where that class is wrong.", "",
                      "| run | milestone | same positions % | kept neighbours % | kept patches empty % | kept mean intensity "
                      "| kept within-patch std | teacher max-prob (all rows) | teacher max-prob when wrong |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in content:
                for (m, _), c in zip(r.masked_top1, r.content):
                    lines.append(f"| {r.row}, seed {r.seed} | {m} | {100 * c['fixed_share']:.1f} | {100 * c['clump']:.1f} | "
                                 f"{100 * c['kept_empty']:.1f} | "
                                 f"{c['kept_mean']:.3f} | {c['kept_std']:.3f} | {c['teacher_conf']:.3f} | "
                                 f"{c['teacher_conf_wrong']:.3f} |")
            keepmap = out.with_name("results_keepmap.png")
            _keepmap(keepmap, content)
            lines += ["", f"![how often each patch position is kept]({keepmap.name})", "",
                      "How often each of the 7x7 patch positions is kept, per policy and milestone (same rows)."]
    else:
        lines += ["not run (time): needs the offline rows."]
    # milestone spacing / tolerance
    lines += ["", "## Milestone spacing and reuse tolerance (offline MaskedKD 50%)", "",
              "| run | milestones | view pool | tolerance | top-1 % | teacher forwards | avoided by reuse | of which under tolerance | "
              "spot-check KL (mean over milestones) | teacher GMACs | wall min |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(students, key=lambda r: (_row_key(r.row), r.seed)):
        if r.online or r.kd == "off" or r.policy != "student" or r.keep != 25 or r.seed != 0 or r.row.startswith("sweep"):
            continue
        if r.finished:
            kl = f"{statistics.fmean(r.spot_kl):.2e}" if r.spot_kl else "-"
            lines.append(f"| {r.name} | {r.every} | {r.pool} | {r.tolerance} | {_pct(r.top1)} | {r.teacher_forwards} | {r.avoided} | "
                         f"{r.reused_tolerance} | {kl} | {r.teacher_macs / 1e9:.1f} | {r.seconds / 60:.1f} |")
        else:
            lines.append(f"| {r.name} | {r.every} | {r.pool} | {r.tolerance} | not run (time): `{r.command}` | | | | | | |")
    # sweep
    sweep = [r for r in students if r.row.startswith("sweep")]
    base = [r for r in rows.get("offline MaskedKD 50%", []) if r.seed == 0]
    lines += ["", "## A 4-run learning-rate sweep sharing one label store", ""]
    members = sorted(base + sweep, key=lambda r: r.lr)
    if members:
        lines += ["| run | lr | top-1 % | teacher forwards | avoided by reuse | teacher GMACs |", "|---|---:|---:|---:|---:|---:|"]
        for r in members:
            lines.append(f"| {r.name} | {r.lr:g} | " + (
                f"{_pct(r.top1)} | {r.teacher_forwards} | {r.avoided} | {r.teacher_macs / 1e9:.1f} |" if r.finished
                else f"not run (time): `{r.command}` | | | |"))
        done = [r for r in members if r.finished]
        if len(done) == len(members):
            spent = sum(r.teacher_macs for r in done)
            online = sum(r.full_macs for r in done)
            lines += ["", f"The sweep spent {spent / 1e9:.1f} teacher GMACs; 4 independent online full-teacher runs spend "
                          f"{online / 1e9:.1f} ({spent / online:.0%}), 4 online MaskedKD 50% runs about half of that."]
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
def report_cmd(configs: tuple[str, ...], more: tuple[str, ...], out: str, notes: str | None, logs: str) -> None:
    """Build RESULTS.md from finished runs: one row per `# Row:` label, seeds averaged."""
    paths = list(dict.fromkeys([*configs, *more]))
    runs = [collect_run(p, Path(logs)) for p in paths if Path(p).suffix in (".yaml", ".yml")]
    outp = Path(out)
    text = render_results(runs, outp, Path(notes).read_text() if notes else None, notes)
    write_atomic(outp, text.encode())
    done = sum(r.finished for r in runs)
    click.echo(f"{outp}: {done} of {len(runs)} configs finished")
