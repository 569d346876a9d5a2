"""Per-epoch metrics of a run as CSV files in its run folder (like timm's ``summary.csv``), built
from the run lock: ``metrics.csv`` for the student, ``teacher_metrics.csv`` when the run trained
its teacher."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline._atomic import write_atomic
from pipeline._lock import stage_name

# CSV column -> key of an epoch record of train_segment (pipeline/train/loop.py)
_COLUMNS = {"epoch": "epoch", "train_loss": "loss", "train_top1": "top1", "val_top1": "val_top1",
            "val_loss": "val_loss", "lr": "lr", "samples_per_s": "samples_per_s"}


def _student_rows(lock, num_segments: int) -> list[dict[str, Any]]:
    """One row per student epoch recorded by the stages ``train-0`` .. ``train-{num_segments - 1}``."""
    rows = []
    for i in range(num_segments):
        for e in lock.info(stage_name("train", i)).get("epochs") or []:
            rows.append({"segment": i, **_row(e)})
    return rows


# with train.model_ema only (a run without one keeps its bytes): the EMA's val top-1, beside the model's
_EMA_COLUMN = "ema_val_top1"


def _row(epoch: Mapping[str, Any]) -> dict[str, Any]:
    return {**{col: epoch.get(key) for col, key in _COLUMNS.items()}, _EMA_COLUMN: epoch.get(_EMA_COLUMN)}


def _columns(first: list[str], rows: list[dict[str, Any]]) -> list[str]:
    return first + [_EMA_COLUMN] if any(r.get(_EMA_COLUMN) is not None for r in rows) else first


def _csv(columns: list[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    out.writeheader()
    for row in rows:
        out.writerow({k: "" if row.get(k) is None else row[k] for k in columns})  # blank: not evaluated
    return buf.getvalue().encode()


def write_metrics(lock, num_segments: int, run_dir: Path) -> list[Path]:
    """Write ``metrics.csv`` (and ``teacher_metrics.csv``, removed when the teacher was not trained)
    into ``run_dir`` atomically; returns the files written. Same lock, same bytes."""
    student = run_dir / "metrics.csv"
    rows = _student_rows(lock, num_segments)
    write_atomic(student, _csv(_columns(["epoch", "segment", *list(_COLUMNS)[1:]], rows), rows))
    teacher = run_dir / "teacher_metrics.csv"
    # trained from scratch (`teacher`) or fine-tuned (`teacher-finetune`)
    epochs = lock.info("teacher").get("epochs") or lock.info("teacher-finetune").get("epochs")
    if not epochs:  # weights from a file: nothing trained, nothing left from an earlier config
        teacher.unlink(missing_ok=True)
        return [student]
    rows = [_row(e) for e in epochs]
    write_atomic(teacher, _csv(_columns(list(_COLUMNS), rows), rows))
    return [student, teacher]
