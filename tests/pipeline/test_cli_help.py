"""``mkd-pipeline ... --help`` lists and describes commands without importing torch or matplotlib
(pipeline/cli.py imports each command lazily; bench/cli.py and report/cli.py import their
harnesses inside the command bodies)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "matplotlib", "dask", "distributed")

PROBE = f"""
import json, sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["bench", "precompute", "--help"],
                                  ["bench", "train", "--help"], ["report", "--help"]])
def test_help_imports_no_heavy_module(args):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}, result
