"""Smoke test of `mkd-pipeline bench train`'s modes on tiny data (timings are for BENCHMARKS.md, never asserted)."""

from __future__ import annotations

import pytest

from pipeline.bench.train import LOADER_MODES, run_bench, train_table


def test_the_public_dataset_modes_train_the_trainers_steps(one_thread):
    result = run_bench(samples=64, shard_size=32, batch=16, keep=25, repeats=1, threads=1,
                       modes=("off", *LOADER_MODES))
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == ["off", "dataset-w1", "dataset-w2"]
    assert [r["steps"] for r in rows.values()] == [64 // 16] * 3, "the own loop takes the trainer's steps"
    assert rows["dataset-w1"]["loader_workers"] == 1 and rows["dataset-w2"]["loader_workers"] == 2
    assert all(r["steps_per_s"] > 0 and r["vs_off"] > 0 for r in rows.values())
    assert "| dataset-w2 |" in train_table(result)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown bench train modes \\['fast'\\]"):
        run_bench(samples=16, shard_size=16, batch=16, keep=25, repeats=1, threads=1, modes=("fast",))


@pytest.mark.slow
def test_the_input_bench_halves_each_ranks_decoding_at_world_size_two():
    from pipeline.bench.train_input import input_table, run_input_bench

    result = run_input_bench(samples=8, shards=2, batch=8)
    by = {(r["eager"], r["world"], r["rank"]): r for r in result["rows"]}
    assert len(by) == 6 and all(r["rows"] / r["seconds"] > 0 for r in by.values())
    assert [by[(False, 2, k)]["rows"] for k in (0, 1)] == [8, 8] and by[(False, 1, 0)]["rows"] == 16
    assert [by[(False, 2, k)]["decoded"] for k in (0, 1)] == [8, 8], "each rank decodes its own rows only"
    assert [by[(True, 2, k)]["decoded"] for k in (0, 1)] == [16, 16], "before: every rank decoded everything"
    assert "| own rows only (now) | 2 |" in input_table(result)


def test_the_input_counts_show_one_render_per_row_and_half_the_bytes_per_rank():
    from pipeline.bench.train_input import counts_table, input_counts

    result = input_counts(samples=4, shards=12, batch=16)
    by = {(c["mix_mode"], c["repeats"], c["world"], c["rank"]): c for c in result["counts"]}
    assert all(by[(m, n, w, r)]["renders_per_row"] == 1.0 for m, n in (("pair", 1), ("batch", 3))
               for w, r in ((1, 0), (2, 0), (2, 1)))
    assert by[("pair", 1, 1, 0)]["shard_bytes_read_per_rank"] == 1.0
    assert all(abs(by[("pair", 1, 2, r)]["shard_bytes_read_per_rank"] - 0.5) < 0.06 for r in (0, 1))
    # DeiT's batch mixing and 3 repeats: an epoch of as many rows reads a third of the shards
    assert by[("batch", 3, 1, 0)]["rows"] == by[("pair", 1, 1, 0)]["rows"] == 48
    assert abs(by[("batch", 3, 1, 0)]["shard_bytes_read_per_rank"] - 1 / 3) < 0.02
    assert all(by[("window", 1, w, r)]["rows"] == 48 // w for w, r in ((1, 0), (2, 0), (2, 1)))
    assert "| pair | 8 | 2 | 1 | 2 | 1 |" in counts_table(result) and "| batch | 8 | 2 | 3 | 1 | 0 |" in counts_table(result)


def test_hash_cost_times_stored_again_with_every_shard_hashed(one_thread, monkeypatch):
    from pipeline.train import stream

    hashed: dict[bool, int] = {True: 0, False: 0}
    real = stream.read_shard

    def spy(*a, sha256=None, **kw):
        hashed[sha256 is not None] += 1
        return real(*a, sha256=sha256, **kw)

    monkeypatch.setattr(stream, "read_shard", spy)
    result = run_bench(samples=64, shard_size=32, batch=16, keep=25, repeats=1, threads=1,
                       modes=("stored", "stored+hash"))
    rows = {r["mode"]: r for r in result["rows"]}
    assert rows["stored+hash"]["steps"] == rows["stored"]["steps"] == 64 // 16
    # warm-up + 1 repeat, 2 shards each: stored+hash reads them hashed, stored (and the bench's
    # own label writing, once per shard) unhashed
    assert hashed == {True: 4, False: 4 + 2}
    cost = result["hash_cost"]
    assert cost["ratio_on_off"] == cost["median_on_s"] / cost["median_off_s"] > 0 and cost["unit"] == "steps"
    assert cost["sha256_s"] > 0 and cost["shard_bytes"] > 0
    assert "| stored labels, one epoch | " in train_table(result) and "sha256 of the shards alone" in train_table(result)
