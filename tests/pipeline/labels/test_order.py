"""The epoch order (pipeline.labels.order): shards interleaved in lanes, a pure function of the seed
and epoch, independent of the world size; pairs kept together; each rank reads its own shards."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from maskedkd.views import mix_pairs
from pipeline.errors import ConfigError
from pipeline.labels.contract import ShardRef
from pipeline.labels.order import EpochOrder, epoch_steps, rank_slice

SHARDS = [ShardRef(f"s{i:03d}", f"/nowhere/s{i:03d}.tar", 128) for i in range(32)]  # index arithmetic: nothing read


def _keys(batch) -> list[tuple[str, int]]:
    return [(ref.name, int(r)) for ref, rows in batch for r in rows]


def _together(order: EpochOrder) -> set[tuple]:
    """Every pair of rows that share a global batch."""
    return {pair for batch in order for pair in itertools.combinations(sorted(_keys(batch)), 2)}


def test_two_epochs_do_not_batch_the_same_images_together():
    """Of the row pairs batched together in epoch 0, the share batched together again in epoch 1:
    about B/N for a random order (128 / 4096 here); shard after shard it is about a half."""
    def again(**kw) -> float:
        e0, e1 = (_together(EpochOrder(SHARDS, seed=5, epoch=e, batch_size=128, **kw)) for e in (0, 1))
        return len(e0 & e1) / len(e0)

    assert again() > 0.4, "shard after shard (the old order): a batch is about one shard every epoch"
    assert again(lanes=8, interleave=4) < 2.5 * 128 / 4096


def test_order_is_a_pure_function_of_seed_and_epoch_and_visits_rows_once():
    a = EpochOrder(SHARDS, seed=5, epoch=3, batch_size=128, lanes=8, interleave=4)
    b = EpochOrder(list(SHARDS), seed=5, epoch=3, batch_size=128, lanes=8, interleave=4)
    assert [_keys(x) for x in a] == [_keys(x) for x in b]
    for other in (EpochOrder(SHARDS, seed=5, epoch=4, batch_size=128, lanes=8, interleave=4),
                  EpochOrder(SHARDS, seed=6, epoch=3, batch_size=128, lanes=8, interleave=4)):
        assert [_keys(x) for x in other] != [_keys(x) for x in a]
    flat = [k for batch in a for k in _keys(batch)]
    assert len(flat) == len(set(flat)) == a.steps * 128 == 4096
    assert [_keys(x) for x in a.batches(5)] == [_keys(x) for x in a][5:]  # resume: skip whole batches
    # the old order is the lanes = interleave = 1 case
    plain = EpochOrder(SHARDS, seed=5, epoch=3, batch_size=100)
    assert len(plain) == 4096 // 100 and all(len(_keys(x)) == 100 for x in plain)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_each_rank_reads_only_its_lanes_shards(world):
    order = EpochOrder(SHARDS, seed=1, epoch=2, batch_size=128, lanes=8, interleave=2)
    read = [set() for _ in range(world)]
    for batch in order:
        parts = [rank_slice(batch, r, world) for r in range(world)]
        assert [k for p in parts for k in _keys(p)] == _keys(batch), "the rank slices make up the global batch"
        for r, part in enumerate(parts):
            read[r] |= {ref.name for ref, _ in part}
    for r in range(world):
        assert len(read[r]) * 128 / 4096 <= 1 / world + 0.05
    assert sum(len(x) for x in read) == 32, "no shard is read by two ranks"


def test_pairs_stay_adjacent_in_one_lane_chunk_and_one_rank():
    shards = SHARDS[:12] + [ShardRef("odd", "/nowhere/odd.tar", 37)]

    def pairs(ref):
        return mix_pairs(0, 1, ref.name, ref.rows)

    order = EpochOrder(shards, seed=2, epoch=0, batch_size=64, lanes=4, interleave=3, pairs=pairs)
    assert order.steps == epoch_steps(shards, 64, 4, pairs=True)
    seen = 0
    for batch in order:
        for world in (1, 2, 4):
            for r in range(world):
                for ref, rows in rank_slice(batch, r, world):
                    partner = pairs(ref)
                    assert len(rows) % 2 == 0
                    assert all(partner[a] == b for a, b in zip(rows[0::2], rows[1::2])), "a pair is two adjacent rows"
        seen += len(_keys(batch))
    assert seen == order.steps * 64
    assert all(pairs(shards[-1])[r] >= 0 for b in order for ref, rows in b if ref.name == "odd" for r in rows), \
        "an unpaired row sits the epoch out"


def test_batch_sizes_that_do_not_split_are_refused():
    with pytest.raises(ConfigError, match="lanes"):
        EpochOrder(SHARDS, seed=0, epoch=0, batch_size=100, lanes=8)
    with pytest.raises(ConfigError, match="even"):
        EpochOrder(SHARDS, seed=0, epoch=0, batch_size=24, lanes=8, pairs=lambda ref: np.full(ref.rows, -1))


# ------------------------------------------------------------------ repeated augmentation (views.repeats)

def _units(batch, shards_rows: int) -> list[tuple[str, int, int]]:
    """``(shard, row, repeat)`` of a plan's rows (rows are written ``repeat * n + row``)."""
    return [(ref.name, int(r) % shards_rows, int(r) // shards_rows) for ref, rows in batch for r in rows]


@pytest.mark.parametrize("pairs", [False, True])
def test_repeats_train_a_third_of_the_shards_three_times_each_and_a_cycle_visits_every_shard(pairs):
    """DeiT's RASampler: an epoch is as long as without repeats, made of 1/3 of the images, each 3 times
    (here whole shards, so only they are read); 3 consecutive epochs visit every shard once."""
    pair_fn = (lambda ref: mix_pairs(0, 0, ref.name, ref.rows)) if pairs else None
    plain = EpochOrder(SHARDS[:30], seed=5, epoch=0, batch_size=120, lanes=4, interleave=2, pairs=pair_fn)
    seen_shards = []
    for epoch in range(3):
        order = EpochOrder(SHARDS[:30], seed=5, epoch=epoch, batch_size=120, lanes=4, interleave=2, pairs=pair_fn,
                           repeats=3)
        assert len(order) == len(plain) == epoch_steps(SHARDS[:30], 120, 4, pairs, repeats=3)
        flat = [u for batch in order for u in _units(batch, 128)]
        assert len(flat) == len(set(flat)), "each (row, repeat) once"
        shards = {s for s, _, _ in flat}
        assert len(shards) == 10 and {ref.name for ref in order.shards} == shards
        seen_shards.append(shards)
        rows = {}
        for s, r, rep in flat:
            rows.setdefault((s, r), set()).add(rep)
        # all but the rows cut off by the lanes' ends are trained in all 3 repeats
        assert sum(reps == {0, 1, 2} for reps in rows.values()) >= len(rows) - 3 * 4 * 4
    assert set().union(*seen_shards) == {s.name for s in SHARDS[:30]}
    assert sum(len(s) for s in seen_shards) == 30, "a cycle of 3 epochs reads every shard once"


def test_a_rows_repeats_share_its_global_batch_and_a_pair_stays_adjacent_in_every_repeat():
    pair_fn = lambda ref: mix_pairs(0, 0, ref.name, ref.rows)  # noqa: E731
    order = EpochOrder(SHARDS, seed=2, epoch=4, batch_size=96, lanes=4, pairs=pair_fn, repeats=3)
    same_batch = total = 0
    where = {}
    for b, batch in enumerate(order):
        for ref, rows in batch:
            partner = mix_pairs(0, 0, ref.name, ref.rows)
            r = rows % 128
            assert all(partner[r[i]] == r[i + 1] for i in range(0, len(r), 2)), "pairs adjacent"
            assert np.array_equal(rows[0::2] // 128, rows[1::2] // 128), "a pair is of one repeat"
            for x in rows:
                where.setdefault((ref.name, int(x) % 128), set()).add(b)
    for batches in where.values():
        total += 1
        same_batch += len(batches) == 1
    assert same_batch / total > 0.75, "a unit of 6 rows (a pair, 3 repeats) is cut by chunks of 24 rows at most once in 4"


def test_repeats_one_is_the_order_without_repeats():
    a = EpochOrder(SHARDS, seed=5, epoch=3, batch_size=128, lanes=8, interleave=4)
    b = EpochOrder(SHARDS, seed=5, epoch=3, batch_size=128, lanes=8, interleave=4, repeats=1)
    assert [_keys(x) for x in a] == [_keys(x) for x in b]


def test_repeats_need_as_many_shards():
    with pytest.raises(ConfigError, match="views.repeats 3 needs at least 3 training shards"):
        EpochOrder(SHARDS[:2], seed=0, epoch=0, batch_size=8, repeats=3)


@pytest.mark.parametrize("repeats", [1, 3])
def test_batch_of_names_the_global_batch_every_row_is_trained_in(repeats):
    pair_fn = lambda ref: mix_pairs(0, 0, ref.name, ref.rows)  # noqa: E731
    shards = [ShardRef(f"s{i:03d}", f"/nowhere/s{i:03d}.tar", 100 + i) for i in range(9)]  # odd sizes: rows left out
    order = EpochOrder(shards, seed=3, epoch=1, batch_size=64, lanes=4, interleave=2, pairs=pair_fn, repeats=repeats)
    want: dict[tuple[str, int], int] = {}
    for b, batch in enumerate(order):
        for ref, rows in batch:
            for r in rows:
                want[(ref.name, int(r))] = b
    for ref in shards:
        got = order.batch_of(ref.name)
        if ref not in order.shards:
            assert len(got) == 0
            continue
        assert len(got) == repeats * ref.rows
        assert {(ref.name, int(r)): int(b) for r, b in enumerate(got) if b >= 0} == \
               {k: v for k, v in want.items() if k[0] == ref.name}
        assert (got < 0).sum() < ref.rows * repeats, "most rows are trained"


def test_repeats_balance_the_parts_by_rows_so_a_small_shard_does_not_shrink_every_epoch():
    """Shards of 1000, 1000, 1000 and 200 rows, 3 repeats: the parts are {1000 + 200}, {1000}, {1000}
    whatever the seed, so every epoch trains 3 x 1000 rows and a cycle reads every shard once."""
    from pipeline.labels.contract import epoch_shards
    from pipeline.labels.order import epoch_rows

    shards = [ShardRef(f"s{i}", f"/nowhere/s{i}.tar", n) for i, n in enumerate([1000, 1000, 200, 1000])]
    assert epoch_rows(shards, False, 3) == 3000 and epoch_rows(shards, True, 3) == 3000
    for seed in range(5):
        parts = [epoch_shards(shards, seed, e, 3) for e in range(3 * seed, 3 * seed + 3)]
        assert sorted(r.name for p in parts for r in p) == ["s0", "s1", "s2", "s3"]
        assert sorted(sum(r.rows for r in p) for p in parts) == [1000, 1000, 1200]
        for e in range(3 * seed, 3 * seed + 3):
            order = EpochOrder(shards, seed=seed, epoch=e, batch_size=100, repeats=3)
            assert len(order) == 30 and sum(len(r) for b in order for _, r in b) == 3000
