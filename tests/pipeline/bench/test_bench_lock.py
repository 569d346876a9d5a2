"""Smoke test of `mkd-pipeline bench lock` (timings are for BENCHMARKS.md, never asserted)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main


def test_bench_lock_json(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "lock", "--shards", "7", "--view-epochs", "6", "--segments", "3", "--repeats", "1", "--json"])
    assert exit_.value.code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["partition_records"] == r["status_records_read"] == 7 * 6
    assert r["bytes_on_disk"] > r["lock_file_bytes"] > 0 and r["one_file"]["bytes"] > 0
    assert r["status_s"] > 0 and r["commit_segment_s"]["max"] >= r["commit_segment_s"]["median"] > 0


def test_bench_lock_refuses_more_segments_than_view_epochs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "lock", "--view-epochs", "2", "--segments", "3"])
    assert exit_.value.code == 2
