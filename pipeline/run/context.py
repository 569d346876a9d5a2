"""What every stage of a run shares: the config, the run lock, the dataset, the cluster, what to print."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pipeline._lock import LOCK_NAME, RunLock
from pipeline.data.manifest import DatasetManifest, load_manifest
from pipeline.labels.contract import ShardRef, shard_refs
from pipeline.precompute.run import cluster_for

Echo = Callable[[str], None]


@dataclass
class RunOutcome:
    """What a run did: per stage 'cached' or 'ran', totals, and where the report is."""

    stages: dict[str, str] = field(default_factory=dict)
    teacher_forwards: int = 0
    student_forwards: int = 0
    report: Path | None = None
    final_accuracy: float | None = None


class RunContext:
    """One run's shared state: config, lock, manifest, folders, device, output and the Dask cluster.

    ``overrides``: the ``--set`` strings ``cfg`` was loaded with (recorded in the run lock).
    ``progress``: whether progress bars may show (precompute tasks, training steps).
    """

    def __init__(self, cfg, *, device: str, echo: Echo, progress: bool, nproc: int, overrides: list[str],
                 scheduler: str | None = None, workers: int | Literal["auto"] | None = None) -> None:
        self.cfg = cfg
        self.device, self.echo, self.progress, self.nproc = device, echo, progress, nproc
        self.overrides = overrides
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.lock = RunLock(self.run_dir / LOCK_NAME, store=cfg.labels.store)
        self.lock.overrides = overrides  # written with whatever this command records
        self.manifest: DatasetManifest = load_manifest(cfg.data.root)
        self.result = RunOutcome()  # what this command did so far
        self._scheduler, self._workers = scheduler, workers
        self._cluster_cm: Any = None
        self._cluster: Any = None

    def say(self, stage: str, what: str) -> None:
        """Print ``[stage] what``."""
        self.echo(f"[{stage}] {what}")

    def train_shards(self) -> list[ShardRef]:
        """The training shards and the rows used of each."""
        return shard_refs(self.manifest, self.cfg.data.train, self.cfg.data.subset)

    def checkpoint(self, i: int) -> Path:
        """Where checkpoint c_i lives (c_0: the student at initialisation)."""
        return self.ckpt_dir / f"c{i}.pth"

    def cluster(self):
        """The Dask cluster, opened on first use and kept for the whole run."""
        if self._cluster is None:
            self._cluster_cm = cluster_for(self.cfg, scheduler=self._scheduler, workers=self._workers)
            self._cluster = self._cluster_cm.__enter__()
        return self._cluster

    def close(self) -> None:
        """Close the cluster if one was opened."""
        if self._cluster_cm is not None:
            cm, self._cluster_cm, self._cluster = self._cluster_cm, None, None
            cm.__exit__(None, None, None)
