"""A comparison run for a run's report (``run --baseline``): its student's val top-1 per epoch,
read from its run lock, and a legend label naming its row (teacher and how it learned)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A finished comparison run: ``label`` names its row, ``epochs`` its (epoch, val top-1),
    ``folder`` its run folder (None: not read from one)."""

    label: str
    epochs: list[tuple[int, float]]
    folder: Path | None = None

    @property
    def top1(self) -> float | None:
        """The last epoch's val top-1, None when it has none."""
        return self.epochs[-1][1] if self.epochs else None


def row_label(name: str, teacher: str, kd: str, online: bool, policy: str) -> str:
    """``NAME (teacher T, HOW)``: how the student learned from the teacher, for legends."""
    how = "cross-entropy only" if kd == "off" else f"{'online' if online else 'offline'} KD, {policy} masks"
    return f"{name} (teacher {teacher}, {how})" if kd != "off" else f"{name} ({how})"


def _label(config: Mapping[str, Any], fallback: str) -> str:
    m, t = config.get("masking") or {}, config.get("teacher") or {}
    return row_label(str(config.get("name") or fallback), str(t.get("model", "?")), str((config.get("train") or {}).get("kd", "?")),
                     bool(config.get("online")), str(m.get("policy", "?")))


def read_baseline(path: str | Path) -> Baseline:
    """The comparison run at ``path``: its run folder (``run.lock.json`` and ``config.yaml`` in it)
    or its stage file (the run folder its ``run_dir`` names).

    Raises:
        ConfigError: no run lock there, or no finished epoch in it.
    """
    p = Path(path)
    if p.is_file():
        p = Path(load_config(p, check_files=False).run_dir or "")
    lock = p / "run.lock.json"
    if not lock.is_file():
        raise ConfigError(f"--baseline {path}: no run lock at {lock}; run that stage file first")
    stages = json.loads(lock.read_text()).get("stages", {})
    epochs = [(int(e["epoch"]), float(e["val_top1"])) for name in sorted(
        (n for n in stages if n.startswith("train-")), key=lambda n: int(n.split("-")[1]))
        for e in stages[name].get("info", {}).get("epochs") or [] if "val_top1" in e]
    if not epochs:
        raise ConfigError(f"--baseline {path}: its run lock records no evaluated epoch")
    config = p / "config.yaml"
    raw = yaml.safe_load(config.read_text()) if config.is_file() else {}
    return Baseline(_label(raw if isinstance(raw, dict) else {}, p.name), epochs, p.resolve())


def refuse_own_folder(baseline: Baseline, run_dir: Path) -> None:
    """Refuse a baseline that is the run itself: a stage file names the run folder of its own
    ``name``, so the comparison run made from it with ``--set name=...`` is named by its folder.

    Raises:
        ConfigError: ``baseline`` was read from ``run_dir``.
    """
    if baseline.folder is not None and baseline.folder == Path(run_dir).resolve():
        raise ConfigError(f"--baseline names this run's own folder {run_dir}; give the comparison run's folder "
                          "(a run of this stage file with --set name=NAME is in runs/NAME)")
