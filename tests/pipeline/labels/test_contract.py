"""The rules precompute and trainer share: rows of shards, view epochs, render settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from maskedkd.digests import resize_digest
from pipeline._fingerprint import sha256_json
from pipeline.config import DataConfig, StudentConfig, TeacherConfig
from pipeline.data.manifest import DatasetManifest
from pipeline.labels.contract import (
    RenderSpec,
    ShardRef,
    render_spec,
    segment_view_epochs,
    shard_refs,
    subset_rows,
    view_epoch_of,
)
from pipeline.models import create_model


def _manifest(root: Path, counts: list[int]) -> DatasetManifest:
    shards = {f"train-{i:06d}.tar": {"samples": n, "bytes": 10 * n, "sha256": f"{i:064x}"} for i, n in enumerate(counts)}
    return DatasetManifest(name="d", classes=["a", "b"], splits={"train": {"num_samples": sum(counts), "shards": shards}},
                           root=root)


def test_subset_rows_takes_the_first_samples_in_shard_order():
    assert subset_rows([128, 128, 128], None) == [128, 128, 128]
    assert subset_rows([128, 128, 128], 200) == [128, 72, 0]
    assert subset_rows([5], 10) == [5]
    with pytest.raises(ValueError):
        subset_rows([5], 0)


def test_shard_refs_carry_rows_limit_and_sha256(tmp_path):
    m = _manifest(tmp_path, [128, 128, 128])
    whole = shard_refs(m, "train")
    assert [(r.name, r.path, r.rows, r.limit) for r in whole] == [
        (f"train-{i:06d}", tmp_path / f"train-{i:06d}.tar", 128, None) for i in range(3)]
    assert [r.sha256 for r in whole] == [f"{i:064x}" for i in range(3)]
    part = shard_refs(m, "train", 200)  # the third shard holds none of the first 200 samples
    assert [(r.name, r.rows, r.samples, r.limit) for r in part] == [("train-000000", 128, 128, None),
                                                                     ("train-000001", 72, 128, 72)]
    assert ShardRef("x", tmp_path / "x.tar", 5).limit is None  # built by hand: rows is the whole shard


def test_view_epochs_of_an_epoch_and_of_a_segment():
    assert [view_epoch_of(e, 3) for e in range(5)] == [0, 1, 2, 0, 1]
    assert view_epoch_of(7, None) == 7
    with pytest.raises(ValueError):
        view_epoch_of(1, 0)
    assert segment_view_epochs(range(2, 6), 3) == [0, 1, 2]
    assert segment_view_epochs(range(2, 4), None) == [2, 3]
    assert segment_view_epochs(range(2, 4), None, repeats=3) == [6, 7, 8, 9, 10, 11]  # each view epoch's repeats


def test_render_spec_one_shape_for_both_sides():
    a = RenderSpec(28, [0.5], [0.25])
    assert a == RenderSpec((28, 28), (0.5,), (0.25,), "bicubic")
    # precompute fingerprints render.record(): its fields and their JSON shape are part of the store format,
    # the same as asdict(render) gave before `resize` (so Pillow-rendered stores keep their fingerprints)
    old = {"size": (28, 28), "mean": (0.5,), "std": (0.25,), "interpolation": "bicubic"}
    assert sha256_json(a.record()) == sha256_json(old) and a.resize_record() == {}
    torch_resized = dataclasses.replace(a, resize="torch")
    assert torch_resized.record() == a.record()  # the resizer is the view fingerprint's, not the model's
    assert torch_resized.resize_record() == {"resize": "torch", "resize_digest": resize_digest("torch", "bicubic")}
    with pytest.raises(ValueError, match="lanczos"):
        RenderSpec(28, [0.5], [0.25], "lanczos", "torch")
    vit = create_model("vit_tiny_patch16_224", {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 2,
                                                "embed_dim": 16, "depth": 1, "num_heads": 2}, seed=0)
    assert RenderSpec.for_model(vit, [0.5], [0.25]) == a
    data = DataConfig.model_validate({"root": "d", "num_classes": 2, "mean": [0.5], "std": [0.25],
                                      "interpolation": "bilinear"}, context={"check_files": False})
    student = _model_section(StudentConfig, img_size=(28, 32))
    assert render_spec(data, student) == RenderSpec((28, 32), (0.5,), (0.25,), "bilinear")
    torch_data = data.model_copy(update={"resize": "torch"})
    assert render_spec(torch_data, student) == RenderSpec((28, 32), (0.5,), (0.25,), "bilinear", "torch")


def _model_section(cls, img_size=(28, 28), **fields):
    kwargs = {"img_size": img_size, "patch_size": 7, "in_chans": 1, "num_classes": 2, "embed_dim": 16, "depth": 1,
              "num_heads": 2}
    return cls.model_validate({"model": "vit_tiny_patch16_224", "kwargs": kwargs, **fields},
                              context={"check_files": False})


def test_render_spec_each_model_its_own_preprocessing(tmp_path):
    """A model's own mean/std/interpolation, else its pretrained_cfg's when pretrained, else data's."""
    data = DataConfig.model_validate({"root": "d", "num_classes": 2, "mean": [0.5], "std": [0.25],
                                      "interpolation": "bilinear"}, context={"check_files": False})
    plain = render_spec(data, _model_section(StudentConfig))
    assert plain == RenderSpec((28, 28), (0.5,), (0.25,), "bilinear")  # as before the per-model fields
    own = render_spec(data, _model_section(StudentConfig, mean=[0.1], std=[0.2], interpolation="bicubic"))
    assert own == RenderSpec((28, 28), (0.1,), (0.2,), "bicubic")
    # vit_tiny_patch16_224's pretrained_cfg (augreg): mean = std = 0.5 per channel, bicubic
    pre = render_spec(data, _model_section(TeacherConfig, pretrained=True))
    assert pre == RenderSpec((28, 28), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", crop_pct=0.9)
    assert sha256_json(pre.record()) != sha256_json(plain.record())  # other pixels: other fingerprints
    # a weights file (no pretrained) is this model's checkpoint: it renders as the data section says
    weights = tmp_path / "w.pth"
    assert render_spec(data, _model_section(TeacherConfig, weights=str(weights))) == plain
    overridden = render_spec(data, _model_section(TeacherConfig, pretrained=True, mean=[0.3], std=[0.3]))
    assert overridden == RenderSpec((28, 28), (0.3,), (0.3,), "bicubic", crop_pct=0.9)


def test_eval_view_is_the_whole_image_or_timms_centre_crop():
    whole = RenderSpec(28, [0.5], [0.25])
    assert whole.eval_view("k", 40, 20).crop_box(40, 20) == (0.0, 0.0, 1.0, 1.0)
    crop = dataclasses.replace(whole, crop_pct=0.875)
    assert crop.record() == whole.record()  # evaluation only: never in a label fingerprint
    assert crop.eval_view("k", 32, 32).crop_box(32, 32) == pytest.approx((0.0625, 0.0625, 0.9375, 0.9375))
    # a wide image: a square of 0.875 of its height, centred (timm's Resize(size / crop_pct) + CenterCrop(size))
    assert crop.eval_view("k", 40, 20).crop_box(40, 20) == pytest.approx((0.28125, 0.0625, 0.71875, 0.9375))
    pre = _model_section(TeacherConfig, pretrained=True)
    data = DataConfig.model_validate({"root": "d", "num_classes": 2}, context={"check_files": False})
    assert render_spec(data, pre).crop_pct == 0.9  # vit_tiny_patch16_224's pretrained_cfg
    assert render_spec(data, _model_section(StudentConfig)).crop_pct is None
    assert render_spec(data, _model_section(TeacherConfig, pretrained=True, crop_pct=1.0)).crop_pct == 1.0
