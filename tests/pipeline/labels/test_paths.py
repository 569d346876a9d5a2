"""Partition paths are a pure function of the inputs; stores can be local paths or URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline._fingerprint import sha256_json
from pipeline.errors import ConfigError, StoreError
from pipeline.labels import (
    list_partitions,
    open_partition,
    partition_path,
    related_partitions,
)

FPS = {name: sha256_json(name) for name in ("teacher", "student", "shard", "view", "mask", "label")}


def test_same_inputs_same_path_and_any_other_input_another():
    path = partition_path("/store", shard="train-000001", view_epoch=3, fingerprints=FPS)
    assert path == partition_path("/store", shard="train-000001", view_epoch=3, fingerprints=dict(reversed(FPS.items())))
    assert path.startswith(f"/store/teacher={FPS['teacher'][:12]}/shard=train-000001/epoch=3/v{FPS['view'][:8]}-")
    others = {partition_path("/store", shard="train-000002", view_epoch=3, fingerprints=FPS),
              partition_path("/store", shard="train-000001", view_epoch=4, fingerprints=FPS)}
    for name in FPS:
        others.add(partition_path("/store", shard="train-000001", view_epoch=3, fingerprints={**FPS, name: sha256_json("x")}))
    assert path not in others and len(others) == 2 + len(FPS)


def test_uri_roots_keep_their_scheme():
    path = partition_path("s3://bucket/labels/", shard="s", view_epoch=0, fingerprints=FPS)
    assert path.startswith(f"s3://bucket/labels/teacher={FPS['teacher'][:12]}/shard=s/epoch=0/v")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shard="../escape"), "shard name"),
        (dict(shard="a/b"), "shard name"),
        (dict(view_epoch=-1), "view_epoch"),
        (dict(fingerprints={k: v for k, v in FPS.items() if k != "mask"}), "fingerprints.mask"),
        (dict(fingerprints={**FPS, "teacher": "abc"}), "fingerprints.teacher"),
    ],
)
def test_bad_inputs_are_refused(kwargs, message):
    args = dict(shard="s", view_epoch=0, fingerprints=FPS) | kwargs
    with pytest.raises(ConfigError, match=message):
        partition_path("/store", **args)


def test_file_uri_store_round_trip_and_listing(write, metadata, tmp_path):
    root = f"file://{tmp_path}/uri-store"
    fps = metadata["fingerprints"]
    path = partition_path(root, shard=metadata["shard"], view_epoch=0, fingerprints=fps)
    result = write(path=path)
    with open_partition(path, sha256=result.sha256) as partition:
        assert partition.num_rows == result.rows
    other_mask = {**fps, "mask": sha256_json("other mask")}
    other = write(path=partition_path(root, shard=metadata["shard"], view_epoch=0, fingerprints=other_mask),
                  metadata={**metadata, "fingerprints": other_mask})
    write(path=partition_path(root, shard=metadata["shard"], view_epoch=1, fingerprints=fps), metadata={**metadata, "view_epoch": 1})
    assert list_partitions(root) == sorted(list_partitions(root)) and len(list_partitions(root)) == 3
    other_view = {**fps, "view": sha256_json("other view")}
    write(path=partition_path(root, shard=metadata["shard"], view_epoch=0, fingerprints=other_view),
          metadata={**metadata, "fingerprints": other_view})
    assert len(list_partitions(root)) == 4
    assert related_partitions(root, shard=metadata["shard"], view_epoch=0, fingerprints=fps) == sorted([path, other.path])
    assert related_partitions(root, shard="train-000009", view_epoch=0, fingerprints=fps) == []


def test_listing_a_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no label store here"):
        list_partitions(str(tmp_path / "missing"))


def test_local_root_of_paths_and_file_uris(tmp_path):
    from pipeline.labels.paths import local_root

    assert local_root(f"file://{tmp_path}/store") == f"{tmp_path}/store"
    assert local_root("store") == str(Path("store").absolute())
    assert local_root("s3://bucket/store") is None  # remote: no local folder, and no filesystem object made
