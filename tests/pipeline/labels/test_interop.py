"""A partition is plain Parquet: pandas, pyarrow, DuckDB and Polars read every column with no project code."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import torch

from pipeline.labels import partition_path

from .conftest import C, K, N

COLUMNS = ["key", "label", "view_box", "view_flip", "view_partner", "keep", "topk_idx", "topk_logit", "lse"]


def check_columns(columns: dict, data) -> None:
    """Every column of a partition written by the ``write`` fixture, as plain Python/numpy values, equals the input."""
    assert list(columns) == COLUMNS
    assert list(columns["key"]) == data["keys"] and list(columns["label"]) == data["labels"].tolist()
    assert np.array_equal(np.asarray(list(columns["view_box"]), np.float32), data["views"]["view_box"])
    assert list(columns["view_flip"]) == data["views"]["view_flip"].tolist()
    assert list(columns["view_partner"]) == data["views"]["view_partner"].tolist()
    keep = np.unpackbits(np.frombuffer(b"".join(columns["keep"]), np.uint8).reshape(N, -1), axis=1, bitorder="little")
    assert np.array_equal(keep[:, : data["keep"].shape[1]].astype(bool), data["keep"])
    # topk_logit + lse are the teacher's logits; exp(topk_logit) its probabilities
    top = torch.from_numpy(np.asarray(list(columns["topk_idx"]), np.int64))
    assert top.shape == (N, K) and torch.equal(top, data["logits"].topk(K, dim=1).indices)
    logits = np.asarray(list(columns["topk_logit"]), np.float32) + np.asarray(columns["lse"], np.float32)[:, None]
    assert np.allclose(logits, data["logits"].gather(1, top).numpy(), atol=0.02)


def test_pandas_and_pyarrow_read_a_partition(write, data):
    path = write(view_columns=data["views"]).path
    df = pd.read_parquet(path)
    assert list(df.columns) == COLUMNS
    check_columns({name: df[name].tolist() for name in df.columns}, data)

    table = pq.read_table(path)
    assert table.num_rows == N and str(table.schema.field("topk_idx").type) == f"fixed_size_list<element: uint16>[{K}]"
    check_columns(table.to_pydict(), data)
    record = json.loads(pq.ParquetFile(path).metadata.metadata[b"mkd.partition"])
    assert record["layout"]["num_classes"] == C and record["rows"] == N


def test_duckdb_reads_every_column(write, data):
    path = write(view_columns=data["views"]).path
    # DuckDB adds the path's Hive columns by itself, also for one file: the file's own columns alone here
    result = duckdb.sql(f"select * from read_parquet('{path}', hive_partitioning = false)")
    rows = result.fetchall()
    check_columns(dict(zip(result.columns, zip(*rows))), data)
    assert duckdb.sql(f"select * exclude (teacher, shard, epoch) from '{path}'").fetchall() == rows


def test_polars_reads_every_column(write, data):
    path = write(view_columns=data["views"]).path
    df = pl.read_parquet(path)
    check_columns({name: df[name].to_list() for name in df.columns}, data)


def test_duckdb_globs_a_store_with_hive_columns(write, data, metadata, tmp_path):
    """``teacher``, ``shard`` and ``epoch`` come from the Hive-style path and clash with no stored column."""
    store = tmp_path / "store"
    for shard, view_epoch in [("train-000000", 0), ("train-000000", 1), ("train-000001", 0)]:
        md = {**metadata, "shard": shard, "view_epoch": view_epoch}
        write(path=partition_path(str(store), shard=shard, view_epoch=view_epoch, fingerprints=md["fingerprints"]),
              metadata=md, view_columns=data["views"])
    rows = duckdb.sql(
        f"select teacher, shard, epoch, count(*), count(distinct key), avg(exp(topk_logit[1])) "
        f"from read_parquet('{store}/**/*.parquet', hive_partitioning = true) group by all order by all"
    ).fetchall()
    teacher = metadata["fingerprints"]["teacher"][:12]
    confidence = float(torch.softmax(data["logits"], dim=1).max(dim=1).values.mean())
    assert [r[:5] for r in rows] == [(teacher, "train-000000", 0, N, N), (teacher, "train-000000", 1, N, N),
                                     (teacher, "train-000001", 0, N, N)]
    assert all(abs(r[5] - confidence) < 1e-3 for r in rows)
    # Polars reads the same glob the same way
    counts = (pl.scan_parquet(f"{store}/**/*.parquet", hive_partitioning=True)
              .group_by("shard", "epoch").len().sort("shard", "epoch").collect().rows())
    assert counts == [("train-000000", 0, N), ("train-000000", 1, N), ("train-000001", 0, N)]
