"""The trainer's stream: deterministic order, lockstep with label partitions, view checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from maskedkd import SoftTarget, TopK
from pipeline.data.shards import write_shards
from pipeline.errors import DataError, StoreError
from pipeline.labels import open_partition, write_partition
from pipeline.labels.contract import LabelRef, ShardRef
from pipeline.train import train_segment
from pipeline.labels.order import EpochOrder, rank_slice
from pipeline.train.stream import load_shard, make_batch
from tests.pipeline.train.helpers import loaded_batches, write_teacher_labels

from .conftest import MIX_SPEC, RENDER, SEED, SPEC, recipe, student, teacher


def rewrite(src: str, dst: str, *, order=None, metadata=None) -> str:
    """Copy a partition, optionally with its rows reordered or its metadata changed."""
    with open_partition(src) as p:
        b = p.read_all()
        record = {k: v for k, v in p.metadata.items() if k not in ("format", "rows", "layout")}
        classes = p.layout.num_classes
    order = np.arange(len(b)) if order is None else np.asarray(order)
    ix = torch.from_numpy(order)
    record.update(metadata or {})
    t = b.target
    write_partition(dst, keys=[b.keys[i] for i in order], labels=b.label[ix].numpy(), keep=b.keep[ix].numpy(),
                    target=TopK(t.idx[ix], t.logit[ix], t.lse[ix]), metadata=record, num_classes=classes,
                    view_columns={k: v[order] for k, v in b.view.items()},
                    extra_lse={tau: v[ix] for tau, v in b.lse_tau.items()})
    return dst


def _loader(calls):
    def load(ref):
        calls.append(ref.name)
        return load_shard(ref, spec=SPEC, seed=SEED, view_epoch=0)
    return load


def test_epoch_order_is_seeded_complete_and_resumable(train_shards):
    def keys(epoch, start=0, calls=None):
        order = EpochOrder(train_shards, seed=SEED, epoch=epoch, batch_size=50)
        return [[s.keys[i] for s, rows in batch for i in rows]
                for batch in loaded_batches(order, _loader(calls if calls is not None else []), start)]

    e0 = keys(0)
    assert len(e0) == 384 // 50 and all(len(b) == 50 for b in e0)
    flat = [k for b in e0 for k in b]
    assert len(set(flat)) == len(flat) == 350  # every row at most once; the last partial batch is dropped
    assert keys(0) == e0 and keys(1) != e0
    calls: list[str] = []
    assert keys(0, start=3, calls=calls) == e0[3:]
    assert len(calls) == 2, "a shard wholly before the start batch is not read"


def test_rank_slices_make_up_the_global_batch(train_shards):
    order = EpochOrder(train_shards, seed=SEED, epoch=0, batch_size=64)
    for batch in loaded_batches(order, _loader([])):
        parts = [make_batch(rank_slice(batch, r, 2), RENDER, num_classes=10, soft=False) for r in range(2)]
        whole = make_batch(batch, RENDER, num_classes=10, soft=False)
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
        assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)


def test_matching_partition_streams_targets(train_shards, labels):
    ref = train_shards[1]
    shard = load_shard(ref, spec=SPEC, seed=SEED, view_epoch=1, label=LabelRef(labels[(ref.name, 1)]), tau=2.0)
    assert len(shard.keys) == ref.rows and isinstance(shard.target, SoftTarget) and not shard.target.dense
    assert shard.target.idx.shape == (ref.rows, 5) and shard.target.tau == 2.0
    with open_partition(labels[(ref.name, 1)]) as p:
        assert p.keys == shard.keys


def test_partition_of_another_shard_is_refused(train_shards, labels):
    path = labels[(train_shards[0].name, 0)]
    with pytest.raises(StoreError, match=path.replace("+", r"\+") + ".*shard"):
        load_shard(train_shards[1], spec=SPEC, seed=SEED, view_epoch=0, label=LabelRef(path))
    with pytest.raises(StoreError, match="view_epoch"):
        load_shard(train_shards[0], spec=SPEC, seed=SEED, view_epoch=1, label=LabelRef(path))


def test_rows_of_another_shard_fail_the_lockstep_check(tmp_path, train_shards, labels):
    wrong = rewrite(labels[(train_shards[0].name, 0)], str(tmp_path / "x.parquet"), metadata={"shard": train_shards[1].name})
    with pytest.raises(StoreError, match=r"x\.parquet: row 0 is key 'train_000000', but shard .* has 'train_000128'"):
        load_shard(train_shards[1], spec=SPEC, seed=SEED, view_epoch=0, label=LabelRef(wrong))


def test_reordered_rows_are_refused(tmp_path, train_shards, labels):
    order = np.arange(128)
    order[[5, 6]] = order[[6, 5]]
    wrong = rewrite(labels[(train_shards[0].name, 0)], str(tmp_path / "r.parquet"), order=order)
    with pytest.raises(StoreError, match=r"r\.parquet: row 5 is key 'train_000006'"):
        load_shard(train_shards[0], spec=SPEC, seed=SEED, view_epoch=0, label=LabelRef(wrong))


def test_labels_on_other_views_are_refused(tmp_path, train_shards):
    ref = train_shards[:1]
    other_seed = write_teacher_labels(tmp_path / "s1", teacher(), ref, spec=SPEC, seed=SEED + 1, view_epochs=[0], render=RENDER)
    path = other_seed[(ref[0].name, 0)]
    with pytest.raises(StoreError, match="computed on other views") as e:
        load_shard(ref[0], spec=SPEC, seed=SEED, view_epoch=0, label=LabelRef(path))
    assert path in str(e.value)
    with pytest.raises(StoreError, match="computed on other views"):
        load_shard(ref[0], spec=MIX_SPEC, seed=SEED + 1, view_epoch=0, label=LabelRef(path))


def test_partition_for_another_subset_is_refused(train_shards, labels):
    ref = train_shards[0]
    short = ShardRef(ref.name, ref.path, 100)
    with pytest.raises(StoreError, match="has 128 rows, the trainer uses the first 100"):
        load_shard(short, spec=SPEC, seed=SEED, view_epoch=0, label=LabelRef(labels[(ref.name, 0)]))


def test_trainer_refuses_missing_or_mismatched_labels(tmp_path, train_shards, labels):
    common = dict(shards=train_shards, spec=SPEC, seed=SEED, render=RENDER)
    only_ve0 = {k: v for k, v in labels.items() if k[1] == 0}
    with pytest.raises(StoreError, match="no label partition given for shard 'train-00000[0-2]', view epoch 1"):
        train_segment(student(), **common, cfg=recipe(), total_epochs=2, run_dir=tmp_path / "a",
                      labels=only_ve0, epochs=range(1, 2))
    swapped = dict(labels)
    a, b = (train_shards[0].name, 0), (train_shards[1].name, 0)
    swapped[a], swapped[b] = labels[b], labels[a]
    with pytest.raises(StoreError, match="expected 'train-00000[01]'"):
        train_segment(student(), **common, cfg=recipe(), total_epochs=1, run_dir=tmp_path / "b", labels=swapped,
                      epochs=range(0, 1))
    with pytest.raises(StoreError, match=r"no logsumexp stored for tau=3\.0"):
        train_segment(student(), **common, cfg=recipe(tau=3.0), total_epochs=1, run_dir=tmp_path / "c", labels=labels,
                      epochs=range(0, 1))


def test_pixels_that_do_not_decode_fail_where_the_row_is_rendered(tmp_path):
    """Loading a shard reads only image headers; a JPEG whose header reads but whose data is cut
    fails when its row is decoded, naming the shard and the key (exit 3)."""
    def jpeg(seed: int) -> bytes:
        noise = np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)  # a long scan
        out = io.BytesIO()
        Image.fromarray(noise).save(out, "JPEG")
        return out.getvalue()

    good, cut = jpeg(0), jpeg(1)
    cut = cut[: len(cut) * 3 // 4]  # SOI..SOS intact: the header reads, the scan is truncated
    items = [(f"k{i}", {"jpg": cut if i == 2 else good, "cls": b"1"}) for i in range(4)]
    (name, n), = write_shards(items, tmp_path, "train", 10)
    shard = load_shard(ShardRef(name.removesuffix(".tar"), tmp_path / name, n), spec=SPEC, seed=SEED, view_epoch=0)
    assert shard.keys == ["k0", "k1", "k2", "k3"] and shard.images.decoded == 0
    make_batch([(shard, np.array([0, 1]))], RENDER, num_classes=10, soft=False)
    assert shard.images.decoded == 2
    with pytest.raises(DataError, match=r"train-000000\.tar: sample 'k2': .*its header reads, its pixels do not") as e:
        make_batch([(shard, np.array([2]))], RENDER, num_classes=10, soft=False)
    assert e.value.exit_code == 3


def test_an_error_in_a_loader_worker_reads_as_ours(tmp_path):
    """A DataError raised in a DataLoader worker process reaches the trainer as a DataError with
    our message (not torch's "Caught DataError in DataLoader worker process 0 ... Traceback")."""
    from pipeline.train.labeled_views import LabeledViews
    from pipeline.train.loop import _close, _unwrapped

    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "JPEG")
    cut = out.getvalue()[: len(out.getvalue()) * 3 // 4]
    (name, n), = write_shards([(f"k{i}", {"jpg": cut, "cls": b"1"}) for i in range(4)], tmp_path, "train", 10)
    ds = LabeledViews([ShardRef(name.removesuffix(".tar"), tmp_path / name, n)], spec=SPEC, seed=SEED, render=RENDER,
                      epoch=0, batch_size=2)
    batches = iter(ds.batch_loader(num_workers=1))
    try:
        with pytest.raises(DataError) as e:
            list(_unwrapped(batches))
    finally:
        _close(batches)
    assert str(e.value).startswith(f"shard {tmp_path / name}: sample 'k") and "Traceback" not in str(e.value)
    assert e.value.exit_code == 3
