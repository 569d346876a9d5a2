"""A training run killed with SIGKILL mid-epoch resumes and ends with the same checkpoint bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import RENDER, SEED, SPEC, STUDENT, recipe
from .jobs import RUNNER, env, run, write_job

CFG = recipe(batch_size=16, kd="kl", tau=2.0, checkpoint_every=5, lr=3e-3)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_gives_the_same_bytes(tmp_path, train_shards, labels):
    common = dict(shards=train_shards, labels=labels, spec=SPEC, seed=SEED, cfg=CFG, total_epochs=2, render=RENDER, model=STUDENT,
                  model_seed=0, epochs=(0, 2), view_pool=2)
    clean = run(write_job(tmp_path / "clean.json", run_dir=tmp_path / "clean", **common))
    assert clean["resumed"] is None and clean["global_step"] == 2 * 24

    job = write_job(tmp_path / "killed.json", run_dir=tmp_path / "killed", **common)
    record = tmp_path / "killed" / "resume.json"
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(job)], env=env(SLOW_STEP="0.05"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if record.is_file() and json.loads(record.read_text())["epoch"] == 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    at = json.loads(record.read_text())
    assert at["epoch"] == 1 and 0 < at["position"] < 24 and not at["done"]

    resumed = run(job)
    assert resumed["resumed"] == {"epoch": at["epoch"], "position": at["position"]}
    assert open(resumed["checkpoint"], "rb").read() == open(clean["checkpoint"], "rb").read()
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in clean["epochs"]]
