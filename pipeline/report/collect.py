"""Read back what one stage config's run produced, for the results report (:mod:`pipeline.report.results`).

Every number comes from the run's lock file (``runs/<name>/run.lock.json``), its log, and the
committed teacher's metadata (the ``.json`` beside its ``teacher.weights`` file); nothing is typed
in by hand. A config's *row* is the text after ``# Row:`` in its opening comment (default: the
file name without a trailing ``-s<seed>``); configs of the same row are its seeds. A config with
a ``teacher.train`` block and no ``# Row:`` line trained a teacher; it is not a row.

Per run it reads: the final student test top-1 (``val_top1`` of the last epoch of the last
``train-i`` stage), teacher MACs spent (precompute ``teacher_macs``, which includes the auto-keep
spot-checks, plus online ``teacher_macs``), the keep used per milestone and, with ``keep: auto``,
the spot-check curve it was chosen from, teacher forwards avoided by reuse, wall time (the sum of
the stages' seconds), the student's saliency forwards' MACs, the teacher's reuse-check MACs (rows
reused under tolerance re-run) and the net MACs (teacher + saliency + reuse checks) the
precompute stages recorded (``None`` for a lock written before they were), the teacher's top-1 on
its masked views per milestone, and, from
``<logs>/<config stem>.log`` when present, the load averages written there (``# uptime before:``
/ ``# uptime after:`` lines).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskedkd import teacher_macs
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.models import create_model
from pipeline.precompute.costs import recorded_reuse_check_macs

__all__ = ["RunOutcome", "collect_run", "run_lock_path"]


@dataclass
class RunOutcome:
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
    saliency_macs: int | None = 0  #: the labels' saliency forwards (None: a labelled segment's lock predates the count)
    net_macs: int | None = 0  #: spent net: teacher (spot-checks included) + saliency + reuse checks (None: not recorded)
    reuse_check_macs: int | None = 0  #: the teacher re-run on rows reused under tolerance (None: not recorded)
    record: Path | None = None  #: the committed record this outcome was read from (None: from the run folder)

    @property
    def net_label_macs(self) -> int | None:
        """What the labels cost net, reused or not: ``label_macs`` + the saliency forwards + the reuse
        checks (None: not recorded)."""
        if self.saliency_macs is None or self.reuse_check_macs is None:
            return None
        return self.label_macs + self.saliency_macs + self.reuse_check_macs

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
_MACS: dict[tuple[str, int | None, str], int] = {}


def _macs_per_view(cfg, keep: int | None = None, policy: str = "student") -> int:
    """MACs of one teacher forward keeping ``keep`` patches under ``policy`` (None or all: the full
    teacher), by maskedkd.teacher_macs; one model per teacher config, one count per keep and policy."""
    key = json.dumps([cfg.teacher.model, cfg.teacher.kwargs], sort_keys=True, default=repr)
    if (key, keep, policy) not in _MACS:
        if key not in _TEACHERS:
            with torch.device("cpu"):
                _TEACHERS[key] = create_model(cfg.teacher.model, cfg.teacher.kwargs, seed=0).eval()
        _MACS[key, keep, policy] = teacher_macs(_TEACHERS[key], keep, policy)
    return _MACS[key, keep, policy]


def _loads(log: Path) -> list[float]:
    if not log.is_file():
        return []
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"# uptime (?:before|after):.*load average:\s*([\d.]+)", line)
        if m:
            out.append(float(m.group(1)))
    return out


def _model_line(m) -> str:
    k = m.kwargs
    return (f"`{m.model}` dim {k.get('embed_dim', '?')} / depth {k.get('depth', '?')} / {k.get('num_heads', '?')} heads, "
            f"patch {k.get('patch_size', '?')} ({m.info().num_patches} patches)")


def run_lock_path(path: str | Path) -> Path:
    """The run lock file the run of the config at ``path`` writes."""
    cfg = load_config(path, check_files=False)
    assert cfg.run_dir is not None  # the loader fills it
    return Path(cfg.run_dir) / "run.lock.json"


def collect_run(path: str | Path, logs: Path | None = None) -> RunOutcome:
    """Load one config and read what its run wrote (lock file, run log)."""
    path = Path(path)
    cfg = load_config(path, check_files=False)
    manifest = load_manifest(cfg.data.root)
    n_train = cfg.data.subset or manifest.num_samples(cfg.data.train)
    n_val = cfg.data.val_subset or (manifest.num_samples(cfg.data.val) if cfg.data.val else 0)
    segs = cfg.schedule.segments()
    row = _row_comment(path)
    r = RunOutcome(
        config=path, name=cfg.name, row=row or re.sub(r"-s\d+$", "", path.stem), seed=int(cfg.train.seed), online=bool(cfg.online),
        kd=cfg.train.kd, policy=cfg.masking.policy, keep=cfg.keep_for_segment(0),
        every=list(cfg.schedule.milestones or [0]), tolerance=cfg.masking.tolerance, pool=str(cfg.views.pool),
        lr=float(cfg.train.lr or 0), epochs=cfg.schedule.epochs, train_samples=int(n_train),
        keeps=[] if cfg.masking.auto else [cfg.keep_for_segment(i) for i in range(len(segs))],
        num_patches=cfg.num_patches or 0,
    )
    r.sizes = (f"student {_model_line(cfg.student)}; teacher {_model_line(cfg.teacher)}; {cfg.schedule.epochs} student epochs on "
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
    # a fine-tune's teacher is the one its own stage wrote
    teacher = stages.get("teacher-finetune" if cfg.teacher.fine_tuned else "teacher", {}).get("info", {})
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
    _read_segments(r, cfg, stages, segs)
    return r


def _read_segments(r: RunOutcome, cfg, stages: dict[str, Any], segs: list[tuple[int, int]]) -> None:
    """Add each segment's precompute and train records of a finished run to ``r``."""
    for i, (start, _end) in enumerate(segs):
        pre = stages.get(f"precompute-{i}", {}).get("info", {})
        tr = stages.get(f"train-{i}", {}).get("info", {})
        r.epoch_top1 += [(int(e["epoch"]), float(e["val_top1"])) for e in tr.get("epochs") or [] if "val_top1" in e]
        r.teacher_macs += int(pre.get("teacher_macs") or 0) + int(tr.get("teacher_macs") or 0)
        r.saliency_macs, r.net_macs = _add(r.saliency_macs, pre, "saliency_macs"), _add(r.net_macs, pre, "net_macs")
        reuse = recorded_reuse_check_macs(pre)
        r.reuse_check_macs = None if r.reuse_check_macs is None or reuse is None else r.reuse_check_macs + reuse
        r.net_macs = None if reuse is None else r.net_macs  # a lock's net_macs without its reuse checks is not net
        r.net_macs = None if r.net_macs is None else r.net_macs + int(tr.get("teacher_macs") or 0)  # online: no saliency pass
        # online the teacher's forwards in the loop are the labels (none stored, none reused), and the
        # student's saliency comes with its training forward
        r.label_macs += int(tr.get("teacher_macs") or 0)
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
            policy = (pre.get("auto") or {}).get("policy") or cfg.masking.policy  # policy: auto records its choice
            r.label_macs += rows * _macs_per_view(cfg, r.used_keeps[-1], policy)
        if pre.get("auto"):
            r.auto.append(dict(pre["auto"], milestone=start, keep=pre.get("keep")))
            r.label_macs += int(pre["auto"].get("teacher_macs") or 0)


def _add(total: int | None, pre: dict[str, Any], key: str) -> int | None:
    """``total`` plus a precompute stage's ``key``; None once a stage that labelled rows lacks it."""
    if total is None or not int(pre.get("rows") or 0):
        return total
    return None if pre.get(key) is None else total + int(pre[key])
