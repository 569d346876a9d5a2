"""Builders of the reliability suite: a tiny real Fashion-MNIST dataset, a tiny stage config,
the CLI as a subprocess, and sha256 snapshots of folders.

Every fault is exercised through ``mkd-pipeline`` in a child process where possible, so what is
tested is what a user runs (exit codes, messages, files left behind).
"""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import set_fields

CLI = [str(Path(sys.executable).with_name("mkd-pipeline"))]
BASE = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10}  # 7x7 = 49 patches


TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"root": "data", "train": "train", "val": "test", "subset": None, "val_subset": 32, "num_classes": 10,
             "mean": [0.286], "std": [0.353]},
    "teacher": {"model": "vit_tiny_patch16_224", "kwargs": dict(BASE, embed_dim=32, depth=1, num_heads=2),
                "train": {"epochs": 1, "lr": 2.0e-3, "batch_size": 64, "warmup_epochs": 0, "seed": 0}},
    "student": {"model": "vit_tiny_patch16_224", "kwargs": dict(BASE, embed_dim=16, depth=1, num_heads=2),
                "init_seed": 0},
    "schedule": {"epochs": 2, "every": 1},
    "masking": {"policy": "student", "keep": 25},
    "views": {"seed": 0, "scale": [0.6, 1.0], "hflip": 0.5},
    "labels": {"store": "store", "topk": 5},
    "compute": {"workers": 1, "batch_size": 128, "device": "cpu", "timeout_s": 120, "retries": 1},
    "train": {"lr": 2.0e-3, "batch_size": 32, "warmup_epochs": 0, "checkpoint_every": 2, "seed": 0},
}


def stage(path: Path, **overrides: Any) -> Path:
    """Write the tiny stage config to ``path``; ``overrides`` are dotted keys (``train__lr=1e-3``)."""
    doc = set_fields(copy.deepcopy(TINY), {k.replace("__", "."): v for k, v in overrides.items()})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def env(**extra: str) -> dict[str, str]:
    """The child's environment: one thread per process (2 shared cores), no scheduler from outside."""
    e = {k: v for k, v in os.environ.items() if k not in ("MKD_SCHEDULER", "MKD_TEST_FAULT")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def cli(*args: str, cwd: Path, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``mkd-pipeline ARGS`` in ``cwd``; stdout and stderr captured as text."""
    return subprocess.run(CLI + list(args), cwd=cwd, env=env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def start(*args: str, cwd: Path, log: Path, **extra_env: str) -> subprocess.Popen:
    """Start ``mkd-pipeline ARGS`` in its own process group (so kill -9 takes its Dask workers too)."""
    f = open(log, "w")
    return subprocess.Popen(CLI + list(args), cwd=cwd, env=env(**extra_env), stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def timed_run(*args: str, cwd: Path, log: Path, timeout: float = 600) -> tuple[int, str, dict[str, float]]:
    """Run ``mkd-pipeline ARGS`` to the end, noting when each ``[stage]`` first prints; returns
    (exit code, output, {stage: seconds from its first line to the next stage's, or to the end})."""
    import re

    proc = start(*args, cwd=cwd, log=log)
    seen: dict[str, float] = {}
    t_end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < t_end:
        for stage in re.findall(r"^\[([a-z0-9-]+)\]", log.read_text(), re.M):
            seen.setdefault(stage, time.monotonic())
        time.sleep(0.05)
    if proc.poll() is None:
        kill9(proc)
    end = time.monotonic()
    text = log.read_text()
    for stage in re.findall(r"^\[([a-z0-9-]+)\]", text, re.M):
        seen.setdefault(stage, end)
    order = sorted(seen, key=seen.get)
    spans = {s: (seen[order[i + 1]] if i + 1 < len(order) else end) - seen[s] for i, s in enumerate(order)}
    return proc.returncode, text, spans


def kill9(proc: subprocess.Popen) -> None:
    """``kill -9`` the process and everything in its group (the Dask nanny and workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(0.2)


def hashes(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(*roots: Path) -> list[str]:
    """Leftovers of interrupted atomic writes under ``roots``."""
    return sorted(str(p) for r in roots if r.exists() for p in r.rglob("*")
                  if p.is_file() and (p.name.startswith(".tmp-") or p.name.endswith(".tmp")))


def main_in_process(*args: str, cwd: Path) -> tuple[int, str]:
    """``mkd-pipeline ARGS`` through its entry point in this process (no interpreter start-up);
    returns (exit code, stdout + stderr)."""
    import contextlib
    import io

    from pipeline.cli import main

    buf = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        os.chdir(old)
    return code, buf.getvalue()
