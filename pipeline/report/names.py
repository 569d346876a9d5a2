"""How the results page names what it shows: a run by its row (teacher and policy, as the tables
name it) and seed, a teacher by its weights file. Every table and figure legend uses these, so two
rows of one policy, keep and seed still read apart."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.collect import RunOutcome

__all__ = ["run_name", "teacher_name"]


def run_name(r: RunOutcome) -> str:
    """How the page names one run: its row (teacher and policy, as the tables name it) and seed."""
    return f"{r.row}, seed {r.seed}"


def teacher_name(r: RunOutcome) -> str:
    """The teacher a run loaded as the Teachers table names it (its weights file), or ``teacher``."""
    return f"teacher {Path(r.teacher_file['weights']).name}" if r.teacher_file else "teacher"
