"""A tiny real run for tests that need a finished store or a train stage to rerun: the demo-like
config of test_runner.py cut to 256 training images, one segment of one epoch, SGD (whose
updates, unlike Adam's, compare across process counts within float tolerance)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.pipeline.run.test_runner import CLI, ENV, stage_doc, write_stage


def tiny_stage(root: Path, data: Path, **changes) -> Path:
    """Write the tiny stage file under ``root`` (dotted ``changes`` as ``section__field=value``)."""
    root.mkdir(parents=True, exist_ok=True)
    doc = stage_doc(root, data)
    tiny = dict(data__subset=256, data__val_subset=128, teacher__train__epochs=1, teacher__train__batch_size=16,
                schedule__epochs=1, schedule__every=1, compute__workers=1,
                train__batch_size=16, train__optimizer="sgd", train__lr=0.05, train__weight_decay=0.0)
    return write_stage(root, doc, **{**tiny, **changes})


def cli_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``mkd-pipeline ARGS`` in a subprocess (one torch thread per process); asserts nothing."""
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
