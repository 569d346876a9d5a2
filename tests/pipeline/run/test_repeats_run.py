"""``views.repeats`` end to end (issue 26, DeiT's repeated augmentation): ``mkd-pipeline run``
labels each epoch's shards at each repeat view epoch on a real Dask cluster, as many rows as the
epochs train, the student streams them, and a rerun computes nothing."""

from __future__ import annotations

import pytest

from pipeline._lock import LOCK_NAME, load_lock
from pipeline.labels import open_partition
from tests.pipeline.run.tiny import cli_run, tiny_stage


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_repeats_run_labels_what_each_epoch_trains_and_trains_on_it(fmnist_small, tmp_path):
    # 2 shards of 256, 2 epochs in one segment, 2 repeats: each epoch trains on one shard, twice
    stages = tiny_stage(tmp_path, fmnist_small, data__subset=512, schedule__epochs=2, schedule__every=2,
                        views__repeats=2, masking__policy="random", masking__keep=8, compute__workers=2)
    first = cli_run("run", str(stages))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lock = load_lock(tmp_path / "run" / LOCK_NAME)
    info = lock["stages"]["precompute-0"]["info"]
    assert info["rows"] == info["rows_computed"] == 2 * 512, "as many labels as the 2 epochs train, no more"
    where = set()
    for part in lock["stages"]["precompute-0"]["partitions"]:
        with open_partition(part["path"]) as p:
            where.add((p.metadata["shard"], int(p.metadata["view_epoch"])))
            assert p.num_rows == 256
    shards = sorted({s for s, _ in where})
    assert len(shards) == 2 and sorted(sorted(v for s, v in where if s == name) for name in shards) == [[0, 1], [2, 3]]
    train = lock["stages"]["train-0"]["info"]
    assert train["global_step"] == 2 * 512 // 16 and [e["samples"] for e in train["epochs"]] == [512, 512]
    assert 0.0 < train["epochs"][-1]["val_top1"] <= 1.0
    again = cli_run("run", str(stages))
    assert again.returncode == 0 and "everything was cached" in again.stdout


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_batch_mixing_with_repeats_labels_the_mix_each_batch_trains(fmnist_small, tmp_path):
    """DeiT's mixing (timm Mixup mode 'batch': one lambda and box per global batch) with its repeats:
    precompute derives each row's batch from the trainer's order, and the trainer, which checks every
    stored view column against the views it derives, trains on the labels."""
    stages = tiny_stage(tmp_path, fmnist_small, data__subset=512, schedule__epochs=2, schedule__every=2,
                        views__repeats=2, views__mixup=0.8, views__cutmix=1.0, views__mix_mode="batch",
                        masking__policy="random", masking__keep=8, compute__workers=2)
    done = cli_run("run", str(stages))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lock = load_lock(tmp_path / "run" / LOCK_NAME)
    for part in lock["stages"]["precompute-0"]["partitions"]:
        with open_partition(part["path"]) as p:
            lam = p.read_all(columns=("view",)).view["view_lam"]
            mixed = lam[lam < 1.0]
            # 256 rows, 128 pairs: as many draws as the 32 batches of 16 rows they are trained in, at most
            assert len(mixed) > 200 and len(set(mixed.tolist())) <= 512 // 16
    train = lock["stages"]["train-0"]["info"]
    assert [e["samples"] for e in train["epochs"]] == [512, 512]
