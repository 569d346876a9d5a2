"""Job files for run_segment.py: one training segment described in JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).with_name("run_segment.py")


def write_job(path: Path, *, shards, labels, spec, seed, cfg, total_epochs, render, run_dir, model, model_seed, epochs,
              view_pool=None) -> Path:
    job = {
        "shards": [[s.name, str(s.path), s.rows] for s in shards],
        "labels": [[n, ve, p] for (n, ve), p in (labels or {}).items()],
        "spec": spec.to_dict(), "seed": seed, "cfg": cfg.model_dump(mode="json"), "total_epochs": total_epochs,
        "render": dataclasses.asdict(render),
        "run_dir": str(run_dir), "model": model, "model_seed": model_seed, "epochs": list(epochs), "view_pool": view_pool,
    }
    path.write_text(json.dumps(job))
    return path


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    out.update(extra)
    return out


def run(job: Path, *, torchrun: int = 0, timeout: float = 120, **extra: str) -> dict:
    """Run a job to completion; returns its result JSON (rank 0's)."""
    cmd = [sys.executable, str(RUNNER), str(job)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", *cmd[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**extra))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
