"""Teacher logits -> partition -> reader -> kd_loss, and everything else the reader gives back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskedkd import TopK, from_logits, kd_loss, logsumexp_at
from pipeline.labels import open_partition, write_partition

from .conftest import C, K, N, P


@pytest.fixture(scope="module")
def student():
    return torch.randn(N, C, generator=torch.Generator().manual_seed(7)) * 2


def test_topk_round_trip_matches_in_memory_loss(write, data, student):
    result = write()
    batch = open_partition(result.path).read_all()
    expected = from_logits(data["logits"], K)
    assert torch.equal(batch.target.idx, expected.idx)
    assert batch.target.idx.dtype == torch.int64 and batch.target.logit.dtype == torch.float32
    # logits come back within float16 rounding of the log-probabilities they are stored as
    assert torch.allclose(batch.target.logit, expected.logit, atol=2e-3 * (1 + expected.lse.abs().max()))
    assert torch.equal(batch.target.lse, expected.lse)
    stored, memory = kd_loss(student, batch.target), kd_loss(student, expected)
    assert stored.item() == pytest.approx(memory.item(), rel=1e-3, abs=1e-4)
    # and the stored K+1 buckets really carry the teacher: a different teacher gives another loss
    assert kd_loss(student, from_logits(data["logits"].roll(1, 0), K)).item() != pytest.approx(memory.item(), rel=1e-2)


def test_topk_all_round_trip_is_the_full_kl(write, data, student, tmp_path):
    result = write(path=str(tmp_path / "all.parquet"), target=data["logits"], num_classes=None)
    with open_partition(result.path) as partition:
        assert partition.layout.topk == "all"
        stored = partition.read_all().target
    assert stored.dense and stored.logit.shape == (N, C) and stored.logit.dtype == torch.float32
    full_kl = F.kl_div(F.log_softmax(student, 1), F.log_softmax(data["logits"], 1), log_target=True, reduction="batchmean")
    assert kd_loss(student, stored).item() == pytest.approx(full_kl.item(), rel=1e-3)
    assert kd_loss(student, stored, tau=4.0).item() == pytest.approx(kd_loss(student, data["logits"], tau=4.0).item(), rel=1e-3)


def test_extra_temperature_gives_the_loss_at_that_tau(write, data, student):
    result = write(extra_lse=logsumexp_at(data["logits"], [2.0, 0.5]))
    batch = open_partition(result.path).read_all()
    assert sorted(batch.lse_tau) == [0.5, 2.0]
    top = from_logits(data["logits"], K)
    for tau in (2.0, 0.5):
        expected = TopK(top.idx, top.logit, torch.logsumexp(data["logits"] / tau, 1), tau)
        got = kd_loss(student, batch.target_at(tau), tau=tau).item()
        assert got == pytest.approx(kd_loss(student, expected, tau=tau).item(), rel=2e-3)
    with pytest.raises(ValueError, match="tau=3"):
        batch.target_at(3.0)


def test_every_column_comes_back(write, data):
    result = write(view_columns=data["views"])
    with open_partition(result.path) as partition:
        batch = partition.read_all()
        assert partition.keys == data["keys"] == batch.keys
        assert partition.layout.view_columns == ("view_box", "view_flip", "view_partner")
    assert batch.label.dtype == torch.int64 and batch.label.tolist() == data["labels"].tolist()
    assert batch.keep.dtype == torch.bool and batch.keep.shape == (N, P)
    assert np.array_equal(batch.keep.numpy(), data["keep"])
    for name, value in data["views"].items():
        assert batch.view[name].dtype == value.dtype and np.array_equal(batch.view[name], value), name


def test_batches_stream_in_row_order_and_agree_with_read_all(write, data, monkeypatch):
    import pipeline.labels.reader as reader

    monkeypatch.setattr(reader, "CHUNK_ROWS", 64)  # several chunks, batches sliced out of them
    result = write(view_columns=data["views"])
    with open_partition(result.path) as partition:
        whole = partition.read_all()
        batches = list(partition.iter_batches(batch_size=50))
        assert [len(b) for b in batches] == [50] * 6
        assert [len(b) for b in partition.iter_batches(batch_size=128)] == [128, 128, 44]
        assert sum((b.keys for b in batches), []) == data["keys"]
        assert torch.equal(torch.cat([b.target.logit for b in batches]), whole.target.logit)
        assert torch.equal(torch.cat([b.keep for b in batches]), whole.keep)
        assert np.array_equal(np.concatenate([b.view["view_box"] for b in batches]), whole.view["view_box"])
        trainer = next(partition.iter_batches(10, columns=("keys", "target")))
        assert trainer.keep is None and trainer.label is None and trainer.view == {} and len(trainer) == 10
        with pytest.raises(ValueError, match="unknown column"):
            next(partition.iter_batches(10, columns=("logits",)))


def test_same_inputs_give_the_same_bytes(write, tmp_path):
    first = write()
    again = write(path=str(tmp_path / "again.parquet"))
    assert first.sha256 == again.sha256 and first.rows == N and first.bytes == again.bytes


def test_more_than_65536_classes_use_int32_indices(tmp_path, metadata):
    n, classes = 4, 70_000
    logits = torch.randn(n, classes, generator=torch.Generator().manual_seed(0))
    logits[:, classes - 1] += 20  # the top class needs more than 16 bits
    metadata["counters"]["rows_computed"] = n
    result = write_partition(str(tmp_path / "big.parquet"), keys=list("abcd"), labels=np.zeros(n), keep=np.ones((n, 4), bool),
                             target=from_logits(logits, 3), metadata=metadata, num_classes=classes)
    with open_partition(result.path) as partition:
        assert str(partition.schema.field("topk_idx").type) == "fixed_size_list<element: int32>[3]"
        assert partition.read_all().target.idx[:, 0].tolist() == [classes - 1] * n


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(keys=["same"] * N), "unique"),
        (dict(keep=np.zeros((N, P), np.uint8)), "bool"),
        (dict(num_classes=None), "num_classes"),
        (dict(num_classes=3), "outside"),
        (dict(view_columns={"lse": np.zeros(N)}), "reserved"),
        (dict(view_columns={"shard": np.zeros(N)}), "reserved"),  # a Hive key of the path
        (dict(view_columns={"ok": np.zeros(N - 1)}), "rows"),
    ],
)
def test_bad_writer_input_is_refused_naming_it(write, override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        write(path=str(tmp_path / "x.parquet"), **override)
    assert not (tmp_path / "x.parquet").exists()


def test_non_finite_teacher_output_is_refused(write, data, tmp_path):
    logits = data["logits"].clone()
    logits[17, 3] = float("nan")
    with pytest.raises(ValueError, match="row 17"):
        write(path=str(tmp_path / "x.parquet"), target=from_logits(logits, K))


def test_bad_metadata_is_refused_naming_the_field(write, metadata, tmp_path):
    metadata["fingerprints"]["teacher"] = "not-a-sha"
    with pytest.raises(ValueError, match="fingerprints.teacher"):
        write(path=str(tmp_path / "x.parquet"), metadata=metadata)
    metadata["fingerprints"]["teacher"] = "0" * 64
    metadata["counters"]["rows_reused"] = 5
    with pytest.raises(ValueError, match="rows_computed"):
        write(path=str(tmp_path / "x.parquet"), metadata=metadata)
