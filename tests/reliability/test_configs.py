"""Bad stage configs through ``mkd-pipeline run`` (not ``config check``): exit 2, the message
names the file and the field, and nothing is written (no run folder, no store, no lock).

The malformed cases of ``tests/pipeline/config/test_config.py`` (all of them) are reused as they are,
plus cases only ``run`` reaches (compute/train limits, paths that are files)."""

from __future__ import annotations

import pytest

from tests.pipeline.config.test_config import MALFORMED, _cli, _set, _tree, write_case, ws  # noqa: F401

pytestmark = pytest.mark.reliability

EXTRA = [
    ("timeout-zero", _set("compute.timeout_s", 0), ["compute.timeout_s: must be greater than 0"]),
    ("retries-negative", _set("compute.retries", -1), ["compute.retries: must be greater than or equal to 0"]),
    ("checkpoint-every-zero", _set("train.checkpoint_every", 0), ["train.checkpoint_every: must be greater than or equal to 1"]),
    ("batch-size-zero", _set("train.batch_size", 0), ["train.batch_size:"]),
    ("hflip-above-1", _set("views.hflip", 2.0), ["views.hflip:"]),
    ("schedule-epochs-zero", _set("schedule.epochs", 0), ["schedule.epochs:"]),
    ("teacher-train-epochs-string", _set("teacher.train.epochs", "two"), ["teacher.train.epochs: must be a valid integer"]),
    ("labels-dtype", _set("labels.dtype", "int8"), ["labels.dtype:"]),
    ("device-tpu", _set("compute.device", "tpu"), ["compute.device:"]),
    ("null-section", _set("masking", None), ["masking:"]),
]
CASES = MALFORMED + EXTRA


@pytest.mark.parametrize("case,change,expected", CASES, ids=[c[0] for c in CASES])
def test_run_refuses_bad_config(case, change, expected, ws, capsys, tally):  # noqa: F811
    path = write_case(ws, change)
    before = _tree(ws)
    code, out, err = _cli(["run", str(path)], capsys)
    assert code == 2, (out, err)
    assert err.startswith(f"error: {path}: "), err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert _tree(ws) == before  # no run folder, no store, no lock, no .lock
    tally("config", "malformed stage file through `run`", "exit 2 naming file + field; nothing written", tried=1)
