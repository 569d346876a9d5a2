"""Importers: Fashion-MNIST (fake IDX files, and the real one when installed) and image folders."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import timm.data
from PIL import Image

from pipeline.data.importers import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SRC,
    import_fashion_mnist,
    import_imagefolder,
    png_gray8,
    read_idx,
)
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import read_shard
from pipeline.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[3]


def _sha256s(manifest) -> dict:
    return {split: {s.name: s.sha256 for s in manifest.shards(split)} for split in manifest.splits}


def test_png_gray8_is_lossless_and_valid():
    pixels = np.random.default_rng(0).integers(0, 256, (300, 250), dtype=np.uint8)  # > one 64 KiB block
    image = Image.open(io.BytesIO(png_gray8(pixels)))
    assert image.format == "PNG" and image.mode == "L"
    assert np.array_equal(np.asarray(image), pixels)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="x.gz"):
        read_idx(tmp_path / "x.gz")
    import gzip

    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\0\0\x08\x01" + (10).to_bytes(4, "big") + b"\1\2")
    with pytest.raises(DataError, match="short.gz.*holds 2 bytes"):
        read_idx(tmp_path / "short.gz")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        import_fashion_mnist(tmp_path / "out", src=tmp_path / "nowhere")
    assert e.value.exit_code == 3


def test_fashion_mnist_import_is_exact_and_deterministic(tmp_path, fake_fashion_mnist):
    src, data = fake_fashion_mnist
    first = import_fashion_mnist(tmp_path / "a", src=src, shard_size=8)
    second = import_fashion_mnist(tmp_path / "b", src=src, shard_size=8)
    assert _sha256s(first) == _sha256s(second)
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    assert [s.samples for s in first.shards("train")] == [8, 8, 8, 6]
    assert first.classes == FASHION_MNIST_CLASSES and first.num_samples("test") == 12
    assert first.split("train")["image"] == {
        "width": {"min": 28, "max": 28, "mean": 28.0}, "height": {"min": 28, "max": 28, "mean": 28.0},
        "modes": {"L": 30}, "formats": {"png": 30},
    }
    images, labels = data["train"]
    samples = [s for path in first.shard_paths("train") for s in read_shard(path)]
    assert [s.key for s in samples] == [f"train_{i:06d}" for i in range(30)]
    assert [s.label for s in samples] == labels.tolist()
    assert all(np.array_equal(np.asarray(s.image), img) for s, img in zip(samples, images))


def test_reimport_with_other_shard_size_removes_stale_shards(tmp_path, fake_fashion_mnist):
    src, _ = fake_fashion_mnist
    import_fashion_mnist(tmp_path, src=src, shard_size=4)
    manifest = import_fashion_mnist(tmp_path, src=src, shard_size=16)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == sorted(
        s.name for split in ("train", "test") for s in manifest.shards(split))


def test_timm_reads_our_shards_unchanged(tmp_path, fake_fashion_mnist):
    src, data = fake_fashion_mnist
    import_fashion_mnist(tmp_path, src=src, shard_size=8)
    dataset = timm.data.create_dataset("wds/fashion-mnist", root=str(tmp_path), split="train")
    got = [(np.asarray(img.convert("L")), target) for img, target in dataset]
    images, labels = data["train"]
    assert [t for _, t in got] == labels.tolist()
    assert all(np.array_equal(img, ref) for (img, _), ref in zip(got, images))


def test_imagefolder_import(tmp_path, image_folder):
    (image_folder / "README.txt").write_text("not an image")
    (image_folder / "ant" / "notes.txt").write_text("nor this")
    (image_folder / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (image_folder / "bee" / ".hidden.jpg").write_bytes(b"ignored")
    out = tmp_path / "ds"
    manifest = import_imagefolder(image_folder, out, "train", shard_size=5, seed=1)
    assert manifest.classes == ["ant", "bee", "cat"]
    assert manifest.num_samples("train") == 12 and [s.samples for s in manifest.shards("train")] == [5, 5, 2]
    assert sorted(s["source"] for s in manifest.skipped) == ["README.txt", "ant/notes.txt", "bee/broken.jpg"]
    # bytes copied unchanged, labels from sorted folder names, order shuffled across classes
    rows = []
    for path in manifest.shard_paths("train"):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".json"):
                key = name[: -len(".json")]
                src = json.loads(members[name])["src"]
                image = next(v for k, v in members.items() if k.startswith(key + ".") and k[len(key) + 1:] in ("jpg", "png", "webp"))
                assert image == (image_folder / src).read_bytes()
                assert int(members[key + ".cls"]) == manifest.classes.index(src.split("/")[0])
                rows.append((key, src))
    assert len(rows) == 12
    assert [src.split("/")[0] for _, src in rows] != sorted(src.split("/")[0] for _, src in rows)
    assert manifest.split("train")["image"]["formats"] == {"jpeg": 6, "png": 3, "webp": 3}
    again = import_imagefolder(image_folder, tmp_path / "again", "train", shard_size=5, seed=1)
    assert _sha256s(again) == _sha256s(manifest)
    timm_labels = [t for _, t in timm.data.create_dataset("wds/x", root=str(out), split="train")]
    assert timm_labels == [s.label for p in manifest.shard_paths("train") for s in read_shard(p)]


def test_imagefolder_adds_splits_and_checks_classes(tmp_path, image_folder):
    out = tmp_path / "ds"
    import_imagefolder(image_folder, out, "train", shard_size=100)
    manifest = import_imagefolder(image_folder, out, "val", shard_size=100)
    assert sorted(manifest.splits) == ["train", "val"]
    assert sorted(json.loads((out / "_info.json").read_text())["splits"]) == ["train", "val"]
    (image_folder / "dog").mkdir()
    with pytest.raises(DataError, match="classes"):
        import_imagefolder(image_folder, out, "val")
    with pytest.raises(ConfigError, match="letters and digits"):
        import_imagefolder(image_folder, tmp_path / "other", "my-split")
    with pytest.raises(DataError, match="no class folders"):
        import_imagefolder(image_folder / "ant", tmp_path / "other", "train")


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST_SRC / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="needs the Debian package dataset-fashion-mnist (installed by `make test`)")
def test_real_fashion_mnist_matches_checked_in_manifest(tmp_path):
    fresh = import_fashion_mnist(tmp_path)
    checked_in = load_manifest(REPO / "manifests" / "fashion-mnist.json")
    assert _sha256s(fresh) == _sha256s(checked_in)
    assert fresh.to_dict() == checked_in.to_dict()
    labels = [t for _, t in timm.data.create_dataset("wds/fashion-mnist", root=str(tmp_path), split="test")]
    ours = [s.label for p in fresh.shard_paths("test") for s in read_shard(p)]
    assert len(labels) == 10_000 and labels == ours


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_reimport_leaves_the_dataset_as_it_was(tmp_path, fake_fashion_mnist):
    """The train split is rebuilt, then the test split's source turns out corrupt: the folder
    still holds the old shards and the old manifest, byte for byte (no half-replaced dataset
    whose manifest lists shards it no longer holds), and no build folder is left beside it."""
    src, _ = fake_fashion_mnist
    out = tmp_path / "data"
    import_fashion_mnist(out, src=src, shard_size=4)
    before = _files(out)
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="t10k-images"):
        import_fashion_mnist(out, src=src, shard_size=16)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".import.lock")) == ["data", src.name]


def test_reimport_swaps_the_folder_whole_and_keeps_other_files(tmp_path, fake_fashion_mnist):
    src, _ = fake_fashion_mnist
    out = tmp_path / "data"
    import_fashion_mnist(out, src=src, shard_size=4)
    (out / "notes").mkdir()
    (out / "notes" / "README").write_text("ours")
    (out / "LICENSE").write_text("kept")
    old_shard = (out / "train-000000.tar").open("rb")  # a reader in the middle of the old dataset
    manifest = import_fashion_mnist(out, src=src, shard_size=16)
    assert manifest.root == out
    assert (out / "notes" / "README").read_text() == "ours" and (out / "LICENSE").read_text() == "kept"
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(
        s.name for split in ("train", "test") for s in manifest.shards(split))
    assert old_shard.read(512)[:12] == b"train_000000"  # the old file is still whole for whoever has it open
    old_shard.close()
    assert load_manifest(out).to_dict() == manifest.to_dict()


def test_next_import_removes_what_an_interrupted_one_left(tmp_path, fake_fashion_mnist, caplog):
    """An import killed mid-build leaves ``.data.import-*``; one killed between the two renames
    of a swap without renameat2 leaves ``data`` missing and the old dataset in ``.data.old-*``.
    The next import (holding the import turn, so no other import can own them) puts the old
    dataset back, then removes both, and builds as usual."""
    src, _ = fake_fashion_mnist
    out = tmp_path / "data"
    import_fashion_mnist(out, src=src, shard_size=4)
    (out / "LICENSE").write_text("kept")  # a file only the old dataset has: it must survive
    build = tmp_path / ".data.import-killed"
    (build / "half").mkdir(parents=True)
    (build / "train-000000.tar").write_bytes(b"half a shard")
    old = tmp_path / ".data.old-killed"
    old.mkdir()
    out.rename(old / "data")
    other = tmp_path / ".other.import-x"  # another folder's build: not ours to remove
    other.mkdir()
    sibling = tmp_path / ".data.import-b.import-x"  # a live build of a dataset named `data.import-b`
    sibling.mkdir()
    with caplog.at_level("WARNING", logger="pipeline.data.swap"):
        manifest = import_fashion_mnist(out, src=src, shard_size=16)
    assert not build.exists() and not old.exists() and other.exists() and sibling.exists()
    assert (out / "LICENSE").read_text() == "kept"
    assert load_manifest(out).to_dict() == manifest.to_dict()
    assert ".data.import-killed" in caplog.text and "put back from .data.old-killed" in caplog.text
