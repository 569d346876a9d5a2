"""The precompute batch loop never waits for the device but once per batch (its labels), checked on the CPU.

The task runs on ``meta`` (pipeline.placement): any read of a device tensor on the host (``.item``,
``.cpu``, ``bool``, ...) fails there, so the task finishing proves the only transfers are the
counted ``to_host`` calls; the Tensor methods that sync are counted too, for device tensors.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pipeline.precompute import task as task_mod
from pipeline.precompute.task import run_partition
from tests.pipeline.syncs import count_syncs


@pytest.fixture
def counted(monkeypatch):
    """``{"to_host": calls, "syncs": [method names called on non-CPU tensors]}`` while the test runs."""
    seen = count_syncs(monkeypatch, task_mod)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **kw: seen["syncs"].append("synchronize"))
    return seen


@pytest.mark.parametrize("policy", ["student", "random"])
def test_one_transfer_per_batch_and_no_other_sync(stage, tasks, counted, policy, tmp_path):
    cfg = stage(name=f"sync-{policy}", policy=policy, store=tmp_path / "store")
    t = tasks(cfg)[0]
    # erasing, mixing and RandAugment on: every per-row step of the feed runs
    spec = dict(t.view_spec, reprob=0.5, mixup=0.8, cutmix=1.0, auto_augment="rand-m9-mstd0.5-inc1")
    t = replace(t, device="meta", view_spec=spec)
    r = run_partition({"task": t})
    batches = math.ceil(r["rows"] / t.batch_size)
    assert r["rows"] > t.batch_size  # several batches
    assert counted["syncs"] == []
    # one for the student's saliency (policies that read it) and one for the teacher's labels, per batch
    assert counted["to_host"] == batches * (2 if policy == "student" else 1)
