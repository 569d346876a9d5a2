"""Precompute on a real 2-process LocalCluster: each row once, repeat = nothing, incremental
recomputation exactly where keep sets changed, tolerance, and the student-free policies."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from maskedkd import teacher_macs
from pipeline.labels import list_partitions
from pipeline.models import create_model
from pipeline.precompute.costs import net_cost_fields, saliency_macs_per_view
from tests.pipeline.precompute.conftest import ROWS, STUDENT, TEACHER
from tests.pipeline.precompute.helpers import VIT, keep_sets, read, run


def _keep_sets(ckpt, tasks) -> np.ndarray:
    return keep_sets(create_model(VIT, STUDENT, weights=ckpt), tasks)


def test_each_row_once_and_repeat_computes_nothing(stage, tasks, cluster):
    cfg = stage(epochs=2)  # one segment over epochs 0..1: view epochs 0 and 1
    ts = tasks(cfg)
    assert sorted({(t.shard, t.view_epoch) for t in ts}) == [(s, e) for s in ("train-000000", "train-000001") for e in (0, 1)]
    first = run(ts, cluster, cfg, "once")
    assert first["rows"] == first["rows_computed"] == first["teacher_forwards"] == first["student_forwards"] == 2 * ROWS
    assert first["cached"] == 0 and first["rows_reused"] == 0

    got = read(ts)
    assert len(got["keys"]) == len(set(got["keys"])) == 2 * ROWS  # every (view epoch, key) exactly once
    assert sorted({k for _, k in got["keys"]}) == [f"train_{i:06d}" for i in range(ROWS)]
    assert (got["keep"].sum(axis=1) == 25).all()
    assert sorted(list_partitions(cfg.labels.store)) == sorted(t.path for t in ts)  # nothing else written

    again = run(ts, cluster, cfg, "once-again")
    assert again["cached"] == again["partitions"] == len(ts)
    assert all(r["cached"] for r in again["results"])
    assert again["student_forwards"] == again["teacher_forwards"] == again["rows_computed"] == 0
    assert first["reuse_check_macs"] == again["reuse_check_macs"] == 0  # nothing reused under tolerance
    assert again["rows"] == 2 * ROWS
    assert [r["sha256"] for r in again["results"]] == [r["sha256"] for r in first["results"]]


def test_updated_student_runs_teacher_exactly_on_changed_rows(stage, tasks, cluster, ckpts, tmp_path):
    cfg = stage()
    old, new = tasks(cfg, "c0"), tasks(cfg, "c1")
    changed = int((_keep_sets(ckpts["c0"], old) != _keep_sets(ckpts["c1"], new)).any(axis=1).sum())
    assert 0 < changed < ROWS, "the update should change some keep sets, not all"

    run(old, cluster, cfg, "inc-c0")
    update = run(new, cluster, cfg, "inc-c1")
    assert update["teacher_forwards"] == update["rows_computed"] == changed
    assert update["rows_reused"] == ROWS - changed and update["rows_reused_tolerance"] == 0
    assert update["student_forwards"] == ROWS and update["cached"] == 0
    assert update["teacher_macs_saved"] > 0

    fresh_cfg = stage("fresh", store=tmp_path / "fresh-store")
    scratch = run(tasks(fresh_cfg, "c1"), cluster, fresh_cfg, "inc-scratch")
    assert scratch["teacher_forwards"] == ROWS
    a, b = read(new), read(tasks(fresh_cfg, "c1"))
    assert a["keys"] == b["keys"]
    assert (a["keep"] == b["keep"]).all()
    torch.testing.assert_close(a["logp"], b["logp"], atol=1e-2, rtol=0)  # float16 storage


def test_tolerance_reuses_near_keep_sets_and_spot_checks(stage, tasks, cluster, ckpts):
    tol = 4
    run(tasks(stage(), "c0"), cluster, stage(), "tol-c0")
    cfg = stage("tol", tolerance=tol, spot_check=16)
    new = tasks(cfg, "c1")
    diff = (_keep_sets(ckpts["c0"], new) != _keep_sets(ckpts["c1"], new)).sum(axis=1)
    near = int(((diff > 0) & (diff <= tol)).sum())
    assert near > 0

    out = run(new, cluster, cfg, "tol-c1")
    assert out["teacher_forwards"] == int((diff > tol).sum())
    assert out["rows_reused"] == int((diff <= tol).sum())
    assert out["rows_reused_tolerance"] == near
    assert out["spot_check_rows"] == sum(min(16, r["rows_reused_tolerance"]) for r in out["results"])
    assert 0 < out["spot_check_kl"] < math.inf
    # the spot-check's teacher forwards are counted: checked rows x one masked teacher forward, in net
    per_view = teacher_macs(create_model(VIT, TEACHER), cfg.masking.keep)
    assert out["reuse_check_macs"] == out["spot_check_rows"] * per_view > 0
    net = net_cost_fields(cfg, out, None)["net_macs"]
    assert net == out["teacher_macs"] + out["student_forwards"] * saliency_macs_per_view(cfg) + out["reuse_check_macs"]
    # rows reused under tolerance record the keep set the teacher really saw (c0's)
    stored = read(new)["keep"]
    old = _keep_sets(ckpts["c0"], new)
    reused = diff <= tol
    assert (stored[reused] == old[reused]).all()
    assert (stored[~reused] == _keep_sets(ckpts["c1"], new)[~reused]).all()


def test_policy_none_needs_no_student(stage, tasks, cluster):
    cfg = stage(policy="none")
    ts = tasks(cfg, None)
    assert all(t.student is None for t in ts)
    out = run(ts, cluster, cfg, "none")
    assert out["student_forwards"] == 0 and out["teacher_forwards"] == ROWS
    assert read(ts)["keep"].all()


def test_policy_random_needs_no_student_and_is_reproducible(stage, tasks, cluster, tmp_path):
    got = []
    for name in ("r1", "r2"):
        cfg = stage(name, policy="random", store=tmp_path / name)
        ts = tasks(cfg, None)
        out = run(ts, cluster, cfg, name)
        assert out["student_forwards"] == 0 and out["teacher_forwards"] == ROWS
        got.append(read(ts))
    a, b = got
    assert (a["keep"].sum(axis=1) == 25).all()
    assert len({row.tobytes() for row in a["keep"]}) > ROWS // 2  # drawn per sample, not one mask
    assert (a["keep"] == b["keep"]).all()
    assert torch.equal(a["logp"], b["logp"])


def _malloc_trim() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.mark.skipif("MALLOC_TRIM_THRESHOLD_" in os.environ, reason="set in this environment: workers inherit it")
def test_workers_keep_glibc_malloc_defaults(cluster):
    # Dask's default MALLOC_TRIM_THRESHOLD_=65536 makes every large torch temporary a fresh mmap
    # (page faults): ~25% slower teacher forwards in the workers than in a plain process
    assert set(cluster.client.run(_malloc_trim).values()) == {None}
