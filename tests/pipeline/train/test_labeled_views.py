"""The public dataset (pipeline.LabeledViews) on real shards and real label partitions: the
trainer's order through a DataLoader with workers, DDP rank slices, top-K collation, refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskedkd import kd_loss
from pipeline import LabeledView, LabeledViews, collate
from pipeline.errors import ConfigError, StoreError
from pipeline.train.labeled_views import LoaderWorkers
from pipeline.labels.order import EpochOrder
from pipeline.train.stream import load_shard
from tests.pipeline.train.helpers import loaded_batches

from .conftest import MIX_SPEC, RENDER, SEED, SPEC, student


def views(shards, labels=None, **kw) -> LabeledViews:
    args = dict(spec=SPEC, seed=SEED, render=RENDER, epoch=1, batch_size=64, order_seed=3, labels=labels, view_pool=2,
                tau=2.0, num_classes=10)
    return LabeledViews(shards, **{**args, **kw})


def test_a_dataloader_with_workers_yields_the_trainers_batches(train_shards, labels):
    ds = views(train_shards, labels)
    assert ds.steps == 384 // 64 and len(ds) == 384 // 64 * 64
    trainer = loaded_batches(EpochOrder(train_shards, seed=3, epoch=1, batch_size=64),
                             lambda ref: load_shard(ref, spec=SPEC, seed=SEED, view_epoch=1))
    want_keys = [[s.keys[i] for s, rows in b for i in rows] for b in trainer]
    plain = list(ds.loader(num_workers=0))
    assert [b.key for b in plain] == want_keys
    two = list(ds.loader(num_workers=2))
    assert [b.key for b in two] == want_keys, "two workers give the same batches in the same order"
    for a, b in zip(plain, two):
        torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
        torch.testing.assert_close(a.target.logit, b.target.logit, rtol=0, atol=0)
    first = plain[0]
    assert first.image.shape == (64, 1, 28, 28) and first.label.dtype == torch.int64 and first.label.shape == (64,)
    assert first.target.idx.shape == (64, 5) and first.target.tau == 2.0  # top-5 at the stored tau 2 logsumexp
    loss = kd_loss(student()(first.image), first.target, tau=2.0)
    assert torch.isfinite(loss) and loss > 0


def test_rank_slices_make_up_the_world_size_one_batches(train_shards, labels):
    one = list(views(train_shards, labels).batches())
    ranks = [list(views(train_shards, labels, rank=r, world=2).batches()) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for b, r0, r1 in zip(one, *ranks):
        assert len(r0) == len(r1) == 32
        torch.testing.assert_close(torch.cat([r0.images, r1.images]), b.images, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([r0.teacher.lse, r1.teacher.lse]), b.teacher.lse, rtol=0, atol=0)


def test_items_collate_into_batches_and_mixed_labels_are_vectors(train_shards):
    ds = views(train_shards, spec=MIX_SPEC)
    items = [it for _, it in zip(range(5), ds)]
    assert all(isinstance(it, LabeledView) and it.target is None for it in items)
    batch = collate(items)
    assert batch.image.shape == (5, 1, 28, 28) and batch.label.shape == (5, 10)
    torch.testing.assert_close(batch.label.sum(1), torch.ones(5))
    assert batch.key == [it.key for it in items]


def test_missing_or_mismatched_partitions_are_refused_like_the_trainer(train_shards, labels):
    only_ve0 = {k: v for k, v in labels.items() if k[1] == 0}
    with pytest.raises(StoreError, match="no label partition given for shard 'train-00000[0-2]', view epoch 1") as e:
        views(train_shards, only_ve0)
    assert e.value.exit_code == 4
    swapped = dict(labels)
    a, b = (train_shards[0].name, 1), (train_shards[1].name, 1)
    swapped[a], swapped[b] = labels[b], labels[a]
    with pytest.raises(StoreError, match="expected 'train-00000[01]'"):
        list(views(train_shards, swapped).loader(num_workers=0))


def _decoded(ds: LabeledViews, **kw) -> tuple[int, int]:
    """(images decoded, rows rendered) when ``ds`` renders its batches (``kw``: worker, workers)."""
    shards: dict[str, object] = {}
    rows = 0
    for plan in ds.plans(**kw):
        ds.render(plan)
        for shard, r in plan:
            shards[shard.ref.name] = shard
            rows += len(r)
    return sum(s.images.decoded for s in shards.values()), rows


def test_each_rank_and_each_worker_decodes_only_its_own_rows(train_shards, labels):
    whole, rows = _decoded(views(train_shards, labels))
    assert whole == rows == 384
    ranks = [_decoded(views(train_shards, labels, rank=r, world=2)) for r in (0, 1)]
    assert ranks == [(192, 192), (192, 192)], "world size 2: every rank decodes half the images"
    workers = [_decoded(views(train_shards, labels), worker=k, workers=2) for k in (0, 1)]
    assert [d for d, _ in workers] == [r for _, r in workers] and sum(d for d, _ in workers) == 384
    # window mixing: partners are decoded too, and only once per rank however many rows mix with them
    window = dataclasses.replace(MIX_SPEC, mix_mode="window")
    mixed, mixed_rows = _decoded(views(train_shards, spec=window, rank=0, world=2))
    assert mixed_rows == 192 < mixed <= 384
    # pair mixing: every partner is a row of the same rank's batch, nothing more is decoded
    assert _decoded(views(train_shards, spec=MIX_SPEC, rank=0, world=2)) == (192, 192)


@pytest.mark.parametrize("spec", [SPEC, MIX_SPEC, dataclasses.replace(MIX_SPEC, mix_mode="window", reprob=0.5)])
def test_the_trainers_batch_loader_gives_the_same_batches_from_worker_processes(train_shards, labels, spec):
    """Workers send uint8 renders (with window mixing also the partners from outside the batch),
    finished where they are used into the very floats the training process renders itself."""
    ds = views(train_shards, labels if spec is SPEC else None, rank=1, world=2, spec=spec)
    inline = list(ds.batch_loader(2))
    pooled = list(ds.batch_loader(2, num_workers=2))
    assert len(inline) == len(pooled) == ds.steps - 2
    for a, b in zip(inline, pooled):
        assert a.keys == b.keys and a.seeds == b.seeds and b.segments == []  # the shards stay in the worker
        assert b.images is None and all(p.pixels.dtype == torch.uint8 for p in b.pixels)
        torch.testing.assert_close(a.images_on("cpu"), b.images_on("cpu"), rtol=0, atol=0)
        if spec is not SPEC:
            continue
        torch.testing.assert_close(a.teacher.logit, b.teacher.logit, rtol=0, atol=0)
        torch.testing.assert_close(a.targets, b.targets, rtol=0, atol=0)


def test_a_worker_reads_ahead_only_the_shards_it_will_use(train_shards, labels):
    """Three 128-row shards, global batch 128, three loader workers: each worker's batches come
    from one shard, and that is the only shard it reads (none read ahead for another worker)."""
    used = []
    for k in range(3):
        ds = views(train_shards, labels, batch_size=128)
        loaded: list[str] = []
        real = ds.load
        ds.load = lambda ref, real=real, loaded=loaded: (loaded.append(ref.name), real(ref))[1]
        names = {shard.ref.name for plan in ds.plans(worker=k, workers=3, read_ahead=True) for shard, _ in plan}
        assert loaded == sorted(names) and len(loaded) == 1, (k, loaded, names)
        used += loaded
    assert sorted(used) == sorted(s.name for s in train_shards)


@pytest.mark.parametrize("world", [1, 2])
def test_lanes_resume_mid_epoch_exactly_with_or_without_loader_workers(train_shards, labels, world):
    """Interleaved lanes: batch ``start`` onwards equals the uninterrupted epoch's, for 0 or 2 loader
    workers (with world 1 the two workers split the rank's two lanes, with world 2 take batches in turn),
    and the world size 2 ranks make up the world size 1 batch."""
    def keys(rank, start=0, workers=0):
        ds = views(train_shards, labels, rank=rank, world=world, lanes=2, interleave=2, batch_size=32)
        return [b.keys for b in ds.batch_loader(start, num_workers=workers)]

    for rank in range(world):
        whole = keys(rank)
        assert len(whole) == 384 // 32 and keys(rank, 5) == whole[5:]
        assert keys(rank, 5, workers=2) == whole[5:]
    one = views(train_shards, labels, lanes=2, interleave=2, batch_size=32)
    assert one.splits_lanes(2) and not views(train_shards, labels, lanes=2, batch_size=32, rank=0, world=2).splits_lanes(2)
    if world == 2:
        assert [a + b for a, b in zip(keys(0), keys(1))] == [b.keys for b in one.batches()]


def test_every_mixed_rows_partner_is_in_the_same_ranks_batch(train_shards):
    for world in (1, 2):
        for rank in range(world):
            ds = views(train_shards, spec=MIX_SPEC, rank=rank, world=world, lanes=2, interleave=3, batch_size=32)
            for plan in ds.plans():
                keys = {shard.keys[i] for shard, rows in plan for i in rows}
                partners = [shard.views[i].partner for shard, rows in plan for i in rows if shard.views[i].partner]
                assert partners and set(partners) <= keys


@pytest.mark.parametrize("lanes", [1, 2])
def test_loader_workers_are_kept_across_epochs_and_give_each_epochs_batches(train_shards, labels, lanes):
    """One set of worker processes serves epochs 1 and 0 (and a resume start) with exactly the
    batches the training process renders itself; lanes 2: two workers split each batch's lanes."""
    def make(epoch):
        return views(train_shards, labels, epoch=epoch, lanes=lanes, interleave=2, batch_size=32)

    with LoaderWorkers(2) as workers:
        pids = []
        for epoch, start in ((1, 0), (0, 3), (1, 5)):
            ds = make(epoch)
            got = list(ds.batch_loader(start, workers=workers))
            want = list(ds.batches(start))
            assert [b.keys for b in got] == [b.keys for b in want] and len(got) == ds.steps - start
            for a, b in zip(want, got):
                torch.testing.assert_close(b.images_on("cpu"), a.images, rtol=0, atol=0)
                torch.testing.assert_close(b.teacher.logit, a.teacher.logit, rtol=0, atol=0)
            pids.append([w.pid for w in workers.loader._iterator._workers])  # torch's, no public handle
        assert pids[0] == pids[1] == pids[2], "the same worker processes every epoch"
        other = views(train_shards, labels, epoch=0, lanes=lanes, interleave=2, batch_size=64)  # another run
        assert [b.keys for b in other.batch_loader(0, workers=workers)] == [b.keys for b in other.batches()]
    assert workers.loader is None


# ------------------------------------------------------------------ repeated augmentation (views.repeats)

REP_SPEC = dataclasses.replace(MIX_SPEC, repeats=3)  # pair mixing, 3 repeats


@pytest.fixture(scope="module")
def repeat_labels(tmp_path_factory, train_shards):
    """Top-5 partitions of every shard at view epoch 1's three repeat view epochs (3, 4, 5)."""
    from tests.pipeline.train.helpers import write_teacher_labels

    from .conftest import teacher

    return write_teacher_labels(tmp_path_factory.mktemp("store-rep"), teacher(), train_shards, spec=REP_SPEC, seed=SEED,
                                view_epochs=[3, 4, 5], render=RENDER, taus=(2.0,))


def test_repeats_train_one_shard_in_three_three_views_of_each_row_with_their_own_labels(train_shards, repeat_labels):
    """DeiT's repeated augmentation: the epoch is as long as without repeats (384 rows), one shard of
    the three, each row in 3 views of its own (view epochs 3, 4, 5), each with the teacher label
    computed on that view; a pair mixes in every repeat, with a lambda drawn per repeat."""
    ds = views(train_shards, repeat_labels, spec=REP_SPEC)
    assert ds.view_epochs == [3, 4, 5] and ds.steps == 384 // 64
    seen: dict[str, list] = {}
    decoded = {}
    for plan in ds.plans():
        batch = ds.render(plan)
        assert batch.teacher is not None and len(batch) == 64
        for shard, rows in plan:
            decoded[shard.ref.name] = shard.images
            for i in rows:
                seen.setdefault(shard.keys[i], []).append(shard.views[i])
    assert len(seen) == 128 and all(len(v) == 3 for v in seen.values()), "one shard, every row 3 times"
    for vs in seen.values():
        assert sorted(v.epoch for v in vs) == [3, 4, 5] and len({v.seed for v in vs}) == 3
        partners = {v.partner for v in vs}
        assert len(partners) == 1 or "" in partners, "a pair is the same in every repeat"
    lams = [{v.lam for v in vs} for vs in seen.values() if all(v.partner for v in vs)]
    assert lams and sum(len(x) > 1 for x in lams) > len(lams) // 2, "lambda is drawn again per repeat"
    (images,) = decoded.values()
    assert images.decoded == 128, "each image decoded once for its 3 repeats"
    # the stored labels are the repeat's: a partition of another repeat is refused
    swapped = dict(repeat_labels)
    name = ds.order().shards[0].name
    swapped[(name, 3)], swapped[(name, 4)] = repeat_labels[(name, 4)], repeat_labels[(name, 3)]
    with pytest.raises(StoreError, match="'view_epoch' is 4, expected 3"):
        list(views(train_shards, swapped, spec=REP_SPEC).batches())
    missing = {k: v for k, v in repeat_labels.items() if k != (name, 5)}
    with pytest.raises(StoreError, match=f"no label partition given for shard '{name}', view epoch 5"):
        views(train_shards, missing, spec=REP_SPEC)


@pytest.mark.parametrize("world", [1, 2])
def test_repeats_resume_mid_epoch_exactly_with_or_without_loader_workers(train_shards, repeat_labels, world):
    def keys(rank, start=0, workers=0):
        ds = views(train_shards, repeat_labels, spec=REP_SPEC, rank=rank, world=world, lanes=2, interleave=2,
                   batch_size=32)
        return [(b.keys, b.seeds) for b in ds.batch_loader(start, num_workers=workers)]

    for rank in range(world):
        whole = keys(rank)
        assert len(whole) == 384 // 32 and keys(rank, 5) == whole[5:]
        assert keys(rank, 5, workers=2) == whole[5:]
    if world == 2:
        one = views(train_shards, repeat_labels, spec=REP_SPEC, lanes=2, interleave=2, batch_size=32)
        assert [(a[0] + b[0], a[1] + b[1]) for a, b in zip(keys(0), keys(1))] == [(b.keys, b.seeds) for b in one.batches()]


def test_repeats_workers_send_the_same_pixels(train_shards, repeat_labels):
    ds = views(train_shards, repeat_labels, spec=REP_SPEC, lanes=2, batch_size=32)
    want = list(ds.batches())
    got = list(ds.batch_loader(0, num_workers=2))
    assert [b.keys for b in got] == [b.keys for b in want]
    for a, b in zip(want, got):
        torch.testing.assert_close(b.images_on("cpu"), a.images, rtol=0, atol=0)
        torch.testing.assert_close(b.teacher.logit, a.teacher.logit, rtol=0, atol=0)


# ------------------------------------------------------------------ mix_mode batch (timm's, DeiT's)

BATCH_SPEC = dataclasses.replace(MIX_SPEC, mix_mode="batch")


@pytest.mark.parametrize("repeats", [1, 3])
def test_batch_mixing_draws_one_lambda_and_box_per_global_batch(train_shards, repeats):
    spec = dataclasses.replace(BATCH_SPEC, repeats=repeats)
    draws = []
    for world in (1, 2):
        per_batch: dict[int, set] = {}
        for rank in range(world):
            ds = views(train_shards, spec=spec, view_pool=None, rank=rank, world=world, lanes=2, interleave=2,
                       batch_size=32)
            for b, plan in enumerate(ds.plans()):
                mixed = [shard.views[i] for shard, rows in plan for i in rows]
                assert all(v.partner for v in mixed), "mix_prob 1: every row of a batch mixes"
                per_batch.setdefault(b, set()).update((v.lam, v.mix_box) for v in mixed)
        assert all(len(d) == 1 for d in per_batch.values()), "one draw for the whole global batch, on every rank"
        draws.append(per_batch)
    assert draws[0] == draws[1] and len({next(iter(d)) for d in draws[0].values()}) > 1
    with pytest.raises(ConfigError, match="needs views.pool: epochs"):
        views(train_shards, spec=spec, view_pool=2)


def test_batch_mixing_labels_stream_under_their_order_and_another_batch_size_is_refused_naming_why(
        tmp_path, train_shards):
    from tests.pipeline.train.helpers import write_teacher_labels

    from .conftest import teacher

    def make(batch_size, labels=None):
        return views(train_shards, labels, spec=BATCH_SPEC, view_pool=None, batch_size=batch_size, lanes=2)

    order = make(32).order()  # what precompute's plan derives: each row's batch in epoch 1
    labels = write_teacher_labels(tmp_path / "store", teacher(), train_shards, spec=BATCH_SPEC, seed=SEED,
                                  view_epochs=[1], render=RENDER, taus=(2.0,),
                                  batches=lambda ref, ve: order.batch_of(ref.name))
    assert len(list(make(32, labels).batches())) == 384 // 32
    with pytest.raises(StoreError, match="views.mix_mode batch: a mix is its global batch's"):
        list(make(64, labels).batches())
