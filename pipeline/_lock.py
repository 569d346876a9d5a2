"""The run lock (like ``dvc.lock``): per stage, its input fingerprints and what it wrote.

Format: ``pipeline/schemas/run-lock.schema.json``. Only the client (the runner) writes it, atomically,
after each stage finishes, so a killed run loses at most the stage in flight. ``status`` and
``run`` compare it with the current inputs and say *why* each stage is stale.

The lock file stays small: a stage's partition records live in their own records file, written
once when the stage is recorded (:mod:`pipeline._lock_parts`) and read only when asked for. A lock
written before (``lock_version`` 1, records inline) is read as it is and moved to records files
at its next write (the records files first, then the lock file replaced atomically).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_file
from pipeline._lock_parts import prune_parts, read_parts, write_parts
from pipeline._schemas import json_problem
from pipeline.errors import StoreError

LOCK_NAME = "run.lock.json"
LOCK_VERSION = 2  # 1: partition records inline in the lock file
PARTS_REF = "partitions_file"


def stage_name(kind: str, segment: int | None = None) -> str:
    """A stage's name in the run lock: its kind, ``-i`` for a per-segment kind (``precompute-1``).

    The one place a name is formatted; the stages themselves are declared in ``pipeline/run/graph.py``.
    """
    return kind if segment is None else f"{kind}-{segment}"


@dataclass(frozen=True)
class Freshness:
    """Whether a stage can be skipped, and why not."""

    fresh: bool
    reason: str


class StageRecord(dict):
    """A stage's record; its ``partitions`` are read from their records file when first asked for."""

    def __init__(self, record: Mapping[str, Any], lock_path: Path) -> None:
        super().__init__(record)
        self._lock_path = lock_path

    def __missing__(self, key: str) -> Any:
        if key == "partitions" and PARTS_REF in self:
            self["partitions"] = read_parts(self._lock_path, self[PARTS_REF])
            return self["partitions"]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class RunLock:
    """A run's lock file, loaded into memory; :meth:`record` writes it back atomically."""

    def __init__(self, path: str | Path, store: str | None = None) -> None:
        self.path = Path(path)
        self._mutex = threading.RLock()  # `lag: 1` records a precompute stage from a second thread
        self.data: dict[str, Any] = {"lock_version": LOCK_VERSION, "overrides": [], "stages": {}}
        if store is not None:
            self.data["store"] = str(store)
        self._saved_overrides: list[str] | None = None  # as the file has them (None: no file yet)
        if self.path.exists():
            loaded = _read_head(self.path, hint="; move it away to start over")
            self.data["stages"] = {k: StageRecord(v, self.path) for k, v in loaded["stages"].items()}
            self._saved_overrides = list(loaded.get("overrides", []))
            self.data["overrides"] = list(self._saved_overrides)
            if store is None and "store" in loaded:
                self.data["store"] = loaded["store"]

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """stage name -> its record."""
        return self.data["stages"]

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` overrides of the command that writes the lock (saved with its next write)."""
        return self.data["overrides"]

    @overrides.setter
    def overrides(self, value: list[str]) -> None:
        with self._mutex:
            self.data["overrides"] = list(value)

    def check(self, stage: str, inputs: Mapping[str, Any], *, deep: bool = True) -> Freshness:
        """Fresh when the recorded inputs equal ``inputs`` and every recorded output is intact.

        ``deep``: also every recorded label partition must exist (one stat each: 384k at ImageNet
        scale); without it only the stage's partition records file is looked at (``status``).
        """
        rec = self.stages.get(stage)
        if rec is None:
            return Freshness(False, "never run")
        old = rec.get("inputs", {})
        for name in sorted(set(old) | set(inputs)):
            if old.get(name) != inputs.get(name):
                return Freshness(False, f"input {name!r} changed ({_short(old.get(name))} -> {_short(inputs.get(name))})")
        for out in rec.get("outputs", {}).values():
            problem = _file_problem(out["path"], out.get("sha256"))
            if problem:
                return Freshness(False, problem)
        if PARTS_REF in rec and not (self.path.parent / rec[PARTS_REF]["path"]).is_file():
            return Freshness(False, f"partition records {self.path.parent / rec[PARTS_REF]['path']} are missing")
        for part in rec.get("partitions", []) if deep else ():
            problem = _file_problem(self._resolve(part["path"]), None, must_exist=True)
            if problem:
                return Freshness(False, problem)
        return Freshness(True, "up to date")

    def record(self, stage: str, inputs: Mapping[str, Any], *, outputs: Mapping[str, Mapping[str, Any]] | None = None,
               partitions: Sequence[Mapping[str, Any]] | None = None, info: Mapping[str, Any] | None = None) -> None:
        """Store a finished stage's record and write the lock file atomically."""
        rec: dict[str, Any] = {"inputs": dict(inputs)}
        if outputs:
            rec["outputs"] = {k: dict(v) for k, v in outputs.items()}
        if partitions is not None:
            rec["partitions"] = [dict(p) for p in partitions]
        if info:
            rec["info"] = dict(info)
        with self._mutex:
            self.stages[stage] = StageRecord(rec, self.path)
            self.save()

    def save_overrides(self) -> None:
        """Write the lock if its file holds other overrides than :attr:`overrides` (a rerun that
        recorded no stage, with other ``--set`` overrides); no file yet: nothing to update."""
        with self._mutex:
            if self._saved_overrides is not None and self._saved_overrides != self.overrides:
                self.save()

    def forget(self, stage: str) -> None:
        """Drop a stage's record (it will run again)."""
        with self._mutex:
            if self.stages.pop(stage, None) is not None:
                self.save()

    def save(self) -> None:
        """Write the lock file atomically; partition records not in a records file yet go to one first."""
        with self._mutex:  # a snapshot written after an older one never loses to it
            stages = {}
            for name, rec in self.stages.items():
                if PARTS_REF not in rec and "partitions" in rec:
                    rec[PARTS_REF] = write_parts(self.path, name, rec["partitions"])
                stages[name] = {k: v for k, v in rec.items() if k != "partitions"}
            head = {**self.data, "lock_version": LOCK_VERSION, "stages": stages}
            write_atomic(self.path, (json.dumps(head, indent=1, sort_keys=True) + "\n").encode())
            self._saved_overrides = list(self.overrides)
            prune_parts(self.path, {r[PARTS_REF]["path"] for r in stages.values() if PARTS_REF in r})

    def output(self, stage: str, name: str) -> dict[str, Any] | None:
        """A recorded output of ``stage`` (path, sha256, ...)."""
        return self.stages.get(stage, {}).get("outputs", {}).get(name)

    def info(self, stage: str) -> dict[str, Any]:
        """Free-form results recorded with ``stage`` (metrics, counters, seconds)."""
        return self.stages.get(stage, {}).get("info", {})

    def _resolve(self, path: str) -> str:
        if "://" in path or os.path.isabs(path):
            return path
        return os.path.join(self.data.get("store", str(self.path.parent)), path)


def load_lock(path: str | Path, hint: str = "") -> dict[str, Any]:
    """A run lock, parsed and checked, with every stage's ``partitions`` inline (the one reader of
    lock files; any version). Written back with ``json.dumps`` it is a valid lock again.

    Raises:
        StoreError: the file or a partition records file is unreadable, changed, or does not fit
            the schema (naming the field).
    """
    loaded = _read_head(path, hint)
    for rec in loaded["stages"].values():
        ref = rec.pop(PARTS_REF, None)
        if ref is not None:
            rec["partitions"] = read_parts(path, ref).to_list()
    return loaded


def _read_head(path: str | Path, hint: str) -> dict[str, Any]:
    """The lock file alone (records files not read), parsed and checked against its schema."""
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: cannot read the run lock ({e}){hint}") from e
    problem = json_problem("run-lock", loaded)
    if problem:
        raise StoreError(f"{path}: run lock field {problem}")
    return loaded


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` of a written file, for :meth:`RunLock.record`."""
    p = Path(path)
    return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


def _file_problem(path: str, sha256: str | None, must_exist: bool = True) -> str | None:
    if "://" in str(path):
        return None  # remote partitions are checked by `labels verify`, not on every status
    p = Path(path)
    if not p.exists():
        return f"output {p} is missing" if must_exist else None
    if sha256 is not None and sha256_file(p) != sha256:
        return f"output {p} changed since it was written (sha256 differs)"
    return None


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:
        return v[:10] + "…"
    if v is None:
        return "none"
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 40 else s[:37] + "..."
