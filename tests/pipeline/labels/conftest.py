"""Small real partitions for the label store tests (synthetic teacher outputs, real Parquet)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from maskedkd import from_logits
from pipeline.labels import partition_path, write_partition
from tests.pipeline.labels.helpers import partition_metadata, teacher_outputs

N, C, K, P = 300, 50, 5, 49


@pytest.fixture(scope="session")
def data():
    """keys, labels, keep [N, P], logits [N, C] (torch) and view columns."""
    d = teacher_outputs(N, C, P, seed=3)
    d["logits"] = torch.from_numpy(d["logits"]) * 0.7
    rng = np.random.default_rng(4)
    d["views"] = {
        "view_box": rng.random((N, 4), dtype=np.float32),
        "view_flip": rng.random(N) < 0.5,
        "view_partner": np.array([f"train_{(i + 1) % N:07d}" for i in range(N)], dtype=object),
    }
    return d


@pytest.fixture
def metadata():
    return copy.deepcopy(partition_metadata(N))


@pytest.fixture
def write(tmp_path, data, metadata):
    """write(**overrides) -> WriteResult of a top-K partition in a store under tmp_path."""

    def _write(path=None, **overrides):
        md = overrides.pop("metadata", metadata)
        path = path or partition_path(str(tmp_path / "store"), shard=md["shard"], view_epoch=md["view_epoch"],
                                      fingerprints=md["fingerprints"])
        kwargs = dict(keys=data["keys"], labels=data["labels"], keep=data["keep"],
                      target=from_logits(data["logits"], K), metadata=md, num_classes=C)
        kwargs.update(overrides)
        return write_partition(path, **kwargs)

    return _write
