"""The shard writer's determinism and the reader's safety: real tars, real codecs."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest

from pipeline.data.shards import (
    ShardWriter,
    Skipped,
    decode_image,
    read_shard,
    read_shard_raw,
    write_shards,
)
from pipeline.errors import DataError
from tests.pipeline.data.helpers import encode, rgb, write_raw_tar


def _samples(n: int):
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")]
    for i in range(n):
        ext, fmt = formats[i % 3]
        yield f"train_{i:06d}", {ext: encode(rgb(i), fmt), "cls": str(i % 7).encode()}


def test_round_trip_in_tar_order(tmp_path):
    written = write_shards(_samples(7), tmp_path, "train", shard_size=3)
    assert written == [("train-000000.tar", 3), ("train-000001.tar", 3), ("train-000002.tar", 1)]
    samples = [s for name, _ in written for s in read_shard(tmp_path / name)]
    assert [s.key for s in samples] == [f"train_{i:06d}" for i in range(7)]
    assert [s.label for s in samples] == [i % 7 for i in range(7)]
    assert np.array_equal(np.asarray(samples[0].image), rgb(0))  # PNG is lossless
    assert samples[1].image.format == "JPEG" and samples[2].image.format == "WEBP"
    assert all(s.image.size == (30, 20) for s in samples)


def test_writer_is_byte_deterministic(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_shards(_samples(4), tmp_path / "a", "train", 10)
    write_shards(_samples(4), tmp_path / "b", "train", 10)
    a, b = (tmp_path / d / "train-000000.tar" for d in "ab")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:2]] == ["train_000000.cls", "train_000000.png"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}
    assert not list(tmp_path.rglob("*.tmp"))


def test_writer_leaves_no_partial_file_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "train-000000.tar") as w:
            w.write("train_000000", {"cls": b"1"})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bad_samples_are_skipped_and_reported(tmp_path):
    png = encode(rgb(1), "PNG")
    shard = write_raw_tar(tmp_path / "train-000000.tar", [
        ("a.png", png), ("a.cls", b"1"),
        ("b.png", png[:40] + b"\0" * 200), ("b.cls", b"2"),  # corrupt PNG
        ("c.png", png),  # no .cls
        ("d.cls", b"4"), ("d.png", png),  # members in either order are fine
        ("a.png", png), ("a.cls", b"9"),  # duplicate key, not adjacent
        ("e.png", png), ("e.cls", b"5"), ("e.png", png),  # repeated member
        ("f.png", png), ("f.cls", b"x1"),  # .cls not an integer
        ("g.json", b"{}"), ("g.cls", b"7"),  # no image
    ])
    report: list = []
    samples = list(read_shard(shard, report=report))
    assert [(s.key, s.label) for s in samples] == [("a", 1), ("d", 4), ("e", 5)]
    reasons = {key: reason for key, reason in report}
    assert len(report) == 6 and all(isinstance(r, Skipped) for r in report)
    assert "cannot decode" in reasons["b"]
    assert reasons["c"] == "no .cls member"
    assert reasons["a"] == "duplicate key"
    assert "duplicate key" in reasons["e"]
    assert "ASCII integer" in reasons["f"]
    assert "no image" in reasons["g"]
    # the raw reader agrees on everything but decoding
    assert [s.key for s in read_shard_raw(shard)] == ["a", "b", "d", "e"]


@pytest.mark.parametrize("cut", ["mid-member", "member-boundary", "in-header"])
def test_truncated_tar_raises_naming_the_shard(tmp_path, cut):
    write_shards(_samples(3), tmp_path, "train", 10)
    shard = tmp_path / "train-000000.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    cut_at = {"mid-member": last.offset_data + 100, "member-boundary": last.offset, "in-header": last.offset + 100}[cut]
    shard.write_bytes(data[:cut_at])
    with pytest.raises(DataError, match="train-000000.tar.*truncated"):
        list(read_shard(shard))


def test_missing_or_garbage_shard_raises(tmp_path):
    with pytest.raises(DataError, match="nope.tar does not exist"):
        list(read_shard(tmp_path / "nope.tar"))
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match="junk.tar"):
        list(read_shard(tmp_path / "junk.tar"))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    big = encode(np.zeros((200, 300, 3), np.uint8), "PNG")
    with pytest.raises(ValueError, match="decompression-bomb"):
        decode_image(big, max_pixels=10_000)
    shard = write_raw_tar(tmp_path / "s.tar", [("a.png", big), ("a.cls", b"0")])
    report: list = []
    assert list(read_shard(shard, report=report, max_pixels=10_000)) == []
    assert "decompression-bomb" in report[0].reason


def test_only_image_formats_are_decoded(tmp_path):
    gif = encode(rgb(2), "GIF")
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image(gif)


class _Exploit:
    """Unpickling this creates a marker file: proof that nobody unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_members_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    png = encode(rgb(3), "PNG")
    shard = write_raw_tar(tmp_path / "s.tar", [
        ("a.png", png), ("a.cls", b"1"), ("a.pyd", payload), ("a.pth", payload),
        ("b.pickle", payload), ("b.cls", b"2"),
    ])
    report: list = []
    assert [s.key for s in read_shard(shard, report=report)] == ["a"]
    assert report == [("b", "no image member (.jpg/.png/.webp)")]
    assert not marker.exists()



def test_verifying_reader_hashes_while_streaming(tmp_path):
    from pipeline._fingerprint import sha256_file
    from pipeline.data.shards import ShardChangedError

    (name, _), = write_shards(_samples(4), tmp_path, "train", shard_size=4)
    path = tmp_path / name
    digest = sha256_file(path)
    assert [s.key for s in read_shard(path, sha256=digest)] == [f"train_{i:06d}" for i in range(4)]
    assert [s.key for s in read_shard(path, sha256=digest, limit=2)] == ["train_000000", "train_000001"]

    # the same keys with other image bytes (an import of other data into the same folder)
    (tmp_path / "other").mkdir()
    (other, _), = write_shards(((k, {"png": encode(rgb(100 + i), "PNG"), "cls": b"1"}) for i, (k, _) in
                                enumerate(_samples(4))), tmp_path / "other", "train", shard_size=4)
    path.write_bytes((tmp_path / "other" / other).read_bytes())
    seen = []
    with pytest.raises(ShardChangedError, match=f"shard {path}: its bytes do not match the dataset manifest") as e:
        for s in read_shard(path, sha256=digest):
            seen.append(s.key)
    # raised once the whole tar is read, before its last sample reaches the consumer
    assert seen == ["train_000000", "train_000001", "train_000002"] and e.value.exit_code == 3
    with pytest.raises(ShardChangedError):  # a subset still hashes the whole shard
        list(read_shard(path, sha256=digest, limit=1))
    with pytest.raises(ShardChangedError):
        list(read_shard_raw(path, sha256=digest))


def test_limit_reports_only_skips_before_it(tmp_path):
    from pipeline._fingerprint import sha256_file

    members = [("a.png", encode(rgb(0), "PNG")), ("a.cls", b"1"), ("b.png", encode(rgb(1), "PNG")), ("b.cls", b"x")]
    path = write_raw_tar(tmp_path / "s.tar", members)
    report: list = []
    assert [s.key for s in read_shard(path, report=report, sha256=sha256_file(path), limit=1)] == ["a"]
    assert report == []  # b's bad .cls lies past the limit: read for the hash, not reported
