"""A student train stage (or the teacher's fine-tune) under ``torchrun``: ``compute.nproc`` (or ``run --nproc``) processes (docs/design.md §6).

The runner stays the one process that holds the run folder's flock and writes the run lock; it
writes a job file (the resolved config, the segment, its labels: plain values, so a process needs
no runner, lock or cluster) into
``<run_dir>/train-job/train-<i>/`` and starts ``python -m torch.distributed.run --standalone
--nproc_per_node N -m pipeline.run.train_worker JOB``. Each process trains its slice of every
global batch (DDP: gloo on CPU, nccl on CUDA with ``cuda:LOCAL_RANK``); rank 0 writes the
checkpoint, the resume records (the same ``<run_dir>/train`` folder as one process, so a killed
stage resumes under any process count) and ``result.json``, which the runner records as it
records an in-process stage. A process that fails with a pipeline error writes
``error-<rank>.json``, so ``run`` exits with that error's message and exit code.

The ``teacher-finetune`` stage runs the same way with ``task="teacher"``: no segment, labels or
teacher; ``start`` is the checkpoint it starts from, the batch is ``teacher.train.batch_size``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline._atomic import write_atomic
from pipeline._cores import available_cores
from pipeline._gpu import visible_note
from pipeline.config.loader import dump_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.precompute.spec import ModelSpec

JOB_DIR = "train-job"


def check_nproc(nproc: int, batch_size: int, device: str) -> None:
    """Refuse a process count the stage cannot use (exit 2, naming the field)."""
    if batch_size % nproc:
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by compute.nproc {nproc} (each process "
                          f"trains an equal slice of every batch)")
    if device == "cuda" and nproc > torch.cuda.device_count():
        # the ranks inherit CUDA_VISIBLE_DEVICES: rank i takes the i-th listed GPU
        raise ConfigError(f"compute.nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) visible"
                          f"{visible_note()} (one per process)")


def job_record(*, name: str, segment: int | None, start_ckpt: Path, labels, teacher: ModelSpec | None, out: Path,
               run_dir: Path, device: str, progress: bool, config: Path, task: str = "student") -> dict[str, Any]:
    """What a torchrun process needs to train the segment as :func:`pipeline.run.training.train_student`
    (``task="teacher"``: the teacher as :func:`pipeline.run.training.train_teacher`) does here."""
    return {
        "task": task, "config": str(config), "name": name, "segment": segment, "start": str(start_ckpt), "out": str(out),
        "run_dir": str(run_dir), "device": device, "progress": progress,
        "teacher": None if teacher is None else [teacher.weights, teacher.fingerprint],
        "labels": [[shard, ve, ref.path, ref.sha256, None if ref.expect is None else dict(ref.expect)]
                   for (shard, ve), ref in (labels or {}).items()],
    }


def train_distributed(cfg, *, nproc: int, overrides: Sequence[str], run_dir: Path, name: str, segment: int | None,
                      start_ckpt: Path, labels, teacher: ModelSpec | None, out: Path, device: str,
                      progress: bool, task: str = "student") -> dict[str, Any]:
    """Train segment ``segment`` (stage ``name``; ``task="teacher"``: the teacher's fine-tune from
    ``start_ckpt``) in ``nproc`` torchrun processes; returns rank 0's :func:`pipeline.train.train_segment` result.

    Raises:
        ConfigError: the batch does not split over the processes, or too few GPUs.
        PipelineError: a process failed: its own error (message and exit code) when it wrote one.
    """
    check_nproc(nproc, (cfg.teacher.train if task == "teacher" else cfg.train).batch_size, device)
    job_dir = run_dir / JOB_DIR / name
    shutil.rmtree(job_dir, ignore_errors=True)  # no result or error of an earlier attempt is read as this one's
    job_dir.mkdir(parents=True)
    config = job_dir / "config.yaml"
    write_atomic(config, dump_config(cfg, overrides).encode())
    job = job_dir / "job.json"
    record = job_record(name=name, segment=segment, start_ckpt=start_ckpt, labels=labels, teacher=teacher, out=out,
                        run_dir=run_dir, device=device, progress=progress, config=config, task=task)
    write_atomic(job, json.dumps(record).encode())
    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS", "").strip():
        # the processes share the cores (torchrun would pin each to one thread)
        env["OMP_NUM_THREADS"] = str(cfg.compute.train_threads or max(1, available_cores() // nproc))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pipeline.run.train_worker", str(job)]
    proc = subprocess.run(cmd, env=env)
    errors = sorted(job_dir.glob("error-*.json"))
    if errors:
        err = json.loads(errors[0].read_text())
        raise PipelineError(err["message"], exit_code=int(err["exit_code"]))
    result = job_dir / "result.json"
    if proc.returncode != 0 or not result.is_file():
        raise PipelineError(f"{name}: torchrun ({nproc} processes) exited with {proc.returncode}; "
                            f"its output is above, the job in {job}")
    res = json.loads(result.read_text())
    shutil.rmtree(job_dir, ignore_errors=True)  # kept only when a stage failed, to look into
    return res
