"""One torchrun process of a student train stage or of the teacher's fine-tune:
``python -m pipeline.run.train_worker JOB.json``.

Started by :func:`pipeline.run.distributed.train_distributed`; trains the job's segment with
:func:`pipeline.run.training.train_student`, or the teacher with
:func:`pipeline.run.training.train_teacher` (job ``task`` ``"teacher"``) (DDP set up by the trainer from torchrun's
environment). It never writes the run lock: rank 0 leaves ``result.json`` beside the job for the
runner, and any rank that fails with a pipeline error leaves ``error-<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipeline._atomic import write_atomic
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.errors import PipelineError
from pipeline.labels.contract import LabelRef
from pipeline.precompute.spec import model_spec
from pipeline.run.training import train_student, train_teacher
from pipeline.train.dist import failing_together


def main(job_path: str) -> int:
    """Train the job's segment (or the teacher); returns the process exit code."""
    job_file = Path(job_path)
    job = json.loads(job_file.read_text())
    rank = int(os.environ.get("RANK", "0"))
    try:
        with failing_together():  # a failing rank ends the others with its message
            result = _train(job)
    except PipelineError as e:
        write_atomic(job_file.with_name(f"error-{rank}.json"),
                     json.dumps({"exit_code": e.exit_code, "message": str(e)}).encode())
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    if rank == 0:
        write_atomic(job_file.with_name("result.json"), json.dumps(result).encode())
    return 0


def _train(job: dict) -> dict:
    cfg = load_config(job["config"])
    manifest = load_manifest(cfg.data.root)
    common = dict(name=job["name"], run_dir=Path(job["run_dir"]), device=job["device"], progress=job["progress"],
                  say=lambda stage, line: click.echo(f"[{stage}] {line}"))
    if job.get("task") == "teacher":
        return train_teacher(cfg, manifest, Path(job["start"]), Path(job["out"]), **common)[1]
    labels = {(shard, ve): LabelRef(path, sha, expect) for shard, ve, path, sha, expect in job["labels"]} or None
    teacher = None if job["teacher"] is None else model_spec(cfg, "teacher", *job["teacher"])
    return train_student(cfg, manifest, job["segment"], Path(job["start"]), labels, teacher, Path(job["out"]),
                         **common)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
