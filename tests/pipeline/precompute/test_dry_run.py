"""``mkd-pipeline precompute STAGES --segment 0 [--dry-run]`` through the real CLI and runner,
on the test LocalCluster (reached through $MKD_SCHEDULER)."""

from __future__ import annotations

import re

from click.testing import CliRunner

from pipeline.cli import cli
from tests.pipeline.precompute.conftest import ROWS, SHARD


def _cli(args: list[str], cluster) -> str:
    r = CliRunner().invoke(cli, args, env={"MKD_SCHEDULER": cluster.address}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _states(output: str) -> list[tuple[str, str, str, str]]:
    """(state, shard, view epoch, reason) per partition line of a dry run."""
    return re.findall(r"^(cached|reusable|compute)\s+(\S+) e(\d+)(?: \(\d+ rows\))?: (.+)$", output, flags=re.M)


def test_dry_run_lists_cached_reusable_and_compute_with_reasons(stage, cluster, tmp_path):
    stage("cli")
    path = tmp_path / "cli.yaml"
    before = _states(_cli(["precompute", str(path), "--segment", "0", "--dry-run"], cluster))
    assert before == []  # nothing run yet: no teacher record, no c0

    out = _cli(["precompute", str(path), "--segment", "0"], cluster)
    assert f"segment 0: 2 partitions, {ROWS} rows; teacher forwards done {ROWS}" in out

    cached = _states(_cli(["precompute", str(path), "--segment", "0", "--dry-run"], cluster))
    assert [(s, sh, e) for s, sh, e, _ in cached] == [("cached", "train-000000", "0"), ("cached", "train-000001", "0")]
    assert all("exist" in reason for *_, reason in cached)

    # the same run with another keep count over two epochs: view epoch 0 can reuse rows, 1 is new
    stage("cli", keep=20, epochs=2)
    text = _cli(["precompute", str(path), "--segment", "0", "--dry-run"], cluster)
    mixed = _states(text)
    assert sorted((s, sh, e) for s, sh, e, _ in mixed) == [
        ("compute", "train-000000", "1"), ("compute", "train-000001", "1"),
        ("reusable", "train-000000", "0"), ("reusable", "train-000001", "0")]
    assert all("reused" in r for s, *_, r in mixed if s == "reusable")
    assert all("no partition" in r for s, *_, r in mixed if s == "compute"), text
    assert f"reusable train-000000 e0 ({SHARD} rows)" in text

    # another label spec (top-5) cannot reuse top-10 rows: to compute, as the run would do
    stage("cli", topk=5)
    other = _states(_cli(["precompute", str(path), "--segment", "0", "--dry-run"], cluster))
    assert [s for s, *_ in other] == ["compute", "compute"]
