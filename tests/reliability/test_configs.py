"""Bad stage configs through ``mkd-pipeline run`` (not ``config check``): exit 2, the message
names the file and the field, and nothing is written (no run folder, no store, no lock).

The malformed cases of ``tests/pipeline/config/cases.py`` (all of them) are reused as they are,
plus cases only ``run`` reaches (compute/train limits, paths that are files)."""

from __future__ import annotations

import pytest

from tests.pipeline.config.cases import MALFORMED, run_cli, set_key, tree, write_case

pytestmark = pytest.mark.reliability

EXTRA = [
    ("timeout-zero", set_key("compute.timeout_s", 0), ["compute.timeout_s: must be greater than 0"]),
    ("retries-negative", set_key("compute.retries", -1), ["compute.retries: must be greater than or equal to 0"]),
    ("checkpoint-every-zero", set_key("train.checkpoint_every", 0), ["train.checkpoint_every: must be greater than or equal to 1"]),
    ("batch-size-zero", set_key("train.batch_size", 0), ["train.batch_size:"]),
    ("hflip-above-1", set_key("views.hflip", 2.0), ["views.hflip:"]),
    ("schedule-epochs-zero", set_key("schedule.epochs", 0), ["schedule.epochs:"]),
    ("teacher-train-epochs-string", set_key("teacher.train.epochs", "two"), ["teacher.train.epochs: must be a valid integer"]),
    ("labels-dtype", set_key("labels.dtype", "int8"), ["labels.dtype:"]),
    ("device-tpu", set_key("compute.device", "tpu"), ["compute.device:"]),
    ("null-section", set_key("masking", None), ["masking:"]),
]
CASES = MALFORMED + EXTRA


@pytest.mark.parametrize("case,change,expected", CASES, ids=[c[0] for c in CASES])
def test_run_refuses_bad_config(case, change, expected, ws, capsys, tally):
    path = write_case(ws, change)
    before = tree(ws)
    code, out, err = run_cli(["run", str(path)], capsys)
    assert code == 2, (out, err)
    assert err.startswith(f"error: {path}: "), err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert tree(ws) == before  # no run folder, no store, no lock, no .lock
    tally("config", "malformed stage file through `run`", "exit 2 naming file + field; nothing written", tried=1)
