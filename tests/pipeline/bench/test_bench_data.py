"""Smoke test of ``mkd-pipeline bench data`` on tiny shards (numbers are not checked: never timed tests)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.data.importers import import_fashion_mnist
from tests.pipeline.data.helpers import make_fake_fashion_mnist


def test_bench_data_json(tmp_path, capsys):
    make_fake_fashion_mnist(tmp_path / "src")
    import_fashion_mnist(tmp_path / "ds", src=tmp_path / "src", shard_size=20)
    with pytest.raises(SystemExit) as e:
        main(["bench", "data", str(tmp_path / "ds"), "--imagenet-like", "3", "--repeats", "1", "--json"])
    assert e.value.code == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"fashion-mnist", "imagenet-like"}
    assert results["fashion-mnist"]["samples"] == 20 and results["fashion-mnist"]["size"] == 28
    assert results["imagenet-like"]["samples"] == 3 and results["imagenet-like"]["size"] == 224
    for r in results.values():
        # the rates are printed to 0.1 image/s, the ratio from the unrounded rates: allow that rounding
        slack = 0.01 + 0.05 / r["ours"] + 0.05 / r["baseline"]
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"], rel=slack)


def test_bench_data_needs_an_input(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "data"])
    assert e.value.code == 2 and "--imagenet-like" in capsys.readouterr().err
