"""scripts/gpu_check.sh and gpu_check.py stay runnable without a GPU (their --dry-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_sh_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)


@pytest.mark.slow
def test_gpu_check_py_dry_run_passes_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["cuda"] is False
    assert checks["cpu-worker-in-cuda-run"]["ok"] and "compute.device is cuda" in checks["cpu-worker-in-cuda-run"]["message"]
    sal = checks["saliency-fp32"]
    assert sal["ok"] and sal["scores_dtype"] == sal["logits_dtype"] == "torch.float32"
    assert checks["shared-gpu-refused"]["skipped"]  # needs CUDA
