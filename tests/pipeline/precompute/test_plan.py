"""pipeline.precompute.plan: the precision a task runs at, and that it is part of the label fingerprint."""

from __future__ import annotations

import pytest

from maskedkd import needs_saliency, policy_names
from pipeline.config import load_config


def _cfg(stage, tmp_path, *sets):
    stage()  # writes s.yaml
    return load_config(tmp_path / "s.yaml", overrides=list(sets))


def _tasks(stage, tasks, tmp_path, *sets):
    return tasks(_cfg(stage, tmp_path, *sets))


def test_auto_precision_is_fp32_on_cpu_and_bf16_on_cuda(stage, tasks, tmp_path):
    auto_cpu = _tasks(stage, tasks, tmp_path)  # the test stage has compute.device: cpu
    assert {t.precision for t in auto_cpu} == {"fp32"}
    # an explicit fp32 is the same task: CPU stores written before `auto` existed stay valid
    fp32 = _tasks(stage, tasks, tmp_path, "compute.precision=fp32")
    assert [t.fingerprints for t in fp32] == [t.fingerprints for t in auto_cpu]
    # planning needs no GPU: compute.device cuda resolves auto to bf16
    auto_cuda = _tasks(stage, tasks, tmp_path, "compute.device=cuda")
    assert {t.precision for t in auto_cuda} == {"bf16"}


def test_a_precision_change_changes_the_label_fingerprint(stage, tasks, tmp_path):
    fp32 = _tasks(stage, tasks, tmp_path, "compute.precision=fp32")
    bf16 = _tasks(stage, tasks, tmp_path, "compute.precision=bf16")
    for a, b in zip(fp32, bf16):
        assert a.fingerprints["label"] != b.fingerprints["label"] and a.path != b.path
        assert {k: v for k, v in a.fingerprints.items() if k != "label"} == \
               {k: v for k, v in b.fingerprints.items() if k != "label"}
    assert _tasks(stage, tasks, tmp_path, "compute.device=cuda")[0].fingerprints == bf16[0].fingerprints


def _paths(stage, tasks, tmp_path, student, *sets):
    return {(t.shard, t.view_epoch): t.path for t in tasks(_cfg(stage, tmp_path, *sets), student)}


@pytest.mark.parametrize("policy", [p for p in policy_names() if not needs_saliency(p)])
def test_a_policy_without_saliency_labels_the_same_partitions_whatever_the_student(stage, tasks, tmp_path, policy):
    keep = [] if policy == "none" else ["masking.keep=25"]
    first = _paths(stage, tasks, tmp_path, "c0", f"masking.policy={policy}", *keep, "schedule.epochs=2", "schedule.every=1")
    # another checkpoint, init seed, learning rate or milestone schedule: the same partitions, served from the store
    for student, sets in (("c1", ()), ("c0", ("student.init_seed=1",)), ("c0", ("train.lr=0.01",)),
                          ("c0", ("schedule.every=2",))):
        again = _paths(stage, tasks, tmp_path, student, f"masking.policy={policy}", *keep, "schedule.epochs=2",
                       "schedule.every=1", *sets)
        assert {k: again[k] for k in first} == first, (student, sets)


def test_the_students_saliency_labels_other_partitions_for_another_checkpoint(stage, tasks, tmp_path):
    c0 = _paths(stage, tasks, tmp_path, "c0", "masking.policy=student")
    c1 = _paths(stage, tasks, tmp_path, "c1", "masking.policy=student")
    assert c0.keys() == c1.keys() and all(c0[k] != c1[k] for k in c0)


def test_with_repeats_precompute_labels_each_epochs_shards_at_each_repeat_and_nothing_more(stage, tasks, tmp_path):
    """views.repeats 2 over a 2-epoch segment of 2 shards: each epoch trains on one shard, twice (view
    epochs 2e and 2e + 1), so 4 partitions are labelled, as many as without repeats, and they are
    exactly those the trainer's dataset of each epoch asks for."""
    from pipeline.data.manifest import load_manifest
    from pipeline.labels.contract import render_spec, shard_refs
    from pipeline.train.labeled_views import LabeledViews

    sets = ("schedule.epochs=2", "schedule.every=2", "views.repeats=2", "train.batch_size=32")
    cfg = _cfg(stage, tmp_path, *sets)
    planned = {(t.shard, t.view_epoch): t.path for t in tasks(cfg)}
    plain = {(t.shard, t.view_epoch) for t in _tasks(stage, tasks, tmp_path, *sets[:2], "train.batch_size=32")}
    assert len(planned) == len(plain) == 4 and planned.keys() != plain
    by_shard: dict[str, list[int]] = {}
    for shard, v in planned:
        by_shard.setdefault(shard, []).append(v)
    assert sorted(sorted(v) for v in by_shard.values()) == [[0, 1], [2, 3]], "one shard per epoch, both repeats"
    refs = shard_refs(load_manifest(cfg.data.root), cfg.data.train, cfg.data.subset)
    for epoch in (0, 1):
        ds = LabeledViews(refs, spec=cfg.views.view_spec(), seed=cfg.views.seed, render=render_spec(cfg.data, cfg.student),
                          epoch=epoch, batch_size=32, order_seed=cfg.train.seed, labels=planned,
                          view_pool=cfg.views.pool_size, num_classes=10)
        assert ds.labels is not None and len(ds.labels) == 1 and ds.view_epochs == [2 * epoch, 2 * epoch + 1]
    # a repeats config is other views: none of its partitions is a plain config's
    assert not set(planned.values()) & {t.path for t in _tasks(stage, tasks, tmp_path, *sets[:2], "train.batch_size=32")}


def test_batch_mixing_labels_record_the_trainers_batches(stage, tasks, tmp_path):
    """mix_mode batch: a partition's mixes are its rows' global batches' draws, so precompute derives
    the trainer's order (train.seed, batch size, lanes): a new batch size is other views, other
    partitions; pair mixing does not depend on it."""
    mix = ("views.mixup=0.8", "views.cutmix=1.0")
    batch32 = _tasks(stage, tasks, tmp_path, *mix, "views.mix_mode=batch", "train.batch_size=32")
    batch16 = _tasks(stage, tasks, tmp_path, *mix, "views.mix_mode=batch", "train.batch_size=16")
    assert all(t.mix_batches is not None and len(t.mix_batches) == 96 for t in batch32)
    assert max(max(t.mix_batches) for t in batch32) == 192 // 32 - 1, "6 batches of 32 an epoch"
    assert {t.path for t in batch32}.isdisjoint(t.path for t in batch16)
    pair32, pair16 = (_tasks(stage, tasks, tmp_path, *mix, f"train.batch_size={b}") for b in (32, 16))
    assert all(t.mix_batches is None for t in pair32) and [t.path for t in pair32] == [t.path for t in pair16]
