import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli


@pytest.mark.slow
def test_bench_train_json_rows():
    r = CliRunner().invoke(cli, ["bench", "train", "--samples", "128", "--shard-size", "64", "--batch", "32",
                                 "--repeats", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    rows = {row["mode"]: row for row in out["rows"]}
    assert set(rows) == {"stored", "off", "online"} and out["steps"] == 4
    assert rows["off"]["vs_off"] == 1.0 and rows["stored"]["steps_per_s"] > 0
    assert rows["online"]["teacher_forwards"] == 128 and rows["stored"]["teacher_forwards"] == 0
