"""A whole run with the shards and the label store in buckets of a real S3-compatible server
(moto's server mode on localhost, tests/pipeline/s3server.py): labels written there, the
checkpoints workers load published there, `status`, `labels verify` and `gc` on the bucket, and
the credentials nowhere in what the run wrote or printed (issue 27 item 1)."""

from __future__ import annotations

import json
import subprocess

import pytest

from pipeline._lock import LOCK_NAME, load_lock
from tests.pipeline.run.test_runner import CLI, ENV
from tests.pipeline.run.tiny import tiny_stage
from tests.reliability.helpers import main_in_process

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DATA, STORE = "s3://data/fashion-mnist", "s3://labels/store"


def _cli(s3, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env={**ENV, **s3.env})


def _everything_written(root) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


def test_a_whole_run_with_shards_and_store_in_buckets(s3, fmnist_small, tmp_path):
    s3.upload(fmnist_small, "data/fashion-mnist")
    stages = tiny_stage(tmp_path, fmnist_small, data__root=DATA, labels__store=STORE)
    assert "AWS" not in stages.read_text() and s3.secret not in stages.read_text()

    run = _cli(s3, "run", str(stages), cwd=tmp_path)
    printed = run.stdout + run.stderr
    assert run.returncode == 0, printed[-4000:]

    lock = load_lock(tmp_path / "run" / LOCK_NAME)
    parts = [p for rec in lock["stages"].values() for p in rec.get("partitions", [])]
    assert parts and all(p["path"].startswith(f"{STORE}/teacher=") for p in parts)
    # the checkpoints the precompute workers loaded (teacher, c0) were published to the store
    published = s3.files("labels/store/checkpoints")
    assert len(published) == 2 and all(p.endswith(".pth") for p in published)
    assert not [p for p in s3.files("labels/store") if "/.tmp-" in p], "a temp object was left behind"

    # the other commands in this process (the environment holds the credentials, as the CLI's would)
    code, status = main_in_process("status", str(stages), "--json", cwd=tmp_path)
    assert code == 0, status
    assert all(s["fresh"] for s in json.loads(status))
    code, verify = main_in_process("labels", "verify", STORE, "--lock", str(tmp_path / "run" / LOCK_NAME), cwd=tmp_path)
    assert code == 0, verify
    assert f"{len(parts)} of {len(parts)} partitions OK under {STORE}, against 1 run lock(s)" in verify

    # a killed write's temp object, older than the grace period: gc lists it and removes it, and keeps the partitions
    with s3.fs.open_output_stream("labels/store/teacher=x/shard=y/epoch=0/.tmp-v0-dead.parquet.abc") as f:
        f.write(b"PAR1 half")
    code, dry = main_in_process("gc", str(stages), "--grace", "0", cwd=tmp_path)
    assert code == 0, dry
    assert "would remove s3://labels/store/teacher=x/shard=y/epoch=0/.tmp-v0-dead.parquet.abc" in dry
    code, gone = main_in_process("gc", str(stages), "--grace", "0", "--yes", cwd=tmp_path)
    assert code == 0 and "not collected: s3://labels/store" in gone, gone
    assert not [p for p in s3.files("labels/store") if "/.tmp-" in p]
    assert len([p for p in s3.files("labels/store") if p.endswith(".parquet")]) == len(parts)

    everything = printed + status + verify + dry + gone
    for secret in (s3.secret, s3.env["AWS_ACCESS_KEY_ID"]):
        assert secret not in everything and secret not in _everything_written(tmp_path)
    assert not any(s3.secret.encode() in s3.fs.open_input_stream(p).read() for p in s3.files("labels/store"))
    assert f"root: {DATA}" in (tmp_path / "run" / "config.yaml").read_text()  # the shards came from the bucket
