"""Resume records: where a killed training segment continues (docs/design.md §6).

Files in the run folder (all written atomically, by rank 0 only):

- ``resume.json``: the record of the segment in progress (or just finished): its fingerprint,
  ``epoch`` and ``position`` (batches done in that epoch), the global update count, the metrics
  so far, and the names + sha256 of the two state files below.
- ``resume-g<step>.model.pt`` / ``resume-g<step>.optim.pt``: the model's plain state_dict and the
  optimizer's state_dict at that point (read back with ``torch.load(weights_only=True)``), and with
  ``train.model_ema`` ``resume-g<step>.ema.pt``, the EMA's plain state_dict. New
  files are written before the record that names them and old ones removed after, so a kill at
  any moment leaves a record whose files exist.
- ``optim-e<epoch>.pt`` + ``optim-e<epoch>.json``: the optimizer state at a segment's end, keyed
  by the fingerprint of the model checkpoint it belongs to, so the next segment (started by the
  runner from that checkpoint) continues with the same optimizer state; with ``train.model_ema``
  ``ema-e<epoch>.pt`` beside them, the EMA's plain state_dict at that point (a timm checkpoint, and
  where the next segment's EMA continues).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_bytes, sha256_file
from pipeline.errors import StoreError
from pipeline.models import checkpoint_bytes, read_state_dict

FORMAT = "mkd-train-resume/1"
RECORD = "resume.json"


@dataclass
class ResumeRecord:
    """Where a segment stands. ``epoch``/``position``: the next batch to train."""

    segment: str
    epochs: tuple[int, int]
    epoch: int
    position: int
    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    done: bool = False
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    model_file: str = ""
    model_sha256: str = ""
    optim_file: str = ""
    optim_sha256: str = ""
    ema_file: str = ""
    ema_sha256: str = ""


def _optim_bytes(optimizer: torch.optim.Optimizer) -> bytes:
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    return buf.getvalue()


def _read_record(path: Path) -> dict[str, Any] | None:
    """A record file's JSON without its ``format`` field, or None when there is none."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise StoreError(f"{path}: unreadable training record ({e})") from None
    if not isinstance(doc, dict) or doc.pop("format", None) != FORMAT:
        raise StoreError(f"{path}: not a {FORMAT} record")
    return doc


def _load_optim(path: Path, sha256: str) -> dict[str, Any]:
    if not path.is_file() or sha256_file(path) != sha256:
        raise StoreError(f"{path}: optimizer state missing or changed since its record was written")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_model(path: Path, sha256: str, model: nn.Module) -> None:
    if not path.is_file() or sha256_file(path) != sha256:
        raise StoreError(f"{path}: model state missing or changed since its record was written")
    model.load_state_dict(read_state_dict(path), strict=True)


class ResumeStore:
    """Reads and writes the resume files of one run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    def load(self, segment: str) -> ResumeRecord | None:
        """The record of segment fingerprint ``segment``, or None (no record, or another segment's)."""
        doc = _read_record(self.dir / RECORD)
        if doc is None or doc.get("segment") != segment:
            return None
        doc["epochs"] = tuple(doc["epochs"])
        return ResumeRecord(**doc)

    def restore(self, record: ResumeRecord, model: nn.Module, optimizer: torch.optim.Optimizer,
                ema: nn.Module | None = None) -> None:
        """Load the record's model and optimizer state (and the EMA's, when ``ema`` is given)."""
        _load_model(self.dir / record.model_file, record.model_sha256, model)
        optimizer.load_state_dict(_load_optim(self.dir / record.optim_file, record.optim_sha256))
        if ema is not None:
            _load_model(self.dir / (record.ema_file or "(no EMA state)"), record.ema_sha256, ema)

    def save(self, record: ResumeRecord, model: nn.Module, optimizer: torch.optim.Optimizer,
             ema: nn.Module | None = None) -> None:
        """Write the state files, then the record naming them, then drop older state files."""
        stem = f"resume-g{record.global_step:09d}"
        files = {f"{stem}.model.pt": checkpoint_bytes(model), f"{stem}.optim.pt": _optim_bytes(optimizer)}
        if ema is not None:
            files[f"{stem}.ema.pt"] = checkpoint_bytes(ema)
        for name, data in files.items():
            write_atomic(self.dir / name, data)
        names, shas = list(files), [sha256_bytes(d) for d in files.values()]
        record.model_file, record.optim_file = names[:2]
        record.model_sha256, record.optim_sha256 = shas[:2]
        if ema is not None:
            record.ema_file, record.ema_sha256 = names[2], shas[2]
        doc = {"format": FORMAT, **asdict(record)}
        write_atomic(self.dir / RECORD, json.dumps(doc, indent=1).encode())
        for old in self.dir.glob("resume-g*.pt"):
            if old.name not in files:
                old.unlink(missing_ok=True)

    def save_boundary(self, epoch: int, model_fingerprint: str, global_step: int, optimizer: torch.optim.Optimizer,
                      ema: nn.Module | None = None) -> None:
        """The optimizer state (and the EMA) at the end of a segment, for the segment that starts at ``epoch``."""
        data = _optim_bytes(optimizer)
        name = f"optim-e{epoch:04d}"
        write_atomic(self.dir / f"{name}.pt", data)
        doc = {"format": FORMAT, "epoch": epoch, "model": model_fingerprint, "global_step": global_step,
               "optim_sha256": sha256_bytes(data)}
        if ema is not None:
            ema_data = checkpoint_bytes(ema)
            write_atomic(self.dir / f"ema-e{epoch:04d}.pt", ema_data)
            doc["ema_sha256"] = sha256_bytes(ema_data)
        write_atomic(self.dir / f"{name}.json", json.dumps(doc, indent=1).encode())

    def load_boundary(self, epoch: int, model_fingerprint: str) -> dict[str, Any] | None:
        """The optimizer state saved at ``epoch`` for exactly this model, or None."""
        path = self.dir / f"optim-e{epoch:04d}.json"
        doc = _read_record(path)
        if doc is None or doc.get("model") != model_fingerprint:
            return None
        return _load_optim(path.with_suffix(".pt"), doc["optim_sha256"])

    def load_boundary_ema(self, epoch: int, model_fingerprint: str, ema: nn.Module) -> bool:
        """Load into ``ema`` the EMA saved at ``epoch`` beside exactly this model's optimizer state;
        False (``ema`` untouched) when there is none."""
        doc = _read_record(self.dir / f"optim-e{epoch:04d}.json")
        if doc is None or doc.get("model") != model_fingerprint or "ema_sha256" not in doc:
            return False
        _load_model(self.dir / f"ema-e{epoch:04d}.pt", doc["ema_sha256"], ema)
        return True
