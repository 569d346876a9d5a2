"""examples/own_loop.py on a real (tiny) run's label store, as a user runs it: a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.pipeline.data.helpers import real_fashion_mnist_subset
from tests.pipeline.run.test_runner import ENV
from tests.pipeline.run.tiny import cli_run, tiny_stage

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop.py"


def own_loop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    """256 real training images (2 shards) and 128 test images: what the tiny run uses."""
    return real_fashion_mnist_subset(tmp_path_factory.mktemp("fmnist") / "fashion-mnist", 256, 128, 128)


@pytest.mark.slow
def test_own_loop_trains_from_a_runs_store_and_refuses_a_run_without_labels(fmnist, tmp_path):
    stages = tiny_stage(tmp_path, fmnist)
    made = cli_run("run", str(stages), "--until", "precompute-0")  # teacher, c0 and the labels: what the loop needs
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]

    out = tmp_path / "student.pth"
    proc = own_loop(str(stages), "--steps", "3", "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loss = float(re.search(r"epoch 0: 3 steps, loss (\S+)", proc.stdout).group(1))
    assert 0 < loss < 20
    weights = torch.load(out, weights_only=True)
    assert weights["head.weight"].shape == (10, 32)

    elsewhere = tiny_stage(tmp_path / "fresh", fmnist)  # same config, a run folder nothing ran in
    refused = own_loop(str(elsewhere), "--steps", "1")
    assert refused.returncode == 4 and "no run lock" in refused.stderr
