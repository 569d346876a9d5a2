"""pipeline.paths against a real S3-compatible server (moto's server mode on localhost): a write
is published whole or not at all, a writer killed mid-upload or before publishing leaves
nothing ``labels verify`` accepts as a partition, shards and manifests stream from a bucket, and
endpoints never come from a URI."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import paths
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import read_shard
from pipeline.data.verify import verify_dataset
from pipeline.errors import StoreError
from pipeline.labels import list_partitions, open_partition
from pipeline.labels.verify import verify_store
from tests.pipeline.faulty_fs import faulty_resolve
from tests.pipeline.labels.helpers import write_small

ROOT = Path(__file__).resolve().parents[2]
PART = "s3://labels/store/teacher=t/shard=train-000000/epoch=0/v0-d.parquet"

# A fresh writer process whose filesystem SIGKILLs it: halfway through the upload of the
# partition's bytes ("upload"), or once they are uploaded, before the copy that publishes them ("publish").
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import pipeline.paths as P
    from tests.pipeline.faulty_fs import faulty_resolve
    from tests.pipeline.labels.helpers import write_small

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    P.resolve = faulty_resolve(P.resolve, sys.argv[2], die)
    write_small(sys.argv[1])
    """
)


def test_a_partition_is_published_whole_and_no_temp_object_stays(s3):
    written = write_small(PART)
    with open_partition(PART, sha256=written.sha256) as partition:
        assert partition.num_rows == 200
    assert s3.files("labels") == ["labels/store/teacher=t/shard=train-000000/epoch=0/v0-d.parquet"]
    with pytest.raises(FileExistsError):
        paths.write_bytes(PART, b"other bytes", exclusive=True)
    assert paths.file_sha256(PART) == written.sha256  # the first writer's file stays


@pytest.mark.parametrize("when", ["upload", "publish"])
def test_a_writer_killed_mid_write_leaves_nothing_verify_accepts(s3, when):
    killed = subprocess.run([sys.executable, "-c", _CHILD, PART, when], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not paths.file_exists(PART)
    report = verify_store("s3://labels/store")
    assert report.checked == [] and report.problems == [] and list_partitions("s3://labels/store") == []
    # killed before publishing: the uploaded bytes sit under a temp name, which `gc` removes
    assert len(report.temp_files) == (1 if when == "publish" else 0)
    rerun = write_small(PART)
    assert verify_store("s3://labels/store").checked == [PART] and paths.file_sha256(PART) == rerun.sha256


@pytest.mark.parametrize("where", ["upload", "publish"])
def test_a_write_failing_midway_leaves_no_object_at_all(s3, monkeypatch, where):
    """An error (not a kill) during the upload or the publishing copy: pyarrow completes a cut
    upload when its stream is closed (so writing the final key directly could publish half a
    file), but here only the temp key gets it, and the writer deletes it."""
    def reset():
        raise OSError("connection reset")

    monkeypatch.setattr(paths, "resolve", faulty_resolve(paths.resolve, where, reset))
    with pytest.raises(StoreError, match="cannot write the partition .*connection reset"):
        write_small(PART)
    assert s3.files("labels") == []


def test_shards_and_manifest_stream_from_a_bucket(s3, fmnist_small):
    s3.upload(fmnist_small, "data/fm")
    manifest = load_manifest("s3://data/fm")
    assert manifest.root == "s3://data/fm" and manifest.to_dict() == load_manifest(fmnist_small).to_dict()
    [entry, *_] = manifest.shards("train")
    assert entry.path == "s3://data/fm/train-000000.tar"
    remote = [(s.key, s.label, s.image.tobytes()) for s in read_shard(entry.path, sha256=entry.sha256)]
    local = [(s.key, s.label, s.image.tobytes()) for s in read_shard(fmnist_small / entry.name, sha256=entry.sha256)]
    assert remote == local and len(remote) == entry.samples
    assert verify_dataset("s3://data/fm") == []
    s3.fs.delete_file("data/fm/test-000001.tar")
    assert verify_dataset("s3://data/fm") == ["test-000001.tar: missing"]


def test_an_endpoint_in_a_uri_is_refused():
    with pytest.raises(StoreError, match=r"s3://b/store\?\.\.\.: a URI with a query string; give endpoints"):
        paths.resolve("s3://b/store?endpoint_override=localhost:9000")
