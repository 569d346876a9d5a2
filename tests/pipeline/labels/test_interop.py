"""A partition is plain Parquet: pandas and pyarrow read it with no project code."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from .conftest import C, K, N


def test_pandas_and_pyarrow_read_a_partition(write, data):
    path = write(view_columns=data["views"]).path
    df = pd.read_parquet(path)
    assert list(df.columns) == ["key", "label", "view_box", "view_flip", "view_partner", "keep", "topk_idx", "topk_logit", "lse"]
    assert df["key"].tolist() == data["keys"] and df["label"].tolist() == data["labels"].tolist()
    # topk_logit + lse are the teacher's logits; exp(topk_logit) its probabilities
    logits = np.stack(df["topk_logit"].to_numpy()).astype(np.float32) + df["lse"].to_numpy()[:, None]
    top = torch.from_numpy(np.stack(df["topk_idx"].to_numpy()).astype(np.int64))
    assert np.allclose(logits, data["logits"].gather(1, top).numpy(), atol=0.02)
    keep = np.unpackbits(np.frombuffer(b"".join(df["keep"]), np.uint8).reshape(N, -1), axis=1, bitorder="little")
    assert np.array_equal(keep[:, : data["keep"].shape[1]].astype(bool), data["keep"])

    table = pq.read_table(path)
    assert table.num_rows == N and str(table.schema.field("topk_idx").type) == f"fixed_size_list<element: uint16>[{K}]"
    record = json.loads(pq.ParquetFile(path).metadata.metadata[b"mkd.partition"])
    assert record["layout"]["num_classes"] == C and record["rows"] == N
