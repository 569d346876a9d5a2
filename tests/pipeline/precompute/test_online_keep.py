"""The online teacher and precompute choose the same keep sets for the same view and checkpoint."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from maskedkd import saliency_on_grid, select_keep, teacher_forward, teacher_macs
from maskedkd.views import ViewSpec
from pipeline.labels import open_partition
from pipeline.labels.contract import RenderSpec, ShardRef
from pipeline.models import create_model
from pipeline.precompute.task import run_partition
from pipeline.train import OnlineTeacher
from pipeline.train.loop import _Online
from pipeline.train.stream import Batch, load_shard, make_batch
from tests.pipeline.precompute.conftest import SHARD, STUDENT, TEACHER
from tests.pipeline.precompute.helpers import VIT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


# the teacher's own render is not used to choose keep sets
TEACHER_RENDER = RenderSpec(28, (0.5,), (0.5,))


def _online(ckpts, policy: str, keep: int, student_kwargs: dict = STUDENT, student_ckpt: str | None = "c0"):
    """The loop's online teacher, and a student in training mode (as in the loop)."""
    teacher = create_model(VIT, TEACHER, weights=ckpts["teacher"])
    weights = ckpts[student_ckpt] if student_ckpt else None
    student = create_model(VIT, student_kwargs, weights=weights, seed=0).train()
    online = _Online(OnlineTeacher(teacher, TEACHER_RENDER, policy=policy, keep=keep), torch.device("cpu"),
                     contextlib.nullcontext)
    return online, student


@pytest.mark.parametrize("policy", ["student", "random"])
def test_online_and_offline_draw_the_same_keep_sets(stage, tasks, ckpts, policy):
    cfg = stage(f"online-{policy}", policy=policy)
    t = replace(tasks(cfg, "c0")[0], device="cpu")
    run_partition({"task": t})
    with open_partition(t.path) as part:
        b = part.read_all(columns=("keys", "keep"))
    offline = b.keep.numpy()

    shard = load_shard(ShardRef(t.shard, Path(t.shard_path), SHARD), spec=ViewSpec.from_dict(t.view_spec),
                       seed=t.view_seed, view_epoch=t.view_epoch)
    assert shard.keys == b.keys
    online, student = _online(ckpts, policy, t.keep)
    render = (t.student or t.teacher).render
    rows = np.random.default_rng(0).permutation(SHARD)[:40]  # any rows, in any batch: a row's set is its own
    batch = make_batch([(shard, rows)], render, num_classes=10, soft=False)
    idx = online.keep_idx(student, batch, batch.images)
    assert idx.shape == (len(rows), t.keep) and student.training  # eval for the saliency only
    want = torch.from_numpy(np.nonzero(offline[rows])[1].reshape(len(rows), t.keep))
    assert torch.equal(idx, want)


def test_online_student_on_another_grid_is_resampled(ckpts):
    other = dict(STUDENT, patch_size=7)  # a 4x4 grid; the teacher's is 7x7
    online, student = _online(ckpts, "student", 25, student_kwargs=other, student_ckpt=None)
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    batch = Batch(images, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), None, [],
                  seeds=[5, 6, 7])  # only the seeds are read
    idx = online.keep_idx(student, batch, images)
    with torch.no_grad():
        want = select_keep(saliency_on_grid(student.eval(), images, (7, 7)), 25)
    assert idx.shape == (3, 25) and torch.equal(idx, want)


def test_precompute_picks_masks_from_the_downscaled_view_when_asked(stage, tasks, ckpts):
    """``masking.saliency_scale: 0.5``: the stored keep sets are the student's saliency on the view
    downscaled to 16 px (4 x 4 patches), resampled onto the teacher's 7 x 7 grid."""
    cfg = stage("saliency-half", saliency_scale=0.5)
    t = replace(tasks(cfg, "c0")[0], device="cpu")
    assert t.saliency_scale == 0.5
    run_partition({"task": t})
    with open_partition(t.path) as part:
        b = part.read_all(columns=("keys", "keep"))
    shard = load_shard(ShardRef(t.shard, Path(t.shard_path), SHARD), spec=ViewSpec.from_dict(t.view_spec),
                       seed=t.view_seed, view_epoch=t.view_epoch)
    rows = np.arange(24)
    assert t.student is not None
    batch = make_batch([(shard, rows)], t.student.render, num_classes=10, soft=False)
    student = create_model(VIT, STUDENT, weights=ckpts["c0"]).eval()
    with torch.no_grad():
        want = select_keep(saliency_on_grid(student, batch.images, (7, 7), scale=0.5), t.keep)
        full = select_keep(saliency_on_grid(student, batch.images, (7, 7)), t.keep)
    got = torch.from_numpy(np.nonzero(b.keep.numpy()[rows])[1].reshape(len(rows), t.keep))
    assert torch.equal(got, want) and not torch.equal(got, full)


def test_the_online_lowres_teacher_runs_its_forward_without_the_student(ckpts):
    online, student = _online(ckpts, "lowres", 16)
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    batch = Batch(images, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), None, [],
                  teacher_images=images, seeds=[5, 6, 7])
    assert not online.saliency and online.keep_idx(student, batch, images) is None  # no keep set, no student read
    assert online.macs_per_image == teacher_macs(online.teacher, 16, "lowres") < teacher_macs(online.teacher, None)
    with torch.no_grad():
        assert torch.equal(online(student, batch, images), teacher_forward(online.teacher, images, "lowres", 16))
