"""The dataset manifest: schema validation, consistency checks, the shard-listing API."""

from __future__ import annotations

import json

import pytest

from pipeline.data.importers import import_fashion_mnist
from pipeline.data.manifest import load_manifest
from pipeline.errors import DataError


@pytest.fixture
def dataset(tmp_path, fake_fashion_mnist):
    src, _ = fake_fashion_mnist
    import_fashion_mnist(tmp_path / "ds", src=src, shard_size=8)
    return tmp_path / "ds"


def _edit(dataset, change):
    path = dataset / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_api(dataset):
    manifest = load_manifest(dataset)
    assert load_manifest(dataset / "manifest.json").to_dict() == manifest.to_dict()
    assert manifest.root == dataset.resolve()
    assert [p.name for p in manifest.shard_paths("test")] == ["test-000000.tar", "test-000001.tar"]
    assert manifest.num_samples("train") == 30 and manifest.num_classes == 10
    shard = manifest.shards("train")[0]
    assert shard.path == dataset.resolve() / "train-000000.tar" and shard.bytes == shard.path.stat().st_size
    with pytest.raises(DataError, match=r"no split 'val'; it has \['test', 'train'\]"):
        manifest.shards("val")


def test_manifest_file_outside_its_dataset_lists_no_paths(dataset, tmp_path):
    copy = tmp_path / "elsewhere.json"
    copy.write_text((dataset / "manifest.json").read_text())
    manifest = load_manifest(copy)
    assert manifest.shards("train")[0].path is None
    with pytest.raises(DataError, match="shard paths unknown"):
        manifest.shard_paths("train")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="does not exist.*data import"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(DataError, match="manifest.json is unreadable"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["splits"]["train"]["shards"]["train-000000.tar"].pop("sha256"), r"splits/train/shards/train-000000.tar.*sha256"),
    (lambda d: d["splits"]["train"]["shards"]["train-000000.tar"].update(sha256="xyz"), "sha256"),
    (lambda d: d["splits"]["train"].update(num_samples=31), "num_samples=31 but its shards hold 30"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d["splits"]["train"]["shards"].update({"test-000009.tar": d["splits"]["train"]["shards"].pop("train-000003.tar")}),
     "shards of another split"),
])
def test_invalid_manifest_is_named(dataset, change, message):
    _edit(dataset, change)
    with pytest.raises(DataError, match=message) as e:
        load_manifest(dataset)
    assert "manifest.json" in str(e.value) and e.value.exit_code == 3
