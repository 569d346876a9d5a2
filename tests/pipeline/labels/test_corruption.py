"""Broken or foreign partitions: each is refused with a StoreError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipeline._fingerprint import sha256_json
from pipeline.errors import StoreError
from pipeline.labels import open_partition
from pipeline.labels.schema import METADATA_KEY, RECORD_SHA256_KEY

from .conftest import N


def _read(path, **kwargs):
    with open_partition(path, **kwargs) as partition:
        return partition.read_all()


def _same(a, b) -> bool:
    return a.keys == b.keys and all(
        torch.equal(x, y)
        for x, y in [(a.label, b.label), (a.keep, b.keep), (a.target.idx, b.target.idx),
                     (a.target.logit, b.target.logit), (a.target.lse, b.target.lse)]
    )


def _flipped(raw: bytes, pos: int) -> bytes:
    out = bytearray(raw)
    out[pos] ^= 0x10
    return bytes(out)


@pytest.mark.parametrize("keep_bytes", [0, 8, 100, -1, -8, -200])
def test_truncated_file(write, tmp_path, keep_bytes):
    path = write().path
    raw = Path(path).read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(raw[:keep_bytes] if keep_bytes >= 0 else raw[:keep_bytes])
    with pytest.raises(StoreError, match=str(bad)) as err:
        _read(str(bad))
    assert "truncated or corrupt" in str(err.value)


def test_flipped_byte_in_any_column_data_fails_its_page_checksum(write, tmp_path):
    path = write().path
    raw = Path(path).read_bytes()
    footer = pq.ParquetFile(path).metadata.row_group(0)
    bad = tmp_path / "bad.parquet"
    for c in range(footer.num_columns):
        chunk = footer.column(c)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        # the last bytes of a column chunk are page data (headers come first)
        bad.write_bytes(_flipped(raw, start + chunk.total_compressed_size - 3))
        with pytest.raises(StoreError, match=f"{bad}: corrupt column data"):
            _read(str(bad))


def test_a_flipped_byte_anywhere_never_gives_other_data(write, tmp_path):
    path = write().path
    raw = Path(path).read_bytes()
    good = _read(path)
    sha = write().sha256
    bad = tmp_path / "bad.parquet"
    detected = 0
    for pos in range(0, len(raw), max(1, len(raw) // 60)):
        bad.write_bytes(_flipped(raw, pos))
        try:
            assert _same(_read(str(bad)), good), f"byte {pos} flipped gave other data silently"
        except StoreError as e:
            assert str(bad) in str(e)
            detected += 1
        # with the run lock's sha256 every flip is caught before reading
        with pytest.raises(StoreError, match=f"{bad}: sha256 is"):
            open_partition(str(bad), sha256=sha)
    assert detected >= 50


def test_metadata_naming_another_teacher(write, metadata):
    path = write().path
    other = sha256_json("another teacher")
    with pytest.raises(StoreError, match=f"{path}: metadata field 'fingerprints.teacher' is '{metadata['fingerprints']['teacher']}', expected '{other}'"):
        open_partition(path, expect={"fingerprints": {"teacher": other}})
    with pytest.raises(StoreError, match="metadata field 'view_epoch' is 0, expected 1"):
        open_partition(path, expect={"view_epoch": 1, "shard": metadata["shard"]})
    open_partition(path, expect={"fingerprints": metadata["fingerprints"], "shard": metadata["shard"]}).close()


def test_rows_in_the_wrong_order_for_the_shard(write, data):
    order = list(range(N))
    order[5], order[9] = order[9], order[5]
    path = write(keys=[data["keys"][i] for i in order], labels=data["labels"][order], keep=data["keep"][order]).path
    with pytest.raises(StoreError, match=rf"{path}: rows are in the wrong order for shard 'train-000000': row 5 is 'train_0000009'"):
        open_partition(path, expect_keys=data["keys"])
    with pytest.raises(StoreError, match=rf"{path}: keys do not match shard .* {N} rows, shard has {N - 1}"):
        open_partition(path, expect_keys=data["keys"][:-1])
    open_partition(path, expect_keys=[data["keys"][i] for i in order]).close()


def test_missing_file_and_not_a_partition(tmp_path):
    with pytest.raises(StoreError, match="no such partition"):
        open_partition(str(tmp_path / "nope.parquet"))
    import pyarrow as pa

    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"key": ["a"]}), plain)
    with pytest.raises(StoreError, match=f"{plain}: no 'mkd.partition' metadata"):
        open_partition(str(plain))


def _rewrite(path, dest, table=None, record=None):
    """Write ``dest`` like ``path`` but with another table and/or record (sha256 kept valid)."""
    from pipeline._fingerprint import canonical_json, sha256_bytes

    source = pq.ParquetFile(path)
    kv = source.metadata.metadata
    raw = canonical_json(record) if record is not None else kv[METADATA_KEY]
    table = table if table is not None else source.read()
    with pq.ParquetWriter(dest, table.schema) as w:
        w.write_table(table)
        w.add_key_value_metadata({METADATA_KEY: raw, RECORD_SHA256_KEY: sha256_bytes(raw).encode()})


def test_wrong_column_type_and_unknown_format(write, tmp_path):
    import pyarrow as pa

    path = write().path
    table = pq.read_table(path)
    i = table.schema.get_field_index("topk_logit")
    wrong = table.set_column(i, pa.field("topk_logit", pa.list_(pa.float32(), 5)), table.column(i).cast(pa.list_(pa.float32(), 5)))
    _rewrite(path, tmp_path / "type.parquet", table=wrong)
    with pytest.raises(StoreError, match=r"type.parquet: column 'topk_logit' has type fixed_size_list<element: float>\[5\], expected"):
        open_partition(str(tmp_path / "type.parquet"))
    record = json.loads(pq.ParquetFile(path).metadata.metadata[METADATA_KEY])
    record["format"] = "mkd-label-partition/2"
    _rewrite(path, tmp_path / "v2.parquet", record=record)
    with pytest.raises(StoreError, match="v2.parquet: metadata field 'format' is 'mkd-label-partition/2'"):
        open_partition(str(tmp_path / "v2.parquet"))
