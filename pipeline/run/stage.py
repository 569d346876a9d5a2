"""The types of the run's graph: a stage kind's declaration, a concrete stage, a planned stage.

The declarations themselves are in :mod:`pipeline.run.graph`, the kinds' functions in
:mod:`pipeline.run.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pipeline._lock import stage_name

Outputs = Mapping[str, Any]  # stage name -> its output, for the stages done so far


@dataclass
class Planned:
    """A stage's current inputs (compared with the lock) and what running it needs beyond them."""

    inputs: dict[str, Any]
    work: Any = None


@dataclass(frozen=True)
class StageKind:
    """One kind of stage, declared once (in :data:`pipeline.run.graph.KINDS`).

    Attributes:
        kind: its name (a per-segment kind's stages are ``<kind>-<i>``).
        per_segment: one stage per segment, or one per run.
        present: whether a config has this kind's stages.
        deps: ``(cfg, segment) -> {role: stage name}``: the stages whose outputs it reads, in the
            order ``status`` names a stale one (``segment`` is None for a per-run kind).
        plan: ``(ctx, stage, outs) -> Planned``: its current inputs (``status`` and ``run``).
        cached: ``(ctx, stage, planned) -> output``: its output read back from the run lock.
        run: ``(ctx, stage, planned, outs) -> output``: do it, record it in the run lock.
        cached_note: what ``run`` prints for it when cached (None: nothing).
        overlaps: the kind it may run beside, in the background, once its deps are done.
        report: ``lock info -> fields`` of the run report (per segment for a per-segment kind).
        heal: ``(ctx, stage) -> [moved]``: before a fresh stage is reused, its recorded outputs are
            checked; what is damaged is moved aside (and named), and the stage runs again.
    """

    kind: str
    per_segment: bool
    present: Callable[[Any], bool]
    deps: Callable[[Any, Any], dict[str, str]]
    plan: Callable[..., Planned]
    cached: Callable[..., Any]
    run: Callable[..., Any]
    cached_note: Callable[[Any], str] | None = None
    overlaps: str | None = None
    report: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    heal: Callable[..., list[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class Stage:
    """A concrete stage of a config's run: its kind, segment (None for per-run kinds) and dependencies."""

    kind: StageKind
    segment: int | None
    deps: dict[str, str] = field(default_factory=dict)  # role -> stage name

    @property
    def name(self) -> str:
        return stage_name(self.kind.kind, self.segment)

    @property
    def index(self) -> int:
        """The segment of a per-segment stage."""
        if self.segment is None:
            raise TypeError(f"stage {self.name} is not per segment")
        return self.segment

    def dep(self, outs: Outputs, role: str) -> Any:
        """The output of the stage this one reads as ``role`` (None when it has no such dependency)."""
        return outs.get(self.deps[role]) if role in self.deps else None
