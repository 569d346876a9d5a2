"""Smoke test of `mkd-pipeline bench store` (timings are for BENCHMARKS.md, never asserted)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main


def test_bench_store_json(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "store", "--rows", "2000", "--classes", "100", "--repeats", "1", "--json"])
    assert exit_.value.code == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("bytes_per_row", "write_rows_per_s", "read_rows_per_s", "read_rows_per_s_trainer", "bytes_per_row_with_view"):
        assert r[key] > 0, key
    assert r["all"]["bytes_per_row"] > r["bytes_per_row"] and r["threads"] == 1
    assert set(r["column_bytes_per_row"]) == {"key", "label", "keep", "topk_idx", "topk_logit", "lse"}
    assert sum(r["column_bytes_per_row"].values()) < r["bytes_per_row"]  # the rest is the footer


def test_bench_store_table(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "store", "--rows", "500", "--classes", "20", "--k", "5", "--repeats", "1"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "| top-5 |" in out and "| all 20 |" in out
